"""The daemon as a service: the systemd notify conversation, SIGHUP, SIGTERM, terminals."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import Pipeline
from notify_socket import NotifySocket

MASTMIRROR = str(Path(sys.executable).with_name("mastmirror"))


def _start(p: Pipeline, notify: NotifySocket, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([MASTMIRROR, "--config", str(p.config_path), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **notify.env(), **env})


def test_ready_status_watchdog_reload_and_stopping_arrive_in_order(pipeline: Pipeline) -> None:
    p = pipeline
    p.write_config(schedule={"poll_minutes": 60.0, "dispatch_seconds": 0.5,
                             "reconcile_seconds": 0.5})
    with NotifySocket.at_path() as notify:
        proc = _start(p, notify, WATCHDOG_USEC="1000000")  # ping every 0.5 s
        try:
            seen = notify.wait_for("READY", timeout=60)
            assert seen[-1].pid == proc.pid
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                msg = notify.receive(timeout=1)
                if msg is not None:
                    seen.append(msg)
                    status = msg.get("STATUS") or ""
                    if "WATCHDOG" in [k for m in seen for k in m.fields] and \
                            f"{len(p.archive.exposures())} done" in status:
                        break
            keys = [k for m in seen for k in m.fields]
            assert "WATCHDOG" in keys and "STATUS" in keys
            statuses = [m.get("STATUS") for m in seen if "STATUS" in m]
            assert any("in flight" in s and "done" in s for s in statuses), statuses

            # SIGHUP with a broken config: RELOADING, then READY again, old config kept.
            good = p.config_path.read_text()
            p.config_path.write_text(good.replace("concurrency = 2", "concurrency = -3"))
            proc.send_signal(signal.SIGHUP)
            seen += notify.wait_for("RELOADING", timeout=30)
            seen += notify.wait_for("READY", timeout=30)
            p.config_path.write_text(good.replace("concurrency = 2", "concurrency = 1"))
            proc.send_signal(signal.SIGHUP)
            seen += notify.wait_for("RELOADING", timeout=30)
            seen += notify.wait_for("READY", timeout=30)

            proc.send_signal(signal.SIGTERM)
            seen += notify.wait_for("STOPPING", timeout=30)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0
        # Every datagram came from the daemon itself (NotifyAccess=main).
        assert {m.pid for m in seen} == {proc.pid}
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "reload failed; keeping the old configuration" in names
    failed = next(e for e in events if e["event"].startswith("reload failed"))
    assert "[executor] concurrency = -3" in failed["error"]
    assert "configuration reloaded" in names
    assert names.index("configuration reloaded") > names.index(
        "reload failed; keeping the old configuration")


def test_sigterm_stops_taking_work_and_exits_within_bound(pipeline: Pipeline) -> None:
    """Mid-backfill, SIGTERM: exit 0 promptly, every dataset in exactly one state, and the
    next start finishes the rest."""
    p = pipeline
    p.release(12)
    p.write_config(executor={"concurrency": 1},
                   schedule={"poll_minutes": 60.0, "dispatch_seconds": 0.2,
                             "reconcile_seconds": 0.2})
    with NotifySocket.at_path() as notify:
        proc = _start(p, notify, WATCHDOG_USEC="500000")  # STATUS= every 0.25 s
        notify.wait_for("READY", timeout=60)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # wait until work is really under way
            msg = notify.receive(timeout=1)
            done = re.search(r"(\d+) done", (msg.get("STATUS") or "") if msg else "")
            if done and int(done[1]) >= 1:
                break
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        took = time.monotonic() - t0
    assert proc.returncode == 0, err[-2000:]
    assert took < 30, f"took {took:.1f} s to stop"
    status = subprocess.run([MASTMIRROR, "--config", str(p.config_path), "status", "--json"],
                            capture_output=True, text=True, check=True)
    counts = json.loads(status.stdout)["datasets"]
    total = len(p.archive.exposures())
    assert counts["total"] == total and 0 < counts["done"] < total
    again = p.run_once()
    assert again.counts["done"] == total and again.counts["failed"] == 0


def test_run_once_on_a_terminal_shows_progress(pipeline: Pipeline) -> None:
    p = pipeline
    pid, fd = pty.fork()
    if pid == 0:  # the child: run --once on a pseudo-terminal, as at a shell prompt
        os.execv(MASTMIRROR, [MASTMIRROR, "--config", str(p.config_path), "run", "--once"])
    out = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    _, code = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(code) == 0, text[-2000:]
    assert "discover" in text and "catalog" in text  # the two progress bars
    assert "━" in text  # rich's bar
    assert f"{len(p.archive.exposures())} done, 0 failed" in text


def test_reload_keeps_restart_only_keys_and_applies_the_rest(pipeline: Pipeline) -> None:
    """In-process: a reload that changes executor.kind keeps the old kind (and says so) but
    applies the other keys of the same section."""
    from daemon.config import load_config
    from daemon.service import Service

    p = pipeline
    service = Service(load_config(p.config_path), config_path=p.config_path)
    service.open()
    try:
        old_executor = service.executor
        p.write_config(executor={"kind": "lambda", "max_attempts": 7},
                       schedule={"reconcile_seconds": 9.0})
        assert service.reload()
        assert service.config.executor.kind == "local"
        assert service.config.executor.max_attempts == 7
        assert service.config.schedule.reconcile_seconds == 9.0
        assert service.executor is not old_executor  # rebuilt for the new settings
        p.config_path.write_text("[executor]\nconcurrency = 0\n")
        assert not service.reload()
        assert service.config.executor.max_attempts == 7  # the old configuration stays
    finally:
        service.close()
