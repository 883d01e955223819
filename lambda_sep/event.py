"""Validation of the handler's event (DESIGN.md "Event"; ARCHITECTURE.md "Event").

```
{"obs_id": "icxe15wwq",
 "input": {"bucket": "stpubdata", "key": "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"},
 "output": "s3://bucket/prefix" | "file:///abs/dir",
 "sep": {...}, "attempt": 1}
```

The allow-lists come from the function's environment (names in ``lambda_sep.contract``):
``MASTMIRROR_ALLOWED_BUCKETS`` (comma-separated bucket names or ``file:///`` directories;
default ``stpubdata``) and ``MASTMIRROR_ALLOWED_OUTPUTS`` (comma-separated URL prefixes;
empty refuses everything), and whether to read the input unsigned
(``MASTMIRROR_ARCHIVE_ANONYMOUS``, default yes). The key rule and the output keys are the
contract's too.

A refused event raises :class:`EventError`. Its ``marker`` says where an error marker may be
written: only when the output is allowed and the input key has the archive's exact shape,
so a hostile event can never steer a write outside an allowed output prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lambda_sep.contract import (
    DEFAULT_ALLOWED_BUCKETS,
    ENV_ALLOWED_BUCKETS,
    ENV_ALLOWED_OUTPUTS,
    OBS_ID_RE,
    archive_anonymous,
    catalog_key,
    error_key,
    key_dataset,
    skipped_key,
)
from lambda_sep.params import SepParams
from lambda_sep.storage import open_store, validate_key

__all__ = ["Event", "EventError", "allowed_buckets", "allowed_outputs", "parse_event"]

MAX_URL_LENGTH = 1024


class EventError(ValueError):
    """The event is refused. ``marker`` is (output URL, marker key) when a marker may be
    written, else None; ``obs_id``, ``key`` and ``attempt`` are whatever could be trusted."""

    def __init__(self, reason: str, *, marker: tuple[str, str] | None = None,
                 obs_id: str | None = None, key: str | None = None,
                 attempt: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.marker = marker
        self.obs_id = obs_id
        self.key = key
        self.attempt = attempt


@dataclass(frozen=True)
class Event:
    """A validated event."""

    obs_id: str
    bucket: str  # normalised store URL of the input ("s3://stpubdata" or "file:///...")
    bucket_name: str  # as given in the event (provenance)
    key: str
    output: str  # normalised output store URL
    params: SepParams
    attempt: int
    anonymous: bool = True  # read the input unsigned (the function's environment says)

    @property
    def catalog_key(self) -> str:
        """Output key of the catalog."""
        return catalog_key(self.key)

    @property
    def error_key(self) -> str:
        """Output key of the error marker."""
        return error_key(self.key)

    @property
    def skip_key(self) -> str:
        """Output key of the skip marker."""
        return skipped_key(self.key)


def _split_env(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _normalise(url: str) -> str | None:
    try:
        return open_store(url).url
    except ValueError:
        return None


def allowed_buckets(env: Mapping[str, str] | None = None) -> list[str]:
    """Normalised input store URLs from ``MASTMIRROR_ALLOWED_BUCKETS`` (default stpubdata)."""
    env = os.environ if env is None else env
    raw = env.get(ENV_ALLOWED_BUCKETS)
    entries = _split_env(DEFAULT_ALLOWED_BUCKETS if raw is None else raw)
    return [n for n in (_normalise(e) for e in entries) if n]


def allowed_outputs(env: Mapping[str, str] | None = None) -> list[str]:
    """Normalised output URL prefixes from ``MASTMIRROR_ALLOWED_OUTPUTS`` (default none)."""
    env = os.environ if env is None else env
    entries = _split_env(env.get(ENV_ALLOWED_OUTPUTS))
    return [n for n in (_normalise(e) for e in entries) if n]


def _under(url: str, prefix: str) -> bool:
    # Prefix on path-segment boundaries: s3://b/out allows s3://b/out/x, not s3://b/outside.
    return url == prefix or url.startswith(prefix.rstrip("/") + "/")


def _printable(s: str) -> bool:
    return all(" " <= ch <= "~" for ch in s)


def _check_output(output: Any, env: Mapping[str, str]) -> str:
    if not isinstance(output, str) or not output:
        raise ValueError("output must be a store URL string")
    if len(output) > MAX_URL_LENGTH or not _printable(output):
        raise ValueError("output URL is too long or not printable ASCII")
    norm = _normalise(output)
    if norm is None:
        raise ValueError(f"output {output!r} is not an s3:// or file:/// URL")
    allowed = allowed_outputs(env)
    if not any(_under(norm, a) for a in allowed):
        raise ValueError(f"output {norm!r} is not under an allowed output prefix "
                         f"({ENV_ALLOWED_OUTPUTS}={','.join(allowed) or '(empty)'})")
    return norm


def _check_key(key: Any) -> tuple[str, str]:
    """(key, the dataset it names), or ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError("input.key must be a non-empty string")
    if len(key) > MAX_URL_LENGTH:
        raise ValueError(f"input.key is longer than {MAX_URL_LENGTH} characters")
    validate_key(key)  # path tricks, NUL, backslash, non-ASCII
    try:
        return key, key_dataset(key)
    except ValueError as exc:
        raise ValueError(f"input.key {exc}") from None


def parse_event(event: Any, env: Mapping[str, str] | None = None) -> Event:
    """Validate ``event`` against the contract and the allow-lists; raise EventError."""
    env = os.environ if env is None else env
    if not isinstance(event, dict):
        raise EventError(f"event must be a JSON object, not {type(event).__name__}")
    raw_obs = event.get("obs_id")
    obs_id = raw_obs if isinstance(raw_obs, str) and OBS_ID_RE.match(raw_obs) else None
    raw_attempt = event.get("attempt")
    attempt = (raw_attempt if isinstance(raw_attempt, int) and not isinstance(raw_attempt, bool)
               and raw_attempt >= 1 else None)
    inp = event.get("input")
    raw_key = inp.get("key") if isinstance(inp, dict) else None
    safe_key = raw_key if isinstance(raw_key, str) and len(raw_key) <= MAX_URL_LENGTH else None

    # 1. Where could a marker go? Only an allowed output and an archive-shaped key qualify.
    output = key = key_obs = None
    output_problem = key_problem = None
    try:
        output = _check_output(event.get("output"), env)
    except ValueError as exc:
        output_problem = str(exc)
    try:
        key, key_obs = _check_key(raw_key)
    except ValueError as exc:
        key_problem = str(exc)
    marker = (output, error_key(key)) if (output and key) else None

    # What the refusal may report: a printable key, the dataset the key names.
    trusted_obs = obs_id or key_obs
    trusted_key = key or (safe_key if safe_key and _printable(safe_key) else None)

    def refuse(reason: str) -> EventError:
        return EventError(reason, marker=marker, obs_id=trusted_obs, key=trusted_key,
                          attempt=attempt)

    if output is None:
        raise refuse(output_problem or "output is missing")
    if not isinstance(inp, dict):
        raise refuse("input must be an object with bucket and key")
    if key is None or key_obs is None:
        raise refuse(key_problem or "input.key is missing")
    if not isinstance(raw_obs, str) or not OBS_ID_RE.match(raw_obs):
        raise refuse(f"obs_id {raw_obs!r} does not match {OBS_ID_RE.pattern}")
    if raw_obs != key_obs:
        raise refuse(f"obs_id {raw_obs!r} does not match the input key's dataset "
                     f"{key_obs!r}")
    if attempt is None:
        raise refuse(f"attempt {raw_attempt!r} must be an integer >= 1")

    bucket = inp.get("bucket")
    if not isinstance(bucket, str) or not bucket or len(bucket) > MAX_URL_LENGTH \
            or not _printable(bucket):
        raise refuse("input.bucket must be a bucket name or file:/// URL")
    bucket_url = _normalise(bucket)
    allowed = allowed_buckets(env)
    if bucket_url is None or bucket_url not in allowed:
        raise refuse(f"input bucket {bucket!r} is not allowed "
                     f"({ENV_ALLOWED_BUCKETS}={','.join(allowed) or '(empty)'})")
    try:
        params = SepParams.from_dict(event.get("sep"))
    except ValueError as exc:
        raise refuse(f"sep: {exc}") from None
    return Event(obs_id=raw_obs, bucket=bucket_url, bucket_name=bucket, key=key,
                 output=output, params=params, attempt=attempt,
                 anonymous=archive_anonymous(env))
