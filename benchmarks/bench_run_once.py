"""`mastmirror run --once` on a small archive, end to end, and the same command run again.

The demo's offline archive (the MAST stand-in and a moto S3 bucket on 127.0.0.1, holding N
synthetic WFC3/IR exposures released over the last D days) and a config written for it
(local executor, 2 workers, output to a directory); then the real command as a child
process, twice on the same database: the first run backfills and catalogues everything, the
second must find nothing new. Prints each run's own summary lines and its wall time
(process start to exit, Python start-up included).

    .venv/bin/python benchmarks/bench_run_once.py                 # 30 exposures, 3 years
    .venv/bin/python benchmarks/bench_run_once.py --exposures 100
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from standin.demo import offline_archive, write_config  # noqa: E402

MASTMIRROR = str(Path(sys.executable).with_name("mastmirror"))


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exposures", type=int, default=30)
    ap.add_argument("--days", type=float, default=3 * 365.0,
                    help="release dates spread over this many days (sets the window count)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-run-once-") as tmp, \
            offline_archive(args.exposures, days=args.days) as world:
        world.upload(world.archive.exposures())
        config = write_config(Path(tmp), world)
        for label in ("empty database", "same database again"):
            started = time.perf_counter()
            proc = subprocess.run([MASTMIRROR, "--config", str(config), "run", "--once"],
                                  capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            print(f"--- run --once, {label}: exit {proc.returncode}, {wall:.1f} s wall")
            print(proc.stdout.rstrip())
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
