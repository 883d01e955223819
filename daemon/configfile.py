"""Finding and reading config.toml, standard library only.

``daemon.config`` validates the whole file (pydantic); ``status`` needs only where the state
database is, and must start in a few tens of milliseconds, so it reads that one key here,
checked alone, without importing pydantic.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SEARCH_ENV = "MASTMIRROR_CONFIG"
SYSTEM_PATH = Path("/etc/mastmirror/config.toml")
DEFAULT_STATE_PATH = "mastmirror.db"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why."""


def find_config(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ,
                cwd: Path | None = None) -> Path:
    """Pick the config file: ``--config``, then ./config.toml, $MASTMIRROR_CONFIG, /etc/mastmirror.

    An explicit path that does not exist is an error (it names that path); otherwise the
    first file that exists wins, and none existing is an error listing where it looked.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (given with --config)")
        return path
    candidates = [(cwd or Path.cwd()) / "config.toml"]
    if environ.get(SEARCH_ENV):
        candidates.append(Path(environ[SEARCH_ENV]))
    candidates.append(SYSTEM_PATH)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise ConfigError(f"no config file found (looked for {looked}); pass --config PATH")


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed file; ConfigError naming the file when it cannot be read or parsed."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def resolve(value: str, base: Path) -> Path:
    """A path from the file: ``~`` expanded, relative ones against ``base`` (its folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def state_path(path: str | os.PathLike[str]) -> Path:
    """``[state] path`` of a config file, resolved, the rest of the file left unchecked."""
    raw = read_toml(path)
    section = raw.get("state", {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: [state] must be a table (a [state] section), not "
                          f"{type(section).__name__}")
    value = section.get("path", DEFAULT_STATE_PATH)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: [state] path = {value!r}: expected a non-empty string")
    return resolve(value, Path(path).resolve().parent)
