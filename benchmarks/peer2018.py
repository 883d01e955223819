"""The 2018 demonstration's Lambda handler, re-implemented step by step for benchmarks.

Where it comes from: the demonstration "Exploring AWS Lambda with cloud-hosted Hubble public
data" (MAST Labs, June 2018, https://mast-labs.stsci.io/2018/06/exploring-aws-lambda-with-hst-public-data)
ran ``process.py`` of https://github.com/spacetelescope/astropy-sep-lambda on Lambda over
WFC3/IR exposures in the stpubdata bucket. The version of that time is commit f3f34a6
(2018-05-30, "Updating example to use SEP"). This project commits no third-party code, so
this module is not a copy: it performs the same steps, in the same order, with the same
libraries and parameters, written anew for current numpy (2.x), astropy and SEP:

1. download the whole object to ``/tmp`` with boto3's managed transfer
   (``Bucket.download_file`` with ``RequestPayer=requester``: a HEAD, then parallel ranged
   GETs of 8 MB parts for an object over 8 MB);
2. ``astropy.io.fits.open`` the file, a ``WCS`` of extension 1 (``relax=True``);
3. extension 1 as the data, extension 2 as the weight, both swapped to native byte order
   (the original's ``byteswap().newbyteorder()``, which numpy 2 removed, becomes
   ``byteswap().view(dtype.newbyteorder())``; its ``np.cast`` of a unused mask, also removed,
   becomes ``astype``);
4. the AB zero point from PHOTFNU, else PHOTFLAM and PHOTPLAM of the primary header;
5. error = 1/sqrt(weight), non-finite -> 0, mask where it is 0;
6. ``sep.Background`` (32x32 meshes, 3x3 filter) and its map; the error rescaled by the
   median of rms/error over unmasked pixels;
7. ``sep.extract`` on data minus background at 2 sigma: ``minarea=14``, a 7x7 Gaussian of
   FWHM 3 pixels with ``filter_type='conv'`` (SExtractor's ``gauss_3.0_7x7.conv``, here
   sampled at pixel centres and scaled to that file's peak, 0.951108), 32 deblending
   thresholds, contrast 0.005, cleaning on; SEP's default pixel stack;
8. an astropy ``Table`` of the objects, a 1-based ``number``, ``theta`` clipped, rows with a
   non-finite a, b, x, y or theta dropped one column at a time, ra/dec through
   ``all_pix2world``;
9. ``sep.kron_radius`` (6 isophotal radii) and ``sep.sum_ellipse`` (``subpix=5``) on data
   minus background (recomputed for each call, as the original does), Kron radius
   ``max(2.5 r, 3.5)``, AUTO magnitudes;
10. the table written as FITS to ``/tmp`` and uploaded with ``upload_file`` to
    ``<output bucket>/<root>/<root>.catalog.fits``.

Changed to run it here: the event gains ``tmpdir`` (where step 1 and step 10 write; Lambda
has ``/tmp``); the catalog file may be overwritten (a benchmark runs the same image again);
it returns the catalog's key and number of rows; print statements become nothing (the
benchmark times the work, not stdout); Python 3 syntax. Nothing else: the same requests
reach S3 and the same arrays reach SEP.
Run against an FLT (extension 2 is ERR there, not a weight map) it does the same amount of
work, which is what a cost benchmark needs; its science is not compared here.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import numpy as np
import sep
from astropy import units as u
from astropy import wcs
from astropy.io import fits
from astropy.table import Table

_SIGMA = 3.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_R = np.arange(7) - 3.0
GAUSS_3_7X7 = 0.951108 * np.exp(-(_R[:, None] ** 2 + _R[None, :] ** 2) / (2 * _SIGMA**2))


def _native(arr: np.ndarray) -> np.ndarray:
    return arr.byteswap().view(arr.dtype.newbyteorder())


def detect_with_sep(event: dict[str, Any], detect_thresh: float = 2.0) -> dict[str, Any]:
    """The demonstration's whole run for one event; returns the catalog's key and length."""
    key = event["fits_s3_key"]
    tmp = event.get("tmpdir", "/tmp")
    root = key.split("/")[-1].split("_")[0]
    local = os.path.join(tmp, root)

    s3 = boto3.resource("s3")
    s3.Bucket(event["fits_s3_bucket"]).download_file(
        key, local, ExtraArgs={"RequestPayer": "requester"})

    im = fits.open(local)
    im_wcs = wcs.WCS(im[1].header, relax=True)
    data = _native(im[1].data)
    wht_data = _native(im[2].data)
    _data_mask = (data == 0).astype(data.dtype)  # computed and unused, as in the original

    hdr = im[0].header
    if "PHOTFNU" in hdr:
        zp = -2.5 * np.log10(hdr["PHOTFNU"]) + 8.90
    elif "PHOTFLAM" in hdr:
        zp = -2.5 * np.log10(hdr["PHOTFLAM"]) - 21.10 - 5 * np.log10(hdr["PHOTPLAM"]) + 18.6921
    else:
        return {"key": None, "sources": 0}
    _ujy_to_dn = 1 / (3631 * 1e6 * 10 ** (-0.4 * zp))

    with np.errstate(divide="ignore", invalid="ignore"):
        err = 1 / np.sqrt(wht_data)
    err[~np.isfinite(err)] = 0
    mask = err == 0

    bkg = sep.Background(data, mask=mask, bw=32, bh=32, fw=3, fh=3)
    bkg_data = bkg.back()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = bkg.rms() / err
    err *= np.median(ratio[(~mask) & np.isfinite(ratio)])

    objects = sep.extract(data - bkg_data, detect_thresh, err=err, mask=mask, minarea=14,
                          filter_kernel=GAUSS_3_7X7, filter_type="conv", deblend_nthresh=32,
                          deblend_cont=0.005, clean=True, clean_param=1.0,
                          segmentation_map=False)

    catalog = Table(objects)
    autoparams = [2.5, 3.5]
    catalog["number"] = np.arange(len(catalog), dtype=np.int32) + 1
    catalog["theta"] = np.clip(catalog["theta"], -np.pi / 2, np.pi / 2)
    for c in ["a", "b", "x", "y", "theta"]:
        catalog = catalog[np.isfinite(catalog[c])]
    catalog["ra"], catalog["dec"] = im_wcs.all_pix2world(catalog["x"], catalog["y"], 1)
    catalog["ra"].unit = u.deg
    catalog["dec"].unit = u.deg
    catalog["x_world"], catalog["y_world"] = catalog["ra"], catalog["dec"]

    kronrad, krflag = sep.kron_radius(data - bkg_data, catalog["x"], catalog["y"],
                                      catalog["a"], catalog["b"], catalog["theta"], 6.0)
    kronrad *= autoparams[0]
    kronrad[~np.isfinite(kronrad)] = autoparams[1]
    kronrad = np.maximum(kronrad, autoparams[1])
    kron_flux, kron_fluxerr, kron_flag = sep.sum_ellipse(
        data - bkg_data, catalog["x"], catalog["y"], catalog["a"], catalog["b"],
        catalog["theta"], kronrad, subpix=5, err=err)
    with np.errstate(divide="ignore", invalid="ignore"):
        catalog["mag_auto_raw"] = zp - 2.5 * np.log10(kron_flux)
        catalog["magerr_auto_raw"] = 2.5 / np.log(10) * kron_fluxerr / kron_flux
    catalog["mag_auto"] = catalog["mag_auto_raw"] * 1.0
    catalog["magerr_auto"] = catalog["magerr_auto_raw"] * 1.0
    catalog["kron_radius"] = kronrad * u.pixel
    catalog["kron_flag"] = krflag
    catalog["kron_flux_flag"] = kron_flag
    im.close()

    out = os.path.join(tmp, f"{root}.catalog.fits")
    catalog.write(out, format="fits", overwrite=True)
    out_key = f"{root}/{root}.catalog.fits"
    boto3.resource("s3").meta.client.upload_file(out, event["s3_output_bucket"], out_key)
    return {"key": out_key, "sources": len(catalog)}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point: one exposure per event."""
    return detect_with_sep(event)
