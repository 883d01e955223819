"""Read the parts of an HST FLT/DRZ file that extraction needs, over ranged reads.

A WFC3/IR FLT is PRIMARY, SCI, ERR, DQ, SAMP, TIME (~16.5 MB); extraction needs the headers
and the SCI, ERR and DQ data (~62% of the file), never SAMP or TIME. A DRZ is PRIMARY, SCI,
WHT, CTX; extraction needs SCI and WHT. The reader walks the FITS structure (2880-byte
blocks, headers parsed with ``astropy.io.fits.Header.fromstring``) and fetches:

1. the first 64 KiB (the primary and SCI headers of a real FLT fit in it);
2. after the SCI header: one read from there to the end of the SCI data plus room for the
   next header and an array of SCI's size plus room for one more header (so ERR's header
   and data and DQ's header arrive in the same request, or WHT for a DRZ);
3. the rest of the DQ data, exactly up to its last byte.

A header larger than the room guessed for it costs one more small read; nothing past the
last needed byte is requested. Every request is recorded (``Image.ranges``) and counted.

Broken input raises :class:`ImageError` (a subclass of ``ValueError``) with a reason a
person can act on; storage trouble propagates as ``storage.StorageError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits

from lambda_sep.storage import ObjectNotFound, ObjectStore

__all__ = ["BLOCK", "FIRST_READ", "Image", "ImageError", "ReadStopped", "read_image"]

BLOCK = 2880
CARD = 80
FIRST_READ = 64 * 1024
# Bounds on what we accept as an image: SEP needs a real 2-D array, and Lambda's memory is
# finite (an 8192^2 float32 image with ERR, DQ and SEP's work arrays is ~1.3 GB).
MIN_SIDE = 16
MAX_SIDE = 8192
MAX_HEADER_BLOCKS = 2000  # 5.8 MB of header cards means something is wrong
_HEADER_CHUNK = 4 * BLOCK  # fallback read size when a header outgrows the guess
_WANTED = ("SCI", "ERR", "DQ", "WHT")

_DTYPES: dict[int, np.dtype[Any]] = {
    8: np.dtype("u1"), 16: np.dtype(">i2"), 32: np.dtype(">i4"), 64: np.dtype(">i8"),
    -32: np.dtype(">f4"), -64: np.dtype(">f8")}


class ImageError(ValueError):
    """The input file is unusable (not FITS, truncated, no SCI, wrong shape, no data)."""


class ReadStopped(Exception):
    """``read_image``'s ``inspect`` gave a reason not to read the pixels."""

    def __init__(self, reason: str, bytes_read: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bytes_read = bytes_read


@dataclass
class Image:
    """The decoded parts of one exposure, native byte order, C-contiguous."""

    sci: np.ndarray  # float32, e-/s (or whatever BUNIT says)
    err: np.ndarray | None  # float32, same units as SCI
    dq: np.ndarray | None  # int32 bit flags
    wht: np.ndarray | None  # float32 (DRZ weight: exposure time or inverse variance)
    primary: fits.Header
    sci_header: fits.Header
    size: int  # file size in bytes
    bytes_read: int
    ranges: list[tuple[int, int]] = field(default_factory=list)  # every request, [start, stop)
    extensions: list[str] = field(default_factory=list)  # EXTNAMEs walked, in file order

    def keyword(self, name: str, default: object = None) -> object:
        """A keyword from the SCI header, falling back to the primary (as HST files need:
        IR FLTs keep PHOTFLAM in the primary, UVIS and ACS in SCI)."""
        if name in self.sci_header:
            return self.sci_header[name]
        return self.primary.get(name, default)


@dataclass
class _Hdu:
    index: int
    name: str
    ver: int
    header: fits.Header
    header_start: int
    data_start: int
    nbytes: int  # unpadded data size

    @property
    def next_start(self) -> int:
        return self.data_start + _padded(self.nbytes)


_CARD_CHARS = bytes(range(0x20, 0x7F))


def _not_card_text(raw: bytes) -> bool:
    """True when ``raw`` holds a byte that cannot appear in a header card (printable ASCII
    only); bytes.translate keeps this at C speed for 30 KB HST headers."""
    return bool(raw.translate(None, _CARD_CHARS))


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class _Reader:
    """Ranged reads of one object, with the bytes kept in a few contiguous segments."""

    def __init__(self, store: ObjectStore, key: str, size: int, etag: str | None) -> None:
        self.store = store
        self.key = key
        self.size = size
        self.etag = etag  # every read is of this version (None: not checked)
        self.segments: list[tuple[int, bytearray]] = []
        self.ranges: list[tuple[int, int]] = []
        self.bytes_read = 0

    def _find(self, start: int, stop: int) -> memoryview | None:
        for seg_start, buf in self.segments:
            if seg_start <= start and stop <= seg_start + len(buf):
                return memoryview(buf)[start - seg_start : stop - seg_start]
        return None

    def have_until(self, start: int) -> int:
        """End of the contiguous bytes held from ``start`` (``start`` if none)."""
        for seg_start, buf in self.segments:
            if seg_start <= start <= seg_start + len(buf):
                return seg_start + len(buf)
        return start

    def fetch(self, start: int, stop: int) -> memoryview:
        """Bytes ``[start, stop)``, reading only what is not held yet."""
        stop = min(stop, self.size)
        if start >= stop:
            return memoryview(b"")
        got = self._find(start, stop)
        if got is not None:
            return got
        # Extend the segment that reaches ``start`` rather than re-reading its tail.
        for seg_start, held in self.segments:
            seg_end = seg_start + len(held)
            if seg_start <= start <= seg_end:
                held.extend(self._read(seg_end, stop))  # in place: the list keeps the same buffer
                return memoryview(held)[start - seg_start : stop - seg_start]
        new = bytearray(self._read(start, stop))
        self.segments.append((start, new))
        return memoryview(new)[: stop - start]

    def _read(self, start: int, stop: int) -> bytes:
        try:
            data = self.store.read_range(self.key, start, stop, etag=self.etag)
        except ObjectNotFound as exc:
            raise ImageError(f"input object disappeared while reading: {exc}") from exc
        self.ranges.append((start, stop))
        self.bytes_read += len(data)
        if len(data) != stop - start:
            raise ImageError(
                f"truncated read at bytes {start}-{stop}: got {len(data)} of {stop - start} "
                f"bytes (the object is shorter than its size of {self.size})"
            )
        return data


def _find_end(reader: _Reader, pos: int, what: str) -> int:
    """Offset just past the header block holding the END card of the header at ``pos``."""
    block = pos
    for _ in range(MAX_HEADER_BLOCKS):
        if block + BLOCK > reader.size:
            raise ImageError(f"truncated file: {what} header runs past the end of the file "
                             f"({reader.size} bytes) without an END card")
        if reader.have_until(block) < block + BLOCK:
            reader.fetch(block, block + _HEADER_CHUNK)
        raw = bytes(reader.fetch(block, block + BLOCK))
        for off in range(0, BLOCK, CARD):
            card = raw[off : off + CARD]
            if card.startswith(b"END") and not card[3:].strip():
                return block + BLOCK
        if _not_card_text(raw):
            raise ImageError(f"corrupt {what} header at byte {block}: non-ASCII bytes in "
                             "header cards")
        block += BLOCK
    raise ImageError(f"corrupt {what} header at byte {pos}: no END card within "
                     f"{MAX_HEADER_BLOCKS} blocks")


def _int_kw(header: fits.Header, name: str, what: str) -> int:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImageError(f"corrupt {what} header: {name} = {value!r} is not an integer")
    return value


def _parse_hdu(reader: _Reader, pos: int, index: int) -> _Hdu:
    what = "primary" if index == 0 else f"extension {index}"
    end = _find_end(reader, pos, what)
    raw = bytes(reader.fetch(pos, end))
    if _not_card_text(raw):
        raise ImageError(f"corrupt {what} header at byte {pos}: non-ASCII bytes in cards")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard cards are common in HST headers
            header = fits.Header.fromstring(raw.decode("ascii"))
    except Exception as exc:  # astropy raises several types for malformed cards
        raise ImageError(f"corrupt {what} header at byte {pos}: {exc}") from exc
    first = next(iter(header.keys()), "")
    if index == 0:
        if first != "SIMPLE" or header.get("SIMPLE") is not True:
            raise ImageError("not a FITS file: the first card is not SIMPLE = T")
    elif first != "XTENSION":
        raise ImageError(f"corrupt {what} header at byte {pos}: it does not start with XTENSION")
    bitpix = _int_kw(header, "BITPIX", what)
    if bitpix not in _DTYPES:
        raise ImageError(f"corrupt {what} header: BITPIX = {bitpix} is not a FITS value")
    naxis = _int_kw(header, "NAXIS", what)
    if not 0 <= naxis <= 999:
        raise ImageError(f"corrupt {what} header: NAXIS = {naxis}")
    dims = [_int_kw(header, f"NAXIS{i}", what) for i in range(1, naxis + 1)]
    if any(d < 0 for d in dims):
        raise ImageError(f"corrupt {what} header: negative axis length {dims}")
    pcount = int(header.get("PCOUNT", 0) or 0)
    gcount = int(header.get("GCOUNT", 1) or 1)
    nelem = int(np.prod(dims, dtype=np.int64)) if naxis else 0
    if naxis and header.get("XTENSION", "").strip() == "BINTABLE":
        nbytes = abs(bitpix) // 8 * gcount * (pcount + nelem)
    else:
        nbytes = abs(bitpix) // 8 * gcount * (pcount + nelem) if naxis else 0
    name = str(header.get("EXTNAME", "PRIMARY" if index == 0 else "")).strip().upper()
    ver = header.get("EXTVER", 1)
    ver = ver if isinstance(ver, int) and not isinstance(ver, bool) else 1
    if end + nbytes > reader.size:
        raise ImageError(
            f"truncated file: {name or what} data end at byte {end + nbytes} but the file "
            f"has {reader.size} bytes"
        )
    return _Hdu(index, name, ver, header, pos, end, nbytes)


def read_headers(store: ObjectStore, key: str, size: int, count: int, *,
                 etag: str | None = None) -> list[fits.Header]:
    """The first ``count`` headers of a FITS object, reading its header blocks only.

    The reconciler uses it to learn a catalog's source count and run figures from a store
    that keeps no object metadata, without reading the table. With ``etag`` (the object's,
    from ``head``) every read is of that version, or ObjectChanged is raised: the headers
    take more than one read, and a catalog replaced between two would mix two runs.
    """
    reader = _Reader(store, key, size, etag)
    headers: list[fits.Header] = []
    pos = 0
    for index in range(count):
        if pos >= size:
            break
        hdu = _parse_hdu(reader, pos, index)
        headers.append(hdu.header)
        pos = hdu.next_start
    return headers


def _decode(reader: _Reader, hdu: _Hdu, *, as_float: bool) -> np.ndarray:
    """The HDU's data as a native-order array: float32 (``as_float``) or int32."""
    h = hdu.header
    naxis = h["NAXIS"]
    shape = tuple(h[f"NAXIS{i}"] for i in range(naxis, 0, -1))
    dtype = _DTYPES[h["BITPIX"]]
    raw = np.frombuffer(reader.fetch(hdu.data_start, hdu.data_start + hdu.nbytes), dtype=dtype)
    raw = raw.reshape(shape)
    bscale = float(h.get("BSCALE", 1.0))
    bzero = float(h.get("BZERO", 0.0))
    if as_float:
        out = raw.astype(np.float32)  # converts byte order too; one copy
        if bscale != 1.0 or bzero != 0.0:
            out *= np.float32(bscale)
            out += np.float32(bzero)
        return out
    if dtype.kind == "f":
        raise ImageError(f"{hdu.name} has floating-point BITPIX {h['BITPIX']}; expected "
                         "integer flags")
    out = raw.astype(np.int64 if dtype.itemsize == 8 else np.int32)
    if bscale != 1.0 or bzero != 0.0:
        # Unsigned 16-bit flags are stored as int16 with BZERO = 32768.
        out = (out * bscale + bzero).astype(np.int64)
    return out


def read_image(store: ObjectStore, key: str, size: int, *, first_read: int = FIRST_READ,
               head: bytes | None = None, etag: str | None = None,
               inspect: Callable[[fits.Header, fits.Header], str | None] | None = None
               ) -> Image:
    """Read headers and SCI/ERR/DQ (or SCI/WHT) data of ``key`` without reading the rest.

    ``size`` is the object size (``store.head`` or ``store.read_head``); ``head``, when
    given, is the object's first bytes as ``store.read_head`` returned them: they stand for
    the first read. ``etag`` (the object's, from either) makes every further read one of
    that version, or raises ObjectChanged: an input reprocessed while it is read is never
    catalogued from two versions. ``inspect(primary, sci_header)`` is called as soon as the
    SCI header is parsed, before any pixel data is read: a reason it returns stops the
    reading with :class:`ReadStopped`. Raises :class:`ImageError` for files that are not
    FITS, truncated, corrupt, lack a SCI extension, or whose SCI is not a 2-D image matching
    its ERR/DQ/WHT.
    """
    if size < BLOCK:
        raise ImageError(f"not a FITS file: {size} bytes is less than one 2880-byte block")
    reader = _Reader(store, key, size, etag)
    if head:
        reader.segments.append((0, bytearray(head)))
        reader.ranges.append((0, len(head)))
        reader.bytes_read += len(head)
    reader.fetch(0, min(first_read, size))
    if not bytes(reader.fetch(0, 9)) == b"SIMPLE  =":
        raise ImageError("not a FITS file: it does not begin with SIMPLE =")

    hdus: list[_Hdu] = []
    found: dict[str, _Hdu] = {}
    pos = 0
    index = 0
    while pos < size:
        hdu = _parse_hdu(reader, pos, index)
        hdus.append(hdu)
        sci_found = found.get("SCI")
        if hdu.name in _WANTED and hdu.name not in found and (
            hdu.name == "SCI" or sci_found is None or hdu.ver == sci_found.ver
        ):
            found[hdu.name] = hdu
            if hdu.name == "SCI":
                reason = inspect(hdus[0].header, hdu.header) if inspect else None
                if reason is not None:
                    raise ReadStopped(reason, reader.bytes_read)
                # Speculate: the next HDU is ERR (or WHT) of SCI's size, then DQ's header.
                room = max(BLOCK, hdu.data_start - hdu.header_start)
                stop = hdu.next_start + room + _padded(hdu.nbytes) + room
                reader.fetch(reader.have_until(hdu.header_start), stop)
            elif hdu.name in ("DQ", "WHT"):
                reader.fetch(reader.have_until(hdu.data_start), hdu.data_start + hdu.nbytes)
        if "SCI" in found and (("ERR" in found and "DQ" in found) or "WHT" in found):
            break
        pos = hdu.next_start
        index += 1

    names = [h.name or f"#{h.index}" for h in hdus]
    sci_hdu = found.get("SCI")
    if sci_hdu is None:
        raise ImageError(f"no SCI extension (extensions: {', '.join(names)})")
    naxis = sci_hdu.header["NAXIS"]
    if naxis != 2:
        dims = [sci_hdu.header[f"NAXIS{i}"] for i in range(1, naxis + 1)]
        raise ImageError(f"SCI is {naxis}-dimensional {dims}; expected a 2-D image")
    shape = (sci_hdu.header["NAXIS2"], sci_hdu.header["NAXIS1"])
    if min(shape) < MIN_SIDE or max(shape) > MAX_SIDE:
        raise ImageError(f"SCI shape {shape} is outside {MIN_SIDE}..{MAX_SIDE} pixels a side")
    for name in ("ERR", "DQ", "WHT"):
        other = found.get(name)
        if other is None:
            continue
        oshape = tuple(other.header.get(f"NAXIS{i}") for i in range(other.header["NAXIS"], 0, -1))
        if oshape != shape:
            raise ImageError(f"{name} shape {oshape} does not match SCI shape {shape}")

    sci = _decode(reader, sci_hdu, as_float=True)
    err = _decode(reader, found["ERR"], as_float=True) if "ERR" in found else None
    dq = _decode(reader, found["DQ"], as_float=False) if "DQ" in found else None
    wht = _decode(reader, found["WHT"], as_float=True) if "WHT" in found else None
    return Image(
        sci=sci, err=err, dq=dq, wht=wht, primary=hdus[0].header, sci_header=sci_hdu.header,
        size=size, bytes_read=reader.bytes_read, ranges=list(reader.ranges), extensions=names,
    )
