"""A synthetic, deterministic model of the HST WFC3/IR archive as MAST serves it.

The model is what `standin.mast` serves to astroquery. It knows:

* **observations** the way MAST's CAOM tables list them: one row per exposure
  (``icxe15wwq``: ``i`` + 3-character program + 2-character visit + 2-character
  exposure + ``q``) and one row per association (``icxe15010``, calib_level 3) whose
  members are exposures that are *also* listed as observations of their own, so the
  same FLT file is reachable through two observations, as in the real archive;
* **products** per observation as MAST's ``Mast.Caom.Products`` lists them for
  WFC3/IR: RAW, IMA, FLT, SPT, TRL, JIF, JIT per exposure, DRZ for a singleton,
  ASN/DRZ/TRL for an association plus every member's products (member rows keep
  their own ``obsID`` and carry the asked-for observation in ``parent_obsid``);
* **release dates** (``t_obs_release``, MJD): what the daemon's discovery cursor walks;
* **intents** (``intentType``: "science", or "calibration" for about 5% of programs) and
  **filters** (the 15 WFC3/IR imaging filters; the grisms G102 and G141 only where a test
  asks for them, with `Archive.add_exposure`);
* **folders**: where each file lives in the ``stpubdata`` bucket (``hst/public/<4>/<folder>/``),
  the observation's own name unless `Archive.add_exposure` files it elsewhere, and what
  MAST's path lookup service answers for a ``dataURI`` (`Archive.cloud_path`).

Rows are never stored as dicts or pre-encoded JSON: the model keeps compact columns
(numpy arrays and a few lists) and formats each page's JSON objects from them on
demand, with %-templates built from the field lists in ``data/*.json`` (derived from
astroquery's recorded MAST responses ``caom.json``, ``products.json`` and
``columnsconfig.json``). Pre-encoded rows would cost ~170 MB for the observations and
~1.1 GB for the product rows of a 150,000-exposure archive; formatting costs about
10 us per observation row and 1-2 us per product row instead.

Everything is a pure function of the seed and of the sequence of `Archive.release`
and `Archive.plant_bad` calls, so tests can compute the truth they expect.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from json.encoder import encode_basestring_ascii as _js  # C-accelerated JSON string literal
from typing import Any

import numpy as np

from lambda_sep.contract import archive_key

__all__ = [
    "BAD_KINDS",
    "WFC3IR_FIRST_MJD",
    "Archive",
    "Exposure",
    "FilterError",
    "ObservationSelection",
    "PlantedEntry",
    "ProductSelection",
    "mjd_now",
]

#: 2009-06-01: WFC3 was installed in May 2009; nothing in the archive is older.
WFC3IR_FIRST_MJD = 54983.0
#: Default span of release dates: mid-2009 to 2025-01-01.
DEFAULT_START_MJD = 55000.0
DEFAULT_END_MJD = 60676.0

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Filter name, relative frequency, em_min, em_max (nm, as in caom.json's em_min/em_max).
_FILTERS: tuple[tuple[str, float, float, float], ...] = (
    ("F160W", 30.0, 1385.0, 1714.0),
    ("F125W", 15.0, 1099.0, 1393.0),
    ("F140W", 12.0, 1186.0, 1608.0),
    ("F105W", 12.0, 897.0, 1213.0),
    ("F110W", 10.0, 883.0, 1412.0),
    ("F098M", 4.0, 908.0, 1068.0),
    ("F139M", 3.0, 1354.0, 1424.0),
    ("F153M", 3.0, 1497.0, 1567.0),
    ("F127M", 3.0, 1241.0, 1311.0),
    ("F126N", 2.0, 1255.0, 1271.0),
    ("F128N", 1.5, 1280.0, 1294.0),
    ("F130N", 1.0, 1296.0, 1310.0),
    ("F132N", 1.0, 1310.0, 1326.0),
    ("F164N", 1.5, 1637.0, 1653.0),
    ("F167N", 1.0, 1659.0, 1675.0),
    # The grisms (dispersers): never drawn at random (weight 0), so an archive of a given
    # seed stays what it was; `Archive.add_exposure` makes grism exposures on demand.
    ("G102", 0.0, 800.0, 1150.0),
    ("G141", 0.0, 1075.0, 1700.0),
)
_FILTER_NAMES = np.array([f[0] for f in _FILTERS], dtype=object)
_FILTER_INDEX = {f[0]: i for i, f in enumerate(_FILTERS)}
_FILTER_IDX = tuple(range(len(_FILTERS)))
_FILTER_CW = tuple(itertools.accumulate(f[1] for f in _FILTERS))
_EM_MIN = np.array([f[2] for f in _FILTERS])
_EM_MAX = np.array([f[3] for f in _FILTERS])

# (exposure time in s, NSAMP) of common WFC3/IR sample sequences, with frequencies.
_EXPOSURES: tuple[tuple[float, int, float], ...] = (
    (102.93, 9, 6), (202.93, 11, 8), (252.93, 13, 10), (302.93, 12, 6), (352.93, 11, 8),
    (402.93, 12, 10), (502.93, 13, 10), (602.93, 14, 8), (702.93, 15, 6), (802.93, 14, 8),
    (1002.93, 15, 8), (1202.93, 14, 6), (1302.93, 15, 4), (1402.93, 16, 4),
)
_EXP_IDX = tuple(range(len(_EXPOSURES)))
_EXP_CW = tuple(itertools.accumulate(e[2] for e in _EXPOSURES))

# Association sizes (dither patterns); 4-point patterns dominate.
_ASN_SIZES = (2, 3, 4, 5, 6, 8)
_ASN_CW = tuple(itertools.accumulate((0.2, 0.15, 0.4, 0.08, 0.1, 0.07)))

_SURNAMES = (
    "Riess", "Illingworth", "Koekemoer", "Faber", "Ferguson", "Bouwens", "Oesch", "Kelly",
    "Treu", "Postman", "Brammer", "van Dokkum", "Dalcanton", "Calzetti", "Bradley", "Coe",
    "Windhorst", "Finkelstein", "Siana", "Teplitz", "Scarlata", "Ellis", "Dunlop", "McLure",
    "Stark", "Robertson", "Momcheva", "Whitaker", "Skelton", "Lotz", "Kirshner", "Perlmutter",
    "Suzuki", "Rubin", "Bohlin", "Deustua", "Kalirai", "Mack", "Baggett", "Pirzkal",
)
_GIVEN = (
    "Adam", "Garth", "Anton", "Sandra", "Henry", "Rychard", "Pascal", "Patrick", "Tommaso",
    "Marc", "Gabriel", "Pieter", "Julianne", "Daniela", "Larry", "Dan", "Rogier", "Steven",
    "Brian", "Harry", "Claudia", "Richard", "James", "Ross", "Daniel", "Brant", "Ivelina",
    "Katherine", "Rosalind", "Jennifer", "Robert", "Saul", "Nao", "David", "Ralph", "Susana",
    "Jason", "Jennifer", "Sylvia", "Norbert",
)
_TITLE_A = (
    "A WFC3/IR survey of", "Deep near-infrared imaging of", "Resolved stellar populations in",
    "The infrared Hubble constant from", "Lensed galaxies behind", "Star formation in",
    "Mapping dust in", "Near-infrared counterparts of", "Variability monitoring of",
    "Treasury imaging of", "The faint end of", "Calibration of",
)
_TITLE_B = (
    "high-redshift galaxies", "Cepheid host galaxies", "massive galaxy clusters",
    "nearby spiral galaxies", "the Galactic bulge", "type Ia supernovae", "brown dwarfs",
    "ultra-luminous infrared galaxies", "globular clusters", "the extragalactic legacy fields",
    "the WFC3/IR detector", "white dwarf standards",
)
_CLASSES = (
    "GALAXY;HIGH REDSHIFT", "CLUSTER OF GALAXIES", "GALAXY;SPIRAL", "STELLAR CLUSTER;GLOBULAR",
    "STAR;BROWN DWARF", "SUPERNOVA;TYPE IA", "EXTENDED SOURCE;HII REGION", "GALAXY;STARBURST",
    "ISM;DARK CLOUD", "UNIDENTIFIED;FIELD",
)
_CAL_TARGETS = ("GD153", "GD71", "P330E", "G191B2B", "GRW+70D5824", "OMEGACEN", "NGC104")

#: Kinds of hostile entries `Archive.plant_bad` can plant: obs_id/file-name stems.
BAD_KINDS: dict[str, str] = {
    # path traversal out of the bucket prefix / the output directory
    "dotdot": "../../../../tmp/icxe15wwq",
    # an absolute path
    "absolute": "/etc/icxe15wwq",
    # a look-alike: CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I instead of "i"
    "unicode": "\u0456cxe15wwq",
    # a zero-width space hidden in an otherwise valid name
    "zero_width": "icxe15\u200bwwq",
    # far longer than any file-system name component (255 bytes)
    "long": "i" + "x" * 400,
    # Windows separators
    "backslash": "..\\..\\icxe15wwq",
    # an embedded NUL (mid-name: numpy string columns, hence astroquery tables, drop
    # trailing NULs, so a trailing one would never reach the daemon)
    "nul": "icxe\x0015wwq",
    # a nested path that stays "inside" but is not a rootname
    "slash": "icxe/15wwq",
}

_KIND_SINGLE, _KIND_MEMBER, _KIND_ASSOC = 0, 1, 2


def mjd_now() -> float:
    """Return the current UTC time as a Modified Julian Date."""
    return time.time() / 86400.0 + 40587.0


class FilterError(ValueError):
    """A filter set the stand-in cannot evaluate (MAST answers these with ``ERROR``)."""


@cache
def _data(name: str) -> Any:
    """Load one JSON template from ``standin/data``."""
    return json.loads(resources.files("standin").joinpath("data", name).read_text())


@dataclass(frozen=True)
class Exposure:
    """One WFC3/IR exposure (one FLT file) as the model knows it: the test truth."""

    obs_id: str  #: as MAST shows it in ``obs_id``
    dataset: str  #: lower-case rootname, as in file names
    obsid: str  #: MAST's integer-like observation id
    release: float  #: ``t_obs_release`` (MJD)
    filter: str
    association: str | None  #: obs_id of the association it belongs to, if any
    key: str  #: its FLT key in the ``stpubdata`` bucket
    intent: str = "science"  #: MAST's ``intentType``: "science" or "calibration"

    @property
    def science_image(self) -> bool:
        """A science exposure through an imaging filter: what mastmirror catalogues with
        its default ``[mast] intent`` and ``exclude_filters``."""
        return self.intent == "science" and not self.filter.startswith("G")


@dataclass(frozen=True)
class PlantedEntry:
    """A hostile exposure planted by `Archive.plant_bad`."""

    kind: str
    obs_id: str
    obsid: str
    flt_filename: str
    release: float


@dataclass(frozen=True)
class _Program:
    code: str
    proposal_id: str
    pi_json: str
    title_json: str
    intent: str
    period: float  # proprietary period, days


@dataclass(frozen=True)
class _Snap:
    """An immutable view of the columns; a release swaps in a new one atomically."""

    n: int
    kind: np.ndarray  # int8: _KIND_*
    obsid: np.ndarray  # int64
    release: np.ndarray  # float64, MJD
    t_min: np.ndarray
    t_max: np.ndarray
    exptime: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    pa: np.ndarray
    nsamp: np.ndarray  # int16 (0 for associations)
    filt: np.ndarray  # int16 index into _FILTERS
    prog: np.ndarray  # int32 index into programs
    target: np.ndarray  # int32 index into targets
    parent: np.ndarray  # int32 association oid of a member, else -1
    nmem: np.ndarray  # int16 number of members of an association (members follow it)
    order: np.ndarray  # oids sorted by (release, obsid): the order MAST answers in
    release_sorted: np.ndarray


_NUMERIC_COLS = (
    ("kind", np.int8), ("obsid", np.int64), ("release", np.float64), ("t_min", np.float64),
    ("t_max", np.float64), ("exptime", np.float64), ("ra", np.float64), ("dec", np.float64),
    ("pa", np.float64), ("nsamp", np.int16), ("filt", np.int16), ("prog", np.int32),
    ("target", np.int32), ("parent", np.int32), ("nmem", np.int16),
)


class Archive:
    """A deterministic synthetic WFC3/IR archive.

    ``Archive(150_000, seed=1)`` holds 150,000 exposures (FLT files) released between
    ``start_mjd`` and ``end_mjd``, grouped in programs, visits, associations and
    singletons; the associations are extra observations on top of the exposures.
    `release` adds newly public exposures while a server is serving the archive
    (thread-safe); `plant_bad` adds hostile entries for fault tests.
    """

    def __init__(
        self,
        n_exposures: int = 1000,
        *,
        seed: int = 1,
        start_mjd: float = DEFAULT_START_MJD,
        end_mjd: float = DEFAULT_END_MJD,
        assoc_probability: float = 0.5,
        obs_id_case: str = "lower",
    ) -> None:
        """Generate ``n_exposures`` exposures with release dates in [start_mjd, end_mjd].

        ``assoc_probability`` is the chance that an exposure pattern of a visit is an
        association (several dithered exposures) rather than a single exposure; at 0.5
        about 80% of exposures belong to an association, as in the real WFC3/IR archive.
        ``obs_id_case`` is how ``obs_id`` is shown: ``"lower"`` (MAST today) or
        ``"upper"`` (older MAST, astroquery's recorded responses).
        """
        if n_exposures < 0:
            raise ValueError("n_exposures must be >= 0")
        if not end_mjd > start_mjd:
            raise ValueError("end_mjd must be after start_mjd")
        if obs_id_case not in ("lower", "upper"):
            raise ValueError("obs_id_case must be 'lower' or 'upper'")
        self.seed = seed
        self.start_mjd = float(start_mjd)
        self.end_mjd = float(end_mjd)
        self.assoc_probability = float(assoc_probability)
        self.obs_id_case = obs_id_case
        self._lock = threading.RLock()
        # random.Random, not numpy: generation makes ~10 scalar draws per row, where
        # numpy's per-call overhead would dominate.
        self._rng = random.Random(seed)
        # Program codes: 3 characters, the first a letter, drawn without replacement.
        self._codes = self._rng.sample(range(26 * 36 * 36), 26 * 36 * 36)
        self._next_code = 0
        self._next_obsid = 24_000_000
        self._programs: list[_Program] = []
        self._targets: list[tuple[str, str]] = []  # (name, classification)
        self._target_name_json: list[str] = []
        self._target_class_json: list[str] = []
        # Per-observation string columns (append-only; a snapshot only reads < n).
        self._obs_id: list[str] = []
        self._obs_id_json: list[str] = []
        self._stem: list[str] = []  # lower-case file-name stem (the dataset rootname)
        # The stem, and the jitter-file stem (rootname ending in "j"), JSON-escaped
        # without quotes, ready to drop into product templates.
        self._stem_esc: list[str] = []
        self._jstem_esc: list[str] = []
        self._by_obsid: dict[str, int] = {}
        # Folders that are not the observation's own stem (sparse: few are).
        self._folder: dict[int, str] = {}
        # File stem (dataset or jitter) -> oid, for the path lookup; built on first use.
        self._by_stem: dict[str, int] | None = None
        self._planted: dict[int, PlantedEntry] = {}
        self._bad_prog: int | None = None
        # Rows added since the last snapshot, as tuples in _NUMERIC_COLS order.
        self._pending: list[tuple[float, ...]] = []
        self._snap: _Snap = self._make_snap()
        self.version = 0  #: bumped by every release / plant
        if n_exposures:
            with self._lock:
                self._generate(n_exposures, release_at=None)
                self._snap = self._make_snap()

    # ------------------------------------------------------------------ sizes
    @property
    def n_observations(self) -> int:
        """Number of observations (exposures + associations)."""
        return self._snap.n

    @property
    def n_exposures(self) -> int:
        """Number of exposures (FLT files), planted ones included."""
        s = self._snap
        return int(np.count_nonzero(s.kind != _KIND_ASSOC))

    @property
    def n_associations(self) -> int:
        """Number of association observations."""
        s = self._snap
        return int(np.count_nonzero(s.kind == _KIND_ASSOC))

    @property
    def planted(self) -> list[PlantedEntry]:
        """Every hostile entry planted so far."""
        return list(self._planted.values())

    @property
    def last_release(self) -> float:
        """The latest ``t_obs_release`` in the archive (``start_mjd`` if empty)."""
        s = self._snap
        return float(s.release_sorted[-1]) if s.n else self.start_mjd

    # ------------------------------------------------------------ generation
    def _new_program(self, rng: random.Random, calibration: bool) -> int:
        if self._next_code >= len(self._codes):
            raise RuntimeError("out of program codes (more than 33,696 programs)")
        c = int(self._codes[self._next_code])
        self._next_code += 1
        code = _LETTERS[c // 1296] + _B36[(c // 36) % 36] + _B36[c % 36]
        pid = str(11000 + len(self._programs))
        pi = f"{rng.choice(_SURNAMES)}, {rng.choice(_GIVEN)}"
        if calibration:
            title = f"WFC3/IR {rng.choice(_TITLE_B)} calibration"
            period = 0.0
        else:
            title = f"{rng.choice(_TITLE_A)} {rng.choice(_TITLE_B)}"
            # Most GO data carry a 12-month exclusive access period; some none.
            period = 365.0 if rng.random() < 0.8 else 0.0
        self._programs.append(
            _Program(code, pid, _js(pi), _js(title), "calibration" if calibration else "science",
                     period)
        )
        return len(self._programs) - 1

    def _new_target(self, rng: random.Random, calibration: bool) -> tuple[int, float, float]:
        if calibration:
            name = rng.choice(_CAL_TARGETS)
            cls = "STAR;WHITE DWARF"
        else:
            family = rng.randrange(8)
            n = rng.randrange(1, 9999)
            name = (
                f"NGC-{n}", f"ABELL-{n % 4000}", f"MACSJ{n:04d}-{n % 90:02d}{n % 60:02d}",
                f"GOODS-{'NS'[n % 2]}-{n % 40}", f"COSMOS-{n % 300}", f"SN-{n}",
                f"HUDF-PAR{n % 9}", f"UGC{n}",
            )[family]
            cls = rng.choice(_CLASSES)
        self._targets.append((name, cls))
        self._target_name_json.append(_js(name))
        self._target_class_json.append(_js(cls))
        # Uniform on the sphere.
        ra = rng.uniform(0.0, 360.0)
        dec = math.degrees(math.asin(rng.uniform(-1.0, 1.0)))
        return len(self._targets) - 1, ra, dec

    def _add_obs(self, obs_id: str, stem: str, row: tuple[float, ...], *,
                 planted: bool = False) -> int:
        """Append one observation; ``row`` is _NUMERIC_COLS without the obsid."""
        oid = len(self._obs_id)
        self._next_obsid += self._rng.randrange(1, 4)
        kind = row[0]
        # One tuple per row (not one append per column): generation is dominated by
        # this function at 1.5M exposures.
        self._pending.append((kind, self._next_obsid, *row[1:]))
        self._obs_id.append(obs_id)
        self._obs_id_json.append(_js(obs_id))
        self._stem.append(stem)
        esc = _js(stem)[1:-1]
        self._stem_esc.append(esc)
        # Planted stems are kept whole (the hostile part must reach every file name).
        self._jstem_esc.append(esc if planted or kind == _KIND_ASSOC else esc[:-1] + "j")
        self._by_obsid[str(self._next_obsid)] = oid
        self._by_stem = None
        return oid

    def _generate(self, n: int, release_at: float | None) -> list[int]:
        """Append programs until ``n`` more exposures exist; return the new exposure oids.

        ``release_at`` None: release dates spread over [start_mjd, end_mjd], clumped by
        program and visit as real programs are; otherwise every new row is released at
        exactly ``release_at`` (what `release` needs).
        """
        rng = self._rng
        new: list[int] = []
        left = n
        span = self.end_mjd - self.start_mjd
        while left > 0:
            calibration = rng.random() < 0.05
            prog = self._new_program(rng, calibration)
            program = self._programs[prog]
            center = rng.uniform(self.start_mjd, self.end_mjd)
            n_visits = rng.randrange(1, 25)
            for v in range(n_visits):
                if left <= 0:
                    break
                visit = _B36[(v + 1) // 36] + _B36[(v + 1) % 36]
                target, tra, tdec = self._new_target(rng, calibration)
                pa = rng.uniform(0.0, 360.0)
                if release_at is None:
                    # Visits cluster around the program's centre; wrap into the span so
                    # the density of release dates stays flat.
                    r = center + rng.gauss(0.0, 45.0)
                    base = self.start_mjd + (r - self.start_mjd) % max(span - 0.25, 1e-3)
                else:
                    base = release_at
                period = program.period
                if release_at is None and base - period < WFC3IR_FIRST_MJD:
                    period = 0.0
                n_patterns = rng.randrange(1, 5)
                exp_code = rng.randrange(10 * 36, 36 * 36 - 40)  # starts with a letter
                t_cursor = 0.0
                for a in range(n_patterns):
                    if left <= 0:
                        break
                    filt = rng.choices(_FILTER_IDX, cum_weights=_FILTER_CW)[0]
                    ei = rng.choices(_EXP_IDX, cum_weights=_EXP_CW)[0]
                    exptime, nsamp = _EXPOSURES[ei][0], _EXPOSURES[ei][1]
                    is_asn = rng.random() < self.assoc_probability
                    k = rng.choices(_ASN_SIZES, cum_weights=_ASN_CW)[0] if is_asn else 1
                    k = min(k, left)
                    rows = []
                    for _ in range(k):
                        t_cursor += (exptime + 90.0) / 86400.0
                        rel = base + t_cursor if release_at is None else release_at
                        t_max = rel - period
                        # Dither: a few arcsec around the target.
                        dra = rng.gauss(0.0, 2.0) / 3600.0
                        ddec = rng.gauss(0.0, 2.0) / 3600.0
                        cosd = max(math.cos(math.radians(tdec)), 0.01)
                        rows.append((rel, t_max, round(tra + dra / cosd, 8),
                                     round(tdec + ddec, 8)))
                    prefix = f"i{program.code}{visit}"
                    if k > 1:
                        asn_stem = f"{prefix}0{_B36[(a + 1) % 36]}0"
                        aoid = self._add_obs(self._show(asn_stem), asn_stem, (
                            _KIND_ASSOC, max(r[0] for r in rows), rows[0][1] - exptime / 86400.0,
                            max(r[1] for r in rows), exptime * k, rows[0][2], rows[0][3], pa, 0,
                            filt, prog, target, -1, k,
                        ))
                        parent, kind = aoid, _KIND_MEMBER
                    else:
                        parent, kind = -1, _KIND_SINGLE
                    for rel, t_max, ra, dec in rows:
                        stem = f"{prefix}{_B36[exp_code // 36]}{_B36[exp_code % 36]}q"
                        exp_code += 1
                        new.append(self._add_obs(self._show(stem), stem, (
                            kind, rel, t_max - exptime / 86400.0, t_max,
                            exptime, ra, dec, pa, nsamp, filt, prog, target, parent, 0,
                        )))
                    left -= k
        return new

    def _show(self, stem: str) -> str:
        return stem if self.obs_id_case == "lower" else stem.upper()

    def _make_snap(self) -> _Snap:
        """Fold the pending rows into new arrays and return the snapshot to swap in."""
        prev = getattr(self, "_snap", None)
        rows, self._pending = self._pending, []
        # Every value is exact in float64 (obsids are < 2**53): one conversion, then cast.
        mat = np.array(rows, dtype=np.float64).reshape(len(rows), len(_NUMERIC_COLS))
        arrays = {}
        for i, (name, dt) in enumerate(_NUMERIC_COLS):
            new = mat[:, i].astype(dt)
            arrays[name] = np.concatenate([getattr(prev, name), new]) if prev is not None else new
        n = len(arrays["kind"])
        order = np.lexsort((arrays["obsid"], arrays["release"])) if n else np.zeros(0, np.int64)
        return _Snap(n=n, order=order, release_sorted=arrays["release"][order], **arrays)

    # ---------------------------------------------------------------- mutations
    def release(self, n: int, at_mjd: float | None = None) -> list[Exposure]:
        """Make ``n`` more exposures public at ``at_mjd`` (default: now); return them.

        New programs with visits, associations and singletons are generated exactly as
        at construction, every new observation with ``t_obs_release == at_mjd``.
        Thread-safe: a server keeps answering from the previous snapshot until the new
        one is swapped in.
        """
        if n <= 0:
            return []
        at = mjd_now() if at_mjd is None else float(at_mjd)
        with self._lock:
            oids = self._generate(n, release_at=at)
            self._snap = self._make_snap()
            self.version += 1
            snap = self._snap
        return [self._exposure(snap, o) for o in oids]

    def add_exposure(self, *, at_mjd: float | None = None, filter: str = "F160W",
                     intent: str = "science", dataset: str | None = None,
                     obs_id: str | None = None, folder: str | None = None) -> Exposure:
        """Make one singleton exposure public at ``at_mjd`` (default: now), shaped as a
        test's scenario needs: its ``filter`` (a grism too), ``intent`` ("science" or
        "calibration"), its file root ``dataset`` (default: a fresh rootname), the ``obs_id``
        MAST shows for it (default: the dataset, in the archive's case) and the ``folder``
        its files live in (default: the obs_id, lower case). MAST files some products under
        a folder that is not their file's root (docs/ARCHIVE.md): ``obs_id`` and ``folder``
        model that, and `cloud_path` answers with the folder.
        """
        if filter not in _FILTER_INDEX:
            raise ValueError(f"unknown WFC3/IR filter {filter!r}; one of {sorted(_FILTER_INDEX)}")
        if intent not in ("science", "calibration"):
            raise ValueError("intent must be 'science' or 'calibration' (MAST's intentType)")
        at = mjd_now() if at_mjd is None else float(at_mjd)
        with self._lock:
            rng = self._rng
            calibration = intent == "calibration"
            prog = self._new_program(rng, calibration=calibration)
            target, ra, dec = self._new_target(rng, calibration=calibration)
            stem = (dataset or f"i{self._programs[prog].code}01a1q").lower()
            if not re.fullmatch(r"[a-z0-9]{9}", stem):
                raise ValueError(f"dataset {stem!r} is not a 9-character rootname")
            shown = obs_id if obs_id is not None else self._show(stem)
            oid = self._add_obs(shown, stem, (
                _KIND_SINGLE, at, at - 0.01, at - 0.005, 402.93, ra, dec, 0.0, 12,
                _FILTER_INDEX[filter], prog, target, -1, 0,
            ))
            home = (folder or shown).lower()
            if home != stem:
                self._folder[oid] = home
            self._snap = self._make_snap()
            self.version += 1
            return self._exposure(self._snap, oid)

    def plant_bad(
        self, kind: str, *, at_mjd: float | None = None, stem: str | None = None
    ) -> PlantedEntry:
        """Plant a hostile singleton exposure; its obs_id and file names use a bad stem.

        ``kind`` is one of `BAD_KINDS` (or any label when ``stem`` is given). The entry
        is listed like any exposure (FLT included, so ``filter_products`` keeps it) and
        is released at ``at_mjd`` (default: now). It is left out of `flt_keys` unless
        asked for.
        """
        if stem is None:
            if kind not in BAD_KINDS:
                raise ValueError(f"unknown bad kind {kind!r}; one of {sorted(BAD_KINDS)}")
            stem = BAD_KINDS[kind]
        at = mjd_now() if at_mjd is None else float(at_mjd)
        with self._lock:
            rng = self._rng
            if self._bad_prog is None:
                self._bad_prog = self._new_program(rng, calibration=False)
            target, ra, dec = self._new_target(rng, calibration=False)
            oid = self._add_obs(stem, stem, (
                _KIND_SINGLE, at, at - 0.01, at - 0.005, 402.93, ra, dec, 0.0, 12,
                0, self._bad_prog, target, -1, 0,
            ), planted=True)
            entry = PlantedEntry(kind, stem, str(self._next_obsid), f"{stem}_flt.fits", at)
            self._planted[oid] = entry
            self._snap = self._make_snap()
            self.version += 1
        return entry

    # -------------------------------------------------------------- test truth
    def _exposure(self, s: _Snap, oid: int) -> Exposure:
        parent = int(s.parent[oid])
        stem = self._stem[oid]
        return Exposure(
            obs_id=self._obs_id[oid],
            dataset=stem,
            obsid=str(int(s.obsid[oid])),
            release=float(s.release[oid]),
            filter=str(_FILTER_NAMES[s.filt[oid]]),
            association=self._obs_id[parent] if parent >= 0 else None,
            key=archive_key(stem, folder=self._folder.get(oid)),
            intent=self._programs[int(s.prog[oid])].intent,
        )

    def _range(self, s: _Snap, lo: float | None, hi: float | None) -> np.ndarray:
        i = 0 if lo is None else int(np.searchsorted(s.release_sorted, lo, side="left"))
        j = s.n if hi is None else int(np.searchsorted(s.release_sorted, hi, side="right"))
        return s.order[i:j]

    def exposures(
        self, lo: float | None = None, hi: float | None = None, *, include_planted: bool = False
    ) -> list[Exposure]:
        """Exposures released in [lo, hi] (inclusive, like MAST), in release order."""
        s = self._snap
        oids = self._range(s, lo, hi)
        return [
            self._exposure(s, int(o)) for o in oids
            if s.kind[o] != _KIND_ASSOC and (include_planted or int(o) not in self._planted)
        ]

    def observation_ids(self, lo: float | None = None, hi: float | None = None) -> list[str]:
        """``obs_id`` of every observation (associations too) released in [lo, hi]."""
        s = self._snap
        return [self._obs_id[int(o)] for o in self._range(s, lo, hi)]

    def flt_keys(self, *, include_planted: bool = False) -> Iterator[tuple[str, str]]:
        """Yield ``(dataset, key)`` for every FLT file, each once (dataset = lower-case obs_id).

        This is what tests and the demo upload to the ``stpubdata`` bucket.
        """
        s = self._snap
        for oid in range(s.n):
            if s.kind[oid] == _KIND_ASSOC:
                continue
            if oid in self._planted and not include_planted:
                continue
            stem = self._stem[oid]
            yield stem, archive_key(stem, folder=self._folder.get(oid))

    # ------------------------------------------------------------ MAST queries
    def cloud_path(self, uri: str) -> str | None:
        """What MAST's path lookup service answers for a product ``dataURI``
        (``mast:HST/product/<file>``): ``/hst/public/<4>/<folder>/<file>`` for a file of the
        archive (in the folder its observation is filed under), else None (MAST: 404)."""
        name = uri.removeprefix(_URI_PREFIX)
        if name == uri or not name.endswith(".fits") or "_" not in name:
            return None
        stem, _, suffix = name[: -len(".fits")].rpartition("_")
        s = self._snap
        oid = self._stem_index().get(stem)
        if oid is None or oid >= s.n:
            return None
        jitter = stem != self._stem[oid]
        if (suffix, jitter) not in _suffixes(int(s.kind[oid])):
            return None
        folder = self._folder.get(oid, self._stem[oid])
        return f"/hst/public/{folder[:4]}/{folder}/{name}"

    def _stem_index(self) -> dict[str, int]:
        """File stem (an observation's own, or its jitter files') -> observation."""
        with self._lock:
            if self._by_stem is None:
                kinds = self._snap.kind.tolist()
                index: dict[str, int] = {}
                for oid, stem in enumerate(self._stem[: len(kinds)]):
                    index[stem] = oid
                    if kinds[oid] != _KIND_ASSOC and oid not in self._planted:
                        index.setdefault(stem[:-1] + "j", oid)
                self._by_stem = index
            return self._by_stem

    def select_observations(self, filters: Sequence[dict[str, Any]]) -> ObservationSelection:
        """Evaluate a ``Mast.Caom.Filtered`` filter list; raise `FilterError` if unsupported."""
        s = self._snap
        if not isinstance(filters, list | tuple):
            raise FilterError("filters must be a list")
        cand: np.ndarray | None = None
        rest = []
        for f in filters:
            if not isinstance(f, dict) or "paramName" not in f:
                raise FilterError(f"malformed filter {f!r}")
            vals = f.get("values", [])
            # Fast path: one release-date range is a bisection on the sorted column.
            if (
                cand is None
                and str(f["paramName"]).lower() == "t_obs_release"
                and isinstance(vals, list) and len(vals) == 1 and isinstance(vals[0], dict)
            ):
                lo, hi = _minmax(vals[0])
                cand = self._range(s, lo, hi)
            else:
                rest.append(f)
        if cand is None:
            cand = s.order
        for f in rest:
            if len(cand) == 0:
                break
            cand = cand[self._match(s, f, cand)]
        return ObservationSelection(self, s, cand)

    def _column(self, s: _Snap, name: str, oids: np.ndarray) -> tuple[str, Any]:
        """Return ("const", value) / ("str", array of str) / ("num", float array)."""
        progs = self._programs
        match name:
            case "dataproduct_type":
                return "const", "image"
            case "obs_collection" | "project":
                return "const", "HST"
            case "instrument_name":
                return "const", "WFC3/IR"
            case "wavelength_region":
                return "const", "INFRARED"
            case "dataRights":
                return "const", "PUBLIC"
            case "filters":
                return "str", _FILTER_NAMES[s.filt[oids]]
            case "obs_id":
                return "str", [self._obs_id[o] for o in oids.tolist()]
            case "target_name":
                return "str", [self._targets[t][0] for t in s.target[oids].tolist()]
            case "target_classification":
                return "str", [self._targets[t][1] for t in s.target[oids].tolist()]
            case "proposal_id":
                return "str", [progs[p].proposal_id for p in s.prog[oids].tolist()]
            case "proposal_pi":
                return "str", [json.loads(progs[p].pi_json) for p in s.prog[oids].tolist()]
            case "obs_title":
                return "str", [json.loads(progs[p].title_json) for p in s.prog[oids].tolist()]
            case "intentType":
                return "str", [progs[p].intent for p in s.prog[oids].tolist()]
            case "calib_level":
                return "str", np.where(s.kind[oids] == _KIND_ASSOC, "3", "2").astype(object)
            case "obsid":
                return "str", s.obsid[oids].astype(str).astype(object)
            case "objID":
                return "str", (s.obsid[oids] + 1_000_000_000).astype(str).astype(object)
            case "s_ra":
                return "num", s.ra[oids]
            case "s_dec":
                return "num", s.dec[oids]
            case "t_min":
                return "num", s.t_min[oids]
            case "t_max":
                return "num", s.t_max[oids]
            case "t_exptime":
                return "num", s.exptime[oids]
            case "t_obs_release":
                return "num", s.release[oids]
            case "em_min":
                return "num", _EM_MIN[s.filt[oids]]
            case "em_max":
                return "num", _EM_MAX[s.filt[oids]]
        raise FilterError(f"filtering on column {name!r} is not supported by the stand-in")

    def _match(self, s: _Snap, f: dict[str, Any], cand: np.ndarray) -> np.ndarray:
        name = _canonical_column(str(f["paramName"]))
        values = f.get("values", [])
        if not isinstance(values, list):
            raise FilterError(f"values of {name!r} must be a list")
        kind, col = self._column(s, name, cand)
        if kind == "num":
            if not values:
                return np.ones(len(cand), bool)
            mask = np.zeros(len(cand), bool)
            for v in values:
                if not isinstance(v, dict):
                    raise FilterError(f"{name} is continuous: values must be {{min, max}}")
                lo, hi = _minmax(v)
                mask |= (col >= lo) & (col <= hi)
            return mask
        wanted = {str(v).lower() for v in values}
        free = f.get("freeText")
        like = _like_regex(str(free)) if free else None
        sep = f.get("separator")
        if not wanted and like is None:
            return np.ones(len(cand), bool)

        def ok(value: str) -> bool:
            # SQL Server's default collation compares case-insensitively.
            parts = value.split(sep) if sep else (value,)
            return any(
                p.lower() in wanted or (like is not None and like.match(p) is not None)
                for p in parts
            )

        if kind == "const":
            return np.full(len(cand), ok(col), bool)
        return np.fromiter((ok(v) for v in col), bool, len(cand))

    def select_products(self, obsids: Iterable[str]) -> ProductSelection:
        """The ``Mast.Caom.Products`` rows of the given observations, in request order.

        Unknown obsids contribute nothing (as on MAST). An association lists its own
        products, then every member's.
        """
        s = self._snap
        kinds = _product_kinds()
        n_exp, n_single, n_asn = kinds.n_exposure, kinds.n_singleton, kinds.n_association
        exp_k = list(range(n_exp))
        single_k = exp_k + [n_exp + i for i in range(n_single)]
        asn_k = [n_exp + n_single + i for i in range(n_asn)]
        ki: list[int] = []
        po: list[int] = []
        pa: list[int] = []
        for raw in obsids:
            oid = self._by_obsid.get(raw.strip())
            if oid is None or oid >= s.n:
                continue
            k = int(s.kind[oid])
            if k == _KIND_ASSOC:
                ki += asn_k
                po += [oid] * n_asn
                nmem = int(s.nmem[oid])
                ki += exp_k * nmem
                for m in range(oid + 1, oid + 1 + nmem):
                    po += [m] * n_exp
                pa += [oid] * (n_asn + n_exp * nmem)
            else:
                ks = single_k if k == _KIND_SINGLE else exp_k
                ki += ks
                po += [oid] * len(ks)
                pa += [oid] * len(ks)
        return ProductSelection(self, s, np.array(ki, np.int16), np.array(po, np.int64),
                                np.array(pa, np.int64))


def _minmax(v: dict[str, Any]) -> tuple[float, float]:
    try:
        return float(v["min"]), float(v["max"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FilterError(f"bad continuous range {v!r}") from exc


@cache
def _canonical_column(name: str) -> str:
    # astroquery matches filter names case-insensitively against the columns config.
    for f in _data("observation_fields.json"):
        if f["name"].lower() == name.lower():
            return f["name"]
    raise FilterError(f"unknown column {name!r}")


@cache
def _like_regex(pattern: str) -> re.Pattern[str]:
    """SQL LIKE (``%`` any run, ``_`` one character) as a case-insensitive regex."""
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


# ----------------------------------------------------------------- encoding
def _const_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@cache
def _observation_template() -> tuple[str, tuple[str, ...]]:
    """A %-template for one observation row, in the field order of the MAST answer."""
    constants = {
        "dataproduct_type": "image", "obs_collection": "HST", "instrument_name": "WFC3/IR",
        "project": "HST", "wavelength_region": "INFRARED", "dataRights": "PUBLIC",
        "mtFlag": False, "srcDen": None,
    }
    parts, variables = [], []
    for f in _data("observation_fields.json"):
        name = f["name"]
        if name in constants:
            parts.append(f"{_js(name)}:{_const_json(constants[name])}")
        else:
            parts.append(f"{_js(name)}:%s")
            variables.append(name)
    return "{" + ",".join(parts) + "}", tuple(variables)


@dataclass(frozen=True)
class _Kinds:
    n_exposure: int
    n_singleton: int
    n_association: int
    templates: list[str]  # exposure + singleton + association kinds, in that order
    jitter: np.ndarray  # bool per kind: file stem is the rootname ending in "j"
    rule: np.ndarray  # int per kind: 0 constant size, 1 raw, 2 ima, 3 flt, 4 drz
    const_size: np.ndarray  # int64 per kind


_SIZE_RULES = {"raw": 1, "ima": 2, "flt": 3, "drz": 4}


@cache
def _product_kinds() -> _Kinds:
    """Product row templates with constants inlined.

    The variable parts, in order: obsID (%d), obs_id (JSON literal), the file stem in
    dataURI (%s, escaped), proposal_id (%s), the stem in productFilename (%s), size
    (%d), parent_obsid (%d), filters (JSON literal).
    """
    doc = _data("wfc3ir_products.json")
    kinds = doc["exposure"] + doc["singleton"] + doc["association"]
    templates = []
    for kind in kinds:
        fname = f"%s_{kind['suffix']}.fits"
        const = {
            "obs_collection": "HST", "dataproduct_type": "image",
            "description": kind["description"], "type": "S", "productType": kind["productType"],
            "productGroupDescription": kind["productGroupDescription"],
            "productSubGroupDescription": kind["productSubGroupDescription"],
            "productDocumentationURL": None, "project": "HST", "prvversion": None,
            "dataRights": "PUBLIC", "calib_level": kind["calib_level"], "_selected_": None,
        }
        variable = {
            "obsID": '"%d"', "obs_id": "%s", "dataURI": f'"mast:HST/product/{fname}"',
            "proposal_id": '"%s"', "productFilename": f'"{fname}"', "size": "%d",
            "parent_obsid": '"%d"', "filters": "%s",
        }
        parts = []
        order = []
        for f in _data("product_fields.json"):
            name = f["name"]
            if name in variable:
                parts.append(f"{_js(name)}:{variable[name]}")
                order.append(name)
            else:
                parts.append(f"{_js(name)}:{_const_json(const[name])}")
        # The encoder fills values in this fixed order; a reordered field list must
        # not silently swap them.
        if tuple(order) != _PRODUCT_VARS:
            raise RuntimeError(f"product_fields.json order changed: {order}")
        templates.append("{" + ",".join(parts) + "}")
    return _Kinds(
        len(doc["exposure"]), len(doc["singleton"]), len(doc["association"]), templates,
        np.array([k["stem"] == "jitter" for k in kinds]),
        np.array([_SIZE_RULES.get(k["size"], 0) if isinstance(k["size"], str) else 0
                  for k in kinds]),
        np.array([k["size"] if isinstance(k["size"], int) else 0 for k in kinds], np.int64),
    )


_URI_PREFIX = "mast:HST/product/"


@cache
def _suffixes(kind: int) -> frozenset[tuple[str, bool]]:
    """(suffix, named after the jitter stem) of every product an observation kind lists."""
    doc = _data("wfc3ir_products.json")
    kinds = {_KIND_MEMBER: doc["exposure"], _KIND_SINGLE: doc["exposure"] + doc["singleton"],
             _KIND_ASSOC: doc["association"]}[kind]
    return frozenset((k["suffix"], k["stem"] == "jitter") for k in kinds)


_PRODUCT_VARS = ("obsID", "obs_id", "dataURI", "proposal_id", "productFilename", "size",
                 "parent_obsid", "filters")
_FILTER_JSON = [_js(f[0]) for f in _FILTERS]
# WFC3/IR field of view, 136" x 123", as half-sizes in degrees.
_HALF_X, _HALF_Y = 136.0 / 7200.0, 123.0 / 7200.0


def _sizes(kinds: _Kinds, ki: np.ndarray, nsamp: np.ndarray, obsid: np.ndarray,
           nmem: np.ndarray) -> np.ndarray:
    """Plausible WFC3/IR file sizes, whole FITS blocks of 2880 bytes (vectorised)."""
    rule = kinds.rule[ki]
    nsamp = nsamp.astype(np.int64)
    blocks = np.select(
        [rule == 1, rule == 2, rule == 3, rule == 4],
        [
            4 + nsamp * 731,  # RAW, per read: int16 SCI 1024x1024 + headers
            4 + nsamp * 5842,  # IMA, per read: float SCI, ERR, TIME; int16 DQ, SAMP
            5754 + obsid % 3,  # FLT: 1014x1014 SCI, ERR, TIME float32; DQ, SAMP int16
            12 + 3 * (1681 + 120 * np.maximum(nmem.astype(np.int64) - 1, 0)) + obsid % 5,
        ],
        default=0,
    )
    return np.where(rule == 0, kinds.const_size[ki], 2880 * blocks)


class ObservationSelection:
    """The rows of one ``Mast.Caom.Filtered`` query, encodable page by page."""

    def __init__(self, archive: Archive, snap: _Snap, oids: np.ndarray) -> None:
        """Hold the snapshot the query ran against, so paging sees a stable answer."""
        self._a = archive
        self._s = snap
        self.oids = oids

    @property
    def count(self) -> int:
        """Number of rows (``rowsFiltered``)."""
        return len(self.oids)

    def encode(self, start: int = 0, stop: int | None = None) -> list[str]:
        """JSON object texts of rows [start, stop)."""
        oids = self.oids[start:stop]
        if len(oids) == 0:
            return []
        template, variables = _observation_template()
        cols = [self._values(name, oids) for name in variables]
        return [template % row for row in zip(*cols, strict=True)]

    def _values(self, name: str, oids: np.ndarray) -> list[Any]:
        a, s = self._a, self._s
        progs = a._programs
        match name:
            case "filters":
                return [_FILTER_JSON[f] for f in s.filt[oids].tolist()]
            case "target_name":
                return [a._target_name_json[t] for t in s.target[oids].tolist()]
            case "target_classification":
                return [a._target_class_json[t] for t in s.target[oids].tolist()]
            case "obs_id":
                return [a._obs_id_json[o] for o in oids.tolist()]
            case "s_ra":
                return s.ra[oids].tolist()
            case "s_dec":
                return s.dec[oids].tolist()
            case "proposal_id":
                return [f'"{progs[p].proposal_id}"' for p in s.prog[oids].tolist()]
            case "proposal_pi":
                return [progs[p].pi_json for p in s.prog[oids].tolist()]
            case "calib_level":
                return np.where(s.kind[oids] == _KIND_ASSOC, 3, 2).tolist()
            case "t_min":
                return s.t_min[oids].tolist()
            case "t_max":
                return s.t_max[oids].tolist()
            case "t_exptime":
                return s.exptime[oids].tolist()
            case "em_min":
                return _EM_MIN[s.filt[oids]].tolist()
            case "em_max":
                return _EM_MAX[s.filt[oids]].tolist()
            case "obs_title":
                return [progs[p].title_json for p in s.prog[oids].tolist()]
            case "t_obs_release":
                return s.release[oids].tolist()
            case "s_region":
                return self._regions(oids)
            case "jpegURL":
                return [
                    _js(f"https://archive.stsci.edu/hst/previews/{u[:4]}/{u}.jpg")
                    for u in (a._stem[o].upper() for o in oids.tolist())
                ]
            case "dataURL":
                kinds = s.kind[oids].tolist()
                # A member's own data is its FLT; singletons and associations: a DRZ.
                return [
                    _js(f"mast:HST/product/{a._stem[o]}_{'flt' if k == _KIND_MEMBER else 'drz'}"
                        ".fits")
                    for o, k in zip(oids.tolist(), kinds, strict=True)
                ]
            case "obsid":
                return [f'"{o}"' for o in s.obsid[oids].tolist()]
            case "objID":
                return [f'"{o + 1_000_000_000}"' for o in s.obsid[oids].tolist()]
            case "intentType":
                return [f'"{progs[p].intent}"' for p in s.prog[oids].tolist()]
        raise KeyError(name)

    def _regions(self, oids: np.ndarray) -> list[str]:
        s = self._s
        ra, dec = s.ra[oids], s.dec[oids]
        pa = np.radians(s.pa[oids])
        # Associations cover the dithered footprint: a little larger.
        grow = np.where(s.kind[oids] == _KIND_ASSOC, 1.05, 1.0)
        cosd = np.maximum(np.cos(np.radians(dec)), 1e-3)
        corners = []
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            x, y = sx * _HALF_X * grow, sy * _HALF_Y * grow
            corners.append((ra + (x * np.cos(pa) - y * np.sin(pa)) / cosd) % 360.0)
            corners.append(dec + x * np.sin(pa) + y * np.cos(pa))
        pts = np.stack(corners + corners[:2], axis=1).tolist()
        fmt = '"POLYGON ICRS ' + " ".join(["%.8f"] * 10) + '"'
        return [fmt % tuple(p) for p in pts]


class ProductSelection:
    """The rows of one ``Mast.Caom.Products`` query, encodable page by page."""

    def __init__(self, archive: Archive, snap: _Snap, ki: np.ndarray, oid: np.ndarray,
                 parent: np.ndarray) -> None:
        """Hold (product kind, product oid, parent oid) columns against one snapshot."""
        self._a = archive
        self._s = snap
        self.ki, self.oid, self.parent = ki, oid, parent

    @property
    def count(self) -> int:
        """Number of rows (``rowsFiltered``)."""
        return len(self.ki)

    def encode(self, start: int = 0, stop: int | None = None) -> list[str]:
        """JSON object texts of rows [start, stop)."""
        a, s = self._a, self._s
        kinds = _product_kinds()
        ki, oid, parent = self.ki[start:stop], self.oid[start:stop], self.parent[start:stop]
        if len(ki) == 0:
            return []
        obsid = s.obsid[oid]
        sizes = _sizes(kinds, ki, s.nsamp[oid], obsid, s.nmem[oid]).tolist()
        jitter = kinds.jitter[ki].tolist()
        oid_l = oid.tolist()
        stems = [(a._jstem_esc if j else a._stem_esc)[o]
                 for j, o in zip(jitter, oid_l, strict=True)]
        tmpl = kinds.templates
        progs = a._programs
        props = [progs[p].proposal_id for p in s.prog[oid].tolist()]
        obs_json = a._obs_id_json
        return [
            tmpl[k] % (ob, obs_json[o], st, pr, st, sz, pa, _FILTER_JSON[f])
            for k, ob, o, st, pr, sz, pa, f in zip(
                ki.tolist(), obsid.tolist(), oid_l, stems, props, sizes,
                s.obsid[parent].tolist(), s.filt[oid].tolist(), strict=True,
            )
        ]
