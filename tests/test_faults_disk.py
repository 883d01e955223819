"""A full disk and a read-only state database: the daemon says so and stops cleanly, the
database passes ``PRAGMA integrity_check``, and a restart with space continues.

The state lives on a small tmpfs mounted for the test (mounting needs root, as CI runs).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Pipeline

from state.store import StateStore

MASTMIRROR = str(Path(sys.executable).with_name("mastmirror"))


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited file system needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(fs: Path, leave: int) -> Path:
    """Fill the file system until ``leave`` bytes remain free."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    filler = fs / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def _integrity(db: Path) -> str:
    with StateStore(db, readonly=True) as store:  # works on read-only media too
        return store.integrity_check()


def _run(config: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MASTMIRROR, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_disk_full_stops_the_daemon_and_a_restart_with_space_continues(
        pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    with _tmpfs(tmp_path / "statefs", "16m") as fs:
        db = fs / "mastmirror.db"
        p.write_config(state={"path": str(db)},
                       schedule={"poll_minutes": 60.0, "dispatch_seconds": 0.5,
                                 "reconcile_seconds": 0.5})
        first = _run(p.config_path, "run", "--once")
        assert first.returncode == 0, first.stderr[-2000:]
        n = len(p.archive.exposures())
        filler = _fill(fs, leave=40 * 1024)  # room for the -shm index, not for the WAL
        p.release(40)
        daemon = _run(p.config_path, "run", timeout=120)  # must stop by itself
        assert daemon.returncode == 1, daemon.stderr[-2000:]
        assert "cannot be written" in daemon.stderr or "cannot open" in daemon.stderr
        assert "disk is full" in daemon.stderr or "No space left" in daemon.stderr
        print("\ndisk full:", daemon.stderr.strip().splitlines()[-1])
        assert "Traceback" not in daemon.stderr
        assert _integrity(db) == "ok"
        filler.unlink()
        again = _run(p.config_path, "run", "--once")
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"{n + 40} done, 0 failed" in again.stdout
        assert _integrity(db) == "ok"


def test_a_read_only_database_stops_the_daemon_and_it_continues_once_writable(
        pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    with _tmpfs(tmp_path / "statefs", "8m") as fs:
        db = fs / "mastmirror.db"
        p.write_config(state={"path": str(db)})
        assert _run(p.config_path, "run", "--once").returncode == 0
        p.release(2)
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        try:
            daemon = _run(p.config_path, "run", timeout=120)
            assert daemon.returncode == 1, daemon.stderr[-2000:]
            assert "read-only" in daemon.stderr.lower() or "readonly" in daemon.stderr.lower()
            print("\nread-only:", daemon.stderr.strip().splitlines()[-1])
            assert "Traceback" not in daemon.stderr
            status = _run(p.config_path, "status", "--json")  # reading still works
            assert status.returncode == 0, status.stderr
            assert _integrity(db) == "ok"
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
        again = _run(p.config_path, "run", "--once")
        assert again.returncode == 0, again.stderr[-2000:]
        n = len(p.archive.exposures())
        assert f"{n} done, 0 failed" in again.stdout
