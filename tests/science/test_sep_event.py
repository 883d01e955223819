"""Event validation: the contract, the allow-lists, and where a refusal may leave a marker."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lambda_sep.event import EventError, allowed_buckets, allowed_outputs, parse_event
from lambda_sep.params import SepParams

KEY = "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"
ENV = {"MASTMIRROR_ALLOWED_BUCKETS": "stpubdata, file:///data/mirror",
       "MASTMIRROR_ALLOWED_OUTPUTS": "s3://out-bucket/catalogs,file:///srv/catalogs/"}
GOOD: dict[str, Any] = {"obs_id": "icxe15wwq", "input": {"bucket": "stpubdata", "key": KEY},
                        "output": "s3://out-bucket/catalogs", "sep": {"thresh": 2.0},
                        "attempt": 2}
MARKER = ("s3://out-bucket/catalogs", "hst/public/icxe/icxe15wwq/icxe15wwq_flt_sep.error.json")


def _with(path: str, value: Any) -> dict[str, Any]:
    ev = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = ev
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return ev


def test_good_event() -> None:
    ev = parse_event(GOOD, ENV)
    assert ev.obs_id == "icxe15wwq" and ev.key == KEY and ev.attempt == 2
    assert ev.bucket == "s3://stpubdata" and ev.bucket_name == "stpubdata"
    assert ev.output == "s3://out-bucket/catalogs"
    assert ev.params == SepParams(thresh=2.0)
    assert ev.catalog_key == "hst/public/icxe/icxe15wwq/icxe15wwq_flt_sep.fits"
    assert ev.error_key == MARKER[1]


def test_file_urls_and_nested_output() -> None:
    ev = parse_event(_with("input.bucket", "file:///data/mirror/"), ENV)
    assert ev.bucket == "file:///data/mirror"
    ev = parse_event(_with("output", "file:///srv/catalogs/run1"), ENV)
    assert ev.output == "file:///srv/catalogs/run1"
    ev = parse_event(_with("input.key", "hst/public/icxe/icxe15wwq/icxe15wwq_drz.fits"), ENV)
    assert ev.catalog_key.endswith("icxe15wwq_drz_sep.fits")


def test_a_folder_that_differs_from_the_file_root_as_mast_files_it() -> None:
    # MAST can file an exposure under a folder whose last character differs from the file's
    # root (docs/ARCHIVE.md): the key is accepted, and the dataset is still the file's root.
    key = "hst/public/icxe/icxe15wwm/icxe15wwq_flt.fits"
    ev = parse_event(_with("input.key", key), ENV)
    assert (ev.obs_id, ev.key) == ("icxe15wwq", key)
    assert ev.error_key == "hst/public/icxe/icxe15wwm/icxe15wwq_flt_sep.error.json"
    event = _with("input.key", key)
    event["obs_id"] = "icxe15wwm"  # the folder's name is not the dataset
    with pytest.raises(EventError, match="does not match the input key") as info:
        parse_event(event, ENV)
    assert info.value.marker == (MARKER[0], ev.error_key)


def test_default_allow_lists() -> None:
    assert allowed_buckets({}) == ["s3://stpubdata"]
    assert allowed_outputs({}) == []
    with pytest.raises(EventError, match="not under an allowed output") as info:
        parse_event(GOOD, {})  # no allowed outputs: everything is refused
    assert info.value.marker is None


@pytest.mark.parametrize(("path", "value", "message"), [
    ("obs_id", "ICXE15WWQ", "does not match"),
    ("obs_id", "icxe15ww", "does not match"),
    ("obs_id", "icxe15wwr", "does not match the input key"),
    ("obs_id", KeyError, "does not match"),
    ("attempt", 0, "attempt"),
    ("attempt", "1", "attempt"),
    ("attempt", True, "attempt"),
    ("attempt", KeyError, "attempt"),
    ("input.bucket", "other-bucket", "not allowed"),
    ("input.bucket", "file:///data/mirror/sub", "not allowed"),
    ("input.bucket", "", "bucket"),
    ("sep", {"thresh": -1}, "sep: thresh"),
    ("sep", {"nope": 1}, "unknown key"),
])
def test_refused_with_marker(path: str, value: Any, message: str) -> None:
    """Output allowed and key well-formed: the refusal may be recorded at the marker key."""
    with pytest.raises(EventError, match=message) as info:
        parse_event(_with(path, value), ENV)
    assert info.value.marker == MARKER
    assert info.value.key == KEY


@pytest.mark.parametrize(("path", "value"), [
    ("output", "s3://out-bucket/catalogs-evil"),
    ("output", "s3://out-bucket"),
    ("output", "s3://other/catalogs"),
    ("output", "file:///srv/catalogs/../etc"),
    ("output", "file:///srv"),
    ("output", "/srv/catalogs"),
    ("output", "s3://out-bucket/catalogs/\u00e9"),
    ("output", 42),
    ("output", KeyError),
    ("input.key", "hst/public/icxe/icxe15wwq/../../../etc/passwd.fits"),
    ("input.key", "/hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"),
    ("input.key", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits/../x.fits"),
    ("input.key", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits\x00"),
    ("input.key", "hst\\public\\icxe\\icxe15wwq\\icxe15wwq_flt.fits"),
    ("input.key", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits" + "x" * 2000),
    ("input.key", "hst/public/icxe/icxe15wwq/\u0456cxe15wwq_flt.fits"),
    ("input.key", "hst/public/abcd/icxe15wwq/icxe15wwq_flt.fits"),
    ("input.key", "hst/public/icxe/icxe16wwq/icxe15wwq_flt.fits"),
    ("input.key", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fit"),
    ("input.key", "other/prefix/icxe/icxe15wwq/icxe15wwq_flt.fits"),
    ("input.key", 7),
    ("input", "stpubdata/" + KEY),
])
def test_refused_without_marker(path: str, value: Any) -> None:
    """No safe place for a marker: nothing may be written anywhere."""
    with pytest.raises(EventError) as info:
        parse_event(_with(path, value), ENV)
    assert info.value.marker is None


@pytest.mark.parametrize("event", [None, [], "x", 3])
def test_non_object_event(event: Any) -> None:
    with pytest.raises(EventError, match="JSON object") as info:
        parse_event(event, ENV)
    assert info.value.marker is None
