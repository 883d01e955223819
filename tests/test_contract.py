"""The daemon-function contract (lambda_sep.contract): keys, event, environment."""

from __future__ import annotations

import pytest

from daemon.config import config_from_dict, handler_env
from lambda_sep.contract import (
    archive_anonymous,
    archive_key,
    catalog_key,
    error_key,
    function_env,
    key_dataset,
    make_event,
    product_key,
    product_name,
    results_prefix,
    skipped_key,
)
from lambda_sep.event import parse_event
from lambda_sep.params import SepParams

KEY = "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"


def test_the_archive_key_rule() -> None:
    assert archive_key("icxe15wwq") == KEY
    assert archive_key("ICXE15WWQ") == KEY  # MAST lists upper case, the bucket is lower
    assert archive_key("icxe15010", "drz") == "hst/public/icxe/icxe15010/icxe15010_drz.fits"
    assert product_key("icxe15wwq_flt.fits") == product_key("ICXE15WWQ_FLT.fits") == (
        "icxe15wwq", KEY)
    assert key_dataset(KEY) == "icxe15wwq"


@pytest.mark.parametrize("name", ["icxe15wwq_fl.fits", "icxe15wwq_flt.fit", "icxe15wwq.fits",
                                  "icxe15wwqq_flt.fits", "icxe15wwq_abcdefghi.fits"])
def test_names_outside_the_rule_never_become_keys(name: str) -> None:
    # Suffixes are 3 to 8 characters on both sides: discovery and the function agree.
    with pytest.raises(ValueError, match="not an HST dataset file name"):
        product_key(name)
    with pytest.raises(ValueError, match="is not hst/public/"):
        key_dataset(f"hst/public/icxe/icxe15wwq/{name}")


def test_a_folder_may_differ_from_the_file_root_in_its_last_character() -> None:
    # astroquery's recorded products: u9o40504j_jif.fits of obs_id U9O40504M lives in
    # u9o40504m/; MAST's association products: ibg705081_drz.fits in ibg705080/.
    jif = "hst/public/u9o4/u9o40504m/u9o40504j_jif.fits"
    assert product_key("u9o40504j_jif.fits", "U9O40504M") == ("u9o40504j", jif)
    assert key_dataset(jif) == "u9o40504j"  # the dataset is the file's root
    assert archive_key("ibg705081", "drz", folder="ibg705080") == \
        "hst/public/ibg7/ibg705080/ibg705081_drz.fits"
    assert product_key("icxe15wwq_flt.fits", "icxe15wwq") == product_key("icxe15wwq_flt.fits")


@pytest.mark.parametrize("key", ["hst/public/icxe/icxe15wwr/icxe16wwq_flt.fits",
                                 "hst/public/icxf/icxf15wwq/icxe15wwq_flt.fits",
                                 "hst/public/icxe/icxe15wwq/ibxe15wwq_flt.fits"])
def test_a_folder_shares_the_first_8_characters(key: str) -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        key_dataset(key)
    with pytest.raises(ValueError, match="inconsistent"):
        product_key(key.rsplit("/", 1)[1], key.split("/")[3])


def test_the_4_character_prefix_is_the_folders() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        key_dataset("hst/public/abcd/icxe15wwq/icxe15wwq_flt.fits")


@pytest.mark.parametrize(("name", "reason"), [
    ("hst_16514_21_wfc3_ir_f160w_iepo21aaq_flt.fits", "Hubble Advanced Products"),
    ("hst_11665_06_wfc3_ir_total_ib1f06_drz.fits", "Hubble Advanced Products"),
    ("icxe15wwq_flt.fits" + "x" * 60, "longer than 64"),
    ("../icxe15wwq_flt.fits", "path components"),
    ("icxe15wwq\u200b_flt.fits", "non-ASCII"),
])
def test_refusal_reasons_name_the_kind_not_the_name(name: str, reason: str) -> None:
    # Discovery counts refused names by reason: the reason must not vary with the name.
    with pytest.raises(ValueError, match=reason) as info:
        product_name(name)
    assert name not in str(info.value)


def test_output_keys_share_one_prefix() -> None:
    stem = "hst/public/icxe/icxe15wwq/icxe15wwq_flt"
    assert catalog_key(KEY) == stem + "_sep.fits"
    assert error_key(KEY) == stem + "_sep.error.json"
    assert skipped_key(KEY) == stem + "_sep.skipped.json"
    for key in (catalog_key(KEY), error_key(KEY), skipped_key(KEY)):
        assert key.startswith(results_prefix(KEY))
    with pytest.raises(ValueError, match=r"does not end in \.fits"):
        catalog_key("hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits.gz")


def test_the_daemons_event_is_what_the_function_accepts() -> None:
    config = config_from_dict({"archive": {"bucket": "stpubdata"},
                               "output": {"url": "s3://cats/mirror"},
                               "sep": {"thresh": 2.5}})
    event = make_event(obs_id="icxe15wwq", bucket=config.archive.bucket, key=KEY,
                       output=config.output_url, sep=config.sep, attempt=3)
    ev = parse_event(event, handler_env(config))
    assert (ev.obs_id, ev.key, ev.attempt, ev.output) == ("icxe15wwq", KEY, 3,
                                                          "s3://cats/mirror")
    assert ev.params == SepParams(thresh=2.5)
    assert ev.catalog_key == catalog_key(KEY) and ev.error_key == error_key(KEY)
    assert handler_env(config) == function_env("stpubdata", "s3://cats/mirror") == {
        "MASTMIRROR_ALLOWED_BUCKETS": "stpubdata",
        "MASTMIRROR_ALLOWED_OUTPUTS": "s3://cats/mirror",
        "MASTMIRROR_ARCHIVE_ANONYMOUS": "1"}
    assert ev.anonymous


def test_the_function_reads_the_archive_as_the_config_says() -> None:
    signed = config_from_dict({"archive": {"anonymous": False}, "output": {"url": "s3://cats/m"}})
    env = handler_env(signed)
    assert env["MASTMIRROR_ARCHIVE_ANONYMOUS"] == "0" and not archive_anonymous(env)
    event = make_event(obs_id="icxe15wwq", bucket="stpubdata", key=KEY, output="s3://cats/m",
                       sep={}, attempt=1)
    assert parse_event(event, env).anonymous is False
    assert archive_anonymous({})  # unset: the public archive is read anonymously
