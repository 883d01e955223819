"""`mastmirror refresh --all` over a mirror of N catalogued exposures, against a local S3.

A moto S3 server on 127.0.0.1 holds N small objects at FLT keys (put into moto's backend
directly: uploading them over HTTP would take longer than the refresh); a state database
holds N done datasets with each object's ETag and size, as if catalogued. A few inputs are
then "reprocessed" (rewritten) and a few withdrawn (deleted). The real command runs as a
separate process, HEADing every input over HTTP through a counting proxy; the benchmark
checks that it found exactly those, and prints the wall time, the requests the proxy saw
and what they would cost at S3's published prices.

    .venv/bin/python benchmarks/bench_refresh.py                  # 150,000 exposures
    .venv/bin/python benchmarks/bench_refresh.py --n 20000 --changed 20 --withdrawn 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from s3_fault_proxy import S3FaultProxy  # noqa: E402

from daemon.prices import cost_usd  # noqa: E402
from standin.demo import moto_s3  # noqa: E402
from state.store import StateStore  # noqa: E402

ACCOUNT = "123456789012"  # moto's default account
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def dataset(i: int) -> str:
    """A WFC3/IR-looking dataset name (i + program + visit + exposure + q), unique per i."""
    program = _B36[10 + (i // 46656) % 26] + _B36[(i // 1296) % 36] + _B36[(i // 36) % 36]
    return f"i{program}{_B36[(i // 6) % 36]}{i % 6}{_B36[i % 36]}{_B36[(i // 36) % 26 + 10]}q"


def key(d: str) -> str:
    """The archive key of a dataset's FLT (hst/public/<first 4>/<dataset>/<dataset>_flt.fits)."""
    return f"hst/public/{d[:4]}/{d}/{d}_flt.fits"


def populate(n: int, bucket: str, db: Path) -> dict[str, str]:
    """N objects in moto's backend and N done datasets in the state; returns the keys."""
    from moto.s3.models import get_canned_acl, s3_backends

    backend = s3_backends[ACCOUNT]["aws"]
    public = get_canned_acl("public-read")  # what the bucket's ACL gives objects put by HTTP
    keys: dict[str, str] = {}
    rows = []
    now = time.time()
    for i in range(n):
        d = dataset(i)
        if d in keys:
            raise SystemExit(f"dataset name collision at {i}: {d}")
        body = f"FLT {d}".encode()
        backend.put_object(bucket, key(d), body).set_acl(public)
        keys[d] = key(d)
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        rows.append((d, key(d), 60000.0, d, now, now, now, etag, len(body)))
    with StateStore(db) as store, store.transaction() as conn:
        conn.executemany(
            "INSERT INTO datasets (obs_id, input_key, release_mjd, mast_obs_id, state, "
            "discovered_at, updated_at, done_at, input_etag, input_size, dispatches, "
            "attempts, catalog_key) VALUES (?, ?, ?, ?, 'done', ?, ?, ?, ?, ?, 1, 1, '')", rows)
    return keys


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=150_000)
    ap.add_argument("--changed", type=int, default=150)
    ap.add_argument("--withdrawn", type=int, default=30)
    args = ap.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    import boto3

    with TemporaryDirectory() as tmp, moto_s3() as endpoint:
        root = Path(tmp)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        bucket = "stpubdata-bench"
        s3.create_bucket(Bucket=bucket, ACL="public-read")  # anonymous reads, as stpubdata
        started = time.perf_counter()
        keys = populate(args.n, bucket, root / "state.db")
        print(f"{args.n:,} objects and done datasets in {time.perf_counter() - started:.0f} s")
        names = sorted(keys)
        picks = random.Random(5).sample(names, args.changed + args.withdrawn)
        changed, withdrawn = set(picks[: args.changed]), set(picks[args.changed:])
        for d in changed:
            s3.put_object(Bucket=bucket, Key=keys[d], Body=b"reprocessed " + d.encode())
        for d in withdrawn:
            s3.delete_object(Bucket=bucket, Key=keys[d])
        (root / "config.toml").write_text(
            f'[archive]\nbucket = "{bucket}"\n[state]\npath = "state.db"\n'
            '[output]\nurl = "catalogs"\n[log]\nformat = "json"\nlevel = "warning"\n')
        with S3FaultProxy(endpoint) as proxy:
            env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
            started = time.perf_counter()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            # GNU time reports the command's own peak RSS (the getrusage of a child forked
            # from this process would count this process's pages, moto's bucket included).
            proc = subprocess.run(["/usr/bin/time", "-f", "peak_rss_kb=%M",
                                   str(Path(sys.executable).with_name("mastmirror")),
                                   "--config", str(root / "config.toml"), "refresh", "--all"],
                                  capture_output=True, text=True, env=env, check=False)
            wall = time.perf_counter() - started
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(proc.stdout + proc.stderr[-3000:])
        summary = proc.stdout.splitlines()
        rss_kb = int(re.findall(r"peak_rss_kb=(\d+)", proc.stderr)[-1])
        print("\n".join(line[:160] for line in summary[:2]))
        with StateStore(root / "state.db", readonly=True) as store:
            queued = {r[0] for r in store.db.execute(
                "SELECT obs_id FROM datasets WHERE state = 'new'").fetchall()}
            gone = {r[0] for r in store.db.execute(
                "SELECT obs_id FROM datasets WHERE withdrawn_at IS NOT NULL").fetchall()}
        assert queued == changed, "refresh did not find exactly the changed inputs"
        assert gone == withdrawn, "refresh did not find exactly the withdrawn inputs"
        heads, lists = proxy.counts["requests HEAD"], proxy.counts["requests LIST"]
        match = re.search(r"checked in ([\d.]+) s", summary[0])
        print(f"wall {wall:.1f} s for the whole command ({float(match[1]) if match else 0:.1f} s "
              f"in the refresh itself), {heads / wall:,.0f} HEAD/s; requests seen by the proxy: "
              f"{heads:,} HEAD, {lists:,} LIST = ${cost_usd(heads, lists):.4f}; "
              f"found {len(changed)} changed and {len(withdrawn)} withdrawn, as planted")
        print(f"the command's own CPU: {cpu:.1f} s ({cpu / max(heads, 1) * 1000:.2f} ms per "
              f"HEAD: one process can HEAD at most ~{heads / cpu:,.0f}/s whatever S3's latency); "
              f"its peak RSS {rss_kb / 1024:.0f} MB")


if __name__ == "__main__":
    main()
