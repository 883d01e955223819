"""A process that appends to an index without pause, for the kill -9 test.

    python tests/index_appender.py URL CATALOG_DIR run|finish

CATALOG_DIR holds ``a/<obs_id>.fits`` and ``b/<obs_id>.fits``: two catalogs of each
exposure. Round r brings every exposure to generation r, using catalog ``a`` for odd r and
``b`` for even r, so each round re-catalogues everything (every append is also a
replacement). ``run`` goes on until killed; ``finish`` completes the round in progress and
exits. Prints "adding" before each append (the test kills it at moments near them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from daemon.catalog_rows import read_catalog
from daemon.index import IndexWriter

MAX_ROWS = 600
BATCH = 3


def main() -> None:
    """Append until killed (``run``) or until the round in progress is whole (``finish``)."""
    url, src, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    ids = sorted(p.stem for p in (src / "a").iterdir())
    writer = IndexWriter.open(url, max_rows=MAX_ROWS, max_fragments=3)
    held = writer.held()
    target = max((g for g, _ in held.values()), default=1)
    while True:
        behind = [o for o in ids if held.get(o, (0, ""))[0] < target]
        if not behind:
            if mode == "finish":
                return
            target += 1
            continue
        variant = "a" if target % 2 else "b"
        batch = [read_catalog((src / variant / f"{o}.fits").read_bytes(), obs_id=o,
                              generation=target, catalog_key=f"{variant}/{o}.fits")
                 for o in behind[:BATCH]]
        print("adding", flush=True)
        writer.add(batch)
        held = writer.held()


if __name__ == "__main__":
    main()
