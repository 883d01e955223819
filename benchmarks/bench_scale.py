"""mastmirror at the size of the archive: discovery, state, reconcile, status, memory.

Each figure is measured at a tenth of, at, and at ten times the base size (150,000
exposures), in one run, so the growth is visible side by side:

* discovery: a backfill of an N-exposure WFC3/IR archive served by the MAST stand-in
  (a separate process, paged as MAST pages), through astroquery and daemon.discovery,
  end to end into a fresh state database; then a second poll that finds nothing new;
* state: bulk inserts (``StateStore.record_window``) in datasets/s;
* reconcile: 1,000 datasets in flight (half with a catalog, a tenth with an error
  marker) among N done, on a directory output store holding N catalogs;
* status: ``mastmirror status --json`` on a database of N×1,000,000/150,000 rows (1M
  beside the 150k archive): the snapshot query, and the whole command as a process;
* RSS: a daemon process (``Service`` opened on that database, one reconcile and one
  dispatch pass);
* in flight (``--only inflight``): the real daemon backfilling the archive with the Lambda
  executor and ``max_in_flight`` of ``--in-flight`` (10,000 and 100,000), peak RSS per
  process and the dispatch rate while the backfill is still being recorded.

    .venv/bin/python benchmarks/bench_scale.py                      # 15k, 150k, 1.5M
    .venv/bin/python benchmarks/bench_scale.py --sizes 150000 --only discovery
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon import logs  # noqa: E402
from daemon.config import config_from_dict  # noqa: E402
from daemon.discovery import poll  # noqa: E402
from daemon.outputs import OutputStore  # noqa: E402
from daemon.reconcile import reconcile  # noqa: E402
from daemon.service import make_mast_client  # noqa: E402
from state.store import Discovered, StateStore  # noqa: E402


def _standin(n: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "standin.mast", "--exposures",
                             str(n), "--seed", "1"], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    return proc, url


def bench_discovery(n: int, work: Path) -> dict[str, Any]:
    """Backfill of an n-exposure archive, then a poll with nothing new."""
    proc, url = _standin(n)
    try:
        config = config_from_dict({"mast": {"url": url, "since": "2009-06-01"},
                                   "state": {"path": str(work / f"disc-{n}.db")}},
                                  base_dir=work)
        client = make_mast_client(config)
        with StateStore(config.state_path) as store:
            t0 = time.perf_counter()
            first = poll(store, client, config.mast)
            backfill = time.perf_counter() - t0
            assert first.ok, first.error
            t0 = time.perf_counter()
            again = poll(store, client, config.mast)
            quiet = time.perf_counter() - t0
            assert again.ok and again.new == 0, again
            total = store.counts()["total"]
        client.close()
    finally:
        proc.terminate()
        proc.wait()
    return {"exposures": n, "recorded": total, "windows": first.windows,
            "observations": first.observations, "products": first.products,
            "backfill_s": round(backfill, 2), "quiet_poll_s": round(quiet, 3)}


def _dataset(i: int) -> str:
    """A distinct 9-character HST-like dataset name: i + 4-char program/visit + 4 more."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(8):
        i, r = divmod(i, 36)
        out = digits[r] + out
    return "i" + out


def _rows(n: int, start: int = 0) -> list[Discovered]:
    """Datasets laid out as the archive is: hst/public/<ds[:4]>/<ds>/<ds>_flt.fits."""
    out = []
    for i in range(start, start + n):
        ds = _dataset(i * 7919)  # spread over many programs, as real ones are
        out.append(Discovered(ds, f"hst/public/{ds[:4]}/{ds}/{ds}_flt.fits",
                              55000.0 + i * 1e-3, ds.upper()))
    return out


def bench_state(n: int, work: Path) -> dict[str, Any]:
    """record_window throughput for n new datasets, in windows of 1,000."""
    rows = _rows(n)
    with StateStore(work / f"state-{n}.db") as store:
        poll_id = store.begin_poll("backfill", 55000.0)
        t0 = time.perf_counter()
        for i in range(0, n, 1000):
            chunk = rows[i:i + 1000]
            store.record_window(poll_id, chunk[-1].release_mjd, chunk, observations=0,
                                products=0)
        dt = time.perf_counter() - t0
    return {"datasets": n, "seconds": round(dt, 2), "per_second": round(n / dt)}


def _populate(db: Path, n_done: int, n_flight: int) -> list[tuple[str, str]]:
    """A database with n_done done datasets and n_flight dispatched ones."""
    with StateStore(db) as store:
        poll_id = store.begin_poll("backfill", 55000.0)
        rows = _rows(n_done + n_flight)
        for i in range(0, len(rows), 50_000):
            chunk = rows[i:i + 50_000]
            store.record_window(poll_id, chunk[-1].release_mjd, chunk, observations=0,
                                products=0)
        # In chunks of rowids: one 10M-row UPDATE (with its triggers) would need the whole
        # change in one transaction.
        done_at = time.time() - 7200
        for lo in range(1, n_done + 1, 500_000):
            hi = min(lo + 500_000 - 1, n_done)
            with store.transaction() as conn:
                conn.execute("UPDATE datasets SET state = 'done', done_at = ?, attempts = 1, "
                             "dispatches = 1, catalog_key = input_key, sources = 100 "
                             "WHERE rowid BETWEEN ? AND ?", (done_at, lo, hi))
        with store.transaction() as conn:
            conn.execute("UPDATE datasets SET state = 'dispatched', dispatched_at = ?, "
                         "attempts = 1, dispatches = 1, executor = 'lambda', run_id = 'b' "
                         "WHERE state = 'new'", (time.time(),))
        return [(r.obs_id, r.input_key) for r in rows[n_done:]]


def bench_reconcile(n_done: int, work: Path, n_flight: int = 1000) -> dict[str, Any]:
    """One reconcile pass: n_flight in flight among n_done done (catalogs on disk)."""
    from lambda_sep.contract import function_env
    from lambda_sep.handler import handler
    from standin.flt import make_flt

    db = work / f"rec-{n_done}.db"
    flight = _populate(db, n_done, n_flight)
    out = work / f"out-{n_done}"
    # One real catalog, copied where the finished datasets' catalogs belong.
    src = work / "src"
    key = "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"
    (src / Path(key).parent).mkdir(parents=True, exist_ok=True)
    (src / key).write_bytes(make_flt("icxe15wwq", seed=1)[0])
    os.environ.update(function_env(f"file://{src}", f"file://{src}/out"))
    handler({"obs_id": "icxe15wwq", "input": {"bucket": f"file://{src}", "key": key},
             "output": f"file://{src}/out", "sep": {}, "attempt": 1})
    catalog = (src / "out" / key.replace(".fits", "_sep.fits")).read_bytes()
    with StateStore(db) as store:
        done_keys = [r[0] for r in store.db.execute(
            "SELECT input_key FROM datasets WHERE state = 'done'")]
    for k in done_keys:  # the archive of finished catalogs the reconciler must not scan
        p = out / k.replace(".fits", "_sep.fits")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    for i, (_, k) in enumerate(flight):
        p = out / k.replace(".fits", "_sep.fits")
        p.parent.mkdir(parents=True, exist_ok=True)
        if i % 2 == 0:
            p.write_bytes(catalog)
        elif i % 10 == 1:
            p.with_name(p.name.replace("_sep.fits", "_sep.error.json")).write_text(json.dumps(
                {"reason": "bench", "attempt": 1, "retryable": False}))
    config = config_from_dict({"output": {"url": f"file://{out}"}, "state": {"path": str(db)}},
                              base_dir=work)
    with StateStore(db) as store:
        t0 = time.perf_counter()
        res = reconcile(store, OutputStore(config.output_url), config.executor)
        dt = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"done": n_done, "in_flight": n_flight, "seconds": round(dt, 3),
            "settled_done": res.done, "settled_failed": res.failed}


def bench_status_and_rss(n_rows: int, work: Path, *, baseline: Path | None = None,
                         runs: int = 15) -> dict[str, Any]:
    """status on an n_rows database (in-process snapshot and whole command, interleaved with
    a bare ``python -c pass``, and with ``baseline``'s status if given); daemon RSS."""
    db = work / f"status-{n_rows}.db"
    _populate(db, n_rows - 1000, 1000)
    cfg = work / f"status-{n_rows}.toml"
    cfg.write_text(f'[state]\npath = "{db}"\n[output]\nurl = "{work}/none"\n'
                   '[mast]\nurl = "http://127.0.0.1:9"\n')
    from daemon.status import status_document

    status_document(db)  # warm the page cache, as a second `status` would find it
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        status_document(db)
        times.append(time.perf_counter() - t0)
    exe = str(Path(sys.executable).with_name("mastmirror"))
    commands = {"pass": ([sys.executable, "-c", "pass"], ROOT),
                "status": ([exe, "--config", str(cfg), "status"], ROOT),
                "status --json": ([exe, "--config", str(cfg), "status", "--json"], ROOT)}
    if baseline is not None:
        commands["baseline status"] = ([exe, "--config", str(cfg), "status"], baseline)
    took: dict[str, list[float]] = {k: [] for k in commands}
    # With byte-code caches, as an installed package has them (pip compiles at install);
    # kept out of the checkouts. The first round fills them and is not counted.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    for i in range(runs + 1):  # interleaved: the machine's load hits all alike
        for name, (cmd, root) in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True,
                           env=dict(env, PYTHONPATH=str(root)))
            if i:
                took[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in took.items()}
    ratios = {f"{k} / pass": round(v / med["pass"], 2) for k, v in med.items() if k != "pass"}
    # The daemon: open the service on this database, one reconcile and one dispatch pass
    # (reconcile reads the 1,000 in flight), report its peak RSS.
    # VmHWM, not getrusage: ru_maxrss survives fork+exec and would report this script's peak.
    code = ("from daemon.config import load_config\n"
            "from daemon.service import Service\n"
            "from lambda_sep.handler import peak_rss_mb\n"
            f"s = Service(load_config({str(cfg)!r}))\n"
            "s.open(); s.reconcile_job(); s.dispatch_job(); s.status_line(); s.close()\n"
            "print(peak_rss_mb())\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    daemon_rss = float(out.stdout.strip().splitlines()[-1])
    return {"rows": n_rows, "snapshot_ms": round(min(times) * 1000, 1),
            "command_median_ms": {k: round(v * 1000) for k, v in med.items()}, **ratios,
            "daemon_rss_mb": round(daemon_rss), "db_mb": round(db.stat().st_size / 2**20)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, MB (empty once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def _descendants(pid: int) -> list[int]:
    """Every process started by ``pid`` (from any of its threads), and theirs."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids = [int(c) for c in fh.read().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_descendants(kid)]
    return out


def bench_in_flight(n: int, in_flight: int, work: Path, *, checkout: Path = ROOT,
                    batch: int = 1, dispatch_seconds: float = 5.0,
                    index: bool = False) -> dict[str, Any]:
    """The daemon (``mastmirror run``, Lambda executor) backfilling an n-exposure archive
    with up to ``in_flight`` datasets in flight, against an Invoke endpoint that answers 202
    at once and a moto S3 output store, each in its own process. Peak RSS per daemon
    process (VmHWM, sampled every 0.2 s), and the dispatch rate while discovery is still
    recording the backfill and after it, from the state database."""
    import sqlite3

    # The stand-ins are this checkout's; the daemon is ``checkout``'s.
    env = dict(os.environ, PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    env.pop("AWS_ENDPOINT_URL", None)
    procs: list[subprocess.Popen[str]] = []

    def start(*cmd: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        procs.append(p)
        return p

    try:
        mast = start("-m", "standin.mast", "--exposures", str(n), "--seed", "1")
        # An account that runs as many at once as the bound asks: the daemon keeps its
        # in-flight bound within what Lambda reports (issue 10), and 1,000 (AWS's default)
        # would hold it there; a checkout from before that asks nothing.
        lam = start("-m", "standin.awslambda", "--no-run", "--account-limit",
                    str(max(1000, in_flight)))
        s3_port = _free_port()
        start("-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port))
        assert mast.stdout and lam.stdout
        mast_url, lambda_url = mast.stdout.readline().strip(), lam.stdout.readline().strip()
        s3_url = f"http://127.0.0.1:{s3_port}"
        import boto3

        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing"
                             ).create_bucket(Bucket="mirror-out")
                break
            except Exception:
                time.sleep(0.1)
        db = work / f"inflight-{n}-{in_flight}.db"
        cfg = work / f"inflight-{n}-{in_flight}.toml"
        extra = f"batch = {batch}\n" if batch != 1 else ""
        # The detection index (issue 14) is off unless asked for: a checkout from before it
        # has none, and its Parquet writer is a fixed cost of its own (docs/BENCHMARKS.md).
        knows_index = (checkout / "daemon" / "indexing.py").exists()
        index_section = '[index]\nurl = ""\n' if knows_index and not index else ""
        cfg.write_text(index_section +
            f'[mast]\nurl = "{mast_url}"\nsince = "2009-06-01"\n'
            f'[output]\nurl = "s3://mirror-out/catalogs"\n'
            f'[executor]\nkind = "lambda"\nconcurrency = 1000\nmax_in_flight = {in_flight}\n'
            f'timeout_seconds = 86400.0\n{extra}'
            f'[schedule]\nreconcile_seconds = 30.0\ndispatch_seconds = {dispatch_seconds}\n'
            f'[state]\npath = "{db}"\n[log]\nformat = "json"\nlevel = "info"\n')
        denv = dict(env, PYTHONPATH=str(checkout), AWS_ENDPOINT_URL_LAMBDA=lambda_url,
                    AWS_ENDPOINT_URL_S3=s3_url)
        log = open(work / "inflight-daemon.log", "w")  # noqa: SIM115
        t_start = time.monotonic()
        daemon = subprocess.Popen([str(Path(sys.executable).with_name("mastmirror")),
                                   "--config", str(cfg), "run"], stdout=log, stderr=log,
                                  cwd=checkout, env=denv)
        procs.append(daemon)
        peak: dict[int, float] = {}
        samples: list[tuple[float, int, int, bool]] = []  # t, total, dispatched, polling
        target = min(n, in_flight)
        reconciled_at = None
        while time.monotonic() - t_start < 1800:
            for pid in [daemon.pid, *_descendants(daemon.pid)]:
                hwm = _proc_status(pid).get("VmHWM", 0.0)
                peak[pid] = max(peak.get(pid, 0.0), hwm)
            if db.exists():
                try:
                    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                    counts = dict(con.execute("SELECT state, n FROM state_counts").fetchall())
                    polling = con.execute("SELECT count(*) FROM polls WHERE finished_at IS NULL"
                                          ).fetchone()[0] > 0
                    con.close()
                    samples.append((time.monotonic() - t_start, sum(counts.values()),
                                    counts.get("dispatched", 0), polling))
                except sqlite3.Error:
                    pass
            if samples and samples[-1][2] >= target and not samples[-1][3]:
                reconciled_at = reconciled_at or time.monotonic()
                if time.monotonic() - reconciled_at > 45:  # at least one reconcile pass more
                    break
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
    first = next((s for s in samples if s[2] > 0), None)
    during = [s for s in samples if s[3]]
    rate_during = None
    if first and during and during[-1][0] > first[0]:
        rate_during = (during[-1][2] - first[2]) / (during[-1][0] - first[0])
    done = next((s for s in samples if s[2] >= target), None)
    rate_all = (done[2] / (done[0] - first[0])) if done and first and done[0] > first[0] else None
    main_pid = daemon.pid
    return {"exposures": n, "max_in_flight": in_flight, "batch": batch, "index": index,
            "reached": samples[-1][2] if samples else 0,
            "main_peak_rss_mb": round(peak.get(main_pid, 0.0)),
            "children_peak_rss_mb": sorted(round(v) for k, v in peak.items() if k != main_pid),
            "all_peak_rss_mb": round(sum(peak.values())),
            "dispatch_per_s_while_backfilling": round(rate_during) if rate_during else None,
            "dispatch_per_s_to_target": round(rate_all) if rate_all else None,
            "seconds_to_target": round(done[0], 1) if done else None,
            "backfill_s": round(during[-1][0], 1) if during else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="15000,150000,1500000",
                    help="archive sizes (exposures); status uses 10x each, at most 10M")
    ap.add_argument("--only", choices=("discovery", "state", "reconcile", "status", "inflight"),
                    action="append")
    ap.add_argument("--in-flight", default="10000,100000",
                    help="max_in_flight values for 'inflight' (at each size)")
    ap.add_argument("--batch", type=int, default=1, help="[executor] batch for 'inflight'")
    ap.add_argument("--index", action="store_true",
                    help="'inflight': keep the detection index on (its default)")
    ap.add_argument("--checkout", type=Path, default=ROOT,
                    help="run the daemon of another checkout for 'inflight' (before/after)")
    ap.add_argument("--baseline", type=Path,
                    help="'status': also time another checkout's status, interleaved")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    only = set(args.only or ("discovery", "state", "reconcile", "status"))
    work = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    # Log as the daemon does under systemd (JSON lines), to nowhere: terminal rendering of
    # thousands of lines would be measured otherwise.
    logs.configure("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    print(f"# bench_scale: sizes {sizes}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}, work dir {work}", flush=True)
    try:
        for n in sizes:
            if "state" in only:
                print(json.dumps({"state": bench_state(n, work)}), flush=True)
            if "discovery" in only:
                print(json.dumps({"discovery": bench_discovery(n, work)}), flush=True)
            if "reconcile" in only:
                print(json.dumps({"reconcile": bench_reconcile(n, work)}), flush=True)
            if "status" in only:
                rows = n * 1_000_000 // 150_000  # 1M rows beside the 150k archive
                print(json.dumps({"status": bench_status_and_rss(
                    rows, work, baseline=args.baseline)}), flush=True)
            if "inflight" in only:
                for k in (int(x) for x in args.in_flight.split(",")):
                    print(json.dumps({"inflight": bench_in_flight(
                        n, k, work, checkout=args.checkout.resolve(), batch=args.batch,
                        index=args.index)}),
                        flush=True)
            for f in work.glob("*.db*"):
                f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
