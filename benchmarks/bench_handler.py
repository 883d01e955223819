"""Benchmark the SEP handler against bare SEP on a synthetic 1014x1014 WFC3/IR FLT.

Measured side by side in one run (interleaved, median of ``--runs``):

* handler wall time, reading the FLT from a local ``file://`` store (transfer excluded), and
  the peak RSS of a fresh process that imports the handler and runs it;
* bare ``sep.Background`` + ``sep.extract`` on the same, already decoded arrays with the same
  parameters (mask, ERR as noise, matched-filter kernel), and its fresh-process peak RSS;
* bytes read per image against the file size;
* a Lambda cost model at ``--memory-mb`` and ``--arch``, for one image and for ``--images``
  images, with Lambda's CPU share (1 vCPU at 1769 MB, proportionally less below) applied to
  the local single-threaded time, beside the 2018 demonstration's 1.1 GB-s and $2.24 for
  122,078 images.

Run: ``.venv/bin/python benchmarks/bench_handler.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from daemon.prices import LAMBDA_FULL_VCPU_MB as FULL_VCPU_MB  # noqa: E402
from daemon.prices import LAMBDA_GB_S as PRICE_GB_S  # noqa: E402
from daemon.prices import LAMBDA_REQUEST as PRICE_REQUEST  # noqa: E402

DEMO = {"gb_s": 1.1, "usd": 2.24, "images": 122_078}
MEMORY_TABLE = (512, 1024, 1536, 1769, 2048, 3008)

_CHILD_HANDLER = """
import json, sys, time
t0 = time.perf_counter()
from lambda_sep.handler import handler
import lambda_sep.handler as h
h._log = lambda record: None
imported = time.perf_counter() - t0
event = json.loads(sys.argv[1])
for _ in range(3):
    summary = handler(event)
print(json.dumps({"import_s": imported, "rss_mb": h.peak_rss_mb(), "status": summary["status"]}))
"""

_CHILD_BARE = """
import json, sys
import numpy as np, sep
from astropy.io import fits
from lambda_sep.extract import gaussian_kernel
from lambda_sep.params import SepParams
p = SepParams()
with fits.open(sys.argv[1], memmap=False) as hdul:
    sci = hdul["SCI"].data.astype(np.float32)
    err = hdul["ERR"].data.astype(np.float32)
    dq = hdul["DQ"].data.astype(np.int32)
mask = ((dq & p.dq_mask) != 0) | ~np.isfinite(sci) | ~(err > 0)
sci[mask] = 0.0
for _ in range(3):
    data = sci.copy()
    bkg = sep.Background(data, mask=mask, bw=p.bw, bh=p.bh, fw=p.fw, fh=p.fh)
    bkg.subfrom(data)
    sep.extract(data, p.thresh, err=err, mask=mask, minarea=p.minarea,
                filter_kernel=gaussian_kernel(p.filter_fwhm, p.filter_size),
                filter_type=p.filter_type, deblend_nthresh=p.deblend_nthresh,
                deblend_cont=p.deblend_cont, clean=p.clean)
# VmHWM, as lambda_sep.handler.peak_rss_mb reads it (ru_maxrss would include our parent).
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"rss_mb": int(hwm) / 1024.0}))
"""


def _child(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def lambda_cost(local_s: float, memory_mb: int, arch: str, io_s: float = 0.0
                ) -> dict[str, float]:
    """Billed duration and price of one invocation at ``memory_mb``.

    Lambda gives a function CPU in proportion to its memory (one full vCPU at 1769 MB), so a
    single-threaded run that takes ``local_s`` on one full core takes about
    ``local_s * max(1, 1769 / memory_mb)``; waiting on the network (``io_s``) does not
    scale. Duration is billed per millisecond.
    """
    duration = local_s * max(1.0, FULL_VCPU_MB / memory_mb) + io_s
    billed = max(1, round(duration * 1000 + 0.4999)) / 1000.0
    gb_s = memory_mb / 1024.0 * billed
    usd = gb_s * PRICE_GB_S[arch] + PRICE_REQUEST
    return {"duration_s": duration, "gb_s": gb_s, "usd": usd}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="timed runs of each (median)")
    ap.add_argument("--seed", type=int, default=1, help="synthetic image seed")
    ap.add_argument("--memory-mb", type=int, default=1024, help="Lambda memory for the cost")
    ap.add_argument("--arch", choices=sorted(PRICE_GB_S), default="x86_64")
    ap.add_argument("--images", type=int, default=150_000, help="images in the cost total")
    ap.add_argument("--s3-mbps", type=float, default=90.0,
                    help="assumed S3 read throughput inside Lambda, MB/s, for the "
                         "'with transfer' estimate (not measured here)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_handler_") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> int:
    """The measurements and the report, with the stores under ``work``."""
    import numpy as np
    import sep

    from lambda_sep.contract import archive_key, function_env
    from lambda_sep.extract import gaussian_kernel
    from lambda_sep.fitsread import read_image
    from lambda_sep.params import SepParams
    from lambda_sep.storage import open_store
    from standin.flt import make_flt

    src, dst = work / "archive", work / "catalogs"
    src.mkdir()
    dst.mkdir()
    os.environ.update(function_env(f"file://{src}", f"file://{dst}"))
    import lambda_sep.handler as handler_mod

    handler_mod._log = lambda record: None  # keep the timing about the work, not stdout
    obs_id = "icxe15wwq"
    data, truth = make_flt(obs_id, seed=args.seed)
    key = archive_key(obs_id)
    store = open_store(f"file://{src}")
    store.put_atomic(key, data)
    event = {"obs_id": obs_id, "input": {"bucket": f"file://{src}", "key": key},
             "output": f"file://{dst}", "sep": {}, "attempt": 1}

    # The same decoded arrays for bare SEP (decoding and masking are not timed for it).
    p = SepParams()
    img = read_image(store, key, len(data))
    mask = ((img.dq & p.dq_mask) != 0) | ~np.isfinite(img.sci) | ~(img.err > 0)
    sci = np.where(mask, np.float32(0.0), img.sci).astype(np.float32)
    err = img.err
    kernel = gaussian_kernel(p.filter_fwhm, p.filter_size)

    def bare() -> int:
        d = sci.copy()
        t0 = time.perf_counter()
        bkg = sep.Background(d, mask=mask, bw=p.bw, bh=p.bh, fw=p.fw, fh=p.fh)
        bkg.subfrom(d)
        objs = sep.extract(d, p.thresh, err=err, mask=mask, minarea=p.minarea,
                           filter_kernel=kernel, filter_type=p.filter_type,
                           deblend_nthresh=p.deblend_nthresh, deblend_cont=p.deblend_cont,
                           clean=p.clean)
        bare_times.append(time.perf_counter() - t0)
        return len(objs)

    handler_times: list[float] = []
    bare_times: list[float] = []
    summary = handler_mod.handler(event)  # warm: first-call caches, page cache
    bare()
    bare_times.clear()
    for _ in range(args.runs):  # interleaved, so machine load hits both alike
        t0 = time.perf_counter()
        summary = handler_mod.handler(event)
        handler_times.append(time.perf_counter() - t0)
        n_bare = bare()
    assert summary["status"] == "done", summary
    h_med = statistics.median(handler_times)
    b_med = statistics.median(bare_times)
    child_h = _child(_CHILD_HANDLER, json.dumps(event))
    child_b = _child(_CHILD_BARE, str(src / key))

    size = len(data)
    print(f"image: synthetic WFC3/IR FLT 1014x1014, seed {args.seed}, {len(truth)} injected "
          f"sources, {size:,} bytes")
    print(f"runs: {args.runs} interleaved; python {sys.version.split()[0]}, sep "
          f"{sep.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print()
    print(f"{'':28s}{'median s':>10s}{'min s':>10s}{'peak RSS MB':>13s}{'sources':>9s}")
    print(f"{'handler (file:// store)':28s}{h_med:10.4f}{min(handler_times):10.4f}"
          f"{child_h['rss_mb']:13.1f}{summary['sources']:9d}")
    print(f"{'bare Background+extract':28s}{b_med:10.4f}{min(bare_times):10.4f}"
          f"{child_b['rss_mb']:13.1f}{n_bare:9d}")
    print(f"handler / bare SEP: {h_med / b_med:.2f}x (target <= 1.5x)")
    print(f"handler import (cold process): {child_h['import_s']:.3f} s")
    print(f"bytes read: {summary['bytes_read']:,} of {size:,} = "
          f"{summary['bytes_read'] / size:.1%} (target <= 65%)")
    print()
    transfer = summary["bytes_read"] / (args.s3_mbps * 1e6)
    print(f"Lambda cost model ({args.arch}: ${PRICE_GB_S[args.arch]}/GB-s + $0.20 per million "
          f"requests; duration = local x max(1, {FULL_VCPU_MB}/MB); 'with transfer' adds "
          f"{transfer:.3f} s for {summary['bytes_read'] / 1e6:.1f} MB at an assumed "
          f"{args.s3_mbps:g} MB/s)")
    print(f"{'memory MB':>10s}{'duration s':>12s}{'GB-s/img':>10s}{'USD/img':>12s}"
          f"{f'USD/{args.images:,}':>14s}{'+transfer USD':>15s}")
    memories = sorted(set(MEMORY_TABLE) | {args.memory_mb})
    for mb in memories:
        c = lambda_cost(h_med, mb, args.arch)
        ct = lambda_cost(h_med, mb, args.arch, io_s=transfer)
        mark = " <- --memory-mb" if mb == args.memory_mb else ""
        print(f"{mb:10d}{c['duration_s']:12.3f}{c['gb_s']:10.4f}{c['usd']:12.8f}"
              f"{c['usd'] * args.images:14.2f}{ct['usd'] * args.images:15.2f}{mark}")
    demo_per = DEMO["usd"] / DEMO["images"]
    print(f"2018 demonstration: {DEMO['gb_s']} GB-s/img at 1024 MB, ${DEMO['usd']} for "
          f"{DEMO['images']:,} images (${demo_per:.8f}/img, ${demo_per * args.images:.2f} "
          f"for {args.images:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
