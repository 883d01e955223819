"""The service: poll, dispatch, reconcile and refresh on APScheduler, or one full cycle
(``--once``); with ``[archive] notifications``, a thread long-polls the archive's queue.

The main thread owns signals and the systemd conversation (READY, STATUS, WATCHDOG,
STOPPING); the jobs run on the scheduler's threads, one instance each at a time.
SIGTERM/SIGINT stop taking new work, give local runs a bounded time to finish, and exit 0;
SIGHUP reloads config.toml, or logs why it cannot and keeps the old configuration.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobThreads
from apscheduler.schedulers.background import BackgroundScheduler

from daemon import logs
from daemon.archive import ArchiveBucket
from daemon.config import Config, ConfigError, handler_env, load_config
from daemon.discovery import PollOutcome, poll, resweep, resweep_due
from daemon.dispatch import dispatch, unsent
from daemon.executors import Executor, LocalExecutor
from daemon.indexing import Indexer
from daemon.lock import InstanceLock
from daemon.mast import MastClient
from daemon.metrics import Metrics
from daemon.mjd import mjd_to_iso
from daemon.notifications import Listener, Queue
from daemon.outputs import OutputStore
from daemon.reconcile import reconcile
from daemon.refresh import pace, walk
from daemon.sdnotify import Notifier
from lambda_sep.storage import StorageError, s3_client
from state.store import StateStore, unwritable

log = structlog.get_logger("mastmirror.service")

# Keys a running daemon cannot change under itself; SIGHUP keeps the old value and says so.
_RESTART_ONLY = (("state", "path"), ("executor", "kind"), ("log", "format"), ("index", "url"),
                 ("metrics", "listen"))


def make_executor(config: Config, on_result: Callable[[dict[str, Any]], None] | None = None
                  ) -> Executor:
    """The executor ``[executor] kind`` asks for."""
    if config.executor.kind == "lambda":
        from daemon.lambda_invoke import LambdaExecutor

        return LambdaExecutor.from_config(config)
    return LocalExecutor(config.executor.concurrency, env=handler_env(config),
                         timeout_s=config.executor.timeout_seconds, on_result=on_result)


def make_mast_client(config: Config) -> MastClient:
    """A MAST client for ``[mast]``."""
    m = config.mast
    return MastClient(m.url, collection=m.collection, instrument=m.instrument,
                      timeout_s=m.timeout_seconds, batch=m.batch, intent=m.intent)


@dataclass
class CycleSummary:
    """What ``run --once`` did, for the final report and the exit code."""

    poll: PollOutcome | None = None
    resweep: PollOutcome | None = None  # when one was due
    dispatched: int = 0
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    waiting: int = 0  # left held: their input is not in the archive bucket yet
    fatal: str | None = None

    @property
    def ok(self) -> bool:
        """True when discovery succeeded (failed datasets are recorded, not a run failure)."""
        return (self.poll is not None and self.poll.ok and self.fatal is None
                and (self.resweep is None or self.resweep.ok))


class Service:
    """One daemon process: its lock, state, clients, executor and schedule."""

    def __init__(self, config: Config, *, config_path: Path | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_env()
        self.run_id = uuid.uuid4().hex
        self.lock = InstanceLock(config.state_path)
        self.stop_event = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._last_poll: PollOutcome | None = None
        # One discovery walk at a time: the poll and the resweep share the MAST client.
        self._mast_lock = threading.Lock()
        self._jobs_running = 0
        self._jobs_lock = threading.Lock()
        #: Set when the state database cannot be written: the daemon stops and exits 1.
        self.fatal: str | None = None
        self.store: StateStore | None = None
        self.executor: Executor | None = None
        self.mast: MastClient | None = None
        self.outputs: OutputStore | None = None
        self.metrics: Metrics | None = None
        self.archive: ArchiveBucket | None = None
        self.listener: Listener | None = None
        self.indexer: Indexer | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Take the lock, open the state, build the clients; give back orphaned local runs."""
        self.lock.acquire()
        with structlog.contextvars.bound_contextvars(run_id=self.run_id):
            try:
                self.store = StateStore(self.config.state_path)
                self.mast = make_mast_client(self.config)
                self.outputs = OutputStore(self.config.output_url)
                self.archive = ArchiveBucket(self.config.archive.bucket,
                                             anonymous=self.config.archive.anonymous)
                self.listener = self._make_listener(self.config)
                if self.config.index_url:
                    self.indexer = Indexer(self.config.index_url, self.outputs, self.store,
                                           idle_s=self.config.schedule.reconcile_seconds)
                self.executor = make_executor(self.config, self._on_result)
                for t in self.store.reclaim_orphans(executor="local", run_id=self.run_id):
                    log.info("requeued", obs_id=t.obs_id, reason=t.reason)
                self.metrics = Metrics(self.store, self.config)
                if self.config.output_url.startswith("s3://"):
                    self.metrics.s3_retries(s3_client())
                if self.config.metrics.listen:
                    address = self.metrics.serve(self.config.metrics.listen)
                    log.info("metrics endpoint", url=f"http://{address}/metrics")
            except BaseException:
                if self.metrics is not None:
                    self.metrics.close()
                self.lock.release()
                raise
            log.info("service open", database=str(self.config.state_path),
                     executor=self.config.executor.kind, output=self.config.output_url,
                     mast=self.config.mast.url, pid=os.getpid())

    def close(self, *, timeout_s: float = 20.0) -> None:
        """Stop the executor within ``timeout_s``, put back what never started, release all."""
        if self.executor is not None and self.store is not None:
            # Tell systemd the stop may take this long (local runs finishing).
            self.notifier.extend_timeout(timeout_s + 10.0)
            never = self.executor.close(timeout_s=timeout_s)
            if never:
                try:
                    unsent(self.store, list(never), "requeued: the daemon stopped before it ran")
                except Exception as exc:
                    if unwritable(exc) is None:
                        raise
                    # They stay dispatched; the next daemon requeues them as orphans.
                    log.warning("could not requeue unstarted runs", reason=str(exc))
        if self.indexer is not None:
            self.indexer.close(timeout_s=5.0)
        if self.metrics is not None:
            self.metrics.close()
        if self.mast is not None:
            self.mast.close()
        if self.listener is not None:
            self.listener.mast.close()
        if self.archive is not None:
            self.archive.close()
        if self.store is not None:
            self.store.close()
        self.lock.release()

    def _make_listener(self, config: Config) -> Listener | None:
        """The archive-notification listener ``[archive] notifications`` asks for (with a
        MAST client of its own: it runs beside the poll)."""
        if not config.archive.notifications:
            return None
        assert self.store and self.archive
        return Listener(Queue(config.archive.notifications), self.store, self.archive,
                        mast=make_mast_client(config), config=config, outputs=self.outputs)

    def _retire(self, executor: Executor, timeout_s: float) -> None:
        """Close an executor replaced by a reload: runs it started finish on their own (the
        output store has their results either way); what it never started goes back."""
        never = executor.close(timeout_s=timeout_s)
        if never and self.store is not None:
            with self._job("retire"):
                unsent(self.store, list(never), "requeued: the executor was replaced by a reload")

    def _on_result(self, summary: dict[str, Any]) -> None:
        # A local run finished: reconcile soon rather than at the next interval.
        for one in summary.get("results", [summary]):  # a batch's, one per exposure
            log.debug("local run finished", obs_id=one.get("obs_id"), status=one.get("status"),
                      sources=one.get("sources"), duration_s=one.get("duration_s"))
        self._wake.set()

    # -- the jobs ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _job(self, name: str) -> Iterator[None]:
        """A job's body: every line it logs carries ``run_id`` and ``job``."""
        with self._jobs_lock:
            self._jobs_running += 1
        try:
            with structlog.contextvars.bound_contextvars(run_id=self.run_id, job=name):
                try:
                    yield
                except Exception as exc:
                    self._job_failed(exc)
        finally:
            with self._jobs_lock:
                self._jobs_running -= 1

    def _job_failed(self, exc: Exception) -> None:
        reason = unwritable(exc)
        if isinstance(exc, StorageError) and self.metrics is not None:
            self.metrics.error("s3", "retryable" if exc.retryable else "refused")
        if reason is None:
            # A job never takes the daemon down: log it with its traceback, run again.
            log.exception("job failed")
            return
        # A full disk or a read-only database does not heal by itself: stop, say why, and
        # leave the database as the last committed transaction left it.
        self.fatal = f"the state database {self.config.state_path} cannot be written: {reason}"
        log.error("stopping: state database cannot be written",
                  database=str(self.config.state_path), reason=reason)
        self.stop_event.set()

    def poll_job(self, progress: Callable[[int, int, PollOutcome], None] | None = None
                 ) -> PollOutcome | None:
        """Discover newly released exposures."""
        assert self.store and self.mast
        outcome = None
        recorded = 0

        def windows(done: int, total: int, so_far: PollOutcome) -> None:
            # A backfill records a window every few tenths of a second for minutes: send
            # what each brings at once instead of at the next dispatch interval.
            nonlocal recorded
            if so_far.new > recorded and self._scheduler is not None:
                recorded = so_far.new
                self._scheduler.modify_job("dispatch", next_run_time=_now_dt())
            if progress:
                progress(done, total, so_far)

        with self._job("poll"), self._mast_lock:
            outcome = poll(self.store, self.mast, self.config.mast, progress=windows)
            self._last_poll = outcome
            if self.metrics is not None:
                self.metrics.polled(outcome)
        return outcome

    def resweep_job(self) -> PollOutcome | None:
        """Query MAST again for the last ``[mast] resweep_days`` of releases, if one is due
        (``[schedule] resweep_hours`` since the last)."""
        assert self.store and self.mast
        outcome = None
        with self._job("resweep"), self._mast_lock:
            if resweep_due(self.store, self.config.schedule.resweep_hours):
                outcome = resweep(self.store, self.mast, self.config.mast)
                if outcome is not None and outcome.new and self._scheduler is not None:
                    self._scheduler.modify_job("dispatch", next_run_time=_now_dt())
                if outcome is not None and self.metrics is not None:
                    self.metrics.polled(outcome)  # a resweep is a poll of its own kind
        return outcome

    def dispatch_job(self) -> int:
        """Send new datasets within the in-flight bound."""
        assert self.store and self.executor
        sent = 0
        with self._job("dispatch"):
            if not self.stop_event.is_set():
                outcome = dispatch(self.store, self.executor, self.config, run_id=self.run_id)
                sent = outcome.sent
                if self.metrics is not None:
                    self.metrics.dispatched_run(outcome)
        return sent

    def reconcile_job(self) -> None:
        """Settle what the output store says about datasets in flight."""
        assert self.store and self.outputs
        with self._job("reconcile"):
            outcome = reconcile(self.store, self.outputs, self.config.executor,
                                archive=self.config.archive,
                                executor=self.executor, index=self.indexer)
            if self.metrics is not None:
                self.metrics.reconciled_run(outcome)
            if (outcome.done or outcome.failed or outcome.requeued) and self._scheduler:
                self._scheduler.modify_job("dispatch", next_run_time=_now_dt())

    def refresh_job(self) -> None:
        """Compare the next few catalogued inputs with the archive (the background walk)."""
        assert self.store and self.archive
        with self._job("refresh"):
            batch, _ = pace(self.config.schedule.refresh_per_hour)
            outcome = walk(self.store, self.archive, self.outputs, limit=batch)
            if self.metrics is not None:
                self.metrics.refreshed(outcome)
            if outcome.changed and self._scheduler is not None:
                self._scheduler.modify_job("dispatch", next_run_time=_now_dt())

    def notifications_job(self, *, wait_s: int) -> int:
        """One poll of the archive's queue (waiting up to ``wait_s`` for a message) and what
        its messages ask for; returns how many messages arrived."""
        listener = self.listener
        if listener is None or self.stop_event.is_set():
            return 0
        messages = listener.receive(wait_s=wait_s)  # no state touched: a stop need not wait
        if not messages or self.stop_event.is_set():
            return len(messages)  # unhandled ones come back after their visibility timeout
        with self._job("notifications"):
            outcome = listener.handle(messages)
            if (outcome.changed or outcome.recorded) and self._scheduler is not None:
                self._scheduler.modify_job("dispatch", next_run_time=_now_dt())
        return len(messages)

    def _listen(self) -> None:
        """The notification thread: long polls until the daemon stops; trouble reaching the
        queue is logged and tried again, a little later each time (at most a minute)."""
        delay = 1.0
        while not self.stop_event.is_set():
            if self.listener is None:  # none configured (a reload may add one)
                self.stop_event.wait(1.0)
                continue
            try:
                self.notifications_job(wait_s=20)
                delay = 1.0
            except Exception as exc:
                log.warning("archive notifications: queue not reachable", error=str(exc),
                            queue=self.config.archive.notifications, retry_in_s=delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 60.0)

    def _drain_notifications(self) -> None:
        """What the archive's queue holds now, for ``run --once`` (short polls until empty)."""
        try:
            while self.notifications_job(wait_s=1):
                pass
        except Exception as exc:
            log.warning("archive notifications: queue not reachable", error=str(exc),
                        queue=self.config.archive.notifications)

    # -- run ---------------------------------------------------------------------------

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        assert self.store
        c = self.store.counts()
        polled = f"polled {self._last_poll.new} new" if self._last_poll else "not polled yet"
        if self._last_poll and not self._last_poll.ok:
            polled = "last poll FAILED"
        return (f"{polled}, {c['dispatched']} in flight, {c['done']} done, "
                f"{c['failed']} failed, {c['new']} queued")

    def run_forever(self) -> int:
        """The daemon loop; returns the exit code."""
        sched = BackgroundScheduler(
            # poll, resweep (waiting for the poll's MAST client at worst), dispatch,
            # reconcile, refresh: none waits behind another
            executors={"default": JobThreads(5)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC")
        self._scheduler = sched
        self._add_jobs(sched)
        with _signals(self.stop_event, self._reload):
            sched.start()
            # A daemon thread: a long poll in progress at exit is simply abandoned (its
            # messages come back after their visibility timeout).
            threading.Thread(target=self._listen, daemon=True, name="notifications").start()
            if self.indexer is not None:
                self.indexer.start()
            self.notifier.ready()
            self.notifier.status(self.status_line())
            log.info("service running", poll_minutes=self.config.schedule.poll_minutes,
                     reconcile_seconds=self.config.schedule.reconcile_seconds)
            # Ping the watchdog (and refresh STATUS=) at the interval systemd asked for;
            # look at signals and wake-ups more often than that.
            tick = min(self.notifier.watchdog_interval() or 5.0, 5.0)
            last_tick = last_wake = time.monotonic()
            while not self.stop_event.wait(0.25):
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                now = time.monotonic()
                if self._wake.is_set() and now - last_wake > 1.0:
                    self._wake.clear()
                    last_wake = now
                    sched.modify_job("reconcile", next_run_time=_now_dt())
                if now - last_tick >= tick:
                    last_tick = now
                    self.notifier.watchdog()
                    self.notifier.status(self.status_line())
        self.notifier.stopping()
        log.info("stopping")
        sched.shutdown(wait=False)
        self._await_jobs(timeout_s=10.0)
        return 1 if self.fatal else 0

    def _add_jobs(self, sched: BackgroundScheduler) -> None:
        s = self.config.schedule
        sched.add_job(self.poll_job, "interval", minutes=s.poll_minutes, id="poll",
                      next_run_time=_now_dt())
        sched.add_job(self.dispatch_job, "interval", seconds=s.dispatch_seconds, id="dispatch")
        sched.add_job(self.reconcile_job, "interval", seconds=s.reconcile_seconds, id="reconcile")
        self._schedule_resweep(sched)
        self._schedule_refresh(sched)

    def _schedule_resweep(self, sched: BackgroundScheduler) -> None:
        """The resweep job, every ``resweep_hours`` counted from the last resweep (or the
        backfill), so a restart neither repeats one nor puts one off; none at 0."""
        if sched.get_job("resweep") is not None:
            sched.remove_job("resweep")
        hours = self.config.schedule.resweep_hours
        if hours <= 0:
            return
        assert self.store
        last = self.store.last_poll_started("resweep") or self.store.first_poll_started()
        first = max(time.time(), (last or time.time()) + hours * 3600.0)
        sched.add_job(self.resweep_job, "interval", hours=hours, id="resweep",
                      next_run_time=dt.datetime.fromtimestamp(first, dt.UTC))

    def _schedule_refresh(self, sched: BackgroundScheduler) -> None:
        """(Re)plan the refresh walk at ``[schedule] refresh_per_hour`` (0: none)."""
        if sched.get_job("refresh") is not None:
            sched.remove_job("refresh")
        rate = self.config.schedule.refresh_per_hour
        if rate > 0:
            _, every_s = pace(rate)
            # Soon after start (the first poll and dispatch go first), then at the pace: the
            # walk goes on from where the last daemon left it.
            first = _now_dt() + dt.timedelta(seconds=min(every_s, 5.0))
            sched.add_job(self.refresh_job, "interval", seconds=every_s, id="refresh",
                          next_run_time=first)

    def _await_jobs(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._jobs_lock:
                if self._jobs_running == 0:
                    return True
            time.sleep(0.05)
        log.warning("jobs still running at shutdown; their work is recorded transaction by "
                    "transaction and resumes at the next start")
        return False

    def run_once(self, *, progress: bool = False) -> CycleSummary:
        """One poll, dispatch everything new, wait for the results, reconcile, return."""
        assert self.store
        # A local run wakes the loop when it finishes; Lambda results are only seen by
        # listing the output store, which costs requests: look at the configured pace.
        wait_s = 0.5 if self.config.executor.kind == "local" else \
            self.config.schedule.reconcile_seconds
        started = time.monotonic()
        summary = CycleSummary()
        if self.indexer is not None:
            self.indexer.start()
        with _signals(self.stop_event, self._reload), _Progress(progress) as bar:
            summary.poll = self.poll_job(progress=bar.poll)
            summary.resweep = self.resweep_job()
            self._drain_notifications()
            start_counts = self.store.counts()
            todo = start_counts["new"] + start_counts["dispatched"]
            bar.start_work(todo)
            settled0 = start_counts["done"] + start_counts["failed"]
            while not self.stop_event.is_set():
                summary.dispatched += self.dispatch_job()
                self.reconcile_job()
                c = self.store.counts()
                bar.update(c["done"] + c["failed"] - settled0, c)
                # Held datasets wait for the archive bucket (up to [archive] wait_hours): a
                # single cycle leaves them held for the next run or the daemon.
                if c["dispatched"] == 0 and c["new"] == self.store.count_waiting():
                    break
                self._wake.wait(wait_s)
                self._wake.clear()
            if self.indexer is not None and not self.stop_event.is_set():
                self.indexer.drain()  # what the thread has not reached yet
        final = self.store.counts()  # reads work on a full disk
        summary.counts = final
        summary.waiting = self.store.count_waiting()
        summary.fatal = self.fatal
        summary.done = final["done"] - start_counts["done"]
        summary.failed = final["failed"] - start_counts["failed"]
        summary.seconds = time.monotonic() - started
        log.info("cycle finished", new=summary.poll.new if summary.poll else 0,
                 dispatched=summary.dispatched, done=summary.done, failed=summary.failed,
                 waiting=summary.waiting, seconds=round(summary.seconds, 2),
                 interrupted=self.stop_event.is_set())
        return summary

    # -- reload ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file; keep the old configuration if the new one is unusable."""
        self.notifier.reloading()
        if self.config_path is None:
            log.warning("reload ignored: the daemon was not started from a config file")
            self.notifier.ready()
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed; keeping the old configuration", error=str(exc))
            self.notifier.ready()
            return False
        for section, key in _RESTART_ONLY:
            old_v = getattr(getattr(self.config, section), key)
            new_v = getattr(getattr(new, section), key)
            if old_v != new_v:
                log.warning("change needs a restart; keeping the old value",
                            key=f"{section}.{key}", old=old_v, new=new_v)
                kept = getattr(new, section).model_copy(update={key: old_v})
                new = new.model_copy(update={section: kept})
        old, self.config = self.config, new
        if self.metrics is not None:
            self.metrics.configure(new)
        if new.mast != old.mast and self.mast is not None:
            self.mast.close()
            self.mast = make_mast_client(new)
        if new.output_url != old.output_url:
            self.outputs = OutputStore(new.output_url)
            if self.indexer is not None:
                self.indexer.outputs = self.outputs
        if new.archive != old.archive or new.mast != old.mast or new.output_url != old.output_url:
            if (new.archive.bucket, new.archive.anonymous) != \
                    (old.archive.bucket, old.archive.anonymous) and self.archive is not None:
                # Closed on a thread of its own: a refresh batch in progress finishes first.
                threading.Thread(target=self.archive.close, daemon=True,
                                 name="retire-archive").start()
                self.archive = ArchiveBucket(new.archive.bucket,
                                             anonymous=new.archive.anonymous)
            if self.listener is not None:
                self.listener.mast.close()
            self.listener = self._make_listener(new)
        if (new.executor != old.executor or new.archive != old.archive
                or new.output_url != old.output_url) and self.executor is not None:
            retired = self.executor
            self.executor = make_executor(new, self._on_result)
            threading.Thread(target=self._retire, args=(retired, new.executor.timeout_seconds),
                             daemon=True, name="retire-executor").start()
        if new.log.level != old.log.level:
            logs.configure(new.log.level, new.log.format)
        if self._scheduler is not None and new.schedule != old.schedule:
            s = new.schedule
            self._scheduler.reschedule_job("poll", trigger="interval", minutes=s.poll_minutes)
            self._scheduler.reschedule_job("dispatch", trigger="interval",
                                           seconds=s.dispatch_seconds)
            self._scheduler.reschedule_job("reconcile", trigger="interval",
                                           seconds=s.reconcile_seconds)
            self._schedule_resweep(self._scheduler)
            self._schedule_refresh(self._scheduler)
        log.info("configuration reloaded", source=str(self.config_path))
        self.notifier.ready()
        return True


def _now_dt() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.contextmanager
def _signals(stop: threading.Event, reload: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``; SIGHUP sets ``reload``. Restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_stop(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the operator means it
        log.info("signal received; stopping", signal=signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: object) -> None:
        reload.set()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _Progress:
    """A rich progress bar for a terminal; does nothing when off (or under systemd)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and not os.environ.get("JOURNAL_STREAM")
        self._bar: Any = None
        self._poll_task: Any = None
        self._work_task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=logs.console())
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def poll(self, done: int, total: int, outcome: PollOutcome) -> None:
        """Discovery progress, window by window."""
        if self._bar is None:
            return
        if self._poll_task is None:
            self._poll_task = self._bar.add_task("discover", total=total, info="")
        cursor = mjd_to_iso(outcome.cursor_mjd)[:10] if outcome.cursor_mjd else ""
        self._bar.update(self._poll_task, completed=done,
                         info=f"{outcome.new} new, up to {cursor}")

    def start_work(self, total: int) -> None:
        """Begin the dispatch/reconcile bar."""
        if self._bar is not None:
            self._work_task = self._bar.add_task("catalog ", total=max(total, 1), info="")

    def update(self, settled: int, counts: dict[str, int]) -> None:
        """Datasets settled so far."""
        if self._bar is not None and self._work_task is not None:
            self._bar.update(self._work_task, completed=settled,
                             info=f"{counts['dispatched']} in flight, {counts['failed']} failed")
