"""S3 requests of one reconcile pass: datasets in flight sharing LIST requests, or alone.

A backfill seen from the output bucket: a synthetic archive (the stand-in's model: programs,
visits, associations, release dates) whose first exposures, in the order MAST releases them
and dispatch sends them, already have catalogs; the next ones are in flight, half of them
with a catalog or an error marker already written. One ``OutputStore.find_many`` over those
in flight, against a moto S3 server on 127.0.0.1 through a counting proxy, with shared
listings and then without; both must give the same answers. Prints the requests by kind,
and what they would cost at S3's list prices.

    .venv/bin/python benchmarks/bench_reconcile_s3.py                  # 3,000 done, 1,000 in flight
    .venv/bin/python benchmarks/bench_reconcile_s3.py --done 500 --in-flight 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from s3_fault_proxy import S3FaultProxy  # noqa: E402

from daemon.outputs import OutputStore  # noqa: E402
from daemon.prices import S3_GET, S3_PUT  # noqa: E402
from lambda_sep.contract import catalog_key, error_key  # noqa: E402
from lambda_sep.storage import open_store, s3_client  # noqa: E402
from standin.archive import Archive  # noqa: E402
from standin.demo import moto_s3  # noqa: E402

# S3 Standard prices per 1,000 requests (daemon/prices.py).
PRICE = {"LIST": S3_PUT * 1000, "HEAD": S3_GET * 1000, "GET": S3_GET * 1000}  # per 1,000


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--done", type=int, default=3000)
    ap.add_argument("--in-flight", type=int, default=1000)
    args = ap.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    exposures = sorted(Archive(args.done + args.in_flight, seed=7).exposures(),
                       key=lambda e: (e.release, e.dataset))
    done, flight = exposures[: args.done], exposures[args.done:]
    programs = len({e.dataset[:4] for e in flight})
    with moto_s3() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        s3_client().create_bucket(Bucket="cats")
        url = "s3://cats/mirror"
        store = open_store(url)
        writes = [(catalog_key(e.key), b"SIMPLE", {"sources": "1", "attempt": "1"})
                  for e in done]
        for i, e in enumerate(flight):
            if i % 4 == 0:
                writes.append((catalog_key(e.key), b"SIMPLE", {"sources": "2", "attempt": "1"}))
            elif i % 4 == 1:
                writes.append((error_key(e.key), json.dumps({"reason": "broken", "attempt": 1})
                               .encode(), None))
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda w: store.put_atomic(w[0], w[1], metadata=w[2]), writes))
        items = [(e.dataset, e.key) for e in flight]
        print(f"{len(done)} done, {len(flight)} in flight in {programs} programs, "
              f"{len(writes)} objects in the bucket")
        answers = {}
        for shared in (True, False):
            with S3FaultProxy(endpoint) as proxy:
                os.environ["AWS_ENDPOINT_URL"] = proxy.url
                started = time.perf_counter()
                answers[shared] = OutputStore(url, shared_listing=shared).find_many(items)
                wall = time.perf_counter() - started
            counts = {k: proxy.counts[f"requests {k}"] for k in ("LIST", "HEAD", "GET")}
            counts["GET"] -= counts["LIST"]  # the proxy counts a LIST as a GET too
            dollars = sum(PRICE[k] * n / 1000 for k, n in counts.items())
            per = 150_000 / len(flight)
            print(f"{'shared listings' if shared else 'one LIST per dataset':22} "
                  f"LIST {counts['LIST']:5}  HEAD {counts['HEAD']:5}  GET {counts['GET']:5}  "
                  f"{wall:5.2f} s  ${dollars * per:.3f} per 150,000 datasets through one pass")
        assert answers[True] == answers[False], "the two ways disagree"
        print(f"same answers both ways: {len(answers[True])} results")


if __name__ == "__main__":
    main()
