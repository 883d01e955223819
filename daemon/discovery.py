"""Discovery: walk release windows, turn MAST products into datasets, move the cursor.

On an empty database the walk starts at ``mast.since`` and steps ``window_days`` at a time
to now, so the first run is the backfill; later polls start ``overlap_days`` before the
cursor, which catches exposures MAST lists late. Each window is recorded (its datasets and
the cursor) in one transaction, only after every page of its answers arrived, so a failure
part-way leaves the cursor at the last complete window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from daemon.config import MastSection
from daemon.mast import MastClient, MastError, Observation, Product
from daemon.mjd import mjd, mjd_to_iso
from lambda_sep.contract import product_key
from state.store import Discovered, Rejected, StateStore

log = structlog.get_logger("mastmirror.discovery")


@dataclass
class WindowFinds:
    """What one window yielded."""

    datasets: list[Discovered]
    rejected: list[Rejected]
    observations: int
    products: int


def select_products(observations: Iterable[Observation], products: Iterable[Product],
                    product: str) -> WindowFinds:
    """Keep the ``product`` files (FLT, DRZ...), one dataset each, with a release date."""
    release = {o.obsid: o.release_mjd for o in observations}
    wanted = product.upper()
    found: dict[str, Discovered] = {}
    rejected: dict[str, Rejected] = {}
    n_products = 0
    for p in products:
        n_products += 1
        if p.subgroup.upper() != wanted:
            continue
        try:
            dataset, key = product_key(p.filename)
        except ValueError as exc:
            name = p.filename if len(p.filename) <= 200 else p.filename[:200] + "..."
            rejected[name] = Rejected(name, str(exc))
            continue
        when = release.get(p.parent_obsid, release.get(p.obsid))
        if when is None:
            continue  # a product of an observation outside this window: its own window has it
        prior = found.get(dataset)
        if prior is None or when < prior.release_mjd:
            found[dataset] = Discovered(dataset, key, when, p.obs_id or dataset)
    n_obs = len(release)
    return WindowFinds(list(found.values()), list(rejected.values()), n_obs, n_products)


@dataclass
class PollOutcome:
    """The result of one discovery run."""

    poll_id: int
    kind: str
    ok: bool
    windows: int = 0
    observations: int = 0
    products: int = 0
    new: int = 0
    rejected: int = 0
    error: str | None = None
    cursor_mjd: float | None = None


def windows(start: float, end: float, step: float) -> list[tuple[float, float]]:
    """Consecutive [lo, hi] windows covering start..end."""
    out = []
    lo = start
    while lo < end:
        hi = min(lo + step, end)
        out.append((lo, hi))
        lo = hi
    return out


def poll(store: StateStore, client: MastClient, mast: MastSection, *,
         now: float | None = None,
         progress: Callable[[int, int, PollOutcome], None] | None = None) -> PollOutcome:
    """One discovery run: every window from the cursor (or ``since``) to now.

    MAST trouble is recorded on the poll and returned, never raised: the daemon keeps
    running and the next poll starts again from the cursor.
    """
    now = time.time() if now is None else now
    cursor = store.cursor()
    if cursor is None:
        kind, start = "backfill", mjd(mast.since)
    else:
        kind, start = "poll", max(cursor - mast.overlap_days, mjd(mast.since))
    end = mjd(now)
    poll_id = store.begin_poll(kind, start, now=now)
    out = PollOutcome(poll_id=poll_id, kind=kind, ok=True, cursor_mjd=cursor)
    plan = windows(start, end, mast.window_days)
    with structlog.contextvars.bound_contextvars(poll_id=poll_id):
        log.info("poll started", kind=kind, since=mjd_to_iso(start), until=mjd_to_iso(end),
                 windows=len(plan))
        for i, window in enumerate(plan):
            if not _window(store, client, mast, out, window):
                break
            if progress:
                progress(i + 1, len(plan), out)
        store.finish_poll(poll_id, ok=out.ok, error=out.error)
        if out.ok:
            log.info("poll finished", kind=kind, windows=out.windows,
                     observations=out.observations, new=out.new, rejected=out.rejected,
                     cursor=mjd_to_iso(out.cursor_mjd) if out.cursor_mjd else None)
    return out


def _window(store: StateStore, client: MastClient, mast: MastSection, out: PollOutcome,
            window: tuple[float, float]) -> bool:
    """Record one window's finds and move the cursor to its end; False if MAST failed."""
    lo, hi = window
    try:
        obs = client.observations(lo, hi)
        # Consumed as they arrive, keeping only the wanted products: every page of the
        # answer is in before anything is recorded (a MastError part-way records nothing).
        finds = select_products(obs, client.products([o.obsid for o in obs]) if obs else (),
                                mast.product)
    except MastError as exc:
        out.ok, out.error = False, str(exc)
        log.error("poll failed", window=[mjd_to_iso(lo), mjd_to_iso(hi)], error=str(exc),
                  cursor=mjd_to_iso(out.cursor_mjd) if out.cursor_mjd else None)
        return False
    new = store.record_window(out.poll_id, hi, finds.datasets,
                              observations=finds.observations, products=finds.products,
                              rejected=finds.rejected)
    out.windows += 1
    out.observations += finds.observations
    out.products += finds.products
    out.new += new
    out.rejected += len(finds.rejected)
    out.cursor_mjd = hi
    for r in finds.rejected:
        log.warning("product refused", name=r.name, reason=r.reason)
    if new:
        log.debug("window recorded", window=[mjd_to_iso(lo), mjd_to_iso(hi)],
                  observations=finds.observations, new=new)
    return True
