"""Load and validate ``config.toml``.

Every key has a default equal to the documented ``config.toml`` at the top of the repository,
so a file only needs the keys it changes. Validation happens once, at start (and on SIGHUP):
an unknown key, a wrong type or an impossible value stops the program with a message that
names the file, the key and what is expected.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Finding and reading the file: the standard-library part, which `status` uses alone.
from daemon.configfile import (
    DEFAULT_STATE_PATH,
    SEARCH_ENV,
    SYSTEM_PATH,
    ConfigError,
    find_config,
    read_toml,
    resolve,
)
from lambda_sep.contract import BUCKET_NAME, BUCKET_RE, function_env

__all__ = ["SEARCH_ENV", "SYSTEM_PATH", "Config", "ConfigError", "config_from_dict",
           "find_config", "handler_env", "load_config"]

# The retention periods CloudWatch Logs accepts (PutRetentionPolicy), in days.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)
_LAMBDA_NAME_RE = re.compile(
    r"^[A-Za-z0-9_-]{1,64}$"
    r"|^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]+)?$")


class _Section(BaseModel):
    # strict: TOML already has real types, so "2" for an integer is a mistake worth reporting.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL such as https://mast.stsci.edu")
    return value.rstrip("/")


# MAST's intentType values (CAOM's recorded answers, astroquery's caom.json).
Intent = Literal["science", "calibration"]


def _science() -> list[Intent]:
    return ["science"]


class MastSection(_Section):
    """``[mast]``: where and what to discover."""

    url: str = "https://mast.stsci.edu"
    collection: Annotated[str, Field(min_length=1)] = "HST"
    instrument: Annotated[str, Field(min_length=1)] = "WFC3/IR"
    product: Annotated[str, Field(pattern=r"^[A-Z0-9_]{2,12}$")] = "FLT"
    since: Annotated[dt.date, Field(strict=False)] = dt.date(2009, 6, 1)
    window_days: Annotated[float, Field(gt=0, le=3660)] = 30.0
    overlap_days: Annotated[float, Field(ge=0, le=365)] = 3.0
    batch: Annotated[int, Field(ge=1, le=20000)] = 2000
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0
    intent: list[Intent] = Field(default_factory=_science)  # [] follows both
    exclude_filters: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9;_-]{1,32}$")]] = Field(
        default_factory=lambda: ["G102", "G141"])
    resweep_days: Annotated[float, Field(gt=0, le=36600)] = 30.0

    _url = field_validator("url")(_check_http_url)

    @field_validator("exclude_filters")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [v.upper() for v in value]


class ArchiveSection(_Section):
    """``[archive]``: the bucket that holds the exposures."""

    bucket: str = "stpubdata"
    anonymous: bool = True
    wait_hours: Annotated[float, Field(gt=0, le=8760)] = 48.0
    recheck_seconds: Annotated[float, Field(ge=0, le=86400)] = 300.0
    notifications: str = ""

    @field_validator("notifications")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        path = [p for p in parts.path.split("/") if p]
        if parts.scheme not in ("http", "https") or not parts.netloc or len(path) != 2:
            raise ValueError('must be "" (off) or an SQS queue URL such as '
                             "https://sqs.us-east-1.amazonaws.com/123456789012/stpubdata-events")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if value.startswith("file://"):
            if not Path(urlsplit(value).path).is_absolute():
                raise ValueError("a file:// archive must be an absolute path, file:///abs/dir")
            return value.rstrip("/")
        if not BUCKET_RE.match(value):
            raise ValueError("must be an S3 bucket name (3-63 of a-z 0-9 . -) or file:///abs/dir")
        return value


class OutputSection(_Section):
    """``[output]``: where catalogs and error markers go."""

    url: Annotated[str, Field(min_length=1)] = "catalogs"


class IndexSection(_Section):
    """``[index]``: the HATS detection index (docs/INDEX.md)."""

    url: str = "index"


class ExecutorSection(_Section):
    """``[executor]``: who runs the extraction, and the retry policy."""

    kind: Literal["local", "lambda"] = "local"
    concurrency: Annotated[int, Field(ge=1, le=10000)] = 2
    max_in_flight: Annotated[int, Field(ge=0, le=100000)] = 0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 900.0
    retry_backoff_seconds: Annotated[float, Field(ge=0, le=86400)] = 30.0
    # Exposures per event (lambda_sep.contract.MAX_BATCH is the function's own limit).
    batch: Annotated[int, Field(ge=1, le=100)] = 1
    function: str = "mastmirror-sep"

    @field_validator("function")
    @classmethod
    def _function(cls, value: str) -> str:
        if not _LAMBDA_NAME_RE.match(value):
            raise ValueError("must be a Lambda function name (A-Z a-z 0-9 _ -, up to 64) "
                             "or its ARN")
        return value

    @property
    def in_flight_limit(self) -> int:
        """How many datasets may be dispatched and unfinished at once."""
        if self.max_in_flight:
            return self.max_in_flight
        # A local pool gets a short queue so a worker never waits; Lambda gets its concurrency.
        # Either way in events, each carrying ``batch`` datasets.
        events = self.concurrency * 2 if self.kind == "local" else self.concurrency
        return events * self.batch


class LambdaSection(_Section):
    """``[lambda]``: how ``mastmirror lambda build|deploy|policy`` shape the function."""

    runtime: Annotated[str, Field(pattern=r"^python3\.(1[2-9]|[2-9]\d)$")] = "python3.12"
    architecture: Literal["arm64", "x86_64"] = "arm64"
    memory_mb: Annotated[int, Field(ge=128, le=10240)] = 1024
    timeout_seconds: Annotated[int, Field(ge=1, le=900)] = 60
    role_arn: str = ""
    bundle: str = "build/mastmirror-sep.zip"
    async_retries: Annotated[int, Field(ge=0, le=2)] = 0
    max_event_age_seconds: Annotated[int, Field(ge=60, le=21600)] = 21600
    log_retention_days: int = 30
    # Added for `lambda deploy` and the daemon's invocations (daemon.lambda_invoke).
    reserved_concurrency: Annotated[int, Field(ge=0, le=100000)] = 0
    code_s3: Annotated[str, Field(pattern=rf"^$|^s3://{BUCKET_NAME}(/.*)?$")] = ""
    invoke_threads: Annotated[int, Field(ge=1, le=1024)] = 32
    invoke_processes: Annotated[int, Field(ge=1, le=64)] = 2
    invoke_retry_mode: Literal["standard", "adaptive"] = "standard"
    invoke_max_attempts: Annotated[int, Field(ge=1, le=20)] = 6


    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError("must be a retention CloudWatch Logs offers: "
                             + ", ".join(str(d) for d in sorted(LOG_RETENTION_DAYS)))
        return value


class MetricsSection(_Section):
    """``[metrics]``: the Prometheus endpoint."""

    # "host:port" to serve /metrics on (e.g. "127.0.0.1:9464"; port 0 picks a free one and
    # the log says which); "" = no endpoint.
    listen: Annotated[str, Field(pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$")] = ""

    @field_validator("listen")
    @classmethod
    def _port(cls, value: str) -> str:
        if value and int(value.rpartition(":")[2]) > 65535:
            raise ValueError("the port must be 0-65535")
        return value


class StateSection(_Section):
    """``[state]``: the SQLite database."""

    path: Annotated[str, Field(min_length=1)] = DEFAULT_STATE_PATH


class ScheduleSection(_Section):
    """``[schedule]``: how often each job runs."""

    poll_minutes: Annotated[float, Field(gt=0, le=10080)] = 60.0
    reconcile_seconds: Annotated[float, Field(gt=0, le=86400)] = 30.0
    dispatch_seconds: Annotated[float, Field(gt=0, le=86400)] = 5.0
    resweep_hours: Annotated[float, Field(ge=0, le=87600)] = 24.0  # 0: never by itself
    refresh_per_hour: Annotated[int, Field(ge=0, le=10_000_000)] = 900


class LogSection(_Section):
    """``[log]``: verbosity and rendering."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section):
    """The whole validated configuration. Paths are absolute (resolved against the file)."""

    mast: MastSection = MastSection()
    archive: ArchiveSection = ArchiveSection()
    output: OutputSection = OutputSection()
    index: IndexSection = IndexSection()
    executor: ExecutorSection = ExecutorSection()
    lambda_: LambdaSection = Field(default=LambdaSection(), alias="lambda")
    state: StateSection = StateSection()  # read alone by daemon.configfile.state_path
    schedule: ScheduleSection = ScheduleSection()
    log: LogSection = LogSection()
    metrics: MetricsSection = MetricsSection()
    sep: dict[str, Any] = Field(default_factory=dict)
    source: str = "<defaults>"

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    @property
    def state_path(self) -> Path:
        """The database file."""
        return Path(self.state.path)

    @property
    def output_url(self) -> str:
        """The output store as a URL (``file:///abs/dir`` or ``s3://bucket/prefix``)."""
        return self.output.url

    @property
    def index_url(self) -> str | None:
        """The detection index as a URL, or None when ``[index] url = ""`` turns it off."""
        return self.index.url or None


def handler_env(config: Config) -> dict[str, str]:
    """The environment the extraction function needs: its allow-lists and whether it reads
    the archive unsigned (the local pool's workers get it, and ``lambda deploy`` sets it on
    the function)."""
    return function_env(config.archive.bucket, config.output_url,
                        anonymous=config.archive.anonymous)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve one config file; raise ConfigError naming file and key."""
    return config_from_dict(read_toml(path), source=Path(path))


def config_from_dict(raw: Mapping[str, Any], *, source: str | os.PathLike[str] = "<defaults>",
                     base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths resolve against ``source``'s folder."""
    src = Path(source)
    base = base_dir or (src.resolve().parent if str(source) != "<defaults>" else Path.cwd())
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section [{unknown[0]}]; expected one of "
            + ", ".join(f"[{s}]" for s in _SECTIONS))
    for name, value in raw.items():
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table (a [{name}] section), "
                              f"not {type(value).__name__}")
    try:
        config = Config.model_validate({**raw, "source": str(source)})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    sep_params = _validate_sep(raw.get("sep", {}), source)
    return config.model_copy(update={
        "state": config.state.model_copy(update={"path": str(resolve(config.state.path, base))}),
        "output": config.output.model_copy(update={"url": _store_url(config.output.url, base,
                                                                       source, "output")}),
        "index": config.index.model_copy(update={"url": config.index.url and _store_url(
            config.index.url, base, source, "index")}),
        "lambda_": config.lambda_.model_copy(
            update={"bundle": str(resolve(config.lambda_.bundle, base))}),
        "sep": sep_params,
    })


_SECTIONS = ("mast", "archive", "output", "index", "executor", "lambda", "state", "schedule",
             "log", "metrics", "sep")


def _store_url(value: str, base: Path, source: str | os.PathLike[str], section: str) -> str:
    parts = urlsplit(value)
    where = f"{source}: [{section}] url = {value!r}"
    if parts.scheme == "s3":
        if not BUCKET_RE.match(parts.netloc):
            raise ConfigError(f"{where}: the bucket {parts.netloc!r} is not a valid S3 "
                              "bucket name")
        prefix = parts.path.strip("/")
        if ".." in prefix.split("/"):
            raise ConfigError(f"{where}: '..' is not allowed")
        return f"s3://{parts.netloc}/{prefix}".rstrip("/")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not Path(parts.path).is_absolute():
            raise ConfigError(f"{where}: a file URL must be file:///absolute/dir")
        return "file://" + str(Path(parts.path).resolve())
    if parts.scheme:
        raise ConfigError(f"{where}: expected a directory, file:///abs/dir or "
                          "s3://bucket/prefix")
    return "file://" + str(resolve(value, base))


def _validate_sep(raw: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Check ``[sep]`` against the extraction's own parameter schema (one source of truth)."""
    from lambda_sep.params import SepParams  # the function owns its parameters

    try:
        return SepParams.from_dict(dict(raw)).to_dict()
    except ValueError as exc:
        raise ConfigError(f"{source}: [sep] {exc}") from None


def _describe(exc: ValidationError, source: str | os.PathLike[str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        section = loc[0] if loc else "?"
        key = ".".join(loc[1:])
        where = f"[{section}] {key}" if key else f"[{section}]"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(section)
            lines.append(f"{source}: {where}: unknown key; expected one of: {allowed}")
            continue
        got = err.get("input")
        lines.append(f"{source}: {where} = {got!r}: {_expected(err)}")
    return "\n".join(lines)


def _allowed_keys(section: str) -> str:
    model = Config.model_fields.get("lambda_" if section == "lambda" else section)
    annotation = getattr(model, "annotation", None)
    fields = getattr(annotation, "model_fields", {})
    return ", ".join(fields) or "(none)"


def _expected(err: Mapping[str, Any]) -> str:
    """Turn pydantic's wording into 'what is expected'."""
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        return msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:]
