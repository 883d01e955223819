"""The offline demo, small: it finishes, catalogues everything, and leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MASTMIRROR = str(Path(sys.executable).with_name("mastmirror"))


def _alive_in_group(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def test_demo_runs_the_whole_pipeline_offline(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen([MASTMIRROR, "demo", "--dir", str(work), "--exposures", "3",
                             "--release", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_clean_env(), start_new_session=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "demo finished" in out
    assert "mastmirror status" in err and "preview" in err

    status = subprocess.run([MASTMIRROR, "--config", str(work / "config.toml"), "status",
                             "--json"], capture_output=True, text=True, check=True)
    doc = json.loads(status.stdout)
    assert doc["datasets"] == {"new": 0, "dispatched": 0, "done": 5, "failed": 0, "skipped": 0,
                               "waiting": 0, "withdrawn": 0, "total": 5}
    assert doc["last_poll"]["ok"] is True
    assert doc["last_poll"]["kind"] == "poll"  # the releases came in by a later poll
    assert len(list((work / "catalogs").rglob("*_sep.fits"))) == 5
    png = (work / "preview.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000
    # The daemon's own log: JSON lines, a clean stop.
    log = [json.loads(line) for line in (work / "daemon.log").read_text().splitlines()
           if line.startswith("{")]
    assert any(e["event"] == "stopping" for e in log)
    assert _alive_in_group(proc.pid) == []


# Give the demo a terminal's SIGINT: default disposition, not blocked. Both are inherited
# through fork and exec, and the pytest worker that starts it may have either changed (for
# example while multiprocessing starts its resource tracker, which blocks SIGINT for a moment
# in the thread that does it); an ignored or blocked Ctrl-C would make this test test nothing.
_INTERRUPTIBLE = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, MASTMIRROR, "demo",
                             "--dir", str(work), "--exposures", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_clean_env(), start_new_session=True)
    log = work / "daemon.log"
    deadline = time.monotonic() + 120
    # Interrupt while the daemon is at work (it has dispatched something).
    while time.monotonic() < deadline and proc.poll() is None and not (
            log.exists() and b'"dispatched"' in log.read_bytes()):
        time.sleep(0.2)
    assert log.exists(), "the daemon never started"
    # If this fails, the demo outran the test (a starved test process), which says nothing
    # about Ctrl-C; say so rather than blame the signal.
    assert proc.poll() is None, f"the demo ended (code {proc.returncode}) before the Ctrl-C"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    time.sleep(0.5)
    assert _alive_in_group(proc.pid) == []
    daemon_pids = {json.loads(line).get("pid") for line in
                   (work / "daemon.log").read_text().splitlines() if line.startswith("{")}
    for pid in daemon_pids - {None}:
        assert not Path(f"/proc/{pid}").exists()


def test_demo_without_the_demo_extra_says_what_to_install(tmp_path: Path) -> None:
    # None in sys.modules makes `import moto` fail as if it were not installed.
    code = ("import sys; sys.modules['moto'] = None; from daemon.cli import main; "
            f"main(['demo', '--dir', {str(tmp_path / 'demo')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_clean_env(), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "mastmirror[demo]" in proc.stderr and "moto" in proc.stderr
    assert not (tmp_path / "demo").exists()  # stopped before making anything
