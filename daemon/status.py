"""``mastmirror status``: what a person wants at a glance, and the same as JSON for scripts."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from daemon.lock import InstanceLock
from daemon.mjd import mjd_to_iso
from daemon.prices import cost_usd
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


def money(dollars: float) -> str:
    """Dollars as a person reads them: cents, or the first digits of a fraction of one."""
    return f"${dollars:,.2f}" if dollars >= 0.01 or dollars == 0 else f"${dollars:.2g}"


def _freshness(snap: Snapshot) -> dict[str, Any]:
    """The refresh walk, the archive notifications and what they found (meta counters)."""
    meta = snap.freshness

    def num(key: str) -> int:
        return round(float(meta.get(key, 0)))

    def at(key: str) -> str | None:
        return _iso(float(meta[key])) if key in meta else None

    def tally(prefix: str) -> dict[str, Any]:
        kinds = ("checked", "changed", "withdrawn", "unknown", "heads", "lists")
        out: dict[str, Any] = {k: num(f"{prefix}_{k}") for k in kinds}
        out["cost_usd"] = round(cost_usd(out["heads"], out["lists"]), 6)
        return out

    done = snap.counts.get("done", 0)
    pass_done = num("refresh_pass_checked")
    return {
        "refresh": {"position": meta.get("refresh_after"), "pass": num("refresh_pass"),
                    "pass_checked": pass_done,
                    "pass_fraction": round(min(pass_done / done, 1.0), 4) if done else None,
                    "pass_started_at": at("refresh_pass_started_at"),
                    "last_at": at("refresh_at"), **tally("refresh")},
        "notifications": {"received": num("notify_received"), "dropped": num("notify_dropped"),
                          "ignored": num("notify_ignored"), "recorded": num("notify_recorded"),
                          "last_at": at("notify_at"), **tally("notify")},
        # catalogs made again because their input changed (generation 2 and later)
        "recatalogued": num("recatalogued"),
        "withdrawn_recent": [{**w, "at": _iso(w["at"])} for w in snap.withdrawn_recent],
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
        "freshness": _freshness(snap),
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
    fresh = doc["freshness"]
    r = fresh["refresh"]
    if r["pass"] or r["checked"]:
        where = (f"pass {r['pass']}, {r['pass_fraction']:.0%} through (at {r['position']}); "
                 if r["pass"] and r["pass_fraction"] is not None else "")
        info.add_row("refresh", f"{where}{r['checked']:,} inputs checked, {r['changed']:,} "
                                f"changed, {r['withdrawn']:,} withdrawn; {r['heads']:,} HEAD "
                                f"requests ({money(r['cost_usd'])})")
    n = fresh["notifications"]
    if n["received"]:
        info.add_row("notifications", f"{n['received']:,} received: {n['changed']:,} changed, "
                                      f"{n['recorded']:,} new, {n['dropped']:,} malformed "
                                      f"(last {n['last_at']})")
    if fresh["recatalogued"]:
        info.add_row("re-catalogued", f"{fresh['recatalogued']:,} catalog(s) made again from "
                                      "a changed input")
    if d.get("withdrawn"):
        gone = ", ".join(w["obs_id"] for w in fresh["withdrawn_recent"][:5])
        info.add_row("withdrawn", f"{d['withdrawn']:,} catalogued input(s) gone from the "
                                  f"archive (catalogs kept): {gone}")
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
