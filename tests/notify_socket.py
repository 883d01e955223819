"""A stand-in for systemd's notification socket, for tests that check what a daemon reports.

systemd creates an ``AF_UNIX`` ``SOCK_DGRAM`` socket, passes its address in ``NOTIFY_SOCKET``
and reads one notification per datagram. ``NotifySocket`` does the same: bind it (at a path
or in the abstract namespace), put ``env()`` into the environment of the process under test,
then read what arrives::

    with NotifySocket.at_path() as sock:
        proc = subprocess.Popen([...], env={**os.environ, **sock.env()})
        sock.wait_for("READY", timeout=60)
        proc.send_signal(signal.SIGTERM)
        sock.wait_for("STOPPING", timeout=30)
        assert all(n.pid == proc.pid for n in sock.received)   # as NotifyAccess=main checks

It records the sender's PID of each datagram (SO_PASSCRED, as systemd does for
``NotifyAccess=``), so a test can tell the main process from its children.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

# systemd reads at most PIPE_BUF bytes per notification; a larger datagram is a bug to see.
_MAX_DATAGRAM = 65536
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Notification:
    """One datagram: its exact bytes, the parsed assignments and the sender's PID."""

    raw: bytes
    pid: int | None
    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes, pid: int | None = None) -> Notification:
        """Split ``KEY=value`` lines the way systemd does (a later duplicate key wins)."""
        fields: dict[str, str] = {}
        for line in raw.decode("utf-8", errors="replace").split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        return cls(raw=raw, pid=pid, fields=fields)

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of ``key`` in this notification, or ``default``."""
        return self.fields.get(key, default)


class NotifySocket:
    """A bound ``AF_UNIX`` datagram socket that collects notifications with timeouts."""

    def __init__(self, notify_socket: str, *, cleanup_dir: Path | None = None) -> None:
        """Bind to ``notify_socket`` (an absolute path or ``@abstract-name``)."""
        self.address = notify_socket
        self._cleanup_dir = cleanup_dir
        self.received: list[Notification] = []
        self._bound = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # Ask the kernel for each sender's credentials, as systemd does.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if notify_socket.startswith("@"):
                self._sock.bind(b"\0" + os.fsencode(notify_socket[1:]))
            else:
                self._sock.bind(notify_socket)
            self._bound = True
        except BaseException:
            self.close()
            raise

    @classmethod
    def at_path(cls, directory: str | os.PathLike[str] | None = None) -> Self:
        """A socket file ``notify.sock`` in ``directory`` (default: a new short temp dir).

        A socket path must fit in 108 bytes; pytest's ``tmp_path`` can be longer, hence the
        default of a fresh ``mkdtemp`` directory that ``close()`` removes.
        """
        if directory is None:
            tmp = Path(tempfile.mkdtemp(prefix="mmnotify-"))
            return cls(str(tmp / "notify.sock"), cleanup_dir=tmp)
        return cls(str(Path(directory).resolve() / "notify.sock"))

    @classmethod
    def abstract(cls) -> Self:
        """A socket in Linux's abstract namespace (``@name``: no file, gone when closed)."""
        return cls(f"@mastmirror-test/{os.getpid()}/{uuid.uuid4().hex}")

    def env(self) -> dict[str, str]:
        """The environment that points a process at this socket."""
        return {"NOTIFY_SOCKET": self.address}

    def receive(self, timeout: float = 5.0) -> Notification | None:
        """The next notification, or None if none arrives within ``timeout`` seconds."""
        self._sock.settimeout(max(timeout, 0.0) or 1e-6)
        try:
            raw, ancdata, _flags, _addr = self._sock.recvmsg(
                _MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size))
        except TimeoutError:
            return None
        pid = None
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(data[: _UCRED.size])[0]
        notification = Notification.parse(raw, pid)
        self.received.append(notification)
        return notification

    def collect(self, count: int, timeout: float = 5.0) -> list[Notification]:
        """Exactly ``count`` notifications within ``timeout`` (AssertionError otherwise)."""
        deadline = time.monotonic() + timeout
        got: list[Notification] = []
        while len(got) < count:
            notification = self.receive(deadline - time.monotonic())
            if notification is None:
                raise AssertionError(f"got {len(got)} of {count} notifications within "
                                     f"{timeout}s: {[n.raw for n in got]}")
            got.append(notification)
        return got

    def wait_for(self, key: str, value: str | None = None,
                 timeout: float = 30.0) -> list[Notification]:
        """Read until a notification sets ``key`` (to ``value``, if given).

        Returns every notification read by this call, the matching one last; raises
        AssertionError naming what did arrive if none matches within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        got: list[Notification] = []
        while True:
            notification = self.receive(deadline - time.monotonic())
            if notification is None:
                want = key if value is None else f"{key}={value}"
                raise AssertionError(f"no {want} within {timeout}s; got {[n.raw for n in got]}")
            got.append(notification)
            if key in notification and (value is None or notification.get(key) == value):
                return got

    def drain(self, timeout: float = 0.0) -> list[Notification]:
        """Whatever is queued (waiting up to ``timeout`` for each next datagram)."""
        got: list[Notification] = []
        while (notification := self.receive(timeout)) is not None:
            got.append(notification)
        return got

    def close(self) -> None:
        """Close the socket and remove its file (and the temp dir ``at_path`` made)."""
        self._sock.close()
        if self._bound and not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)
        if self._cleanup_dir is not None:
            shutil.rmtree(self._cleanup_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
