"""Dispatch throughput to a Lambda endpoint on loopback (issue 5: >= 1,000 invocations/s).

A state database with N new datasets; the Lambda stand-in in ``--no-run`` mode in a separate
process (it accepts each Event invocation with 202 and a request id, and runs nothing); the
daemon's own ``daemon.dispatch.dispatch()`` with a ``LambdaExecutor`` (boto3, SigV4-signed,
botocore retry mode as configured) at several thread counts. Logging is configured as in
production (JSON lines at info level, one line per dispatched dataset) and written to a
file, so its cost is in the figure.

The in-flight bound is checked two ways: after every ``dispatch()`` call, and by a sampler
thread reading ``count_in_flight()`` every few milliseconds while dispatch runs. With
``--max-in-flight`` below N the benchmark reconciles in between (marks everything in flight
done, as the reconcile job does when catalogs appear), so the bound is exercised.

The stand-in's counters are read afterwards: every dataset must have been received exactly
once (no loss; duplicates are reported).

    .venv/bin/python benchmarks/bench_dispatch.py                  # the documented run
    .venv/bin/python benchmarks/bench_dispatch.py --datasets 2000 --threads 8   # quick
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon import logs  # noqa: E402
from daemon.config import Config, config_from_dict  # noqa: E402
from daemon.dispatch import dispatch  # noqa: E402
from daemon.lambda_invoke import LambdaExecutor  # noqa: E402
from state.store import Discovered, Finished, StateStore  # noqa: E402


def obs_id(run: int, i: int) -> str:
    """A 9-character HST-like dataset name, unique per run."""
    return f"i{run % 10}{i:07d}"


def make_store(path: Path, n: int, run: int) -> StateStore:
    """A state database holding ``n`` new datasets (as discovery records them)."""
    store = StateStore(path)
    poll = store.begin_poll("backfill", 55000.0)
    found = []
    for i in range(n):
        o = obs_id(run, i)
        found.append(Discovered(o, f"hst/public/{o[:4]}/{o}/{o}_flt.fits", 55000.0 + i * 1e-4,
                                str(10_000_000 + i)))
    store.record_window(poll, 56000.0, found, observations=n, products=n)
    store.finish_poll(poll, ok=True)
    return store


def start_standin() -> tuple[subprocess.Popen[str], str]:
    """The stand-in in --no-run mode, in its own process; returns it and its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "standin.awslambda", "--port", "0",
                             "--no-run"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the Lambda stand-in did not start (printed {url!r})")
    return proc, url


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def standin_stats(url: str) -> dict[str, Any]:
    """The stand-in's counters."""
    with urllib.request.urlopen(f"{url}/_standin/stats", timeout=30) as resp:
        return json.loads(resp.read())


def bench_config(db: Path, *, threads: int, processes: int, bound: int,
                 retry_mode: str) -> Config:
    """A lambda-executor configuration for the run."""
    return config_from_dict({
        "executor": {"kind": "lambda", "concurrency": min(bound, 10_000), "max_in_flight": bound,
                     "function": "mastmirror-sep"},
        "lambda": {"invoke_threads": threads, "invoke_processes": processes,
                   "invoke_retry_mode": retry_mode},
        "output": {"url": "s3://mastmirror-bench/catalogs"},
        "state": {"path": str(db)},
    })


class InFlightSampler(threading.Thread):
    """Reads count_in_flight() every ``period_s`` and remembers the largest value."""

    def __init__(self, store: StateStore, period_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.store, self.period_s = store, period_s
        self.max_seen = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._halt.wait(self.period_s):
            self.max_seen = max(self.max_seen, self.store.count_in_flight())
            self.samples += 1

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()


def run_one(url: str, *, n: int, threads: int, processes: int, bound: int, retry_mode: str,
            run: int, workdir: Path) -> dict[str, Any]:
    """Dispatch ``n`` datasets with ``threads`` sending threads; the figures of the run."""
    db = workdir / f"bench-{run}.db"
    store = make_store(db, n, run)
    config = bench_config(db, threads=threads, processes=processes, bound=bound,
                          retry_mode=retry_mode)
    executor = LambdaExecutor.from_config(config)
    # Warm the connection pool as a running daemon has it (not counted).
    executor.submit([{"obs_id": f"w{run}{k:07d}", "attempt": 1} for k in range(threads * 2)])
    before = standin_stats(url)
    sampler = InFlightSampler(store)
    sampler.start()
    senders = [c.pid for c in multiprocessing.active_children()]
    sender_cpu0 = sum(proc_cpu_s(pid) for pid in senders)
    sent = calls = 0
    over_bound_after_call = 0
    dispatch_s = 0.0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    while sent < n:
        t = time.perf_counter()
        out = dispatch(store, executor, config, run_id=f"bench-{run}")
        dispatch_s += time.perf_counter() - t
        calls += 1
        sent += out.sent
        if out.in_flight > bound:
            over_bound_after_call += 1
        if out.returned:
            raise SystemExit(f"{out.returned} events were refused by the stand-in")
        if sent < n:
            # The reconcile job's effect: everything in flight finished.
            store.mark_done([Finished(r.obs_id, r.input_key.replace(".fits", "_sep.fits"))
                             for r in store.in_flight()])
    wall_s = time.perf_counter() - wall0
    # The daemon's CPU: this process and its sender processes (none with processes = 1).
    cpu_s = time.process_time() - cpu0 + sum(proc_cpu_s(pid) for pid in senders) - sender_cpu0
    sampler.stop()
    executor.close()
    after = standin_stats(url)
    by_obs = after["accepted_by_obs"]
    ours = [by_obs.get(obs_id(run, i), 0) for i in range(n)]
    store.close()
    return {
        "datasets": n, "threads": threads, "processes": processes, "bound": bound,
        "retry_mode": retry_mode,
        "dispatch_calls": calls, "dispatch_s": round(dispatch_s, 3), "wall_s": round(wall_s, 3),
        "invocations_per_s": round(n / dispatch_s), "cycle_per_s": round(n / wall_s),
        "daemon_cpu_us_per_invocation": round(cpu_s / n * 1e6),
        "max_in_flight_seen": sampler.max_seen, "in_flight_samples": sampler.samples,
        "bound_held": sampler.max_seen <= bound and over_bound_after_call == 0,
        "received": after["accepted"] - before["accepted"],
        "lost": sum(1 for c in ours if c == 0), "duplicated": sum(1 for c in ours if c > 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per configuration (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=20_000)
    parser.add_argument("--threads", default="8,32",
                        help="comma-separated sending-thread counts ([lambda] invoke_threads)")
    parser.add_argument("--processes", default="1,2",
                        help="comma-separated sender-process counts ([lambda] invoke_processes)")
    parser.add_argument("--max-in-flight", type=int, default=0,
                        help="the in-flight bound; 0 = the number of datasets (never binds)")
    parser.add_argument("--retry-mode", choices=("standard", "adaptive"), default="standard")
    parser.add_argument("--log-level", choices=("info", "warning"), default="info",
                        help="info logs one JSON line per dispatched dataset, as in production")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    # Credentials are required to sign; the stand-in checks only that requests are signed.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    proc, url = start_standin()
    os.environ["AWS_ENDPOINT_URL_LAMBDA"] = url
    combos = [(int(p), int(t)) for p in args.processes.split(",") for t in args.threads.split(",")]
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp, \
                open(Path(tmp) / "daemon.log", "w", encoding="utf-8") as log_file:
            logs.configure(args.log_level, "json", stream=log_file)
            for run, (processes, threads) in enumerate(combos):
                bound = args.max_in_flight or args.datasets
                r = run_one(url, n=args.datasets, threads=threads, processes=processes,
                            bound=bound, retry_mode=args.retry_mode, run=run, workdir=Path(tmp))
                results.append(r)
                if not args.json:
                    print(f"processes={processes} threads={threads:3d}  "
                          f"{r['invocations_per_s']:5d} invocations/s (dispatch "
                          f"{r['dispatch_s']:.2f} s for {r['datasets']}; with reconcile "
                          f"{r['cycle_per_s']}/s)  daemon CPU {r['daemon_cpu_us_per_invocation']}"
                          f" us/inv  max in flight {r['max_in_flight_seen']}/{r['bound']} "
                          f"({'held' if r['bound_held'] else 'EXCEEDED'})  received "
                          f"{r['received']}, lost {r['lost']}, duplicated {r['duplicated']}",
                          flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if args.json:
        print(json.dumps(results, indent=2))
    ok = all(r["bound_held"] and r["lost"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
