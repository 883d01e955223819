"""The Lambda entry point: ``lambda_sep.handler.handler(event, context)``.

Validate the event, read the exposure with ranged reads, run SEP, write the catalog
atomically at ``<output>/K[:-5] + "_sep.fits"`` with its summary as S3 metadata, and delete a
stale error marker; on any failure write ``<output>/K[:-5] + "_sep.error.json"`` instead and
no catalog. An input that is not an imaging exposure this function catalogues
(``lambda_sep.modes``) is *skipped*: a marker ``K[:-5] + "_sep.skipped.json"`` with the
reason, no catalog, no pixels read. The same function runs in the daemon's local process
pool.

An event may carry several exposures (``lambda_sep.contract``). They are worked through in
order, and the waiting on storage is taken off the critical path: one thread reads the next
exposure while the current one is extracted, another writes each result while the next is
extracted, so an invocation is billed for little more than its computing. Each exposure gets
its own catalog or marker; one that fails costs only itself. An invocation about to run out
of time leaves a retryable marker for the exposures it will not reach.

Round trips per exposure: the first ranged GET also tells the object's size and ETag (no
HEAD), two more ranged GETs finish SCI, ERR and DQ, one PUT writes the result; a stale error
marker can only exist after an earlier dispatch, so its DELETE is sent from the second
attempt on only.

Everything is imported at module level so a warm Lambda container (or a pool worker) pays
the imports once; the S3 client is cached per process in ``lambda_sep.storage``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sep

from lambda_sep import __version__, contract
from lambda_sep.catalog import build_catalog
from lambda_sep.contract import BATCH, BatchError, exposures
from lambda_sep.event import Event, EventError, parse_event
from lambda_sep.extract import extract
from lambda_sep.fitsread import FIRST_READ, Image, ImageError, ReadStopped, read_image
from lambda_sep.modes import header_refusal, product_refusal
from lambda_sep.storage import ObjectInfo, StorageError, open_store

__all__ = ["InputMissing", "OutOfTime", "handler", "peak_rss_mb"]


class InputMissing(ImageError):
    """The input object does not exist."""


class OutOfTime(Exception):
    """The invocation would reach its time limit before this exposure finished."""


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
    if isinstance(exc, InputMissing | OutOfTime):
        return True
    if isinstance(exc, StorageError):
        return exc.retryable
    return isinstance(exc, ConnectionError | TimeoutError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImageError | OutOfTime):
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
    """A refused event: its marker where one may be written, and the failed summary."""
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
        _drop_stale_marker(ev)
    except (StorageError, ValueError) as exc:
        summary["reason"] += f"; stale error marker not deleted: {exc}"
    return summary


def _drop_stale_marker(ev: Event) -> None:
    """An earlier dispatch's error marker is stale once this one has a result. Only an
    earlier dispatch of the same dataset writes one, so the first has none to delete."""
    if ev.attempt > 1:
        open_store(ev.output).delete(ev.error_key)


def _read(ev: Event) -> tuple[ObjectInfo, Image | ReadStopped]:
    """The input's size, ETag and decoded SCI/ERR/DQ, over ranged reads only; or, when its
    headers say it is not an imaging exposure, why (no pixels read)."""
    inp = open_store(ev.bucket, anonymous=ev.anonymous)
    got = inp.read_head(ev.key, FIRST_READ)
    if got is None:
        raise InputMissing(f"input object not found: {inp.url}/{ev.key}")
    head, info = got
    try:
        return info, read_image(inp, ev.key, info.size, head=head, etag=info.etag or None,
                                inspect=header_refusal)
    except ReadStopped as stop:
        return info, stop


@dataclass
class _Outcome:
    """One exposure after extraction: a catalog to write, a reason to skip it, or the
    exception that stopped it."""

    ev: Event
    started: float
    bytes_read: int = 0
    catalog: bytes | None = None
    metadata: dict[str, str] | None = None
    sources: int = 0
    skip: str | None = None
    etag: str | None = None
    error: Exception | None = None


def _extract(ev: Event, read: Future[tuple[ObjectInfo, Image | ReadStopped]] | None,
             started: float) -> _Outcome:
    """Wait for the exposure's bytes, extract, build the catalog: the computing part.
    ``read`` is None for an input its key already refuses."""
    out = _Outcome(ev, started)
    if read is None:
        out.skip = product_refusal(ev.key)
        return out
    try:
        info, image = read.result()  # re-raises what stopped the read
        out.etag = info.etag
        if isinstance(image, ReadStopped):  # the headers say: not an imaging exposure
            out.skip, out.bytes_read = image.reason, image.bytes_read
            return out
        out.bytes_read = image.bytes_read
        extraction = extract(image, ev.params)
        duration = time.perf_counter() - started
        rss = peak_rss_mb()
        out.catalog = build_catalog(
            extraction, image, ev.params, obs_id=ev.obs_id, bucket=ev.bucket_name,
            key=ev.key, etag=info.etag, attempt=ev.attempt, processing_time=duration,
            peak_rss_mb=rss, date=_now(),
        )
        out.sources = extraction.count
        out.metadata = {
            contract.META_OBS_ID: ev.obs_id,
            contract.META_ATTEMPT: str(ev.attempt),
            contract.META_SOURCES: str(extraction.count),
            contract.META_DURATION_MS: str(round(duration * 1000)),
            contract.META_PEAK_RSS_MB: f"{rss:.1f}",
            contract.META_BYTES_READ: str(out.bytes_read),
            contract.META_INPUT_ETAG: info.etag,
            contract.META_INPUT_SIZE: str(info.size),
            contract.META_SEP_VERSION: sep.__version__,
            contract.META_MASTMIRROR_VERSION: __version__,
        }
    except Exception as exc:
        out.error = exc
    return out


def _failed(out: _Outcome, exc: BaseException) -> dict[str, Any]:
    """The error marker for an exposure that failed, and its summary."""
    ev = out.ev
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
    return _summary(ev.obs_id, "failed", ev.key, attempt=ev.attempt, started=out.started,
                    bytes_read=out.bytes_read, reason=reason, retryable=retryable,
                    output_key=None if problem else ev.error_key)


def _write(out: _Outcome) -> dict[str, Any]:
    """Store one exposure's result (the catalog, or a marker) and return its summary."""
    ev = out.ev
    if out.skip is not None:
        return _skip(ev, out.skip, out.etag, out.started, out.bytes_read)
    if out.error is not None or out.catalog is None:
        return _failed(out, out.error or RuntimeError("no catalog was made"))
    try:
        open_store(ev.output).put_atomic(ev.catalog_key, out.catalog,
                                         content_type="application/fits",
                                         metadata=out.metadata)
    except Exception as exc:
        return _failed(out, exc)
    summary = _summary(ev.obs_id, "done", ev.key, attempt=ev.attempt, started=out.started,
                       sources=out.sources, bytes_read=out.bytes_read,
                       output_key=ev.catalog_key)
    try:
        _drop_stale_marker(ev)
    except (StorageError, ValueError) as exc:
        summary["reason"] = f"catalog written; stale error marker not deleted: {exc}"
    return summary


def _time_left(context: Any) -> float | None:
    """Seconds until the invocation's time limit, if the context knows it."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining() / 1000.0 if callable(remaining) else None


def _logged(summary: dict[str, Any], context: Any) -> dict[str, Any]:
    # The daemon's log schema (event, level, timestamp), so local-pool lines read alike.
    _log({"event": "sep " + summary["status"], "timestamp": _now(),
          "level": "error" if summary["status"] == "failed" else "info",
          "request_id": getattr(context, "aws_request_id", None),
          "mastmirror_version": __version__, **summary})
    return summary


def _work(items: list[Any], context: Any, started: float) -> list[dict[str, Any]]:
    """Every exposure of the event, in order, with reads ahead and writes behind."""
    events: dict[int, Event] = {}
    refused: dict[int, EventError] = {}
    for i, item in enumerate(items):
        try:
            events[i] = parse_event(item)
        except EventError as exc:
            refused[i] = exc
    # An input its key already refuses is skipped without reading anything.
    to_read = [i for i, ev in events.items() if product_refusal(ev.key) is None]
    readable = set(to_read)
    reads: dict[int, Future[tuple[ObjectInfo, Image | ReadStopped]]] = {}
    results: list[Future[dict[str, Any]]] = []
    slowest = 0.0  # the longest exposure so far, to judge whether one more fits
    out_of_time: str | None = None
    # One thread reads ahead, one writes behind: each keeps its own order, and a slow write
    # never holds up the next read.
    with ThreadPoolExecutor(1, "sep-read") as reader, ThreadPoolExecutor(1, "sep-write") as writer:
        order = iter(to_read)
        first = next(order, None)
        if first is not None:
            reads[first] = reader.submit(_read, events[first])
        clock = started
        for i in range(len(items)):
            if i in refused:
                results.append(writer.submit(_refuse, refused[i], clock))
                continue
            ev = events[i]
            if i not in readable:  # its key refuses it: a skip marker, nothing read
                results.append(writer.submit(_write, _extract(ev, None, clock)))
                continue
            left = _time_left(context)
            if i != first and left is not None and left < 2 * slowest + 1.0:
                out_of_time = out_of_time or (
                    f"not started: the invocation had {left:.1f} s left and the slowest "
                    f"exposure of its batch took {slowest:.1f} s")
            if out_of_time:
                results.append(writer.submit(_write, _Outcome(ev, clock,
                                                              error=OutOfTime(out_of_time))))
                continue
            following = next(order, None)
            if following is not None:  # read it while this one is extracted
                reads[following] = reader.submit(_read, events[following])
            out = _extract(ev, reads.pop(i), clock)
            now = time.perf_counter()
            slowest = max(slowest, now - clock)
            clock = now
            results.append(writer.submit(_write, out))
        return [_logged(r.result(), context) for r in results]


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Process one event (see lambda_sep.event and lambda_sep.contract); return its summary.

    Never raises for a bad event or a bad image: the result is in the output store (catalog,
    error marker or skip marker) and in the returned summary, whose ``status`` is "done",
    "failed" or "skipped". A batch event returns ``{"batch": n, "results": [one summary per
    exposure, in order], "duration_s", "peak_rss_mb"}``.
    """
    started = time.perf_counter()
    try:
        items = exposures(event)
    except BatchError as exc:
        return _logged(_summary(None, "failed", None, attempt=None, started=started,
                                reason=f"refused: {exc}"), context)
    results = _work(items, context, started)
    if not (isinstance(event, dict) and BATCH in event):
        return results[0]
    return {"batch": len(results), "results": results,
            "duration_s": round(time.perf_counter() - started, 4),
            "peak_rss_mb": round(peak_rss_mb(), 1)}
