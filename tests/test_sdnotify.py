"""daemon.sdnotify against a real AF_UNIX datagram socket set as NOTIFY_SOCKET.

The socket stands in for systemd's (tests/notify_socket.py): the bytes checked here are the
bytes systemd would read.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from notify_socket import NotifySocket

from daemon import sdnotify
from daemon.sdnotify import Notifier

STATUS = "polled 12 new, 40 in flight, 11873 done"


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """A listening socket, as a file and in the abstract namespace (``@name``)."""
    sock = NotifySocket.at_path() if request.param == "path" else NotifySocket.abstract()
    with sock:
        yield sock


def test_notifications_arrive_in_order_with_the_exact_bytes(notify_socket: NotifySocket) -> None:
    notifier = Notifier.from_env(notify_socket.env())
    assert notifier.enabled
    assert notifier.socket_name == notify_socket.address

    assert notifier.ready()
    assert notifier.status(STATUS)
    assert notifier.watchdog()
    assert notifier.stopping()

    got = notify_socket.collect(4, timeout=5)
    assert [n.raw for n in got] == [
        b"READY=1",
        b"STATUS=polled 12 new, 40 in flight, 11873 done",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]
    # The kernel-reported sender is this process, which is what NotifyAccess=main checks.
    assert {n.pid for n in got} == {os.getpid()}
    assert notify_socket.drain() == []


def test_status_travels_in_the_same_datagram(notify_socket: NotifySocket) -> None:
    notifier = Notifier.from_env(notify_socket.env())
    notifier.ready("polling MAST every 60 min")
    notifier.stopping("waiting for 2 local jobs")
    got = notify_socket.collect(2)
    assert [n.raw for n in got] == [b"READY=1\nSTATUS=polling MAST every 60 min",
                                    b"STOPPING=1\nSTATUS=waiting for 2 local jobs"]
    assert notify_socket.drain() == []


def test_reloading_carries_the_monotonic_clock(notify_socket: NotifySocket) -> None:
    notifier = Notifier.from_env(notify_socket.env())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready()
    reloading, ready = notify_socket.collect(2)
    assert reloading.raw.startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert set(reloading.fields) == {"RELOADING", "MONOTONIC_USEC"}
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    assert ready.raw == b"READY=1"


def test_extend_timeout(notify_socket: NotifySocket) -> None:
    Notifier.from_env(notify_socket.env()).extend_timeout(90)
    assert notify_socket.collect(1)[0].raw == b"EXTEND_TIMEOUT_USEC=90000000"


def test_status_is_one_line_and_bounded(notify_socket: NotifySocket) -> None:
    notifier = Notifier.from_env(notify_socket.env())
    # A newline would start a new assignment: text must not be able to declare readiness.
    notifier.status("line one\nREADY=1\r\nline\0three")
    # systemd drops a whole datagram over its 4 KiB buffer; multi-byte text cut cleanly.
    notifier.ready("é" * 5000)
    injected, long = notify_socket.collect(2)
    assert injected.raw == b"STATUS=line one READY=1 line three"
    assert set(long.fields) == {"READY", "STATUS"}
    assert len(long.raw) < 4096
    assert long.fields["STATUS"].endswith("...")
    assert set(long.fields["STATUS"][:-3]) == {"é"}


def test_unset_socket_is_a_silent_no_op(caplog: pytest.LogCaptureFixture) -> None:
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "60000000"}):
        notifier = Notifier.from_env(environ)
        assert not notifier.enabled
        assert notifier.socket_name is None
        assert notifier.watchdog_interval() is None
        for call in (notifier.ready, notifier.watchdog, notifier.stopping, notifier.reloading):
            assert call() is False
        assert notifier.status(STATUS) is False
    assert caplog.records == []


def test_from_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with NotifySocket.abstract() as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
        assert Notifier.from_env().ready()
        assert sock.collect(1)[0].raw == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier.from_env().enabled


@pytest.mark.parametrize("value", ["relative/notify.sock", "vsock:2:1234"])
def test_unsupported_address_disables_with_a_warning(
        value: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mastmirror.sdnotify"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert value in caplog.text


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mastmirror.sdnotify" and r.levelno >= logging.WARNING]


def test_vanished_socket_never_raises_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mastmirror.sdnotify")
    # A short directory of our own (a socket path must fit in 108 bytes), kept after close.
    with tempfile.TemporaryDirectory(prefix="mmnotify-") as directory:
        sock = NotifySocket.at_path(directory)
        notifier = Notifier.from_env(sock.env())
        assert notifier.ready()
        path = sock.address
        sock.close()  # systemd went away: the socket file is gone
        assert not os.path.exists(path)

        assert notifier.watchdog() is False
        assert notifier.status(STATUS) is False
        assert notifier.stopping() is False
        warnings = _warnings(caplog)
        assert len(warnings) == 1, warnings
        assert path in warnings[0]

        # Back (daemon-reexec binds the same path again): sends work, and a later outage is
        # reported again, once.
        with NotifySocket(path) as again:
            assert notifier.watchdog()
            assert again.collect(1)[0].raw == b"WATCHDOG=1"
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
        assert len(_warnings(caplog)) == 2


def test_stale_socket_file_and_vanished_abstract_socket(
        caplog: pytest.LogCaptureFixture) -> None:
    # A socket file nobody listens on any more: connect() is refused.
    with NotifySocket.at_path() as holder:
        stale = os.path.join(os.path.dirname(holder.address), "stale.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(stale)
        listener.close()
        assert os.path.exists(stale)
        assert Notifier.from_env({"NOTIFY_SOCKET": stale}).ready() is False
    # An abstract name nobody holds.
    with NotifySocket.abstract() as gone:
        name = gone.address
    assert Notifier.from_env({"NOTIFY_SOCKET": name}).ready() is False
    assert len(_warnings(caplog)) == 2


def test_full_queue_gives_up_instead_of_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nobody reads (a busy PID 1): a send waits at most the send timeout, then is dropped,
    # so the main loop's watchdog ping cannot hang on it.
    monkeypatch.setattr(sdnotify, "_SEND_TIMEOUT_S", 0.05)
    with NotifySocket.at_path() as sock:
        notifier = Notifier.from_env(sock.env())
        big = "x" * 1000
        started = time.monotonic()
        for _ in range(10_000):
            call_started = time.monotonic()
            if not notifier.status(big):
                break
        else:
            pytest.fail("10000 unread datagrams and the queue never filled up")
        assert time.monotonic() - call_started < 1.0
        assert time.monotonic() - started < 5.0
        queued = sock.drain()
        assert queued and all(n.fields["STATUS"] == big for n in queued)
        assert notifier.watchdog()  # drained: sending works again
        assert sock.collect(1)[0].raw == b"WATCHDOG=1"


def test_concurrent_senders_each_datagram_whole(notify_socket: NotifySocket) -> None:
    notifier = Notifier.from_env(notify_socket.env())
    threads, per_thread = 8, 50

    def send(worker: int) -> None:
        for i in range(per_thread):
            notifier.status(f"worker {worker} message {i}")

    workers = [threading.Thread(target=send, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    got = notify_socket.collect(threads * per_thread, timeout=10)
    for worker in workers:
        worker.join()
    assert sorted(n.raw for n in got) == sorted(
        f"STATUS=worker {w} message {i}".encode() for w in range(threads)
        for i in range(per_thread))


# -- WATCHDOG_USEC / WATCHDOG_PID ------------------------------------------------------------

SOCKET = "/run/systemd/notify"


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "60000000"}, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "{pid}"}, 30.0),
    ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "{pid}"}, 0.0005),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "{other}"}, None),
    ({}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "60s"}, None),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "not-a-pid"}, 30.0),
])
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    values = {"pid": str(os.getpid()), "other": str(os.getpid() + 1)}
    env = {"NOTIFY_SOCKET": SOCKET, **{k: v.format(**values) for k, v in environ.items()}}
    interval = Notifier.from_env(env).watchdog_interval()
    assert interval == pytest.approx(expected) if expected is not None else interval is None


def test_watchdog_interval_is_none_in_a_forked_child() -> None:
    # A pool worker inherits the environment (WATCHDOG_PID names the daemon): it must not
    # think the watchdog is its job.
    notifier = Notifier.from_env({"NOTIFY_SOCKET": SOCKET, "WATCHDOG_USEC": "60000000",
                                  "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval() == 30.0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        try:
            os.write(write_end, repr(notifier.watchdog_interval()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == b"None"
