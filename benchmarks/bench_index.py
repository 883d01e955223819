"""The detection index at scale: ingest rate, then cone-search latency warm and as a process.

1. Synthetic catalogs, written by the real catalog writer (tests/index_catalogs.py) into a
   directory output store: ``--catalogs`` of ``--rows`` detections each (default 20,000 x
   500 = 10 million), four exposures per pointing (small dithers, different filters),
   pointings uniform on the sky. Kept in ``--work`` and reused by later runs.
2. Ingest through the daemon's own indexer: datasets are marked done in a real state
   database ``--batch`` at a time, as reconcile passes would, queued, and one
   ``Indexer.step`` reads each catalog from the output store, parses it and commits it to
   the index (splits and compactions included). Reports catalogs/s overall.
3. Cone searches of 30": ``--cones`` warm library calls (one IndexReader, centred on random
   detections) and ``--processes`` runs of the ``mastmirror search`` console script as a
   fresh process (degrees, then sexagesimal), wall time each.

    .venv/bin/python benchmarks/bench_index.py                       # 10 M detections
    .venv/bin/python benchmarks/bench_index.py --catalogs 2000 --work /tmp/idx-small
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from index_catalogs import catalog_bytes, field_exposure, obs_id  # noqa: E402

from daemon import logs  # noqa: E402
from daemon.index import read_manifest  # noqa: E402
from daemon.indexing import Done, Indexer  # noqa: E402
from daemon.indexstore import IndexStore  # noqa: E402
from daemon.outputs import OutputStore  # noqa: E402
from daemon.search import IndexReader  # noqa: E402
from state.store import Discovered, Finished, StateStore  # noqa: E402

PER_POINTING = 4


def _pointing(i: int) -> tuple[float, float]:
    rng = np.random.default_rng(10_000 + i // PER_POINTING)
    ra, dec = rng.uniform(0, 360), float(np.degrees(np.arcsin(rng.uniform(-1, 1))))
    dither = i % PER_POINTING * 2.0 / 3600  # 2" steps, as a visit's dither pattern
    return (ra + dither) % 360, dec + dither


def _write(args: tuple[Path, int, int, int]) -> None:
    root, start, stop, rows = args
    for i in range(start, stop):
        e = field_exposure(obs_id(i), *_pointing(i), n=rows, seed=i)
        path = root / e.catalog_key
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(catalog_bytes(e))
            tmp.rename(path)


def make_catalogs(root: Path, n: int, rows: int) -> float:
    """Write the catalogs that are not there yet (two processes); returns seconds."""
    t0 = time.perf_counter()
    step = 500
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write, [(root, s, min(s + step, n), rows) for s in range(0, n, step)]))
    return time.perf_counter() - t0


def ingest(work: Path, n: int, rows: int, batch: int) -> dict[str, float]:
    """Mark datasets done ``batch`` at a time and let the index hook add them."""
    index, db = work / "index", work / "state.db"
    shutil.rmtree(index, ignore_errors=True)
    for p in work.glob("state.db*"):
        p.unlink()
    store = StateStore(db)
    exposures = [field_exposure(obs_id(i), 0.0, 0.0, n=0, seed=i) for i in range(n)]
    store.record_window(store.begin_poll("poll", 60000.0), 60001.0,
                        [Discovered(e.obs_id, e.input_key, 60000.0, e.obs_id)
                         for e in exposures], observations=n, products=n)
    outputs = OutputStore(f"file://{work / 'catalogs'}")
    indexer = Indexer(f"file://{index}", outputs, store)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        chunk = exposures[start:start + batch]
        store.claim_new(len(chunk), executor="local", run_id="bench")
        store.mark_done([Finished(e.obs_id, e.catalog_key, rows) for e in chunk])
        indexer.queue([Done(e.obs_id, 1, e.catalog_key) for e in chunk])
        settled = indexer.step()
        assert settled == len(chunk), (start, settled)
    seconds = time.perf_counter() - t0
    m = read_manifest(IndexStore(f"file://{index}"))
    assert m is not None and m.catalogs == n and m.rows == n * rows
    orders: dict[int, int] = {}
    for order, _ in m.partitions:
        orders[order] = orders.get(order, 0) + 1
    sizes = [sum(f.rows for f in frags) for frags in m.partitions.values()]
    return {"seconds": seconds, "catalogs_per_s": n / seconds, "rows": m.rows,
            "partitions": len(m.partitions), "orders": orders,
            "fragments": sum(len(v) for v in m.partitions.values()),
            "rows_per_partition_min_median_max": [min(sizes), int(statistics.median(sizes)),
                                                  max(sizes)],
            "bytes": sum(f.size for f in m.fragments()), "commits": m.commit}


def cones(work: Path, count: int, seed: int = 1) -> dict[str, float]:
    """Warm 30" cone searches through one IndexReader, centred on random detections."""
    reader = IndexReader(f"file://{work / 'index'}")
    rng = np.random.default_rng(seed)
    centres = []
    for i in rng.integers(0, 10**9, count):
        e = field_exposure(obs_id(int(i) % _count(work)), *_pointing(int(i) % _count(work)),
                           n=1, seed=int(i))
        centres.append((float(e.ra[0]), float(e.dec[0])))
    reader.cone(*centres[0], 30.0)  # the first search opens footers: that is the cold one
    times, found = [], []
    for ra, dec in centres:
        t0 = time.perf_counter()
        found.append(reader.cone(ra, dec, 30.0).num_rows)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max()), "rows_median": float(np.median(found))}


def _count(work: Path) -> int:
    return json.loads((work / "index" / "_mastmirror" / "manifest.json").read_bytes())[
        "catalogs"]


def processes(work: Path, runs: int, exe: str) -> dict[str, list[float]]:
    """Wall time of ``mastmirror search`` as a fresh process, degrees and sexagesimal, with
    a config.toml naming the index (as an operator runs it); and of ``mastmirror
    --version``, the same program doing nothing, measured alongside (the machine is
    shared: the difference is what a search costs)."""
    config = work / "config.toml"
    config.write_text('[index]\nurl = "index"\n[output]\nurl = "catalogs"\n'
                      '[state]\npath = "state.db"\n')
    e = field_exposure(obs_id(7), *_pointing(7), n=1, seed=7)
    ra, dec = float(e.ra[0]), float(e.dec[0])
    from astropy.coordinates import SkyCoord

    sky = SkyCoord(ra, dec, unit="deg")
    forms = {"--version (baseline)": [],
             "degrees": [repr(ra), repr(dec)],
             "sexagesimal": [sky.ra.to_string("hourangle", sep=":", precision=3),
                             sky.dec.to_string(sep=":", precision=2, alwayssign=True)]}
    out: dict[str, list[float]] = {}
    for name, pos in forms.items():
        times = []
        for _ in range(runs):
            cmd = [exe, "--config", str(config), "search", *pos, "30", "--format", "csv"] \
                if pos else [exe, "--version"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
            assert proc.stdout.count(b"\n") > (1 if pos else 0), proc.stdout[:200]
        out[name] = sorted(times)
    return out


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalogs", type=int, default=20_000)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--batch", type=int, default=100, help="datasets done per reconcile pass")
    ap.add_argument("--cones", type=int, default=300)
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mastmirror-bench-index"))
    ap.add_argument("--exe", default=str(Path(sys.executable).with_name("mastmirror")),
                    help="the mastmirror console script to time (e.g. of a service install "
                         "from requirements.lock, which has no pandas)")
    ap.add_argument("--search-only", action="store_true",
                    help="reuse the index in --work: only the searches")
    args = ap.parse_args()
    logs.configure("warning", "console")
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.search_only:
        made = make_catalogs(args.work / "catalogs", args.catalogs, args.rows)
        print(f"catalogs: {args.catalogs} x {args.rows} rows ready in {made:.0f} s")
        figures = ingest(args.work, args.catalogs, args.rows, args.batch)
        print("ingest:", json.dumps(figures))
    print("warm 30\" cones:", json.dumps(cones(args.work, args.cones)))
    for name, times in processes(args.work, args.processes, args.exe).items():
        print(f"mastmirror search as a process ({name}): median {statistics.median(times):.3f}"
              f" s, min {times[0]:.3f} s, max {times[-1]:.3f} s")


if __name__ == "__main__":
    main()
