"""Modified Julian Dates: MAST's time axis (``t_obs_release``) and the discovery cursor's."""

from __future__ import annotations

import datetime as dt

_MJD_UNIX_EPOCH = 40587.0  # MJD of 1970-01-01T00:00:00 UTC


def mjd(when: float | dt.date | dt.datetime) -> float:
    """MJD of a Unix time, a date (at 00:00 UTC) or a datetime (naive means UTC)."""
    if isinstance(when, dt.datetime):
        when = when.replace(tzinfo=when.tzinfo or dt.UTC).timestamp()
    elif isinstance(when, dt.date):
        when = dt.datetime(when.year, when.month, when.day, tzinfo=dt.UTC).timestamp()
    return float(when) / 86400.0 + _MJD_UNIX_EPOCH


def mjd_to_iso(value: float) -> str:
    """ISO 8601 UTC, to the second, of an MJD."""
    unix = (value - _MJD_UNIX_EPOCH) * 86400.0
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")
