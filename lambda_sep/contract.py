"""The contract between the daemon and the extraction function, written once.

Both sides import this module: the daemon (discovery, dispatch, the output store, config,
deployment) and the function (event validation, handler, catalog). It holds the archive's
key rule, the output keys, the function's environment, the bucket-name rule, the S3
metadata and catalog header keywords the daemon reads back, and the event's shape, for one
exposure and for a batch of them.
Standard library only, so it costs the daemon nothing to import and goes into the bundle
with the rest of ``lambda_sep``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ARCHIVE_PREFIX",
    "BATCH",
    "BATCH_ITEM_FIELDS",
    "BATCH_SHARED_FIELDS",
    "BUCKET_NAME",
    "BUCKET_RE",
    "CATALOG_SUFFIX",
    "DEFAULT_ALLOWED_BUCKETS",
    "ENV_ALLOWED_BUCKETS",
    "ENV_ALLOWED_OUTPUTS",
    "ENV_ARCHIVE_ANONYMOUS",
    "ERROR_SUFFIX",
    "HDR_ATTEMPT",
    "HDR_BYTES_READ",
    "HDR_INPUT_ETAG",
    "HDR_INPUT_SIZE",
    "HDR_PEAK_RSS",
    "HDR_PROCTIME",
    "HDR_SOURCES",
    "MAX_BATCH",
    "META_ATTEMPT",
    "META_BYTES_READ",
    "META_DURATION_MS",
    "META_INPUT_ETAG",
    "META_INPUT_SIZE",
    "META_MASTMIRROR_VERSION",
    "META_OBS_ID",
    "META_PEAK_RSS_MB",
    "META_SEP_VERSION",
    "META_SOURCES",
    "OBS_ID_RE",
    "RESULTS_INFIX",
    "SKIPPED_SUFFIX",
    "BatchError",
    "archive_anonymous",
    "archive_key",
    "catalog_key",
    "error_key",
    "exposures",
    "function_env",
    "input_stem",
    "key_dataset",
    "make_batch",
    "make_event",
    "product_key",
    "product_name",
    "results_prefix",
    "skipped_key",
]

# -- archive keys --------------------------------------------------------------------------
# The public HST bucket lays a product out as hst/public/<folder[:4]>/<folder>/<file>, all
# lower case, where the file is <root>_<suffix>.fits and the folder is the observation MAST
# files it under. Usually folder == root. Not always: astroquery's old key rule
# (astroquery/mast/fpl.py, removed in 2020 for MAST's path lookup service) says the file
# name's dataset "would *always* match the actual obs_id folder ... Unfortunately this
# assumption was false", and that only the folder's last character can differ
# (u9o40504j_jif.fits lives in u9o40504m/, an association's ibg705081_drz.fits in
# ibg705080/). So a key's folder shares the first 8 characters (ipppssoo) of the file's root.
# The dataset is the file's root: the exposure. Suffixes are 3 to 8 characters (flt, drz,
# raw, spt, asn, ...): HST has no shorter ones, and discovery never made a key with one.

ARCHIVE_PREFIX = "hst/public/"
_DATASET = r"[a-z0-9]{9}"
_SUFFIX = r"[a-z0-9]{3,8}"
OBS_ID_RE = re.compile(rf"^{_DATASET}$")
_FILENAME_RE = re.compile(rf"^(?P<dataset>{_DATASET})_(?P<suffix>{_SUFFIX})\.fits$")
_KEY_RE = re.compile(rf"^{re.escape(ARCHIVE_PREFIX)}(?P<first4>[a-z0-9]{{4}})/"
                     rf"(?P<folder>{_DATASET})/(?P<dataset>{_DATASET})_{_SUFFIX}\.fits$")
_MAX_FILENAME = 64
# The part of a dataset name its folder must share (instrument, program, visit, exposure).
_FOLDER_SHARED = 8


def archive_key(dataset: str, suffix: str = "flt", *, folder: str | None = None) -> str:
    """The bucket key of one product of ``dataset`` (the one place the layout is written),
    in its own folder unless MAST files it under ``folder``.

    ``archive_key("icxe15wwq")`` -> ``hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits``. It does
    not validate: ``product_key`` and ``key_dataset`` do, where names come from outside.
    """
    d = dataset.lower()
    f = (folder or dataset).lower()
    return f"{ARCHIVE_PREFIX}{f[:4]}/{f}/{d}_{suffix.lower()}.fits"


def product_name(filename: str) -> tuple[str, str]:
    """(dataset, suffix) of an HST product file name as MAST lists it, lower case.

    ``ICXE15WWQ_FLT.fits`` -> ``("icxe15wwq", "flt")``. Anything that is not a plain HST
    file name (path parts, odd characters, too long, a Hubble Advanced Products name)
    raises ValueError with a reason that does not depend on the name (discovery counts the
    refused names by reason): such a name never becomes a key.
    """
    if not filename:
        raise ValueError("empty product file name")
    if len(filename) > _MAX_FILENAME:
        raise ValueError(f"product file name longer than {_MAX_FILENAME} characters")
    if not filename.isascii() or not filename.isprintable():
        raise ValueError("product file name has non-ASCII or control characters")
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError("product file name has path components")
    lower = filename.lower()
    m = _FILENAME_RE.match(lower)
    if m:
        return m["dataset"], m["suffix"]
    if lower.startswith("hst_"):
        # HAP: MAST's Hubble Advanced Products (hst_<proposal>_<visit>_..._flt.fits) are
        # listed beside the pipeline's files; they are not the exposures mastmirror mirrors.
        raise ValueError("a Hubble Advanced Products name (hst_...), not an exposure's file")
    raise ValueError("not an HST dataset file name (ipppssoot_sfx.fits)")


def product_key(filename: str, folder: str | None = None) -> tuple[str, str]:
    """(dataset, bucket key) of an HST product file name as MAST lists it, in ``folder``
    (the product row's ``obs_id``) or else its own.

    ``icxe15wwq_flt.fits`` -> ``("icxe15wwq", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits")``.
    ValueError (with the reason) for a name ``product_name`` refuses, or a folder that does
    not share the dataset's first 8 characters.
    """
    dataset, suffix = product_name(filename)
    key = archive_key(dataset, suffix, folder=folder)
    key_dataset(key)
    return dataset, key


def key_dataset(key: str) -> str:
    """The dataset (the file's root) an archive key names; ValueError unless ``key`` follows
    the layout, its folder shares the dataset's first 8 characters and the 4-character
    prefix is the folder's."""
    m = _KEY_RE.match(key)
    if m is None:
        raise ValueError(f"{key!r} is not {ARCHIVE_PREFIX}<4>/<obs_id>/<obs_id>_<suffix>.fits "
                         "(lower case)")
    if not (m["folder"][:_FOLDER_SHARED] == m["dataset"][:_FOLDER_SHARED]
            and m["first4"] == m["folder"][:4]):
        raise ValueError(f"{key!r} is inconsistent: its folder must share the file's first "
                         f"{_FOLDER_SHARED} characters, and the 4-character prefix be the "
                         "folder's")
    return m["dataset"]


# -- output keys ---------------------------------------------------------------------------
# The output store mirrors the archive: input key K's results are K[:-5] + one suffix.
# Every result key of K starts with K[:-5] + RESULTS_INFIX, so one listing finds them all.

RESULTS_INFIX = "_sep"
CATALOG_SUFFIX = RESULTS_INFIX + ".fits"
ERROR_SUFFIX = RESULTS_INFIX + ".error.json"
SKIPPED_SUFFIX = RESULTS_INFIX + ".skipped.json"


def input_stem(input_key: str) -> str:
    """``K[:-5]``: the input key without ``.fits``; ValueError for another ending."""
    if not input_key.endswith(".fits"):
        raise ValueError(f"input key does not end in .fits: {input_key!r}")
    return input_key[: -len(".fits")]


def results_prefix(input_key: str) -> str:
    """The prefix every result key of ``input_key`` starts with."""
    return input_stem(input_key) + RESULTS_INFIX


def catalog_key(input_key: str) -> str:
    """``K[:-5] + "_sep.fits"``: where the catalog of input key K goes."""
    return input_stem(input_key) + CATALOG_SUFFIX


def error_key(input_key: str) -> str:
    """``K[:-5] + "_sep.error.json"``: where the error marker of input key K goes."""
    return input_stem(input_key) + ERROR_SUFFIX


def skipped_key(input_key: str) -> str:
    """``K[:-5] + "_sep.skipped.json"``: where the skip marker of input key K goes (an
    input that is not an imaging exposure)."""
    return input_stem(input_key) + SKIPPED_SUFFIX


# -- the catalog's figures, as the daemon reads them back -----------------------------------
# S3 user metadata (x-amz-meta-*) on the catalog object.
META_OBS_ID = "obs-id"
META_ATTEMPT = "attempt"
META_SOURCES = "sources"
META_DURATION_MS = "duration-ms"
META_PEAK_RSS_MB = "peak-rss-mb"
META_BYTES_READ = "bytes-read"
META_INPUT_ETAG = "input-etag"
META_INPUT_SIZE = "input-size"
META_SEP_VERSION = "sep-version"
META_MASTMIRROR_VERSION = "mastmirror-version"
# The same figures in the catalog extension's header, for stores without metadata.
HDR_SOURCES = "NAXIS2"  # one row per source
HDR_ATTEMPT = "ATTEMPT"
HDR_PROCTIME = "PROCTIME"  # seconds
HDR_BYTES_READ = "BYTESRD"
HDR_PEAK_RSS = "PEAKRSS"  # MB
HDR_INPUT_ETAG = "INETAG"
HDR_INPUT_SIZE = "INSIZE"  # bytes

# -- the function's environment ------------------------------------------------------------
# Lambda's environment is set at deploy (`mastmirror lambda deploy` sets these from
# config.toml; the local pool's workers get the same), so a change of them needs a deploy.
ENV_ALLOWED_BUCKETS = "MASTMIRROR_ALLOWED_BUCKETS"  # comma-separated; unset: the default
ENV_ALLOWED_OUTPUTS = "MASTMIRROR_ALLOWED_OUTPUTS"  # comma-separated URL prefixes
# "1" (and unset): read the input bucket unsigned, as the public archive is read; "0": sign
# with the function's own credentials (a private mirror). The output store is always signed.
ENV_ARCHIVE_ANONYMOUS = "MASTMIRROR_ARCHIVE_ANONYMOUS"
DEFAULT_ALLOWED_BUCKETS = "stpubdata"


def function_env(allowed_buckets: str, allowed_outputs: str, *,
                 anonymous: bool = True) -> dict[str, str]:
    """The environment that lets the function read ``allowed_buckets`` (unsigned when
    ``anonymous``) and write under ``allowed_outputs`` (each a comma-separated list)."""
    return {ENV_ALLOWED_BUCKETS: allowed_buckets, ENV_ALLOWED_OUTPUTS: allowed_outputs,
            ENV_ARCHIVE_ANONYMOUS: "1" if anonymous else "0"}


def archive_anonymous(env: Mapping[str, str]) -> bool:
    """Whether the function reads its input unsigned (``ENV_ARCHIVE_ANONYMOUS``; default
    yes: the public archive needs no account)."""
    return env.get(ENV_ARCHIVE_ANONYMOUS, "1").strip() not in ("0", "false", "no")


# -- buckets -------------------------------------------------------------------------------
# S3 bucket naming rules (the subset that matters: length, charset, no leading or trailing
# dot or dash).
BUCKET_NAME = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
BUCKET_RE = re.compile(rf"^{BUCKET_NAME}$")


# -- the event -----------------------------------------------------------------------------

def make_event(*, obs_id: str, bucket: str, key: str, output: str, sep: Mapping[str, Any],
               attempt: int) -> dict[str, Any]:
    """The event for one exposure, as the daemon sends it (lambda_sep.event validates it):
    the same dict for the local pool and for Lambda."""
    return {"obs_id": obs_id, "input": {"bucket": bucket, "key": key}, "output": output,
            "sep": dict(sep), "attempt": attempt}


# -- several exposures in one event ([executor] batch above 1) --------------------------------
# A batch event carries what its exposures share once, and each exposure's own fields in a
# list, in the order the function works through them:
#
#     {"batch": [{"obs_id": "icxe15wwq", "attempt": 1,
#                 "input": {"bucket": "stpubdata",
#                           "key": "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"}},
#                {"obs_id": "icxe15wxq", "attempt": 3, "input": {...}}],
#      "output": "s3://bucket/prefix",
#      "sep": {...}}
#
# Each item expands to exactly the single-exposure event with the shared output and sep: it
# is validated alone and gets its own catalog or marker, so one bad item costs only itself.

BATCH = "batch"
# Lambda takes asynchronous events of up to 256 KB; an item is ~150 bytes, and a hundred
# exposures run ~30 s at 1 vCPU, far inside Lambda's 900 s.
MAX_BATCH = 100
BATCH_ITEM_FIELDS = ("obs_id", "input", "attempt")
BATCH_SHARED_FIELDS = ("output", "sep")


class BatchError(ValueError):
    """The event's ``batch`` is not a list of 1 to MAX_BATCH exposures."""


def make_batch(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One event for single-exposure ``events`` that share their output and parameters."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} exposures, not {len(events)}")
    first = events[0]
    for e in events[1:]:
        if any(e[k] != first[k] for k in BATCH_SHARED_FIELDS):
            raise ValueError("the events of a batch must share output and sep")
    return {BATCH: [{k: e[k] for k in BATCH_ITEM_FIELDS} for e in events],
            **{k: first[k] for k in BATCH_SHARED_FIELDS}}


def exposures(event: Any) -> list[Any]:
    """The single-exposure events ``event`` carries: each item of its batch with the shared
    fields, or the event itself when it is not a batch. Items are passed on as they are
    (validating them is the function's work); a ``batch`` that is not a list of 1 to
    MAX_BATCH entries raises :class:`BatchError`."""
    if not isinstance(event, dict) or BATCH not in event:
        return [event]
    items = event[BATCH]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        size = len(items) if isinstance(items, list) else type(items).__name__
        raise BatchError(f"batch must be a list of 1 to {MAX_BATCH} exposures, not {size}")
    shared = {k: event.get(k) for k in BATCH_SHARED_FIELDS}
    return [{**item, **shared} if isinstance(item, dict) else item for item in items]
