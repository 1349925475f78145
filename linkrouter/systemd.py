# -*- test-case-name: tests.unit.test_systemd,tests.integration.test_systemd -*-
"""
systemd integration without libsystemd: the C{sd_notify} protocol (C{READY=1},
C{RELOADING=1}, C{STOPPING=1}, C{STATUS=}, C{WATCHDOG=1}) and service credentials.

Everything here is a no-op outside systemd: with C{$NOTIFY_SOCKET} unset nothing is sent,
and with C{$CREDENTIALS_DIRECTORY} unset no credential is found. Nothing here raises on
a failed send: a notification is advice to the service manager, never a reason to stop
serving.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from attrs import define, field
from twisted.logger import Logger

__all__ = ["Notifier", "credential_path", "monotonic_usec", "notify"]

_log = Logger(namespace="linkrouter.systemd")

#: Notification socket addresses a send error was already logged for (log it once each,
#: not on every watchdog ping).
_reported: set[str] = set()


def _address(name: str) -> str | None:
    """
    The C{AF_UNIX} address for a C{$NOTIFY_SOCKET} value: an absolute path, or C{@name}
    for the Linux abstract namespace (a leading NUL byte). L{None} for anything else
    (e.g. systemd 254's C{vsock:} form, which this module does not speak).
    """
    if name.startswith("/"):
        return name
    if name.startswith("@") and len(name) > 1:
        return "\0" + name[1:]
    return None


def _report_once(address: str, problem: str) -> None:
    """Log a notification failure the first time it happens for C{address}."""
    if address in _reported:
        return
    _reported.add(address)
    _log.warn(
        "cannot notify systemd through NOTIFY_SOCKET={address}: {problem} "
        "(further failures on this socket are not logged)",
        address=address,
        problem=problem,
    )


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} (newline-separated C{KEY=VALUE} assignments, e.g. C{"READY=1"}) to the
    service manager as one datagram on C{$NOTIFY_SOCKET}, without blocking.

    @return: C{True} if the datagram was sent; C{False} if C{$NOTIFY_SOCKET} is unset
        (nothing is done) or the send failed (logged once per socket, never raised).
    """
    env = os.environ if environ is None else environ
    name = env.get("NOTIFY_SOCKET", "")
    if not name:
        return False
    address = _address(name)
    if address is None:
        _report_once(name, "not an absolute path or @abstract name")
        return False
    if not state:
        return False
    data = state.encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sent = sock.sendto(data, address)
    except OSError as e:
        _report_once(name, e.strerror or errno.errorcode.get(e.errno or 0, str(e)))
        return False
    if sent != len(data):  # datagrams are all or nothing; be explicit anyway
        _report_once(name, f"short send ({sent} of {len(data)} bytes)")
        return False
    return True


def monotonic_usec() -> int:
    """C{CLOCK_MONOTONIC} in microseconds, as C{MONOTONIC_USEC=} with C{RELOADING=1} wants."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def credential_path(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """
    C{$CREDENTIALS_DIRECTORY/<name>} (from C{LoadCredential=} / C{SetCredential=}) if it
    exists; L{None} when the variable is unset, the credential is missing, or C{name} is
    not a plain file name.
    """
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory or not name or "/" in name or name in (".", ".."):
        return None
    path = Path(directory) / name
    return path if path.exists() else None


def _one_line(text: str) -> str:
    """A C{STATUS=} value: the protocol is line-based, so no newlines in it."""
    return " ".join(text.splitlines())


@define
class Notifier:
    """What the service tells systemd over its life: ready, reloading, stopping, alive."""

    environ: Mapping[str, str] = field(factory=lambda: os.environ)

    def _send(self, state: str) -> None:
        notify(state, self.environ)

    def ready(self, status: str = "") -> None:
        """C{READY=1}: start-up is complete (listening, store open), plus C{STATUS=}."""
        self._send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def reloading(self) -> None:
        """C{RELOADING=1} with C{MONOTONIC_USEC=}; send L{ready} when the reload is done."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        """C{STOPPING=1}: a clean shutdown (drain) has begun."""
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """C{STATUS=text}, shown by C{systemctl status}."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog_interval(self) -> float | None:
        """
        Seconds between C{WATCHDOG=1} pings: half of C{$WATCHDOG_USEC}. L{None} when no
        watchdog is configured, the value is not a positive integer, or
        C{$WATCHDOG_PID} names another process.
        """
        usec_text = self.environ.get("WATCHDOG_USEC", "")
        pid_text = self.environ.get("WATCHDOG_PID", "")
        if pid_text:
            try:
                if int(pid_text) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(usec_text)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2_000_000

    def watchdog(self) -> None:
        """C{WATCHDOG=1}: the service is alive (send every L{watchdog_interval} seconds)."""
        self._send("WATCHDOG=1")
