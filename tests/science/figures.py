"""The real-frame figures of docs/CATALOG.md, measured; the tests assert on the same numbers.

    .venv/bin/python tests/science/figures.py [--thresh T]

prints the per-frame table (detections and negated-frame detections at the default
parameters, or at ``thresh = T``, windowed positions kept, and the comparison with
SExtractor) and the masked-pixel photometry table (lambda_sep against SExtractor's
MASK_TYPE BLANK and CORRECT).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import realframes
import sextractor

from lambda_sep.extract import FLAG_WIN_FAILED, Extraction, extract
from lambda_sep.fitsread import Image, read_image
from lambda_sep.params import SepParams
from lambda_sep.storage import FileStore

# SExtractor has no matched filter: both run SExtractor's plain convolution for comparison.
COMPARE = SepParams(filter_type="conv", thresh=1.5, minarea=5)
MATCH_PX = 1.0  # barycentre match radius
MIN_SNR = 20.0  # flux_auto / fluxerr_auto of the sources whose positions and fluxes compare
HASMASKED = 32  # SEP's APER_HASMASKED, in flags_win / flags_auto


def read(name: str, store: FileStore) -> Image:
    """A fresh decode of a real frame (extraction consumes its arrays)."""
    data = realframes.frame(name)
    key = f"{name}.fits"
    if not (Path(store.root) / key).exists():
        store.put_atomic(key, data)
    return read_image(store, key, len(data))


def negated(name: str, store: FileStore) -> Image:
    """The frame with SCI negated (same ERR, DQ, header): its detections are spurious."""
    img = read(name, store)
    np.negative(img.sci, out=img.sci)
    return img


@dataclass
class Matched:
    """lambda_sep's sources matched to SExtractor's (barycentres within MATCH_PX)."""

    ours: Extraction
    sx: object  # astropy Table
    i: np.ndarray  # our indices, bright (S/N >= MIN_SNR) and matched
    j: np.ndarray  # SExtractor's

    @classmethod
    def of(cls, ours: Extraction, sx: object) -> Matched:
        c = ours.columns
        j, dist = sextractor.nearest(c["x_bary"], c["y_bary"], sx)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = c["flux_auto"] / c["fluxerr_auto"]
        ok = (dist < MATCH_PX) & (snr >= MIN_SNR)
        return cls(ours, sx, np.flatnonzero(ok), j[ok])

    def matched_fraction(self) -> float:
        """Our sources with a SExtractor source within MATCH_PX, any S/N."""
        c = self.ours.columns
        _, dist = sextractor.nearest(c["x_bary"], c["y_bary"], self.sx)
        return float((dist < MATCH_PX).mean()) if len(dist) else 1.0

    def position_offsets(self) -> np.ndarray:
        """|(x, y) - (XWIN, YWIN)| of the bright matched sources."""
        c = self.ours.columns
        return np.hypot(c["x"][self.i] - np.asarray(self.sx["XWIN_IMAGE"])[self.j],
                        c["y"][self.i] - np.asarray(self.sx["YWIN_IMAGE"])[self.j])

    def window_masked(self) -> np.ndarray:
        """Which bright matched sources have masked pixels in their window."""
        return (self.ours.columns["flags_win"][self.i] & HASMASKED) != 0

    def auto_masked(self) -> np.ndarray:
        """Which bright matched sources have masked pixels in their AUTO aperture."""
        return self.ours.columns["maskfrac_auto"][self.i] > 0

    def flux_differences(self) -> np.ndarray:
        """flux_auto / FLUX_AUTO - 1 of the bright matched sources."""
        return self.ours.columns["flux_auto"][self.i] / np.asarray(
            self.sx["FLUX_AUTO"])[self.j] - 1.0


def _median(v: np.ndarray) -> float:
    return float(np.median(v)) if len(v) else float("nan")


@dataclass
class FrameFigures:
    """One row of the docs' per-frame table."""

    name: str
    detections: int
    negated: int
    windowed: int  # sources with a windowed position (flags_win without 1)
    ours: int  # comparison settings: our count, SExtractor's, our matched fraction
    theirs: int
    matched: float
    bright: int  # bright matched sources
    dpos: float  # median |position - XWIN|, all bright matched
    dpos_masked: float  # the same, those with masked pixels in the window
    n_masked_win: int
    dflux: float  # median AUTO difference, bright matched without masked pixels
    n_masked_auto: int
    dflux_blank: float  # with masked pixels: against SExtractor BLANK, CORRECT
    dflux_correct: float


def measure(name: str, work: Path, defaults: SepParams | None = None) -> FrameFigures:
    """Every figure of one frame (SExtractor runs in ``work``); the detection counts with
    ``defaults`` (SepParams() when None)."""
    store = FileStore(str(work / "frames"))
    defaults = defaults or SepParams()
    ex = extract(read(name, store), defaults)
    neg = extract(negated(name, store), defaults)
    ours = extract(read(name, store), COMPARE)
    plain = Matched.of(ours, sextractor.run(read(name, store), COMPARE, work / f"{name}-sx"))
    blank = Matched.of(ours, sextractor.run(read(name, store), COMPARE, work / f"{name}-b",
                                            mask_type="BLANK", measure_masked=True))
    correct = Matched.of(ours, sextractor.run(read(name, store), COMPARE, work / f"{name}-c",
                                              mask_type="CORRECT", measure_masked=True))
    dpos, win_masked = plain.position_offsets(), plain.window_masked()
    auto_masked_b, auto_masked_c = blank.auto_masked(), correct.auto_masked()
    return FrameFigures(
        name=name, detections=ex.count, negated=neg.count,
        windowed=int(np.count_nonzero((ex.columns["flags_win"] & FLAG_WIN_FAILED) == 0)),
        ours=ours.count, theirs=len(plain.sx), matched=plain.matched_fraction(),
        bright=len(plain.i), dpos=_median(dpos), dpos_masked=_median(dpos[win_masked]),
        n_masked_win=int(win_masked.sum()),
        dflux=_median(plain.flux_differences()[~plain.auto_masked()]),
        n_masked_auto=int(auto_masked_b.sum()),
        dflux_blank=_median(blank.flux_differences()[auto_masked_b]),
        dflux_correct=_median(correct.flux_differences()[auto_masked_c]),
    )


def markdown(rows: list[FrameFigures]) -> str:
    """The two tables of docs/CATALOG.md."""
    def pct(v: float) -> str:
        return "–" if np.isnan(v) else f"{100 * v:+.2f}%"

    def px(v: float) -> str:
        return "–" if np.isnan(v) else f"{v:.4f}"

    out = ["| frame | detections | negated frame | windowed kept | SEP / SExtractor "
           "(matched) | S/N ≥ 20 | median \\|pos − XWIN\\| px | with masked pixels in "
           "window | median AUTO diff |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r.name} | {r.detections} | {r.negated} | {r.windowed}/{r.detections} | "
            f"{r.ours} / {r.theirs} ({r.matched:.1%}) | {r.bright} | {px(r.dpos)} | "
            f"{px(r.dpos_masked)} ({r.n_masked_win}) | {pct(r.dflux)} |" for r in rows]
    out += ["", "| frame | S/N ≥ 20 with masked pixels in AUTO | vs SExtractor BLANK | "
            "vs SExtractor CORRECT |", "|---|---|---|---|"]
    out += [f"| {r.name} | {r.n_masked_auto} | {pct(r.dflux_blank)} | "
            f"{pct(r.dflux_correct)} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Measure every science frame and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--thresh", type=float, default=SepParams().thresh,
                    help="detection threshold of the detection and negated-frame counts")
    args = ap.parse_args(argv)
    params = SepParams(thresh=args.thresh)
    with tempfile.TemporaryDirectory(prefix="figures_") as tmp:
        rows = [measure(name, Path(tmp), params) for name in realframes.SCIENCE]
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
