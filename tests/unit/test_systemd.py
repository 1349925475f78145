"""
Tests for L{linkrouter.systemd}'s watchdog settings and service credentials, and the
shipped units' paths and parser (L{unit_settings}) that other tests use. The C{sd_notify}
protocol over real C{AF_UNIX} sockets, C{systemd-analyze verify} and socket activation:
L{tests.integration.test_systemd}.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.systemd import Notifier, credential_path

#: The checkout this file belongs to (linkrouter/, twisted/plugins/, contrib/).
REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "contrib" / "systemd"
SERVICE = UNITS / "linkrouter.service"
SOCKET = UNITS / "linkrouter.socket"


class WatchdogIntervalTests(SynchronousTestCase):
    """L{Notifier.watchdog_interval} reads C{WATCHDOG_USEC} and C{WATCHDOG_PID}."""

    def interval(self, **environ: str) -> float | None:
        """The interval a L{Notifier} with C{environ} computes."""
        return Notifier(environ).watchdog_interval()

    def test_unset(self) -> None:
        """No C{WATCHDOG_USEC}: no watchdog."""
        self.assertIsNone(self.interval())
        self.assertIsNone(self.interval(WATCHDOG_PID=str(os.getpid())))

    def test_half_the_timeout(self) -> None:
        """Pings go at half of C{WATCHDOG_USEC}, in seconds."""
        self.assertEqual(self.interval(WATCHDOG_USEC="30000000"), 15.0)
        self.assertEqual(self.interval(WATCHDOG_USEC="1"), 0.0000005)

    def test_own_pid(self) -> None:
        """A C{WATCHDOG_PID} naming this process is honoured."""
        self.assertEqual(
            self.interval(WATCHDOG_USEC="20000000", WATCHDOG_PID=str(os.getpid())), 10.0)

    def test_other_pid(self) -> None:
        """A C{WATCHDOG_PID} naming another process (e.g. a parent) means no watchdog."""
        self.assertIsNone(
            self.interval(WATCHDOG_USEC="20000000", WATCHDOG_PID=str(os.getpid() + 1)))

    def test_invalid(self) -> None:
        """Values that are not positive integers mean no watchdog."""
        for usec in ("", "abc", "0", "-5", "1.5"):
            self.assertIsNone(self.interval(WATCHDOG_USEC=usec), usec)
        self.assertIsNone(self.interval(WATCHDOG_USEC="20000000", WATCHDOG_PID="me"))


class CredentialPathTests(SynchronousTestCase):
    """L{credential_path} finds C{LoadCredential=} files in C{$CREDENTIALS_DIRECTORY}."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        (self.directory / "token-secret").write_text("s" * 48)
        self.environ = {"CREDENTIALS_DIRECTORY": str(self.directory)}

    def test_present(self) -> None:
        """An existing credential's path is returned."""
        self.assertEqual(credential_path("token-secret", self.environ),
                         self.directory / "token-secret")

    def test_missing(self) -> None:
        """A credential the unit did not load: L{None}."""
        self.assertIsNone(credential_path("admin-key", self.environ))

    def test_no_directory(self) -> None:
        """Without C{$CREDENTIALS_DIRECTORY} (not under systemd): L{None}."""
        self.assertIsNone(credential_path("token-secret", {}))
        self.assertIsNone(credential_path("token-secret", {"CREDENTIALS_DIRECTORY": ""}))

    def test_not_a_name(self) -> None:
        """Only plain names: nothing outside the directory is reachable."""
        (self.directory / "sub").mkdir()
        (self.directory / "sub" / "x").write_text("x")
        for name in ("", ".", "..", "sub/x", "../token-secret", "/etc/passwd"):
            self.assertIsNone(credential_path(name, self.environ), name)

    def test_default_environ(self) -> None:
        """With no C{environ} argument the process environment is read."""
        saved = os.environ.get("CREDENTIALS_DIRECTORY")

        def restore() -> None:
            if saved is None:
                os.environ.pop("CREDENTIALS_DIRECTORY", None)
            else:
                os.environ["CREDENTIALS_DIRECTORY"] = saved

        self.addCleanup(restore)
        os.environ["CREDENTIALS_DIRECTORY"] = str(self.directory)
        self.assertEqual(credential_path("token-secret"), self.directory / "token-secret")


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """
    A unit file's settings: section -> key -> values in order, with continuation lines
    joined and comments dropped (enough of systemd.syntax(7) for the shipped units).
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    pending_line = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith(("#", ";")):
            continue
        if stripped.endswith("\\"):
            pending_line += stripped[:-1] + " "
            continue
        line, pending_line = pending_line + stripped, ""
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections
