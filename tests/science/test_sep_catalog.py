"""The catalog FITS file: columns, units, provenance, and byte-for-byte reproducibility."""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from pathlib import Path

import astropy
import astropy.units as u
import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table

from lambda_sep import __version__
from lambda_sep.catalog import RUN_SPECIFIC_KEYWORDS, build_catalog, param_keyword
from lambda_sep.columns import COLUMNS, FLUX
from lambda_sep.extract import extract
from lambda_sep.params import SepParams

REQUIRED = ("number", "x", "y", "ra", "dec", "a", "b", "theta", "kron_radius", "flux_auto",
            "fluxerr_auto", "mag_auto", "magerr_auto", "flux_aper", "fluxerr_aper", "mag_aper",
            "magerr_aper", "flux_radius", "flags", "flags_auto")


def _build(exposure, params: SepParams, *, attempt: int = 1, proc: float = 0.5,
           rss: float = 200.0, date: str = "2024-01-01T00:00:00+00:00") -> bytes:
    img = exposure.read()
    ex = extract(img, params)
    return build_catalog(ex, img, params, obs_id=exposure.obs_id, bucket="stpubdata",
                         key=exposure.key, etag="0123456789abcdef", attempt=attempt,
                         processing_time=proc, peak_rss_mb=rss, date=date)


@pytest.fixture(scope="module")
def catalog(exposure) -> bytes:
    return _build(exposure, SepParams())


def test_valid_fits_with_required_columns_and_units(catalog: bytes) -> None:
    with fits.open(io.BytesIO(catalog)) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "CATALOG"]
        h = hdul[1].header
        n = h["TFIELDS"]
        names = [h[f"TTYPE{i}"] for i in range(1, n + 1)]
        assert set(REQUIRED) <= set(names)
        for i in range(1, n + 1):
            assert f"TUNIT{i}" in h, names[i - 1]  # every column has a unit card
            u.Unit(h[f"TUNIT{i}"])  # an astropy unit string
            assert h.comments[f"TTYPE{i}"], f"{names[i - 1]} has no description"
        units = {names[i - 1]: h[f"TUNIT{i}"] for i in range(1, n + 1)}
        assert units["x"] == "pix" and units["ra"] == "deg" and units["theta"] == "deg"
        assert u.Unit(units["flux_auto"]) == u.electron / u.s
        assert units["mag_auto"] == "mag(AB)" and units["magerr_auto"] == "mag"
        data = hdul[1].data
        naper = len(SepParams().aper_radii)
        assert data["flux_aper"].shape == (h["NAXIS2"], naper)
        assert h["NAXIS2"] == h["NSOURCES"] > 200
        np.testing.assert_array_equal(data["number"], np.arange(1, h["NAXIS2"] + 1))


def test_provenance_header(catalog: bytes, exposure) -> None:
    h = fits.getheader(io.BytesIO(catalog), 1)
    assert h["OBS_ID"] == exposure.obs_id
    assert h["INBUCKET"] == "stpubdata" and h["INKEY"] == exposure.key
    assert h["INETAG"] == "0123456789abcdef"
    assert h["INSIZE"] == len(exposure.data)
    assert 0 < h["BYTESRD"] <= 0.65 * len(exposure.data)
    assert h["SEPVER"] == sep.__version__ and h["ASTROVER"] == astropy.__version__
    assert h["NUMPYVER"] == np.__version__ and h["MMVER"] == __version__
    assert h["FILTER"] == "F160W" and h["EXPTIME"] > 0
    assert 0.5 < h["BKGLEVEL"] < 1.2 and 0.0 < h["BKGRMS"] < 0.1
    assert h["MAGZP"] == pytest.approx(25.946, abs=0.002)
    params = SepParams()
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        stored = h[param_keyword(f.name).removeprefix("HIERARCH ")]
        if isinstance(value, tuple):
            assert tuple(float(v) for v in stored.split(",")) == value
        else:
            assert stored == value, f.name
    for k in RUN_SPECIFIC_KEYWORDS:
        assert k in h
    assert h["PROCTIME"] == 0.5 and h["ATTEMPT"] == 1 and h["PEAKRSS"] == 200.0


def test_reprocessing_is_byte_identical_except_run_specific_cards(exposure, catalog: bytes
                                                                  ) -> None:
    """The same input processed again (fresh decode and extraction, other run values):
    only the run-specific cards differ, in place, and the table bytes are identical."""
    again = _build(exposure, SepParams(), attempt=3, proc=1.23456, rss=512.5,
                   date="2030-12-31T23:59:59+00:00")
    assert len(again) == len(catalog)
    assert again != catalog
    differing = set()
    for off in range(0, len(catalog), 80):
        a, b = catalog[off : off + 80], again[off : off + 80]
        if a != b:
            differing.add(a[:8].decode("ascii").strip())
    assert differing == set(RUN_SPECIFIC_KEYWORDS)
    hdr_end = len(fits.getheader(io.BytesIO(catalog), 1).tostring())
    data_start = len(fits.getheader(io.BytesIO(catalog), 0).tostring()) + hdr_end
    assert catalog[data_start:] == again[data_start:]


def test_catalog_reads_as_a_table(catalog: bytes) -> None:
    t = Table.read(io.BytesIO(catalog), hdu=1, unit_parse_strict="silent")
    assert len(t) > 200
    assert np.all(np.isfinite(t["ra"])) and np.all(np.isfinite(t["x"]))
    assert np.all((t["x"] >= 1) & (t["x"] <= 1014))


def test_empty_catalog_is_valid(noise_exposures) -> None:
    data = _build(noise_exposures[0], SepParams(thresh=1000.0))
    with fits.open(io.BytesIO(data)) as hdul:
        hdul.verify("exception")
        assert hdul[1].header["NAXIS2"] == 0
        assert len(hdul[1].data) == 0
        assert hdul[1].columns["flux_aper"].format == "4E"


def test_building_emits_no_warnings(exposure) -> None:
    """Environments that turn warnings into errors must not lose catalogs: no card is ever
    too long for astropy (long input paths go to CONTINUE cards without a comment)."""
    img = exposure.read()
    ex = extract(img, SepParams())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = build_catalog(ex, img, SepParams(), obs_id=exposure.obs_id,
                             bucket="file:///" + "very/long/mirror/path/" * 8, key=exposure.key,
                             etag="e" * 70, attempt=1, processing_time=0.1, peak_rss_mb=1.0,
                             date="2024-01-01T00:00:00+00:00")
        h = fits.getheader(io.BytesIO(data), 1)
    assert h["INBUCKET"] == "file:///" + "very/long/mirror/path/" * 8
    assert h["INETAG"] == "e" * 70


def _column_table() -> str:
    rows = ["| column | type | unit | meaning |", "|---|---|---|---|"]
    for c in COLUMNS:
        kind = np.dtype(c.dtype).name + ("[NAPER]" if c.per_aperture else "")
        unit = "FLUXUNIT" if c.unit == FLUX else c.unit
        rows.append(f"| `{c.name}` | {kind} | {unit} | {c.description} |")
    return "\n".join(rows)


def _parameter_table() -> str:
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    defaults = SepParams().to_dict()
    rows += [f"| `{name}` | `{json.dumps(defaults[name])}` | {doc} |"
             for name, doc in SepParams.describe().items()]
    return "\n".join(rows)


def test_docs_tables_are_the_codes_tables() -> None:
    """docs/CATALOG.md shows lambda_sep.columns.COLUMNS and SepParams as they are; on a
    mismatch the message is the table to paste."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CATALOG.md").read_text()
    for table in (_column_table(), _parameter_table()):
        assert table in doc, "docs/CATALOG.md should hold this table:\n" + table


def test_header_describes_every_column_in_full(catalog: bytes) -> None:
    h = fits.getheader(io.BytesIO(catalog), 1)
    assert h["TFIELDS"] == len(COLUMNS)
    for i, c in enumerate(COLUMNS, start=1):
        assert h[f"TTYPE{i}"] == c.name and h.comments[f"TTYPE{i}"] == c.description
        assert h[f"TUNIT{i}"] == (h["FLUXUNIT"] if c.unit == FLUX else c.unit)
        assert h[f"TFORM{i}"].endswith({"i2": "I", "i4": "J", "f4": "E", "f8": "D"}[c.dtype])


def test_extraction_fills_every_column_with_its_type(extractions) -> None:
    _, ex = extractions[0]
    assert list(ex.columns) == [c.name for c in COLUMNS]
    for c in COLUMNS:
        arr = ex.columns[c.name]
        assert arr.dtype == np.dtype(c.dtype), c.name
        assert arr.shape == ((ex.count, len(SepParams().aper_radii)) if c.per_aperture
                             else (ex.count,)), c.name
