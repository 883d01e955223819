"""``mastmirror preview``: an exposure with its catalog's Kron ellipses drawn on it.

The picture people know from the SEP demonstration: the SCI image on a robust (zscale,
asinh) stretch, one ellipse per source at its AUTO aperture. The image is read with the
handler's own ranged reader (SCI, ERR and DQ only), the catalog from the output store.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from astropy.io import fits

from daemon.config import Config
from daemon.outputs import OutputStore
from lambda_sep import storage
from lambda_sep.contract import catalog_key
from lambda_sep.fitsread import read_image
from state.store import StateStore


class PreviewError(Exception):
    """The preview cannot be drawn; the message says why (unknown dataset, no catalog...)."""


def render(sci: np.ndarray, catalog: fits.FITS_rec, out: Path, *, title: str) -> Path:
    """Draw ``sci`` with the catalog's ellipses into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
    from matplotlib.collections import EllipseCollection

    finite = np.where(np.isfinite(sci), sci, np.nanmedian(sci))
    norm = ImageNormalize(finite, interval=ZScaleInterval(), stretch=AsinhStretch(0.5))
    ny, nx = finite.shape
    fig = plt.figure(figsize=(nx / 100, ny / 100 + 0.4), dpi=100)
    ax = fig.add_axes((0, 0, 1, ny / (ny + 40)))
    ax.imshow(finite, origin="lower", cmap="gray", norm=norm, interpolation="nearest")
    if len(catalog):
        scale = np.asarray(catalog["kron_radius"], dtype=float)
        scale = np.where(scale > 0, scale, 3.0)  # circular-aperture sources: a modest ring
        a = np.asarray(catalog["a"], dtype=float) * scale
        b = np.asarray(catalog["b"], dtype=float) * scale
        # Catalog x, y are 1-based (FITS); matplotlib's pixel centres are 0-based.
        xy = np.column_stack([np.asarray(catalog["x"]) - 1.0, np.asarray(catalog["y"]) - 1.0])
        ells = EllipseCollection(2 * a, 2 * b, np.asarray(catalog["theta"], dtype=float),
                                 units="xy", offsets=xy, offset_transform=ax.transData,
                                 facecolors="none", edgecolors="red", linewidths=0.6)
        ax.add_collection(ells)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.set_axis_off()
    fig.text(0.01, 1 - 0.2 / (ny / 100 + 0.4), title, va="center", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def preview(config: Config, obs_id: str, out: Path | None = None) -> Path:
    """Draw the preview of one catalogued dataset; returns the PNG path."""
    try:
        store = StateStore(config.state_path, readonly=True)
    except FileNotFoundError as exc:
        raise PreviewError(str(exc)) from None
    with store:
        row = store.get(obs_id)
    if row is None:
        raise PreviewError(f"{obs_id}: not in the state database")
    if row["state"] != "done":
        raise PreviewError(f"{obs_id}: no catalog yet (state {row['state']}"
                           + (f": {row['error']}" if row["error"] else "") + ")")
    outputs = OutputStore(config.output_url)
    key = row["catalog_key"] or catalog_key(row["input_key"])
    raw = outputs.read(key)
    if raw is None:
        raise PreviewError(f"{obs_id}: catalog {key} is missing from {config.output_url}")
    with fits.open(io.BytesIO(raw)) as hdul:
        catalog = hdul[1].data.copy()
    archive = storage.open_store(config.archive.bucket, anonymous=config.archive.anonymous)
    info = archive.head(row["input_key"])
    if info is None:
        raise PreviewError(f"{obs_id}: exposure {row['input_key']} is missing from "
                           f"{config.archive.bucket}")
    image = read_image(archive, row["input_key"], info.size, etag=info.etag or None)
    title = f"{obs_id}  {image.keyword('FILTER', '')}  {len(catalog)} sources (Kron apertures)"
    return render(image.sci, catalog, out or Path(f"{obs_id}_preview.png"), title=title)
