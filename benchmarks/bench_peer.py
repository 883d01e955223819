"""The handler against its peers, per image, interleaved run by run in one process tree.

Every variant runs in its own worker process (imports paid once, as in a warm Lambda
container) and reads the same synthetic 1014x1014 WFC3/IR FLT from the same moto S3 on
loopback, optionally behind a proxy that adds S3's first-byte latency and per-connection
bandwidth (``--latency-ms``, ``--mbps``). Each round asks every worker for one run, in turn,
so the machine's load hits all of them alike; medians over ``--runs`` rounds:

* ``handler``: ``lambda_sep.handler.handler`` on one exposure per event (reads, extraction,
  catalog, writes);
* ``handler-batch``: the same handler with ``--batch`` exposures per event (reading the next
  exposure while extracting the current, writing while extracting the next), time per image;
* ``peer2018``: the 2018 demonstration's handler (``benchmarks/peer2018.py``: whole-object
  download to a temporary directory, astropy, SEP, catalog uploaded from a file);
* ``sep-file``: bare SEP on the whole file: one GET of the object, astropy decodes it, the
  handler's mask, then ``sep.Background`` + ``sep.extract`` with the handler's parameters;
* ``sep-array``: ``sep.Background`` + ``sep.extract`` alone on the decoded, masked arrays,
  with the handler's parameters and pixel stack: the floor the handler is measured against;
* ``baseline`` (``--baseline DIR``): the handler of another checkout (before/after figures).

Run: ``.venv/bin/python benchmarks/bench_peer.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# A worker imports the code its PYTHONPATH names (another checkout for ``baseline``).
sys.path[:0] = [str(ROOT / "benchmarks")] if "--worker" in sys.argv else [
    str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
BUCKET, OUT_BUCKET = "stpubdata", "catalogs-bench"
VARIANTS = ("handler", "handler-batch", "peer2018", "sep-file", "sep-array", "baseline")


# -- workers ---------------------------------------------------------------------------------


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _decoded(key: str) -> tuple[Any, Any, Any]:
    """SCI with the handler's mask applied, ERR, and the mask, as the handler decodes them."""
    import numpy as np

    from lambda_sep.fitsread import read_image
    from lambda_sep.params import SepParams
    from lambda_sep.storage import open_store

    store = open_store(BUCKET)
    info = store.head(key)
    img = read_image(store, key, info.size)
    p = SepParams()
    mask = ((img.dq & p.dq_mask) != 0) | ~np.isfinite(img.sci) | ~(img.err > 0)
    sci = np.where(mask, np.float32(0.0), img.sci).astype(np.float32)
    return sci, img.err, mask


def _bare_sep(sci: Any, err: Any, mask: Any) -> int:
    """The handler's own Background + extract calls, its parameters and pixel stack (the
    first it tries)."""
    import sep

    from lambda_sep.extract import FIRST_PIXSTACK, gaussian_kernel
    from lambda_sep.params import SepParams

    p = SepParams()
    sep.set_extract_pixstack(min(FIRST_PIXSTACK, p.pixstack))
    sep.set_sub_object_limit(p.sub_object_limit)
    data = sci.copy()
    bkg = sep.Background(data, mask=mask, bw=p.bw, bh=p.bh, fw=p.fw, fh=p.fh, fthresh=p.fthresh)
    bkg.subfrom(data)
    objs, _segmap = sep.extract(data, p.thresh, err=err, mask=mask, minarea=p.minarea,
                       filter_kernel=gaussian_kernel(p.filter_fwhm, p.filter_size),
                       filter_type=p.filter_type, deblend_nthresh=p.deblend_nthresh,
                       deblend_cont=p.deblend_cont, clean=p.clean, clean_param=p.clean_param,
                       segmentation_map=True)
    return len(objs)


def _runner(variant: str, keys: list[str], tmp: str) -> Any:
    """A function that runs the variant once and returns the number of sources."""
    if variant in ("handler", "baseline", "handler-batch"):
        import lambda_sep.handler as h

        h._log = lambda record: None  # time the work, not stdout
        output = f"s3://{OUT_BUCKET}/{variant}"
        items = [{"obs_id": k.split("/")[3], "input": {"bucket": BUCKET, "key": k},
                  "attempt": 1} for k in keys]
        if variant == "handler-batch":
            event: dict[str, Any] = {"batch": items, "output": output, "sep": {}}
        else:
            event = {**items[0], "output": output, "sep": {}}

        def run() -> int:
            out = h.handler(event)
            results = out.get("results", [out])
            bad = [r for r in results if r["status"] != "done"]
            assert not bad, bad
            return sum(r["sources"] for r in results)
        return run
    if variant == "peer2018":
        import peer2018

        event = {"fits_s3_bucket": BUCKET, "fits_s3_key": keys[0], "tmpdir": tmp,
                 "s3_output_bucket": OUT_BUCKET}
        return lambda: peer2018.handler(event)["sources"]
    if variant == "sep-file":
        import io

        import boto3
        import numpy as np
        from astropy.io import fits

        from lambda_sep.params import SepParams

        s3, p = boto3.client("s3"), SepParams()

        def run() -> int:
            body = s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
            with fits.open(io.BytesIO(body)) as hdul:
                sci = hdul["SCI"].data.astype(np.float32)
                err = hdul["ERR"].data.astype(np.float32)
                dq = hdul["DQ"].data.astype(np.int32)
            mask = ((dq & p.dq_mask) != 0) | ~np.isfinite(sci) | ~(err > 0)
            sci[mask] = 0.0
            return _bare_sep(sci, err, mask)
        return run
    if variant == "sep-array":
        arrays = _decoded(keys[0])
        return lambda: _bare_sep(*arrays)
    raise ValueError(variant)


def worker(variant: str, keys: list[str]) -> None:
    """Serve runs: a line on stdin asks for one, a JSON line on stdout answers."""
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmp:
        run = _runner(variant, keys, tmp)
        run()  # warm: first-call caches, connections
        for _line in sys.stdin:
            t0, c0 = time.perf_counter(), time.process_time()
            sources = run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(json.dumps({"wall": wall, "cpu": cpu, "sources": sources,
                              "rss_mb": _vmhwm_mb()}), flush=True)


# -- the parent ------------------------------------------------------------------------------


@contextlib.contextmanager
def s3_endpoint(latency_ms: float, mbps: float) -> Iterator[str]:
    """moto on loopback, behind the shaping proxy when latency or bandwidth is asked for."""
    from s3_fault_proxy import S3FaultProxy

    from standin.demo import moto_s3

    with moto_s3() as url:
        if not latency_ms and not mbps:
            yield url
            return
        with S3FaultProxy(url, latency_s=latency_ms / 1000.0, bytes_per_s=mbps * 1e6) as proxy:
            yield proxy.url


def _upload(n: int, seed: int) -> list[str]:
    import boto3

    from lambda_sep.contract import archive_key
    from standin.demo import make_public
    from standin.flt import make_flt

    s3 = boto3.client("s3")
    for bucket in (BUCKET, OUT_BUCKET):
        s3.create_bucket(Bucket=bucket)
    make_public(s3, BUCKET)  # the handler reads the archive unsigned, as stpubdata is read
    keys = []
    for i in range(n):
        obs_id = f"icxe15w{i % 10}{'abcdefghijklmnopqrstuvwxyz'[i // 10]}"
        data, _ = make_flt(obs_id, seed=seed + i)
        key = archive_key(obs_id)
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        keys.append(key)
    return keys


# The 2018 demonstration's published figures.
DEMO_2018 = {"usd": 2.24, "images": 122_078, "gb_s": 1.1, "memory_mb": 1024}


def lambda_image_cost(cpu_s: float, wall_s: float, *, memory_mb: int, architecture: str,
                      batch: int) -> tuple[float, float]:
    """(billed seconds, USD) for one image from its measured CPU and wall time on one full
    core: below 1,769 MB the CPU work stretches by 1769/MB, waiting on S3 does not, and what
    overlaps the computing (reads ahead, writes behind) costs nothing more, so the run lasts
    the longer of the stretched CPU time and the wall time. Lambda's request charge is
    shared by the ``batch`` exposures of an invocation."""
    from daemon.prices import LAMBDA_FULL_VCPU_MB, lambda_usd

    seconds = max(cpu_s * max(1.0, LAMBDA_FULL_VCPU_MB / memory_mb), wall_s)
    return seconds, lambda_usd(seconds, 0, memory_mb=memory_mb, architecture=architecture) \
        + lambda_usd(0.0, 1, memory_mb=memory_mb, architecture=architecture) / batch


def _cost_model(args: argparse.Namespace, variants: list[str], med: dict[str, float], *,
                cpu: dict[str, float], rss: dict[str, float], batch: int) -> None:
    priced = [v for v in ("handler", "handler-batch", "peer2018", "baseline") if v in variants]
    print(f"\nLambda, {args.arch}, per image and for {args.images:,} images (from the "
          "medians above; daemon/prices.py):")
    print(f"{'variant':16s}{'MB':>6s}{'billed s/img':>14s}{'GB-s/img':>10s}"
          f"{f'USD/{args.images:,}':>14s}{'fits (peak RSS)':>17s}")
    for v in priced:
        for mb in sorted({512, 1024, 1769, args.memory_mb}):
            secs, usd = lambda_image_cost(cpu[v], med[v], memory_mb=mb,
                                          architecture=args.arch,
                                          batch=batch if v == "handler-batch" else 1)
            print(f"{v:16s}{mb:6d}{secs:14.3f}{secs * mb / 1024:10.3f}"
                  f"{usd * args.images:14.2f}{'yes' if rss[v] < mb * 0.9 else 'NO':>17s}")
    demo = DEMO_2018
    scaled = demo["usd"] / demo["images"] * args.images
    print(f"2018 demonstration as published: {demo['gb_s']} GB-s/img at {demo['memory_mb']} "
          f"MB, ${demo['usd']} for {demo['images']:,} (${scaled:.2f} for {args.images:,})")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="rounds (medians over them)")
    ap.add_argument("--seed", type=int, default=1, help="synthetic image seed")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="added before every S3 answer's first byte (0: plain loopback)")
    ap.add_argument("--mbps", type=float, default=0.0,
                    help="S3 bodies' pace per connection, MB/s (0: loopback speed)")
    ap.add_argument("--batch", type=int, default=8, help="exposures per handler-batch event")
    ap.add_argument("--variants", default="handler,handler-batch,peer2018,sep-file,sep-array",
                    help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--baseline", type=Path, help="another checkout: its handler as 'baseline'")
    ap.add_argument("--arch", choices=("arm64", "x86_64"), default="arm64",
                    help="Lambda architecture for the cost model")
    ap.add_argument("--memory-mb", type=int, default=1024, help="Lambda memory to price too")
    ap.add_argument("--images", type=int, default=150_000, help="images in the cost total")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--keys", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.keys.split(","))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if args.baseline and "baseline" not in variants:
        variants.append("baseline")
    os.environ.update(AWS_ENV)
    with s3_endpoint(args.latency_ms, args.mbps) as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        os.environ["MASTMIRROR_ALLOWED_BUCKETS"] = BUCKET
        os.environ["MASTMIRROR_ALLOWED_OUTPUTS"] = f"s3://{OUT_BUCKET}"
        keys = _upload(max(args.batch, 1), args.seed)
        return _compare(args, variants, keys)


def _compare(args: argparse.Namespace, variants: list[str], keys: list[str]) -> int:
    procs: dict[str, subprocess.Popen[str]] = {}
    for v in variants:
        code_root = args.baseline.resolve() if v == "baseline" else ROOT
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(code_root), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
        vkeys = keys if v == "handler-batch" else keys[:1]
        procs[v] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", v, "--keys",
             ",".join(vkeys)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env, cwd=code_root)
    times: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        for _ in range(args.runs):
            for v, p in procs.items():
                assert p.stdin and p.stdout
                p.stdin.write("run\n")
                p.stdin.flush()
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"worker {v} died (exit {p.wait()})")
                times[v].append(json.loads(line))
    finally:
        for p in procs.values():
            if p.stdin:
                p.stdin.close()
            p.wait()
    per = {v: len(keys) if v == "handler-batch" else 1 for v in variants}
    med = {v: statistics.median(t["wall"] for t in times[v]) / per[v] for v in variants}
    cpu = {v: statistics.median(t["cpu"] for t in times[v]) / per[v] for v in variants}
    import sep

    shaping = (f"{args.latency_ms:g} ms first byte, {args.mbps:g} MB/s per connection"
               if args.latency_ms or args.mbps else "plain loopback")
    print(f"S3: moto on 127.0.0.1 ({shaping}); {args.runs} interleaved rounds; python "
          f"{sys.version.split()[0]}, sep {sep.__version__}, {os.cpu_count()} CPUs; "
          f"handler-batch: {len(keys)} per event")
    print(f"{'variant':16s}{'median s/img':>14s}{'min s/img':>11s}{'CPU s/img':>11s}"
          f"{'peak RSS MB':>13s}{'sources':>9s}")
    for v in variants:
        t = times[v]
        print(f"{v:16s}{med[v]:14.4f}{min(x['wall'] for x in t) / per[v]:11.4f}"
              f"{cpu[v]:11.4f}{t[-1]['rss_mb']:13.1f}{int(t[-1]['sources'] / per[v]):9d}")
    _cost_model(args, variants, med, cpu=cpu, rss={v: times[v][-1]["rss_mb"] for v in variants},
                batch=len(keys))
    pairs = [("handler", "peer2018"), ("handler-batch", "peer2018"), ("handler", "sep-array"),
             ("handler-batch", "sep-array"), ("handler", "baseline"),
             ("handler-batch", "baseline"), ("baseline", "peer2018"), ("sep-file", "sep-array")]
    for a, b in pairs:
        if a in med and b in med:
            print(f"{a} / {b}: {med[a] / med[b]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
