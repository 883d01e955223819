"""lambda_sep.fitsread: partial reads of FLT/DRZ files over ranged requests."""

from __future__ import annotations

import io
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from lambda_sep.fitsread import BLOCK, ImageError, read_image
from lambda_sep.storage import FileStore, ObjectChanged, open_store
from standin.flt import BROKEN_KINDS, make_broken_flt, make_flt


class RecordingStore(FileStore):
    """A real file store that also records every ranged read it serves."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.calls: list[tuple[int, int]] = []

    def read_range(self, key: str, start: int, stop: int, *, etag: str | None = None
                   ) -> bytes:
        self.calls.append((start, stop))
        return super().read_range(key, start, stop, etag=etag)


def _layout(data: bytes) -> dict[str, tuple[int, int, int]]:
    """EXTNAME -> (header start, data start, data end) according to astropy."""
    out = {}
    with fits.open(io.BytesIO(data)) as hdul:
        for i, hdu in enumerate(hdul):
            info = hdul.fileinfo(i)
            nbytes = hdu.header.get("NAXIS", 0) and abs(hdu.header["BITPIX"]) // 8 * int(
                np.prod([hdu.header[f"NAXIS{j}"] for j in range(1, hdu.header["NAXIS"] + 1)]))
            out[hdu.name] = (info["hdrLoc"], info["datLoc"], info["datLoc"] + nbytes)
    return out


def _store(tmp_path: Path, data: bytes, key: str = "x_flt.fits") -> RecordingStore:
    store = RecordingStore(str(tmp_path))
    store.put_atomic(key, data)
    return store


def test_flt_arrays_match_astropy(exposure, tmp_path: Path) -> None:
    store = _store(tmp_path, exposure.data)
    img = read_image(store, "x_flt.fits", len(exposure.data))
    with fits.open(io.BytesIO(exposure.data)) as hdul:
        np.testing.assert_array_equal(img.sci, hdul["SCI"].data)
        np.testing.assert_array_equal(img.err, hdul["ERR"].data)
        np.testing.assert_array_equal(img.dq, hdul["DQ"].data)
        assert img.primary["FILTER"] == hdul[0].header["FILTER"]
        assert img.sci_header["CTYPE1"] == "RA---TAN-SIP"
    for arr in (img.sci, img.err, img.dq):
        assert arr.dtype.isnative and arr.flags.c_contiguous
    assert img.wht is None
    assert img.extensions == ["PRIMARY", "SCI", "ERR", "DQ"]
    assert img.keyword("PHOTFLAM") == pytest.approx(1.9275e-20)  # from the primary (IR)


def test_flt_reads_few_bytes_and_never_samp_or_time(exposure, tmp_path: Path) -> None:
    store = _store(tmp_path, exposure.data)
    img = read_image(store, "x_flt.fits", len(exposure.data))
    size = len(exposure.data)
    assert store.calls == img.ranges
    assert img.bytes_read == sum(b - a for a, b in store.calls)
    assert img.bytes_read <= 0.65 * size, img.bytes_read / size
    assert len(store.calls) <= 3
    layout = _layout(exposure.data)
    for name in ("SAMP", "TIME"):
        hdr_start, _, data_end = layout[name]
        for a, b in store.calls:
            assert b <= hdr_start or a >= data_end, f"read [{a},{b}) touches {name}"
    # Nothing read twice, nothing beyond the end of the DQ data.
    covered = sorted(store.calls)
    assert all(b0 <= a1 for (_, b0), (a1, _) in itertools.pairwise(covered))
    assert max(b for _, b in covered) == layout["DQ"][2]


def test_header_bigger_than_first_read_falls_back(tmp_path: Path) -> None:
    data, _ = make_flt("icxe15wwq", seed=3, n_stars=5, n_galaxies=5)
    with fits.open(io.BytesIO(data)) as hdul:
        for i in range(1200):  # ~96 KB of HISTORY: the primary header outgrows 64 KiB
            hdul[0].header.add_history(f"calibration step {i} " + "x" * 40)
        buf = io.BytesIO()
        hdul.writeto(buf)
    big = buf.getvalue()
    store = _store(tmp_path, big)
    img = read_image(store, "x_flt.fits", len(big))
    with fits.open(io.BytesIO(big)) as hdul:
        np.testing.assert_array_equal(img.dq, hdul["DQ"].data)
    layout = _layout(big)
    assert layout["SCI"][0] > 64 * 1024
    assert all(b <= layout["SAMP"][0] for _, b in store.calls)
    # A tiny first read works too, just with more requests.
    store.calls.clear()
    img = read_image(store, "x_flt.fits", len(big), first_read=BLOCK)
    np.testing.assert_array_equal(img.err[:5, :5], fits.getdata(io.BytesIO(big), "ERR")[:5, :5])


def test_drz_reads_sci_and_wht(drz_exposure, tmp_path: Path) -> None:
    store = _store(tmp_path, drz_exposure.data, "x_drz.fits")
    img = read_image(store, "x_drz.fits", len(drz_exposure.data))
    assert img.err is None and img.dq is None and img.wht is not None
    assert img.wht.shape == img.sci.shape
    layout = _layout(drz_exposure.data)
    assert all(b <= layout["CTX"][1] for _, b in store.calls)  # no CTX data


def test_scaled_and_unsigned_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sci = rng.integers(0, 30000, (64, 64)).astype(np.int16)
    dq = rng.integers(0, 65535, (64, 64)).astype(np.uint16)
    sci_hdu = fits.ImageHDU(sci, name="SCI")
    sci_hdu.header["BSCALE"] = 0.01
    sci_hdu.header["BZERO"] = 5.0
    err = fits.ImageHDU(np.ones((64, 64), ">f8"), name="ERR")  # big-endian float64
    dq_hdu = fits.ImageHDU(dq, name="DQ")  # astropy stores uint16 as int16 + BZERO 32768
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), sci_hdu, err, dq_hdu]).writeto(buf)
    data = buf.getvalue()
    img = read_image(_store(tmp_path, data), "x_flt.fits", len(data))
    np.testing.assert_allclose(img.sci, sci * 0.01 + 5.0, rtol=1e-6)
    np.testing.assert_array_equal(img.dq, dq.astype(np.int64))
    assert img.err.dtype == np.float32 and np.all(img.err == 1.0)


@pytest.mark.parametrize(("kind", "message"), [
    ("truncated", "truncated"),
    ("corrupt-header", "corrupt"),
    ("no-sci", "no SCI extension"),
    ("wrong-shape", "does not match SCI shape"),
    ("cube", "3-dimensional"),
    ("not-fits", "not a FITS file"),
    ("empty", "not a FITS file"),
])
def test_broken_files_raise_image_error(kind: str, message: str, tmp_path: Path) -> None:
    data = make_broken_flt(kind)
    store = open_store(f"file://{tmp_path}")
    if data:
        store.put_atomic("x_flt.fits", data)
    with pytest.raises(ImageError, match=message):
        read_image(store, "x_flt.fits", len(data))


def test_all_broken_kinds_are_covered() -> None:
    # all-nan and all-zero decode fine; extraction refuses them (test_sep_extract).
    assert set(BROKEN_KINDS) == {"truncated", "corrupt-header", "no-sci", "wrong-shape",
                                 "cube", "not-fits", "empty", "all-nan", "all-zero"}


def test_object_shorter_than_its_head_size(exposure, tmp_path: Path) -> None:
    """The object changed under us (shorter than HEAD said): a clear error, not garbage."""
    store = _store(tmp_path, exposure.data[: len(exposure.data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(store, "x_flt.fits", len(exposure.data))


def test_an_input_reprocessed_while_it_is_read_is_not_mixed(exposure, tmp_path: Path) -> None:
    """read_image with the ETag of its first read: an exposure the archive replaces between
    two of its ranged reads (a reprocessing) raises the retryable ObjectChanged instead of
    decoding headers of one version with pixels of another."""
    store = _store(tmp_path, exposure.data)
    info = store.head("x_flt.fits")
    assert info is not None
    assert read_image(store, "x_flt.fits", info.size, etag=info.etag).sci.shape == (1014, 1014)

    class Reprocessed(RecordingStore):
        def read_range(self, key: str, start: int, stop: int, *, etag: str | None = None
                       ) -> bytes:
            if len(self.calls) == 1:  # after the first read, the new version lands
                time.sleep(0.05)  # the file's mtime (in its ETag) moves by clock ticks
                store.put_atomic(key, exposure.data[:BLOCK] + b" " + exposure.data[BLOCK + 1:])
            return super().read_range(key, start, stop, etag=etag)

    with pytest.raises(ObjectChanged, match="changed while being read") as caught:
        read_image(Reprocessed(str(tmp_path)), "x_flt.fits", info.size, etag=info.etag)
    assert caught.value.retryable
