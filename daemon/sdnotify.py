"""systemd's service notification protocol (sd_notify(3)), on the standard library only.

Under ``Type=notify`` systemd hands the service a datagram socket in ``NOTIFY_SOCKET`` and
waits for ``READY=1`` before it counts the service as started. The daemon then reports what
it is doing (``STATUS=``, shown by ``systemctl status``), proves that its main loop is alive
(``WATCHDOG=1``, at least every ``WATCHDOG_USEC`` microseconds when ``WatchdogSec=`` is set),
brackets a configuration reload (``RELOADING=1`` ... ``READY=1``) and announces its shutdown
(``STOPPING=1``).

Each notification is one datagram of newline-separated ``KEY=value`` assignments. Outside
systemd (``NOTIFY_SOCKET`` unset: a terminal, ``run --once``, the tests) every method is a
no-op, so the service loop calls them unconditionally.

Nothing here raises into the daemon: a notification is advisory, and the socket can be
briefly gone (``systemctl daemon-reexec``) or full. A failed send is logged once, as a
warning, until a send succeeds again, and otherwise ignored.

Typical use in the service::

    notifier = Notifier.from_env()
    ...open the state store, set up the schedule...
    notifier.ready("polling MAST every 60 min")
    interval = notifier.watchdog_interval()    # None: no watchdog, do not schedule pings
    ...every `interval` seconds, from the main loop:  notifier.watchdog()
    ...on SIGHUP: notifier.reloading(); reload; notifier.ready(status)
    ...on SIGTERM: notifier.stopping()
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger("mastmirror.sdnotify")

# systemd drops a whole notification larger than its buffer (PIPE_BUF, 4096 bytes in
# systemd 252), so a long STATUS= would silently lose the READY=1 or STOPPING=1 sent with it.
# Status text is cut well below that.
_MAX_STATUS_BYTES = 1024

# How long a send may wait when systemd's receive queue is full. The watchdog ping runs on
# the main loop; blocking it indefinitely would turn a busy PID 1 into a watchdog kill.
_SEND_TIMEOUT_S = 1.0


def _socket_address(value: str) -> str | bytes | None:
    """The ``AF_UNIX`` address for a ``NOTIFY_SOCKET`` value, or None if unsupported.

    ``@name`` is a Linux abstract-namespace socket: its address is a NUL byte followed by the
    name (no terminating NUL, the length is exact). A path must be absolute, as
    sd_notify(3) requires; other forms (``vsock:...`` of newer systemd) are not supported.
    """
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def _positive_int(value: str | None) -> int | None:
    """Parse an environment integer; None when unset, empty, malformed or not positive."""
    if value is None or not value.strip():
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


def _clean_status(text: str) -> str:
    """One line of at most ``_MAX_STATUS_BYTES`` UTF-8 bytes.

    A newline would end the ``STATUS=`` assignment and start another (a status text that
    contains "\\nREADY=1" must not declare readiness); systemd ignores a datagram with a NUL.
    """
    line = " ".join(text.replace("\0", " ").splitlines()).strip()
    encoded = line.encode("utf-8", errors="replace")
    if len(encoded) <= _MAX_STATUS_BYTES:
        return line
    # Cut on a character boundary ("ignore" drops a partial trailing sequence).
    return encoded[: _MAX_STATUS_BYTES - 3].decode("utf-8", errors="ignore") + "..."


class Notifier:
    """Sends service notifications to systemd; every method is a no-op outside systemd.

    Safe to share between threads (each send uses its own socket). Methods return True when
    the datagram was handed to the socket, False when disabled or the send failed; they never
    raise.
    """

    def __init__(
        self,
        notify_socket: str | None = None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        """Notify ``notify_socket`` (a path or ``@abstract``; None or "" disables).

        ``watchdog_usec`` is systemd's ``WATCHDOG_USEC`` (None: no watchdog);
        ``watchdog_pid`` its ``WATCHDOG_PID``, the process the watchdog is meant for
        (None: this one).
        """
        self._socket_name = notify_socket or None
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not an absolute path or @abstract name; "
                        "systemd notifications are disabled", notify_socket)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._watchdog_pid = watchdog_pid
        # True between a failed send and the next successful one: log an outage once.
        # Unsynchronised on purpose: a race costs at most one extra log line.
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier configured from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        A malformed ``WATCHDOG_USEC`` counts as no watchdog rather than failing the start.
        A malformed ``WATCHDOG_PID`` counts as absent, i.e. "this process": pinging when in
        doubt is harmless (systemd drops pings from other processes under
        ``NotifyAccess=main``), while not pinging a real watchdog gets the daemon killed.
        """
        return cls(
            environ.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_positive_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (the process runs under systemd)."""
        return self._address is not None

    @property
    def socket_name(self) -> str | None:
        """The ``NOTIFY_SOCKET`` value in use, or None."""
        return self._socket_name if self.enabled else None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``watchdog()`` pings, or None when no ping is expected.

        Half of ``WATCHDOG_USEC``, the margin sd_watchdog_enabled(3) recommends. None when
        notifications are disabled, when no watchdog is set, or when ``WATCHDOG_PID`` names
        another process (a child that inherited the environment must not ping for its
        parent). Checked against the current PID at each call, so a forked child gets None.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # -- the notifications ------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete; optionally with a status line."""
        return self.notify("READY=1", *self._status_field(status))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status`` (newlines become spaces)."""
        return self.notify(*self._status_field(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the main loop is alive. Send it every ``watchdog_interval()``."""
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1``: a configuration reload started; send ``ready()`` when it is done.

        Carries ``MONOTONIC_USEC`` (CLOCK_MONOTONIC now), which ``Type=notify-reload``
        (systemd 253+) requires to match the message to the reload it asked for; older
        systemd ignores the field.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}",
                           *self._status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon is shutting down (it may still take a while)."""
        return self.notify("STOPPING=1", *self._status_field(status))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: the current start, reload or stop needs ``seconds`` more.

        For a long start (a database migration before READY=1); systemd then waits at least
        that long from now, however ``TimeoutStartSec=`` is set.
        """
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments as one datagram; False when disabled or failed."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                # connect() then send(): a connected datagram socket waits (up to the
                # timeout) while the receiver's queue is full, where sendto() would spin.
                sock.connect(self._address)
                sent = sock.send(message)
            if sent != len(message):
                raise OSError(f"short send: {sent} of {len(message)} bytes")
        except Exception as exc:  # anything at all: a notification must never stop the daemon
            self._report_failure(exc)
            return False
        self._failing = False
        return True

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _status_field(status: str | None) -> tuple[str, ...]:
        return () if status is None else (f"STATUS={_clean_status(status)}",)

    def _report_failure(self, exc: Exception) -> None:
        if self._failing:
            log.debug("systemd notification failed again: %s", exc)
            return
        self._failing = True
        log.warning("systemd notification to %s failed: %s (ignored; not logged again "
                    "until a notification succeeds)", self._socket_name, exc)
