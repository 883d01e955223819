"""``mastmirror status``: what a person wants at a glance, and the same as JSON for scripts."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from daemon.lock import InstanceLock
from daemon.mjd import mjd_to_iso
from state.store import Snapshot, StateStore

if TYPE_CHECKING:
    from rich.console import Console

    from daemon.config import Config


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")


def _poll(poll: dict[str, Any] | None) -> dict[str, Any] | None:
    if poll is None:
        return None
    return {
        "at": _iso(poll["finished_at"] or poll["started_at"]),
        "ok": poll["ok"],
        "new": poll["new"],
        "kind": poll["kind"],
        "error": poll["error"],
        "window": [mjd_to_iso(poll["window_lo_mjd"]),
                   mjd_to_iso(poll["window_hi_mjd"]) if poll["window_hi_mjd"] else None],
        "windows": poll["windows"],
        "observations": poll["observations"],
        "products": poll["products"],
        "seen": poll["seen"],
        "rejected": poll["rejected"],
        # observations left out by [mast] exclude_filters (grisms)
        "excluded": poll["excluded"],
    }


def to_dict(snap: Snapshot, *, daemon_pid: int | None = None) -> dict[str, Any]:
    """The JSON document of ``status --json`` (a stable shape; fields are only ever added)."""
    last_resweep = _poll(snap.last_resweep)
    if last_resweep is not None and snap.last_resweep is not None:
        # MAST's count of exposures in the range against the database's, after the resweep.
        last_resweep |= {"listed": snap.last_resweep["listed"],
                         "recorded": snap.last_resweep["recorded"]}
    oldest_age = (snap.taken_at - snap.oldest_dispatched_at
                  if snap.oldest_dispatched_at is not None else None)
    return {
        # waiting: new datasets held because their input is not in the archive bucket yet
        # (a subset of new); withdrawn: done datasets whose input left the archive.
        "datasets": {**snap.counts, "waiting": snap.waiting, "withdrawn": snap.withdrawn},
        "last_poll": _poll(snap.last_poll),
        "last_resweep": last_resweep,
        "last_ok_poll_at": _iso(snap.last_ok_poll_at),
        "cursor": mjd_to_iso(snap.cursor_mjd) if snap.cursor_mjd is not None else None,
        "cursor_mjd": snap.cursor_mjd,
        "in_flight": {"count": snap.in_flight,
                      "oldest_age_s": round(oldest_age, 1) if oldest_age is not None else None,
                      "by_executor": snap.by_executor},
        "recent_failures": [{**f, "at": _iso(f["at"])} for f in snap.recent_failures],
        "throughput": {"done_last_hour": snap.done_last_hour,
                       "done_last_day": snap.done_last_day,
                       "per_minute_last_hour": round(snap.done_last_hour / 60.0, 2)},
        "rejected_products": snap.rejected,
        # the same names by reason (HAP products, path tricks...), with a few of each
        "refused": {"total": snap.rejected, "by_reason": snap.refused_by_reason,
                    "examples": snap.refused_examples},
        "daemon": {"running": daemon_pid is not None, "pid": daemon_pid},
        "database": {"path": snap.path, "schema_version": snap.schema_version},
        "at": _iso(snap.taken_at),
    }


def status_document(config: Config) -> dict[str, Any]:
    """The status document of ``config``'s database; FileNotFoundError if there is none."""
    with StateStore(config.state_path, readonly=True) as store:
        snap = store.snapshot()
    return to_dict(snap, daemon_pid=InstanceLock(config.state_path).holder())


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d"


def render(doc: dict[str, Any], console: Console) -> None:
    """Print the status document as a compact terminal report."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    d = doc["datasets"]
    shown = ("new", "waiting", "dispatched", "done", "failed", "skipped", "total")
    counts = Table.grid(padding=(0, 2))
    for _ in shown:
        counts.add_column(justify="right")
    counts.add_row(*(Text(k, style="bold") for k in shown))
    counts.add_row(*(f"{d.get(k, 0):,}" for k in shown))

    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    daemon = doc["daemon"]
    info.add_row("daemon", f"running (pid {daemon['pid']})" if daemon["running"] else
                 "not running")
    poll = doc["last_poll"]
    if poll is None:
        info.add_row("last poll", "never")
    else:
        state = {True: "[green]ok[/]", False: "[red]FAILED[/]", None: "running"}[poll["ok"]]
        line = f"{poll['at']}  {state}  {poll['new']:,} new ({poll['kind']}, " \
               f"{poll['windows']} window(s), {poll['observations']:,} observations)"
        if poll["excluded"]:
            line += f", {poll['excluded']:,} excluded by filter"
        if poll["error"]:
            line += f"\n{poll['error']}"
        info.add_row("last poll", line)
    sweep = doc["last_resweep"]
    if sweep is not None:
        state = {True: "[green]ok[/]", False: "[red]FAILED[/]", None: "running"}[sweep["ok"]]
        lo, hi = (w[:10] if w else "?" for w in sweep["window"])
        line = f"{sweep['at']}  {state}  {lo} to {hi}: {sweep['new']:,} added"
        if sweep["listed"] is not None:
            line += f"; MAST lists {sweep['listed']:,}, the database holds " \
                    f"{sweep['recorded']:,}"
        if sweep["error"]:
            line += f"\n{sweep['error']}"
        info.add_row("last resweep", line)
    info.add_row("cursor", doc["cursor"] or "-")
    fl = doc["in_flight"]
    info.add_row("in flight", f"{fl['count']:,}  (oldest {_age(fl['oldest_age_s'])})")
    tp = doc["throughput"]
    info.add_row("throughput", f"{tp['done_last_hour']:,} done in the last hour, "
                               f"{tp['done_last_day']:,} in the last day")
    if d.get("withdrawn"):
        info.add_row("withdrawn", f"{d['withdrawn']:,} catalogued input(s) gone from the "
                                  "archive (catalogs kept)")
    refused = doc["refused"]
    if refused["total"]:
        lines = [f"{refused['total']:,} product name(s) from MAST:"]
        for reason, n in refused["by_reason"].items():
            names = ", ".join(refused["examples"].get(reason, []))
            lines.append(f"  {n:,} {reason}" + (f" (e.g. {names})" if names else ""))
        info.add_row("refused", "\n".join(lines))
    info.add_row("database", doc["database"]["path"])

    parts: list[Any] = [counts, Text(""), info]
    if doc["recent_failures"]:
        fails = Table(title="recent failures", title_justify="left", box=None, pad_edge=False)
        fails.add_column("obs_id")
        fails.add_column("at")
        fails.add_column("attempts", justify="right")
        fails.add_column("reason", overflow="fold")
        for f in doc["recent_failures"]:
            fails.add_row(f["obs_id"], f["at"] or "-", str(f["attempts"]), f["reason"] or "")
        parts += [Text(""), fails]
    console.print(Group(*parts))
