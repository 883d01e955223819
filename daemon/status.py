"""``mastmirror status``: what a person wants at a glance, and the same as JSON for scripts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from daemon.lock import InstanceLock
from daemon.mjd import mjd_to_iso
from daemon.prices import cost_usd
from state.store import Snapshot, StateStore


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


def status_document(database: Path) -> dict[str, Any]:
    """The status document of a state database; FileNotFoundError if there is none."""
    with StateStore(database, readonly=True) as store:
        snap = store.snapshot()
    return to_dict(snap, daemon_pid=InstanceLock(database).holder())


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


def render(doc: dict[str, Any]) -> str:
    """The status document as a compact terminal report (ANSI styles, which click.echo
    drops when the output is not a terminal). Plain strings, not rich: `status` must start
    in a few tens of milliseconds, and importing rich alone costs more than that."""
    d = doc["datasets"]
    shown = ("new", "waiting", "dispatched", "done", "failed", "skipped", "total")
    values = [f"{d.get(k, 0):,}" for k in shown]
    widths = [max(len(k), len(v)) for k, v in zip(shown, values, strict=True)]
    lines = ["  ".join(click.style(k.rjust(w), bold=True) for k, w in zip(shown, widths,
                                                                         strict=True)),
             "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)), ""]

    info: list[tuple[str, str]] = []
    daemon = doc["daemon"]
    info.append(("daemon", f"running (pid {daemon['pid']})" if daemon["running"] else
                 "not running"))
    poll = doc["last_poll"]
    if poll is None:
        info.append(("last poll", "never"))
    else:
        state = {True: click.style("ok", fg="green"), False: click.style("FAILED", fg="red"),
                 None: "running"}[poll["ok"]]
        line = f"{poll['at']}  {state}  {poll['new']:,} new ({poll['kind']}, " \
               f"{poll['windows']} window(s), {poll['observations']:,} observations)"
        if poll["excluded"]:
            line += f", {poll['excluded']:,} excluded by filter"
        if poll["error"]:
            line += f"\n{poll['error']}"
        info.append(("last poll", line))
    sweep = doc["last_resweep"]
    if sweep is not None:
        state = {True: click.style("ok", fg="green"), False: click.style("FAILED", fg="red"),
                 None: "running"}[sweep["ok"]]
        lo, hi = (w[:10] if w else "?" for w in sweep["window"])
        line = f"{sweep['at']}  {state}  {lo} to {hi}: {sweep['new']:,} added"
        if sweep["listed"] is not None:
            line += f"; MAST lists {sweep['listed']:,}, the database holds " \
                    f"{sweep['recorded']:,}"
        if sweep["error"]:
            line += f"\n{sweep['error']}"
        info.append(("last resweep", line))
    info.append(("cursor", doc["cursor"] or "-"))
    fl = doc["in_flight"]
    info.append(("in flight", f"{fl['count']:,}  (oldest {_age(fl['oldest_age_s'])})"))
    tp = doc["throughput"]
    info.append(("throughput", f"{tp['done_last_hour']:,} done in the last hour, "
                               f"{tp['done_last_day']:,} in the last day"))
    fresh = doc["freshness"]
    r = fresh["refresh"]
    if r["pass"] or r["checked"]:
        where = (f"pass {r['pass']}, {r['pass_fraction']:.0%} through (at {r['position']}); "
                 if r["pass"] and r["pass_fraction"] is not None else "")
        info.append(("refresh", f"{where}{r['checked']:,} inputs checked, {r['changed']:,} "
                                f"changed, {r['withdrawn']:,} withdrawn; {r['heads']:,} HEAD "
                                f"requests ({money(r['cost_usd'])})"))
    note = fresh["notifications"]
    if note["received"]:
        info.append(("notifications", f"{note['received']:,} received: {note['changed']:,} "
                                      f"changed, {note['recorded']:,} new, "
                                      f"{note['dropped']:,} malformed (last {note['last_at']})"))
    if fresh["recatalogued"]:
        info.append(("re-catalogued", f"{fresh['recatalogued']:,} catalog(s) made again from "
                                      "a changed input"))
    if d.get("withdrawn"):
        gone = ", ".join(w["obs_id"] for w in fresh["withdrawn_recent"][:5])
        info.append(("withdrawn", f"{d['withdrawn']:,} catalogued input(s) gone from the "
                                  f"archive (catalogs kept): {gone}"))
    refused = doc["refused"]
    if refused["total"]:
        why = [f"{refused['total']:,} product name(s) from MAST:"]
        for reason, n in refused["by_reason"].items():
            names = ", ".join(refused["examples"].get(reason, []))
            why.append(f"  {n:,} {reason}" + (f" (e.g. {names})" if names else ""))
        info.append(("refused", "\n".join(why)))
    info.append(("database", doc["database"]["path"]))
    width = max(len(k) for k, _ in info)
    for key, value in info:
        first, *rest = value.split("\n")
        lines.append(f"{click.style(key.ljust(width), bold=True)}  {first}")
        lines += [" " * (width + 2) + more for more in rest]

    if doc["recent_failures"]:
        lines += ["", click.style("recent failures", bold=True)]
        rows = [(f["obs_id"], f["at"] or "-", str(f["attempts"]), f["reason"] or "")
                for f in doc["recent_failures"]]
        head = ("obs_id", "at", "attempts", "reason")
        cols = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
        for r in [head, *rows]:
            lines.append(f"{r[0].ljust(cols[0])}  {r[1].ljust(cols[1])}  "
                         f"{r[2].rjust(cols[2])}  {r[3]}")
    return "\n".join(lines)
