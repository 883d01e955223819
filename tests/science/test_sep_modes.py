"""lambda_sep.modes: which products and exposures are catalogued (issue 12 point 4). The
headers are the real ones of tests/data; the handler's side is in test_sep_handler.py."""

from __future__ import annotations

import io

import pytest
import realframes
from astropy.io import fits

from lambda_sep.modes import CATALOGUED_PRODUCTS, header_refusal, product_refusal


@pytest.mark.parametrize("product", CATALOGUED_PRODUCTS)
def test_catalogued_products(product: str) -> None:
    assert product_refusal(f"hst/public/icxe/icxe15wwq/icxe15wwq_{product}.fits") is None


@pytest.mark.parametrize("product", ["ima", "raw", "spt", "asn", "crj", "x1d"])
def test_other_products_are_refused_by_name(product: str) -> None:
    reason = product_refusal(f"hst/public/icxe/icxe15wwq/icxe15wwq_{product}.fits")
    assert reason is not None and f"'{product}'" in reason and "flt, flc, drz, drc" in reason


def _headers(name: str) -> tuple[fits.Header, fits.Header]:
    with fits.open(io.BytesIO(realframes.frame(name))) as hdul:
        return hdul[0].header.copy(), hdul["SCI"].header.copy()


@pytest.mark.parametrize("name", realframes.SCIENCE[:-1])
def test_real_imaging_exposures_are_catalogued(name: str) -> None:
    assert header_refusal(*_headers(name)) is None


@pytest.mark.parametrize(("name", "grism"), [("ib6o21qmq", "G102"), ("ib6o23rsq", "G141")])
def test_real_grism_exposures_are_refused(name: str, grism: str) -> None:
    reason = header_refusal(*_headers(name))
    # Their OBSTYPE says SPECTROSCOPIC before the filter is looked at.
    assert reason == "OBSTYPE = 'SPECTROSCOPIC': not an imaging exposure"
    primary, sci = _headers(name)
    primary["OBSTYPE"] = "IMAGING"  # a header that says only the filter
    reason = header_refusal(primary, sci)
    assert reason is not None and f"FILTER = '{grism}' is a grism or prism" in reason


@pytest.mark.parametrize(("cards", "expect"), [
    ({"FILTER": "G800L"}, "FILTER = 'G800L' is a grism"),  # ACS/WFC
    ({"FILTER": "G280"}, "FILTER = 'G280' is a grism"),  # WFC3/UVIS
    ({"FILTER": "CLEAR1L", "FILTER1": "CLEAR1L", "FILTER2": "PR200L"}, "FILTER2 = 'PR200L'"),
    ({"FILTER": "BLANK"}, "filter wheel is closed"),
    ({"EXPTIME": 0.0}, "EXPTIME = 0: no exposure"),
    ({"EXPTIME": -1.0}, "EXPTIME = -1: no exposure"),
    ({"EXPTIME": None}, "EXPTIME = None: no usable exposure time"),
    ({"EXPTIME": "long"}, "EXPTIME = 'long': no usable exposure time"),
])
def test_header_refusals(cards: dict, expect: str) -> None:
    primary, sci = _headers("ib6o23rtq")  # a real F140W FLT
    for key, value in cards.items():
        if value is None:
            del primary[key]
        else:
            primary[key] = value
    reason = header_refusal(primary, sci)
    assert reason is not None and expect in reason, reason


def test_sci_header_wins_over_primary() -> None:
    """As Image.keyword: a keyword in the SCI header is the one that counts."""
    primary, sci = _headers("ib6o23rtq")
    sci["EXPTIME"] = 0.0
    assert "EXPTIME = 0" in (header_refusal(primary, sci) or "")
    primary["EXPTIME"], sci["EXPTIME"] = 0.0, 300.0
    assert header_refusal(primary, sci) is None
