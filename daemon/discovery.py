"""Discovery: walk release windows, turn MAST products into datasets, move the cursor.

On an empty database the walk starts at ``mast.since`` and steps ``window_days`` at a time
to now, so the first run is the backfill; later polls start ``overlap_days`` before the
cursor, which catches exposures MAST lists a little late. Each window is recorded (its
datasets and the cursor) in one transaction, only after every page of its answers arrived,
so a failure part-way leaves the cursor at the last complete window.

What MAST lists is filtered on the way (docs/ARCHIVE.md says why, with sources): only the
intents asked for (``[mast] intent``, a criterion MAST applies itself); no observation whose
filter is in ``[mast] exclude_filters`` (grism exposures: counted per poll, never
recorded); only product names that are an exposure's (others, such as Hubble Advanced
Products, are counted by reason and summed up in one log line per poll). Each product's key
follows MAST: the product row's obs_id names the folder, and where it disagrees with the
file's own root, MAST's path lookup service says where the file is.

A resweep walks older windows again (the last ``resweep_days`` before the cursor, or the
whole archive): MAST can list an exposure long after its release date, past what the overlap
catches. It records what it finds without moving the cursor back, and compares the number of
exposures MAST lists in its range with the number the database holds there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog

from daemon.config import MastSection
from daemon.mast import MastClient, MastError, Observation, Product
from daemon.mjd import mjd, mjd_to_iso
from lambda_sep.contract import archive_key, key_dataset, product_key, product_name
from state.store import Discovered, Rejected, StateStore

log = structlog.get_logger("mastmirror.discovery")

# Refused names shown per reason, in the poll's summary line and in status.
EXAMPLES = 3
# Why a product whose folder MAST says (or its obs_id names) was refused.
_BAD_FOLDER = "MAST files it under an obs_id that does not share its name's first 8 characters"
_BAD_PATH = "MAST's cloud path for it does not follow the archive's layout"


class Unplaced(NamedTuple):
    """A product whose file root and MAST obs_id disagree: where it lives is MAST's to say."""

    dataset: str  # the file's root: the exposure
    filename: str
    folder: str  # the product row's obs_id, lower case
    uri: str  # its dataURI, what MAST's path lookup is asked about
    release_mjd: float
    mast_obs_id: str


@dataclass
class WindowFinds:
    """What one window yielded."""

    datasets: list[Discovered]
    rejected: list[Rejected]
    observations: int
    products: int
    unplaced: list[Unplaced] = field(default_factory=list)


def excluded(filters: str, exclude: Collection[str]) -> bool:
    """Whether an observation's ``filters`` (CAOM: ";"-separated) names one of ``exclude``
    (upper case)."""
    return bool(exclude) and any(f.strip().upper() in exclude for f in filters.split(";"))


def _short_name(name: str) -> str:
    return name if len(name) <= 200 else name[:200] + "..."


def select_products(observations: Iterable[Observation], products: Iterable[Product],
                    product: str) -> WindowFinds:
    """Keep the ``product`` files (FLT, DRZ...), one dataset each, with a release date.

    A product whose file root is its row's obs_id gets its key at once; one whose root and
    obs_id disagree is left ``unplaced`` for MAST's path lookup (``place``).
    """
    release = {o.obsid: o.release_mjd for o in observations}
    wanted = product.upper()
    found: dict[str, Discovered] = {}
    unplaced: dict[str, Unplaced] = {}
    rejected: dict[str, Rejected] = {}
    n_products = 0
    for p in products:
        n_products += 1
        if p.subgroup.upper() != wanted:
            continue
        try:
            dataset, suffix = product_name(p.filename)
        except ValueError as exc:
            name = _short_name(p.filename)
            rejected[name] = Rejected(name, str(exc))
            continue
        when = release.get(p.parent_obsid, release.get(p.obsid))
        if when is None:
            continue  # a product of an observation outside this window: its own window has it
        folder = p.obs_id.lower() or dataset
        if folder == dataset:
            prior = found.get(dataset)
            if prior is None or when < prior.release_mjd:
                found[dataset] = Discovered(dataset, archive_key(dataset, suffix), when,
                                            p.obs_id or dataset)
        else:
            pending = unplaced.get(dataset)
            if pending is None or when < pending.release_mjd:
                unplaced[dataset] = Unplaced(dataset, p.filename, folder, p.data_uri, when,
                                             p.obs_id)
    return WindowFinds(list(found.values()), list(rejected.values()), len(release),
                       n_products, [u for d, u in unplaced.items() if d not in found])


def place(unplaced: Iterable[Unplaced], paths: Mapping[str, str | None]
          ) -> tuple[list[Discovered], list[Rejected]]:
    """Keys for products whose root and obs_id disagree: the path MAST's lookup gives, or,
    where it knows none, the product row's obs_id as the folder. A path or folder outside
    the archive's layout (``lambda_sep.contract.key_dataset``) refuses the product."""
    found: list[Discovered] = []
    rejected: list[Rejected] = []
    for u in unplaced:
        path = paths.get(u.uri) if u.uri else None
        if path is None:
            try:
                key = product_key(u.filename, u.folder)[1]
            except ValueError:
                rejected.append(Rejected(_short_name(u.filename), _BAD_FOLDER))
                continue
        else:
            try:
                named = key_dataset(path)
            except ValueError:
                named = None
            if named != u.dataset or not path.endswith("/" + u.filename.lower()):
                rejected.append(Rejected(_short_name(u.filename), _BAD_PATH))
                continue
            key = path
        found.append(Discovered(u.dataset, key, u.release_mjd, u.mast_obs_id))
    return found, rejected


@dataclass
class PollOutcome:
    """The result of one discovery run (a poll, the backfill or a resweep)."""

    poll_id: int
    kind: str
    ok: bool
    windows: int = 0
    observations: int = 0
    products: int = 0
    new: int = 0
    rejected: int = 0
    excluded: int = 0  # observations left out by their filter
    error: str | None = None
    cursor_mjd: float | None = None
    window: tuple[float, float] = (0.0, 0.0)  # the release dates walked
    refused: Counter[str] = field(default_factory=Counter)  # names refused, by reason
    examples: dict[str, list[str]] = field(default_factory=dict)
    listed: int | None = None  # a resweep: exposures MAST lists in its range
    recorded: int | None = None  # a resweep: datasets the database holds there, after it
    seen: set[str] = field(default_factory=set)  # a resweep: the datasets MAST listed


def confirm(client: MastClient, mast: MastSection, keys: Mapping[str, str], *,
            now: float | None = None) -> list[Discovered]:
    """The exposures among ``keys`` (dataset -> the archive key heard of) that MAST lists as
    public science of the configured kind, with their ``mast.product`` file: what a poll
    would have recorded for them. MAST is asked by the keys' folders (its obs_ids).
    Raises MastError when MAST does not answer (the caller asks again later)."""
    if not keys:
        return []
    folders = sorted({key.split("/")[-2] for key in keys.values()})
    public = mjd(time.time() if now is None else now)
    listed = [o for o in client.observations_by_id(folders) if o.release_mjd <= public]
    finds, _ = _finds(client, mast, listed)
    return [d for d in finds.datasets if d.obs_id in keys]


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
    return _walk(store, client, mast, kind, (start, mjd(now)), now=now, progress=progress)


def resweep(store: StateStore, client: MastClient, mast: MastSection, *, everything: bool = False,
            now: float | None = None) -> PollOutcome | None:
    """Query MAST again for the last ``resweep_days`` of releases before the cursor (or, with
    ``everything``, from ``since``), record what was missed, compare the counts.

    None when there is nothing to resweep yet (no poll has moved the cursor).
    """
    cursor = store.cursor()
    if cursor is None:
        return None
    since = mjd(mast.since)
    start = since if everything else max(cursor - mast.resweep_days, since)
    return _walk(store, client, mast, "resweep", (start, cursor),
                 now=time.time() if now is None else now, progress=None)


def resweep_due(store: StateStore, hours: float, *, now: float | None = None) -> bool:
    """Whether a resweep is due: ``hours`` (> 0) since the last one, or since the backfill
    when there was none, and a cursor to sweep back from."""
    if hours <= 0 or store.cursor() is None:
        return False
    since = store.last_poll_started("resweep") or store.first_poll_started()
    now = time.time() if now is None else now
    return since is None or now - since >= hours * 3600.0


def _walk(store: StateStore, client: MastClient, mast: MastSection, kind: str,
          span: tuple[float, float], *, now: float,
          progress: Callable[[int, int, PollOutcome], None] | None) -> PollOutcome:
    """Walk ``windows(*span)`` as one recorded poll of ``kind``."""
    start, end = span
    poll_id = store.begin_poll(kind, start, now=now)
    out = PollOutcome(poll_id=poll_id, kind=kind, ok=True, cursor_mjd=store.cursor(),
                      window=(start, end))
    plan = windows(start, end, mast.window_days)
    with structlog.contextvars.bound_contextvars(poll_id=poll_id):
        log.info("poll started", kind=kind, since=mjd_to_iso(start), until=mjd_to_iso(end),
                 windows=len(plan))
        for i, window in enumerate(plan):
            if not _window(store, client, mast, out, window):
                break
            if progress:
                progress(i + 1, len(plan), out)
        if kind == "resweep" and out.ok:
            out.listed = len(out.seen)
            out.recorded = store.count_released(start, end)
        store.finish_poll(poll_id, ok=out.ok, error=out.error, listed=out.listed,
                          recorded=out.recorded)
        if out.refused:
            # One line per poll, however many names: HAP products alone are thousands.
            log.warning("product names refused", refused=sum(out.refused.values()),
                        by_reason=dict(out.refused), examples=out.examples)
        if out.ok:
            log.info("poll finished", kind=kind, windows=out.windows,
                     observations=out.observations, new=out.new, rejected=out.rejected,
                     excluded=out.excluded, listed=out.listed, recorded=out.recorded,
                     cursor=mjd_to_iso(out.cursor_mjd) if out.cursor_mjd else None)
    return out


def _finds(client: MastClient, mast: MastSection, listed: list[Observation]
           ) -> tuple[WindowFinds, int]:
    """The datasets of these observations, placed in the archive (path lookup where the
    file root and obs_id disagree), and how many observations the filters left out."""
    exclude = frozenset(mast.exclude_filters)
    obs = [o for o in listed if not excluded(o.filters, exclude)]
    # Consumed as they arrive, keeping only the wanted products: every page of the answer
    # is in before anything is recorded (a MastError part-way records nothing).
    finds = select_products(obs, client.products([o.obsid for o in obs]) if obs else (),
                            mast.product)
    if finds.unplaced:
        paths = client.cloud_paths(sorted({u.uri for u in finds.unplaced if u.uri}))
        placed, refused = place(finds.unplaced, paths)
        finds.datasets += placed
        finds.rejected += refused
    return finds, len(listed) - len(obs)


def _window(store: StateStore, client: MastClient, mast: MastSection, out: PollOutcome,
            window: tuple[float, float]) -> bool:
    """Record one window's finds and move the cursor to its end; False if MAST failed."""
    lo, hi = window
    try:
        finds, n_excluded = _finds(client, mast, client.observations(lo, hi))
    except MastError as exc:
        out.ok, out.error = False, str(exc)
        log.error("poll failed", window=[mjd_to_iso(lo), mjd_to_iso(hi)], error=str(exc),
                  cursor=mjd_to_iso(out.cursor_mjd) if out.cursor_mjd else None)
        return False
    new = store.record_window(out.poll_id, hi, finds.datasets,
                              observations=finds.observations, products=finds.products,
                              rejected=finds.rejected, excluded=n_excluded)
    out.windows += 1
    out.observations += finds.observations
    out.products += finds.products
    out.new += new
    out.rejected += len(finds.rejected)
    out.excluded += n_excluded
    out.cursor_mjd = max(out.cursor_mjd or hi, hi)  # a resweep never moves it back
    if out.kind == "resweep":
        out.seen.update(d.obs_id for d in finds.datasets)
    for r in finds.rejected:
        out.refused[r.reason] += 1
        shown = out.examples.setdefault(r.reason, [])
        if len(shown) < EXAMPLES:
            shown.append(r.name)
    if new:
        log.debug("window recorded", window=[mjd_to_iso(lo), mjd_to_iso(hi)],
                  observations=finds.observations, new=new)
    return True
