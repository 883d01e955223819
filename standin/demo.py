"""``mastmirror demo``: the whole pipeline on this machine, offline, in a few minutes.

It starts, on 127.0.0.1, a moto S3 server holding a synthetic WFC3/IR archive and the MAST
stand-in listing it; writes a config.toml pointing at both; runs the real daemon
(``mastmirror run``, local executor) as a child process; releases more exposures while it
runs, so the next poll shows the incremental behaviour; then stops the daemon with SIGTERM
and shows the status table, where the catalogs are, and a preview PNG. Everything it
starts, it stops, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from daemon.mjd import mjd
from standin.archive import Archive, Exposure

_AWS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


class DemoError(Exception):
    """The demo could not finish; the message says where it stopped."""


@dataclass
class DemoResult:
    """What the demo produced (the test checks these)."""

    workdir: Path
    config_path: Path
    status: dict[str, Any]
    preview: Path | None
    seconds: float


def _flt(exposure: Exposure) -> bytes:
    from standin.flt import archive_flt

    return archive_flt(exposure.dataset, exposure.filter)[0]


def _moto_server() -> Any:
    """moto's threaded server class; DemoError when the demo extra is not installed."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise DemoError("the demo needs moto, which the demo extra installs: "
                        "pip install 'mastmirror[demo]'") from None
    return ThreadedMotoServer


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for as long as the block runs; yields its endpoint URL."""
    server_class = _moto_server()
    # werkzeug logs every request to stderr unless told otherwise; nobody here wants that.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = server_class(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_public(client: Any, bucket: str) -> None:
    """Let anyone read and list ``bucket``, as the public archive (stpubdata) does: mastmirror
    reads it unsigned (``[archive] anonymous``), as astroquery does.

    moto (5.x) weighs an anonymous HEAD against an ``s3:HeadObject`` action, which is not an
    IAM action (AWS authorises a HEAD as ``s3:GetObject``); the policy names it too so moto
    lets the HEAD through.
    """
    import json

    doc = {"Version": "2012-10-17", "Statement": [
        {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
         "Action": ["s3:GetObject", "s3:HeadObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Sid": "PublicList", "Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{bucket}"}]}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(doc))


def _upload(bucket: str, exposures: list[Exposure], step: Callable[[], None]) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from daemon.executors import pool_worker_setup
    from lambda_sep.storage import open_store

    store = open_store(bucket)
    # Making an image costs ~0.2 s of CPU: use both cores. On Ctrl-C, drop what is queued
    # instead of waiting for it.
    # spawn: this process runs server threads, and forking a threaded process is unsafe.
    pool = ProcessPoolExecutor(max_workers=2, initializer=pool_worker_setup,
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        for exp, data in zip(exposures, pool.map(_flt, exposures), strict=True):
            store.put_atomic(exp.key, data, content_type="application/fits")
            step()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class OfflineArchive:
    """A synthetic archive served on loopback: the MAST stand-in and a moto S3 bucket.

    While it is open, this process's environment points boto3 at the local S3 (children
    started meanwhile inherit it).
    """

    archive: Archive
    bucket: str
    mast_url: str
    s3_endpoint: str
    since: str  # a [mast] since that covers every exposure in the archive

    def upload(self, exposures: list[Exposure], step: Callable[[], None] = lambda: None
               ) -> None:
        """Make the FITS files of ``exposures`` and put them in the bucket."""
        _upload(self.bucket, exposures, step)


@contextlib.contextmanager
def offline_archive(exposures: int, *, days: float = 120.0, seed: int = 2019
                    ) -> Iterator[OfflineArchive]:
    """Start the stand-ins for an archive of ``exposures`` released over the last ``days``,
    plus a calibration exposure and a G141 grism exposure, as the real archive has them
    (mastmirror leaves both out: docs/ARCHIVE.md).

    The bucket starts empty: upload what MAST should be able to serve.
    """
    from lambda_sep.storage import s3_client
    from standin.mast import MastStandin

    now = mjd(time.time())
    archive = Archive(exposures, seed=seed, start_mjd=now - days, end_mjd=now - 1.0)
    archive.add_exposure(at_mjd=now - days / 2, intent="calibration")
    archive.add_exposure(at_mjd=now - days / 3, filter="G141")
    bucket = "stpubdata"
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days + 1) * 86400))
    with moto_s3() as endpoint, MastStandin(archive) as mast, _aws_env(endpoint):
        s3_client().create_bucket(Bucket=bucket)
        make_public(s3_client(), bucket)
        yield OfflineArchive(archive, bucket, mast.url, endpoint, since)


def write_config(workdir: Path, world: OfflineArchive) -> Path:
    """Write ``workdir/config.toml`` for a daemon on ``world`` (local executor, fast jobs)."""
    mast_url, bucket, since = world.mast_url, world.bucket, world.since
    path = workdir / "config.toml"
    path.write_text(f"""# Written by `mastmirror demo`: the local stand-ins of MAST and S3.
[mast]
url = "{mast_url}"
since = "{since}"
window_days = 30.0

[archive]
bucket = "{bucket}"
# MAST lists the releases a moment before their files reach the bucket, as the real archive
# can: look again soon.
recheck_seconds = 2.0

[output]
url = "catalogs"

[executor]
kind = "local"
concurrency = 2
timeout_seconds = 300
# MAST may list a release a moment before its files are in the bucket: retry soon.
retry_backoff_seconds = 2.0

[state]
path = "mastmirror.db"

[schedule]
# Fast, so the demo shows a second poll picking up new releases within seconds.
poll_minutes = 0.1
reconcile_seconds = 1.0
dispatch_seconds = 1.0

[log]
format = "json"
""")
    return path


def _status(config_path: Path) -> dict[str, Any]:
    from daemon.configfile import state_path
    from daemon.status import status_document

    return status_document(state_path(config_path))


def _wait_for(config_path: Path, done: int, timeout_s: float, daemon: subprocess.Popen[bytes],
              show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        if daemon.poll() is not None:
            raise DemoError(f"the daemon exited early (code {daemon.returncode}); "
                            "see daemon.log")
        if (config_path.parent / "mastmirror.db").exists():
            doc = _status(config_path)
            show(doc)
            counts = doc["datasets"]
            assert isinstance(counts, dict)
            if counts["done"] + counts["failed"] >= done and not counts["dispatched"]:
                return doc
        if time.monotonic() > deadline:
            raise DemoError(f"not finished after {timeout_s:.0f} s; see daemon.log")
        time.sleep(0.5)


def run_demo(workdir: Path, *, exposures: int = 24, release: int = 8,
             console: Console | None = None, timeout_s: float = 600.0) -> DemoResult:
    """Run the demo in ``workdir`` (created; a previous demo there is replaced)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from daemon.preview import preview

    _moto_server()  # before anything is made
    con = console or Console(stderr=True)
    started = time.monotonic()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for old in ("mastmirror.db", "mastmirror.db-wal", "mastmirror.db-shm", "daemon.log"):
        (workdir / old).unlink(missing_ok=True)

    with offline_archive(exposures) as world:
        con.print(f"[bold]MAST stand-in[/] {world.mast_url}   "
                  f"[bold]S3 (moto)[/] {world.s3_endpoint}")
        archive = world.archive
        listed = archive.exposures()
        with _bar(con, f"making {len(listed)} synthetic WFC3/IR exposures", len(listed)) as step:
            world.upload(listed, step)
        first = [e for e in listed if e.science_image]
        con.print(f"{len(listed) - len(first)} of them calibration or grism exposures, which "
                  "mastmirror leaves out")
        config_path = write_config(workdir, world)
        con.print(f"[bold]config[/] {config_path}")
        log_path = workdir / "daemon.log"
        with _daemon(config_path, log_path) as daemon:
            con.print(f"[bold]daemon[/] pid {daemon.pid}, logging JSON lines to {log_path}")
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), console=con) as bar:
                task = bar.add_task("backfill: catalogued", total=len(first), info="")
                _wait_for(config_path, len(first), timeout_s, daemon,
                          lambda d: _show(bar, task, d))
                if release:
                    new = archive.release(release)
                    total = len(first) + sum(e.science_image for e in new)
                    task2 = bar.add_task(f"{release} more released", total=total, info="")
                    store_upload = bar.add_task("  uploading them", total=release, info="")
                    world.upload(new, lambda: bar.advance(store_upload))
                    _wait_for(config_path, total, timeout_s, daemon,
                              lambda d: _show(bar, task2, d))
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=60)
            if code != 0:
                raise DemoError(f"the daemon exited with code {code} on SIGTERM")
        doc = _status(config_path)
        from rich.text import Text

        from daemon.config import load_config
        from daemon.status import render

        con.rule("mastmirror status")
        con.print(Text.from_ansi(render(doc)))
        first_done = next((e.dataset for e in first), None)
        png = None
        if first_done:
            png = preview(load_config(config_path), first_done, workdir / "preview.png")
    catalogs = workdir / "catalogs"
    con.print(f"\n[bold]catalogs[/]  {catalogs}/hst/public/...  "
              f"({sum(1 for _ in catalogs.rglob('*_sep.fits'))} FITS tables)")
    if png:
        con.print(f"[bold]preview[/]   {png}")
    con.print(f"[bold]status[/]    mastmirror --config {config_path} status")
    return DemoResult(workdir, config_path, doc, png, time.monotonic() - started)


def _show(bar: object, task: object, doc: dict[str, Any]) -> None:
    counts = doc["datasets"]
    assert isinstance(counts, dict)
    bar.update(task, completed=counts["done"] + counts["failed"],  # type: ignore[attr-defined]
               info=f"{counts['dispatched']} in flight, {counts['failed']} failed")


@contextlib.contextmanager
def _bar(con: Console, text: str, total: int) -> Iterator[Callable[[], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=con) as bar:
        task = bar.add_task(text, total=total)
        yield lambda: bar.advance(task)


@contextlib.contextmanager
def _aws_env(endpoint: str) -> Iterator[None]:
    """Point this process and its children at the local S3; restore the environment after."""
    saved = {k: os.environ.get(k) for k in (*_AWS, "AWS_ENDPOINT_URL")}
    os.environ.update(_AWS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _daemon(config_path: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The real daemon as a child process; killed if the demo is interrupted."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "--config", str(config_path),
                                 "run"], stdout=log, stderr=subprocess.STDOUT,
                                cwd=config_path.parent, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
