"""The catalog writer: ``lambda_sep.catalog.build_catalog`` per catalog, with the header's
constant cards formatted once per process (as the handler runs) against formatting every
card each time (the cache emptied before each call, as before it existed), interleaved run
by run, CPU medians; and the SHA-256 of the bytes both ways, which must be equal.

The extraction is of the synthetic 1014x1014 FLT of ``--seed`` (standin.flt.make_flt), at
the default parameters and at a second parameter set.

    .venv/bin/python benchmarks/bench_catalog.py
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from lambda_sep import catalog  # noqa: E402
from lambda_sep.contract import archive_key  # noqa: E402
from lambda_sep.extract import extract  # noqa: E402
from lambda_sep.fitsread import read_image  # noqa: E402
from lambda_sep.params import SepParams  # noqa: E402
from lambda_sep.storage import open_store  # noqa: E402
from standin.flt import make_flt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time both ways for each parameter set and print the medians and digests."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=51, help="calls of each way, interleaved")
    ap.add_argument("--seed", type=int, default=1, help="synthetic image seed")
    args = ap.parse_args(argv)
    obs_id = "icxe15wwq"
    data, _ = make_flt(obs_id, seed=args.seed)
    key = archive_key(obs_id)
    with tempfile.TemporaryDirectory(prefix="bench_catalog_") as tmp:
        store = open_store(f"file://{tmp}")
        store.put_atomic(key, data)
        print(f"{'parameters':28s}{'cached ms':>11s}{'uncached ms':>13s}{'ratio':>8s}  "
              "same bytes  sources")
        for label, params in (("defaults", SepParams()),
                              ("thresh 2, barycentres", SepParams(thresh=2.0,
                                                                  windowed=False))):
            ex = extract(read_image(store, key, len(data)), params)
            image = read_image(store, key, len(data))

            build = functools.partial(
                catalog.build_catalog, ex, image, params, obs_id=obs_id, bucket="stpubdata",
                key=key, etag="0123456789abcdef0123456789abcdef", attempt=1,
                processing_time=0.1234, peak_rss_mb=150.0, date="2026-12-03T00:00:00")

            cached_bytes = build()  # fills the cache, as a container's first catalog does
            times: dict[str, list[float]] = {"cached": [], "uncached": []}
            uncached_bytes = b""
            for _ in range(args.runs):
                t0 = time.process_time()
                build()
                times["cached"].append(time.process_time() - t0)
                catalog._BLOCKS.clear()
                t0 = time.process_time()
                uncached_bytes = build()
                times["uncached"].append(time.process_time() - t0)
            cached, uncached = (statistics.median(times[k]) * 1000 for k in times)
            same = hashlib.sha256(cached_bytes).digest() == hashlib.sha256(uncached_bytes).digest()
            print(f"{label:28s}{cached:11.2f}{uncached:13.2f}{uncached / cached:7.1f}x  "
                  f"{'yes' if same else 'NO':10s}  {ex.count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
