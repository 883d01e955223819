"""The Lambda entry point: ``lambda_sep.handler.handler(event, context)``.

Validate the event, read the exposure with ranged reads, run SEP, write the catalog
atomically at ``<output>/K[:-5] + "_sep.fits"`` with its summary as S3 metadata, and delete a
stale error marker; on any failure write ``<output>/K[:-5] + "_sep.error.json"`` instead and
no catalog. An input that is not an imaging exposure this function catalogues
(``lambda_sep.modes``) is *skipped*: a marker ``K[:-5] + "_sep.skipped.json"`` with the
reason, no catalog, no pixels read. The same function runs in the daemon's local process
pool.

Everything is imported at module level so a warm Lambda container (or a pool worker) pays
the imports once; the S3 client is cached per process in ``lambda_sep.storage``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import UTC, datetime
from typing import Any

import sep

from lambda_sep import __version__, contract
from lambda_sep.catalog import build_catalog
from lambda_sep.event import Event, EventError, parse_event
from lambda_sep.extract import extract
from lambda_sep.fitsread import ImageError, ReadStopped, read_image
from lambda_sep.modes import header_refusal, product_refusal
from lambda_sep.storage import StorageError, open_store

__all__ = ["InputMissing", "handler", "peak_rss_mb"]


class InputMissing(ImageError):
    """The input object does not exist."""


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Linux's ``VmHWM`` first: ``getrusage``'s ``ru_maxrss`` survives fork+exec, so a pool
    worker started by a big daemon would report the daemon's peak. ``getrusage`` otherwise
    (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _log(record: dict[str, Any]) -> None:
    # One JSON line per invocation on stdout: CloudWatch Logs under Lambda, the daemon's
    # journal under the local pool. One write() per line: with PYTHONUNBUFFERED (as under
    # systemd) print() writes the text and the newline separately, and lines of pool
    # workers sharing one stream would interleave.
    sys.stdout.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _retryable(exc: BaseException) -> bool:
    """Transient trouble only: throttling, 5xx, timeouts, dropped connections, and an input
    not in the bucket yet (MAST can list a release before the bucket has its file)."""
    if isinstance(exc, InputMissing):
        return True
    if isinstance(exc, StorageError):
        return exc.retryable
    return isinstance(exc, ConnectionError | TimeoutError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, StorageError):
        return f"storage error: {exc}"
    if isinstance(exc, MemoryError):
        return "out of memory while processing the image"
    return f"unexpected {type(exc).__name__}: {exc}"


def _write_marker(output: str, key: str, body: dict[str, Any]) -> str | None:
    """Write a marker (error or skip); return None on success, else why it could not be
    written."""
    try:
        open_store(output).put_atomic(
            key, json.dumps(body, sort_keys=True, indent=1).encode(),
            content_type="application/json",
        )
    except (StorageError, ValueError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _summary(obs_id: str | None, status: str, key: str | None, *, attempt: int | None,
             started: float, sources: int = 0, bytes_read: int = 0, reason: str | None = None,
             output_key: str | None = None, retryable: bool = False) -> dict[str, Any]:
    return {
        "obs_id": obs_id,
        "status": status,
        "key": key,
        "sources": sources,
        "duration_s": round(time.perf_counter() - started, 4),
        "bytes_read": bytes_read,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "reason": reason,
        "attempt": attempt,
        "output_key": output_key,
        "retryable": retryable,
    }


def _refuse(exc: EventError, started: float) -> dict[str, Any]:
    reason = f"refused: {exc.reason}"
    output_key = None
    if exc.marker is not None:
        output, marker_key = exc.marker
        problem = _write_marker(output, marker_key, {
            "obs_id": exc.obs_id, "key": exc.key, "attempt": exc.attempt, "reason": reason,
            "exception": "EventError", "retryable": False, "at": _now(),
            "mastmirror_version": __version__, "missing": False,
        })
        if problem is None:
            output_key = marker_key
        else:
            reason += f" (error marker not written: {problem})"
    return _summary(exc.obs_id, "failed", exc.key, attempt=exc.attempt, started=started,
                    reason=reason, output_key=output_key)


def _skip(ev: Event, reason: str, etag: str | None, started: float, bytes_read: int
          ) -> dict[str, Any]:
    """The input is not catalogued: the skip marker, no catalog, no stale error marker."""
    problem = _write_marker(ev.output, ev.skip_key, {
        "obs_id": ev.obs_id, "key": ev.key, "attempt": ev.attempt, "reason": reason,
        "at": _now(), "mastmirror_version": __version__, "input_etag": etag,
    })
    summary = _summary(ev.obs_id, "skipped", ev.key, attempt=ev.attempt, started=started,
                       bytes_read=bytes_read, reason=reason,
                       output_key=None if problem else ev.skip_key)
    if problem is not None:
        summary["reason"] += f" (skip marker not written: {problem})"
        return summary
    try:
        open_store(ev.output).delete(ev.error_key)  # an earlier attempt's failure is stale
    except (StorageError, ValueError) as exc:
        summary["reason"] += f"; stale error marker not deleted: {exc}"
    return summary


def _process(ev: Event, started: float) -> dict[str, Any]:
    refusal = product_refusal(ev.key)  # from the key alone: nothing is read
    if refusal is not None:
        return _skip(ev, refusal, None, started, 0)
    bytes_read = 0
    try:
        inp = open_store(ev.bucket)
        info = inp.head(ev.key)
        if info is None:
            raise InputMissing(f"input object not found: {inp.url}/{ev.key}")
        try:
            image = read_image(inp, ev.key, info.size, inspect=header_refusal)
        except ReadStopped as stop:  # the headers say: not an imaging exposure
            return _skip(ev, stop.reason, info.etag, started, stop.bytes_read)
        bytes_read = image.bytes_read
        extraction = extract(image, ev.params)
        duration = time.perf_counter() - started
        rss = peak_rss_mb()
        data = build_catalog(
            extraction, image, ev.params, obs_id=ev.obs_id, bucket=ev.bucket_name,
            key=ev.key, etag=info.etag, attempt=ev.attempt, processing_time=duration,
            peak_rss_mb=rss, date=_now(),
        )
        out = open_store(ev.output)
        out.put_atomic(ev.catalog_key, data, content_type="application/fits", metadata={
            contract.META_OBS_ID: ev.obs_id,
            contract.META_ATTEMPT: str(ev.attempt),
            contract.META_SOURCES: str(extraction.count),
            contract.META_DURATION_MS: str(round(duration * 1000)),
            contract.META_PEAK_RSS_MB: f"{rss:.1f}",
            contract.META_BYTES_READ: str(bytes_read),
            contract.META_INPUT_ETAG: info.etag,
            contract.META_INPUT_SIZE: str(info.size),
            contract.META_SEP_VERSION: sep.__version__,
            contract.META_MASTMIRROR_VERSION: __version__,
        })
    except Exception as exc:
        reason = _reason(exc)
        retryable = _retryable(exc)
        problem = _write_marker(ev.output, ev.error_key, {
            "obs_id": ev.obs_id, "key": ev.key, "attempt": ev.attempt, "reason": reason,
            "exception": type(exc).__name__, "retryable": retryable, "at": _now(),
            "mastmirror_version": __version__,
            # Not in the archive bucket (yet): the daemon holds the dataset, not an attempt.
            "missing": isinstance(exc, InputMissing),
        })
        if problem is not None:
            reason += f" (error marker not written: {problem})"
        return _summary(ev.obs_id, "failed", ev.key, attempt=ev.attempt, started=started,
                        bytes_read=bytes_read, reason=reason, retryable=retryable,
                        output_key=None if problem else ev.error_key)
    summary = _summary(ev.obs_id, "done", ev.key, attempt=ev.attempt, started=started,
                       sources=extraction.count, bytes_read=bytes_read,
                       output_key=ev.catalog_key)
    try:
        out.delete(ev.error_key)  # a marker from an earlier attempt is stale now
    except (StorageError, ValueError) as exc:
        summary["reason"] = f"catalog written; stale error marker not deleted: {exc}"
    return summary


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Process one event (see lambda_sep.event); return the summary dict.

    Never raises for a bad event or a bad image: the result is in the output store (catalog,
    error marker or skip marker) and in the returned summary, whose ``status`` is "done",
    "failed" or "skipped".
    """
    started = time.perf_counter()
    try:
        ev = parse_event(event)
    except EventError as exc:
        summary = _refuse(exc, started)
    else:
        summary = _process(ev, started)
    # The daemon's log schema (event, level, timestamp), so local-pool lines read alike.
    record = {"event": "sep " + summary["status"], "timestamp": _now(),
              "level": "error" if summary["status"] == "failed" else "info",
              "request_id": getattr(context, "aws_request_id", None),
              "mastmirror_version": __version__, **summary}
    _log(record)
    return summary
