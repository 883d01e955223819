"""The local pool: a stuck run is stopped at its timeout, a dead worker costs only its run.

Real worker processes (spawned, as the daemon spawns them) run ``local_runs.run``, whose
obs_ids say which run hangs or dies.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import local_runs

from daemon.executors import LocalExecutor, Lost
from lambda_sep.contract import make_batch


def _event(obs_id: str, attempt: int = 1) -> dict[str, Any]:
    return {"obs_id": obs_id, "attempt": attempt}


class Results:
    """Collects on_result calls from the pool's threads."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, result: dict[str, Any]) -> None:
        with self._cond:
            self.items.append(result)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 60.0) -> list[str]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= n, timeout_s), self.items
            return sorted(r["obs_id"] for r in self.items)


def _wait_lost(executor: LocalExecutor, n: int, timeout_s: float = 60.0) -> list[Lost]:
    lost: list[Lost] = []
    deadline = time.monotonic() + timeout_s
    while len(lost) < n and time.monotonic() < deadline:
        lost += executor.drain_lost()
        time.sleep(0.05)
    return lost


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if "zombie" not in Path(f"/proc/{pid}/status").read_text():
                out.add(pid)
        except OSError:
            continue
    return out


def _workers() -> set[int]:
    """This process's live pool workers (spawned children)."""
    me, out = str(os.getpid()), set()
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me and b"spawn_main" in cmdline:
            out.add(int(entry))
    return _alive(out)


def test_a_stuck_run_is_stopped_at_its_timeout_and_frees_its_slot() -> None:
    results = Results()
    # One worker: the two good runs can only happen once the stuck one has been stopped.
    executor = LocalExecutor(1, env={}, timeout_s=1.0, on_result=results,
                             target=local_runs.run)
    try:
        started = time.monotonic()
        sent = executor.submit([_event("ib01hang"), _event("ib02ok"), _event("ib03ok")])
        assert [s.error for s in sent] == [None, None, None]
        assert all(s.request_id for s in sent)
        assert results.wait_for(2) == ["ib02ok", "ib03ok"]
        assert time.monotonic() - started >= 1.0
        assert _wait_lost(executor, 1) == [
            Lost("ib01hang", 1, "timed out: still running after 1 s; worker stopped")]
        # The stuck worker is gone, not merely forgotten; one fresh worker took its place.
        assert _workers() == {results.items[0]["pid"]}
    finally:
        assert executor.close(timeout_s=10) == []


def test_a_dead_worker_costs_only_its_own_run() -> None:
    results = Results()
    executor = LocalExecutor(2, env={}, timeout_s=60.0, on_result=results,
                             target=local_runs.run)
    try:
        good = [f"ib{i:02d}ok" for i in range(6)]
        executor.submit([_event(good[0]), _event("ib99die", attempt=3)]
                        + [_event(o) for o in good[1:]])
        assert results.wait_for(6) == good
        assert _wait_lost(executor, 1) == [
            Lost("ib99die", 3, "local worker died: killed by SIGKILL")]
        assert executor.drain_lost() == []  # reported once
    finally:
        executor.close(timeout_s=10)


def test_a_dead_worker_loses_every_exposure_of_its_batch() -> None:
    results = Results()
    executor = LocalExecutor(1, env={}, timeout_s=60.0, on_result=results,
                             target=local_runs.run)
    try:
        batch = make_batch([{**_event(o, attempt=a), "input": {}, "output": "o", "sep": {}}
                            for o, a in (("ib01ok", 1), ("ib02die", 4))])
        got = executor.submit([batch, _event("ib03ok")])
        assert [(s.obs_id, s.dispatch) for s in got] == [("ib01ok", 1), ("ib02die", 4),
                                                         ("ib03ok", 1)]
        assert got[0].request_id == got[1].request_id != got[2].request_id
        assert _wait_lost(executor, 2) == [
            Lost("ib01ok", 1, "local worker died: killed by SIGKILL"),
            Lost("ib02die", 4, "local worker died: killed by SIGKILL")]
        assert results.wait_for(1) == ["ib03ok"]  # the next event ran on a fresh worker
    finally:
        executor.close(timeout_s=10)


def test_close_returns_what_never_started_and_stops_a_stuck_run() -> None:
    results = Results()
    executor = LocalExecutor(1, env={}, timeout_s=600.0, on_result=results,
                             target=local_runs.run)
    executor.submit([_event("ib00ok")])
    assert results.wait_for(1) == ["ib00ok"]
    worker = {results.items[0]["pid"]}
    executor.submit([_event("ib01hang"), _event("ib02ok"), _event("ib03ok")])
    time.sleep(0.5)  # the stuck run has started
    started = time.monotonic()
    never = executor.close(timeout_s=0.5)
    assert time.monotonic() - started < 10
    # The queued events come back for the next daemon; the stuck one stays dispatched.
    assert [e["obs_id"] for e in never] == ["ib02ok", "ib03ok"]
    assert _alive(worker) == set()
    assert executor.drain_lost() == []


def test_a_broken_pool_is_replaced_and_its_surviving_workers_stopped() -> None:
    results = Results()
    executor = LocalExecutor(2, env={}, timeout_s=60.0, on_result=results,
                             target=local_runs.run)
    try:
        executor.submit([_event("ib00ok")])
        assert results.wait_for(1) == ["ib00ok"]
        deadline = time.monotonic() + 30
        while len(old := _workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # An idle worker killed (the out-of-memory killer's choice): pebble gives up the pool.
        os.kill(min(old), signal.SIGKILL)
        time.sleep(1.0)
        first, second = executor.submit([_event("ib01ok"), _event("ib02ok")])
        # The event that met the broken pool is refused (dispatch gives it back to new), the
        # next runs on a fresh pool, and the old pool's other worker is gone.
        assert first.request_id is None and first.error.startswith("local pool unavailable")
        assert second.error is None
        assert results.wait_for(2) == ["ib00ok", "ib02ok"]
        assert not (_workers() & old)
    finally:
        executor.close(timeout_s=10)
    assert _workers() == set()
