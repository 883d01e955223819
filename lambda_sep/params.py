"""The function's parameters: the extraction's (the ``sep`` table of an event and ``[sep]``
of config.toml).

Standard library only, so the daemon can validate its configuration (and ``status`` can
start) without importing numpy, astropy, sep or boto3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

__all__ = ["DEFAULT_DQ_MASK", "SepParams", "finite_number"]

# WFC3 DQ bits whose pixel values are wrong: 1 Reed-Solomon error, 2 fill, 4 bad detector
# pixel, 8 unstable in zero read, 16 hot, 32 unstable response, 128 bad reference pixel,
# 4096 cosmic ray found by AstroDrizzle. Left unmasked on purpose: 64 warm, 256 full-well
# saturation and 2048 signal in zero read (IR ramps are fitted from the unsaturated reads,
# masking them would cut the cores out of bright stars), 512 flat-field blobs (corrected by
# the flat), 1024, 8192 up-the-ramp cosmic ray (rejected by the fit: the value is good),
# 16384 ghost/crosstalk.
DEFAULT_DQ_MASK = 1 | 2 | 4 | 8 | 16 | 32 | 128 | 4096

_MAX_APERTURES = 16


def finite_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _spec(default: Any, doc: str, check: Any, expect: str) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check, "expect": expect})


def _int_in(lo: int, hi: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _float_in(lo: float, hi: float, *, lo_open: bool = False) -> Any:
    return lambda v: finite_number(v) and (lo < v if lo_open else lo <= v) and v <= hi


def _radii(v: Any) -> bool:
    return (
        isinstance(v, list | tuple)
        and 1 <= len(v) <= _MAX_APERTURES
        and all(finite_number(r) and 0 < r <= 200 for r in v)
    )


@dataclass(frozen=True)
class SepParams:
    """Extraction parameters: the ``sep`` table of an event and of ``[sep]`` in config.toml.

    Every field has a default; ``from_dict`` refuses unknown keys and wrong types/ranges with
    a ``ValueError`` naming the key and what is expected.
    """

    thresh: float = _spec(
        3.5, "detection threshold in units of the per-pixel noise (of the filtered image "
        "for filter_type='matched')", _float_in(0.0, 1e4, lo_open=True), "a number > 0")
    minarea: int = _spec(10, "minimum number of pixels above threshold", _int_in(1, 10**6),
                         "an integer >= 1")
    filter_type: str = _spec("matched", "'matched' (SEP's matched filter, uses the noise "
                             "map) or 'conv' (SExtractor's plain convolution)",
                             lambda v: v in ("matched", "conv"), "'matched' or 'conv'")
    filter_fwhm: float = _spec(2.0, "FWHM in pixels of the Gaussian detection kernel; 0 = "
                               "no filtering", _float_in(0.0, 50.0), "a number in [0, 50]")
    filter_size: int = _spec(5, "side in pixels of the detection kernel (odd)",
                             lambda v: _int_in(1, 63)(v) and v % 2 == 1,
                             "an odd integer in [1, 63]")
    deblend_nthresh: int = _spec(32, "number of deblending thresholds", _int_in(1, 1024),
                                 "an integer in [1, 1024]")
    deblend_cont: float = _spec(0.005, "minimum contrast for deblending (1 = no deblending)",
                                _float_in(0.0, 1.0), "a number in [0, 1]")
    clean: bool = _spec(False, "SEP/SExtractor cleaning of detections in bright objects' "
                        "wings (off: with the matched filter it erases real faint neighbours)",
                        lambda v: isinstance(v, bool), "true or false")
    clean_param: float = _spec(1.0, "cleaning efficiency (SExtractor CLEAN_PARAM)",
                               _float_in(0.0, 100.0, lo_open=True), "a number in (0, 100]")
    bw: int = _spec(64, "background mesh width, pixels", _int_in(2, 4096),
                    "an integer in [2, 4096]")
    bh: int = _spec(64, "background mesh height, pixels", _int_in(2, 4096),
                    "an integer in [2, 4096]")
    fw: int = _spec(3, "background filter width, meshes", _int_in(1, 63),
                    "an integer in [1, 63]")
    fh: int = _spec(3, "background filter height, meshes", _int_in(1, 63),
                    "an integer in [1, 63]")
    fthresh: float = _spec(0.0, "background filter threshold", _float_in(0.0, 1e30),
                           "a number >= 0")
    dq_mask: int = _spec(DEFAULT_DQ_MASK, "DQ bits that mark a pixel bad (sum of bit values)",
                         _int_in(0, 2**31 - 1), "an integer in [0, 2147483647]")
    kron_factor: float = _spec(2.5, "Kron factor k (PHOT_AUTOPARAMS[0])",
                               _float_in(0.0, 100.0, lo_open=True), "a number in (0, 100]")
    kron_min_radius: float = _spec(3.5, "minimum aperture scale in isophotal radii "
                                   "(PHOT_AUTOPARAMS[1])", _float_in(0.0, 100.0),
                                   "a number in [0, 100]")
    auto_min_diameter: float = _spec(0.0, "diameter in pixels of the circular aperture used "
                                     "when the Kron ellipse is smaller (PHOT_AUTOAPERS[1])",
                                     _float_in(0.0, 1000.0), "a number in [0, 1000]")
    aper_radii: tuple[float, ...] = _spec((2.0, 3.0, 5.0, 8.0), "radii in pixels of the "
                                          "circular apertures", _radii,
                                          f"a list of 1 to {_MAX_APERTURES} radii in (0, 200]")
    windowed: bool = _spec(True, "report windowed (XWIN-like) positions instead of "
                           "isophotal barycentres", lambda v: isinstance(v, bool),
                           "true or false")
    mask_neighbours: bool = _spec(True, "treat other detections' pixels in an aperture as "
                                  "masked (filled with the aperture's mean, as bad pixels are)",
                                  lambda v: isinstance(v, bool), "true or false")
    pixstack: int = _spec(3_000_000, "largest SEP pixel stack (pixels above threshold in "
                          "flight): 300,000 first, this for a field that fills it",
                          _int_in(10_000, 100_000_000), "an integer in [10000, 100000000]")
    sub_object_limit: int = _spec(4096, "SEP deblending sub-object limit",
                                  _int_in(64, 1_000_000), "an integer in [64, 1000000]")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata["check"](value):
                raise ValueError(f"{f.name} = {value!r}: expected {f.metadata['expect']}")
        object.__setattr__(self, "aper_radii", tuple(float(r) for r in self.aper_radii))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SepParams:
        """Parameters from a mapping (event ``sep`` table, config ``[sep]``); missing keys
        take defaults. Raises ``ValueError`` naming the offending key and what is expected."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"sep parameters must be a table/object, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"{key}: unknown key; expected one of: {', '.join(sorted(known))}")
        kwargs = dict(d)
        if "aper_radii" in kwargs and isinstance(kwargs["aper_radii"], list):
            kwargs["aper_radii"] = tuple(kwargs["aper_radii"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able values (lists for tuples)."""
        out = dataclasses.asdict(self)
        out["aper_radii"] = list(self.aper_radii)
        return out

    @classmethod
    def describe(cls) -> dict[str, str]:
        """One line of documentation per parameter."""
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}
