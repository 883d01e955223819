"""kill -9 during appends, 20 times: the index always opens and holds each catalog wholly
or not at all, and the next run finishes the job.

A child process (tests/index_appender.py) appends and re-catalogues without pause, with
thresholds small enough that commits split partitions and compact files all the time; it
is killed at a random moment each time. After each kill, before any recovery, mastmirror's
reader must see for every catalog the index lists exactly that catalog's rows, and no row
of any other. After the last kill a run completes the round, and then hats and pyarrow,
which read the files as they are, must see exactly what the manifest holds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from index_catalogs import catalog_bytes, field_exposure, obs_id

from daemon.catalog_rows import read_catalog
from daemon.index import read_fragment, read_manifest, read_registry
from daemon.indexstore import IndexStore

KILLS = 20
HERE = Path(__file__).resolve().parent


def _catalogs(root: Path) -> dict[tuple[str, str], int]:
    """Write catalogs a/ and b/ of 24 exposures; return their row counts."""
    rows = {}
    for variant, shift in (("a", 0.0), ("b", 40.0)):
        (root / variant).mkdir(parents=True)
        for i in range(24):
            e = field_exposure(obs_id(i), (10.0 * (i % 4) + shift) % 360, 20.0 - i % 3,
                               n=100 + 7 * i + (11 if variant == "b" else 0), seed=i)
            raw = catalog_bytes(e)
            (root / variant / f"{e.obs_id}.fits").write_bytes(raw)
            rows[(variant, e.obs_id)] = read_catalog(raw, obs_id=e.obs_id, generation=1,
                                                     catalog_key="").rows
    return rows


def _start(url: str, src: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    return subprocess.Popen([sys.executable, str(HERE / "index_appender.py"), url, str(src),
                             mode], stdout=subprocess.PIPE, text=True, env=env)


def _assert_whole(store: IndexStore, rows: dict[tuple[str, str], int]) -> tuple[int, int]:
    """Every listed catalog wholly present, nothing else; returns (catalogs, rows)."""
    m = read_manifest(store)
    if m is None:
        assert not any(e.name.startswith("_mastmirror/catalogs/") for e in store.list())
        return 0, 0
    registry = read_registry(store, m)
    found: dict[tuple[str, int], int] = {}
    for frag in m.fragments():
        t = read_fragment(store, frag.name, ["obs_id", "generation", "catalog_key"])
        assert t.num_rows == frag.rows
        for o, g in zip(t["obs_id"].to_pylist(), t["generation"].to_pylist(), strict=True):
            found[(o, g)] = found.get((o, g), 0) + 1
    expected = {}
    for o, g, key in zip(registry["obs_id"].to_pylist(), registry["generation"].to_pylist(),
                         registry["catalog_key"].to_pylist(), strict=True):
        variant = "a" if g % 2 else "b"
        assert key == f"{variant}/{o}.fits"
        expected[(o, g)] = rows[(variant, o)]
    assert found == expected
    return len(expected), sum(expected.values())


def test_kill_9_during_appends_20_times(tmp_path: Path) -> None:
    rows = _catalogs(tmp_path / "catalogs")
    url = f"file://{tmp_path}/index"
    store = IndexStore(url)
    rng = random.Random(14)
    interrupted = 0
    for _ in range(KILLS):
        child = _start(url, tmp_path / "catalogs", "run")
        assert child.stdout is not None
        ticks = []
        for _ in range(rng.randint(2, 5)):
            assert child.stdout.readline() == "adding\n"
            ticks.append(time.monotonic())
        # In the second half of the append just begun, where its files are written and
        # committed (the first half computes): the last one took ticks[-1] - ticks[-2],
        # measured, so the kills land there however loaded the machine is.
        time.sleep(rng.uniform(0.5, 1.0) * (ticks[-1] - ticks[-2]))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        _assert_whole(store, rows)
        m = read_manifest(store)
        live = {f.name for f in m.fragments()} if m else set()
        interrupted += any(e.name.startswith("dataset/Norder=") and e.name not in live
                           for e in store.list("dataset"))
    finish = _start(url, tmp_path / "catalogs", "finish")
    assert finish.wait(timeout=120) == 0
    catalogs, total = _assert_whole(store, rows)
    assert catalogs == 24
    # The finishing run recovered the index: no file outside the manifest is left, so
    # readers that list directories see exactly the manifest's rows.
    m = read_manifest(store)
    names = {e.name for e in store.list() if e.name.startswith(("dataset/Norder=",
                                                                 "_mastmirror/"))}
    assert names == {f.name for f in m.fragments()} | {m.registry, "_mastmirror/manifest.json"}
    import hats
    import pyarrow.dataset as pads

    catalog = hats.read_hats(str(tmp_path / "index"))
    assert catalog.catalog_info.total_rows == total
    assert sum(len(catalog.read_pixel_to_pandas(p))
               for p in catalog.get_healpix_pixels()) == total
    table = pads.dataset(str(tmp_path / "index" / "dataset"), partitioning="hive").to_table()
    assert table.num_rows == total
    assert len(set(np.unique(table["generation"].to_numpy()))) == 1
    assert interrupted >= 1, "no kill landed in the middle of a write"
