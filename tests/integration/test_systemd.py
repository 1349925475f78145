"""
Tests for L{linkrouter.systemd}'s C{sd_notify} protocol over real C{AF_UNIX} datagram
sockets, and for the shipped units in C{contrib/systemd}: C{systemd-analyze verify},
their consistency with linkrouter's options, and socket activation of a real
C{twistd linkrouter} process on loopback. The watchdog settings and credentials:
L{tests.unit.test_systemd}.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from linkrouter import config as config_module
from linkrouter.systemd import Notifier, monotonic_usec, notify
from linkrouter.tap import Options

from ..unit.test_systemd import REPO, SERVICE, SOCKET, unit_settings

#: Bounds on every wait in this module.
RECV_TIMEOUT = 5.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
VERIFY_TIMEOUT = 60.0

#: Exactly what the C{twistd} console script runs.
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv[0] = 'twistd'; sys.exit(run())"
)

#: What systemd does between fork and exec: the listening socket becomes fd 3 (the
#: first passed descriptor) and C{LISTEN_PID} names the process that will run the
#: service, which is only known after the fork. Then it runs twistd in this very process.
LAUNCHER = f"""
import os, sys
fd = int(os.environ.pop("TEST_LISTEN_FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-c", {TWISTD!r}, *sys.argv[1:]])
"""


def datagram_socket(test: SynchronousTestCase, abstract: bool = False
                    ) -> tuple[socket.socket, str]:
    """
    A bound C{AF_UNIX} datagram socket the test owns, closed (and its directory removed)
    on cleanup, and the C{$NOTIFY_SOCKET} value that names it. The path is kept short:
    C{sun_path} holds 108 bytes, and trial's temporary directories can be longer.
    """
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    test.addCleanup(receiver.close)
    receiver.settimeout(RECV_TIMEOUT)
    if abstract:
        name = f"linkrouter-test-{uuid.uuid4().hex}"
        receiver.bind("\0" + name)
        return receiver, "@" + name
    directory = tempfile.mkdtemp(prefix="lr-notify-")
    test.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "notify")
    receiver.bind(path)
    return receiver, path


def pending(receiver: socket.socket) -> list[bytes]:
    """Every datagram already queued on C{receiver}, without waiting."""
    received = []
    receiver.setblocking(False)
    try:
        while True:
            try:
                received.append(receiver.recv(65536))
            except BlockingIOError:
                return received
    finally:
        receiver.settimeout(RECV_TIMEOUT)


def messages(events: list[dict[str, object]]) -> list[str]:
    """The formatted text of captured log events."""
    return [formatEvent(event) for event in events]


class NotifyTests(SynchronousTestCase):
    """L{notify} sends one datagram to C{$NOTIFY_SOCKET}, and never raises."""

    def assertArrives(self, abstract: bool) -> None:
        """Each state L{notify} sends arrives as one datagram, byte for byte."""
        receiver, name = datagram_socket(self, abstract=abstract)
        environ = {"NOTIFY_SOCKET": name}
        states = [
            "READY=1",
            "READY=1\nSTATUS=serving on 127.0.0.1:8080",
            "STATUS=draining 3 requests",
            "STOPPING=1",
            f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}",
            "WATCHDOG=1",
        ]
        for state in states:
            self.assertTrue(notify(state, environ), state)
            self.assertEqual(receiver.recv(65536), state.encode("utf-8"))
        self.assertEqual(pending(receiver), [])

    def test_path_socket(self) -> None:
        """A file system socket path: READY, STATUS, STOPPING, RELOADING arrive as sent."""
        self.assertArrives(abstract=False)

    def test_abstract_socket(self) -> None:
        """
        A leading C{@} names a socket in the Linux abstract namespace (how systemd's
        own C{$NOTIFY_SOCKET} used to look).
        """
        if not sys.platform.startswith("linux"):
            self.fail("linkrouter's systemd support targets Linux (abstract sockets)")
        self.assertArrives(abstract=True)

    def test_unset(self) -> None:
        """
        Without C{$NOTIFY_SOCKET} (unset or empty) L{notify} returns C{False} and
        sends nothing.
        """
        receiver, _ = datagram_socket(self)
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": ""}))
        self.assertEqual(pending(receiver), [])

    def test_default_environ(self) -> None:
        """With no C{environ} argument, L{notify} reads the process environment."""
        receiver, name = datagram_socket(self)
        saved = os.environ.get("NOTIFY_SOCKET")

        def restore() -> None:
            if saved is None:
                os.environ.pop("NOTIFY_SOCKET", None)
            else:
                os.environ["NOTIFY_SOCKET"] = saved

        self.addCleanup(restore)
        os.environ["NOTIFY_SOCKET"] = name
        self.assertTrue(notify("READY=1"))
        self.assertEqual(receiver.recv(65536), b"READY=1")
        del os.environ["NOTIFY_SOCKET"]
        self.assertFalse(notify("READY=1"))
        self.assertEqual(pending(receiver), [])

    def test_nobody_listening(self) -> None:
        """
        A socket path with no socket, or with a socket nobody holds any more, makes
        L{notify} return C{False} without raising, and the failure is logged once.
        """
        directory = tempfile.mkdtemp(prefix="lr-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        missing = os.path.join(directory, "missing")
        stale = os.path.join(directory, "stale")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
            gone.bind(stale)  # the file stays behind, the socket is closed

        with capturedLogs() as events:
            for path in (missing, stale):
                for _ in range(3):
                    self.assertFalse(notify("WATCHDOG=1", {"NOTIFY_SOCKET": path}))
        texts = messages(events)
        self.assertEqual(len(texts), 2, texts)
        self.assertIn(missing, texts[0])
        self.assertIn(stale, texts[1])

    def test_unsupported_address(self) -> None:
        """A relative path (or a bare C{@}) is not a notification socket: C{False}."""
        with capturedLogs():
            self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "relative/notify"}))
            self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "@"}))

    def test_empty_state(self) -> None:
        """An empty state is not sent (C{sd_notify} refuses it too)."""
        receiver, name = datagram_socket(self)
        self.assertFalse(notify("", {"NOTIFY_SOCKET": name}))
        self.assertEqual(pending(receiver), [])

    def test_non_blocking(self) -> None:
        """
        When the service manager does not read (its queue is full), L{notify} returns
        C{False} at once instead of blocking the reactor.
        """
        receiver, name = datagram_socket(self)
        started = time.monotonic()
        results = []
        with capturedLogs() as events:
            for _ in range(5000):
                results.append(notify("WATCHDOG=1", {"NOTIFY_SOCKET": name}))
                if not results[-1]:
                    break
        self.assertLess(time.monotonic() - started, RECV_TIMEOUT)
        self.assertTrue(results[0])
        self.assertFalse(results[-1], "the receive queue never filled")
        self.assertEqual(len(events), 1)
        queued = pending(receiver)
        self.assertEqual(len(queued), len(results) - 1)
        self.assertEqual(set(queued), {b"WATCHDOG=1"})


class NotifierTests(SynchronousTestCase):
    """L{Notifier} speaks the states of the service's life."""

    def setUp(self) -> None:
        self.receiver, name = datagram_socket(self)
        self.notifier = Notifier({"NOTIFY_SOCKET": name})

    def received(self) -> bytes:
        """The next datagram, within L{RECV_TIMEOUT}."""
        return self.receiver.recv(65536)

    def test_ready(self) -> None:
        """C{ready()} sends C{READY=1}; with a status, C{STATUS=} on the next line."""
        self.notifier.ready()
        self.assertEqual(self.received(), b"READY=1")
        self.notifier.ready("serving on tcp:8080")
        self.assertEqual(self.received(), b"READY=1\nSTATUS=serving on tcp:8080")

    def test_reloading(self) -> None:
        """C{reloading()} sends C{RELOADING=1} and the current C{MONOTONIC_USEC}."""
        before = monotonic_usec()
        self.notifier.reloading()
        after = monotonic_usec()
        lines = self.received().decode().split("\n")
        self.assertEqual(lines[0], "RELOADING=1")
        key, _, value = lines[1].partition("=")
        self.assertEqual((key, len(lines)), ("MONOTONIC_USEC", 2))
        self.assertTrue(before <= int(value) <= after, (before, value, after))

    def test_stopping(self) -> None:
        """C{stopping()} sends C{STOPPING=1}."""
        self.notifier.stopping()
        self.assertEqual(self.received(), b"STOPPING=1")

    def test_status(self) -> None:
        """C{status()} sends C{STATUS=}, folding newlines (the protocol is line-based)."""
        self.notifier.status("draining")
        self.assertEqual(self.received(), b"STATUS=draining")
        self.notifier.status("two\nlines")
        self.assertEqual(self.received(), b"STATUS=two lines")

    def test_watchdog(self) -> None:
        """C{watchdog()} sends C{WATCHDOG=1}."""
        self.notifier.watchdog()
        self.assertEqual(self.received(), b"WATCHDOG=1")

    def test_outside_systemd(self) -> None:
        """Without C{$NOTIFY_SOCKET} every call is a quiet no-op."""
        notifier = Notifier({})
        with capturedLogs() as events:
            notifier.ready("x")
            notifier.reloading()
            notifier.status("x")
            notifier.watchdog()
            notifier.stopping()
        self.assertEqual(list(events), [])
        self.assertEqual(pending(self.receiver), [])

    def test_default_environ(self) -> None:
        """A L{Notifier} made without arguments reads the process environment."""
        self.assertIs(Notifier().environ, os.environ)

    def test_monotonic_usec(self) -> None:
        """L{monotonic_usec} is C{CLOCK_MONOTONIC} in whole microseconds."""
        before = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000) - 1
        value = monotonic_usec()
        after = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000) + 1
        self.assertIsInstance(value, int)
        self.assertTrue(before <= value <= after, (before, value, after))


def expand(word: str, environ: dict[str, str]) -> str:
    """systemd's C{${VAR}} substitution in a command line word."""
    return re.sub(r"\$\{(\w+)\}", lambda m: environ.get(m.group(1), ""), word)


def twistd_binary() -> str | None:
    """A twistd executable that exists here: next to this Python, else on C{$PATH}."""
    beside = Path(sys.executable).parent / "twistd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("twistd")


#: C{systemd-analyze verify} reports unknown keys and unparsable values on stderr,
#: prefixed with the file ("...: Unknown key 'X' in section [Service], ignoring."), and
#: still exits 0, so the exit status alone proves little.
OUR_UNITS = re.compile(r"linkrouter\.(service|socket)")
ALARM = re.compile(r"(?i)unknown|error|fail|ignoring|invalid|not executable")
#: A line about some other unit (a dependency such as network-online.target loaded from
#: the host's own unit files): not the shipped units' problem.
OTHER_UNIT = re.compile(r"[\w@.-]+\.(service|socket|target|mount|slice|path|timer)\b")


def verify_problems(output: str) -> list[str]:
    """The lines of C{verify} output that point at a mistake in the shipped units."""
    return [
        line for line in output.splitlines()
        if OUR_UNITS.search(line) or (ALARM.search(line) and not OTHER_UNIT.search(line))
    ]


class UnitFileTests(SynchronousTestCase):
    """The units in C{contrib/systemd} are valid and agree with linkrouter's options."""

    def setUp(self) -> None:
        self.service = unit_settings(SERVICE)
        self.socket = unit_settings(SOCKET)

    def verify(self, service_text: str) -> tuple[int, list[str]]:
        """
        Run C{systemd-analyze verify} on copies of both units (the service's text as
        given) and return its exit status and the output lines that name a problem.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.fail("systemd-analyze is needed to verify the units (Debian: systemd)")
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "linkrouter.service").write_text(service_text)
        shutil.copy(SOCKET, directory / "linkrouter.socket")
        result = subprocess.run(
            [analyze, "verify", str(directory / "linkrouter.socket"),
             str(directory / "linkrouter.service")],
            capture_output=True, text=True, timeout=VERIFY_TIMEOUT, check=False,
        )
        return result.returncode, verify_problems(result.stdout + result.stderr)

    def runnable_service(self) -> str:
        """
        The shipped service with C{ExecStart}'s C{/opt/linkrouter/venv/bin/twistd}
        (which C{verify} requires to exist) replaced by a twistd that exists here.
        """
        twistd = twistd_binary()
        if twistd is None:
            self.fail("no twistd executable to point ExecStart at")
        text = SERVICE.read_text()
        self.assertIn("ExecStart=/opt/linkrouter/venv/bin/twistd ", text)
        return text.replace("ExecStart=/opt/linkrouter/venv/bin/twistd ", f"ExecStart={twistd} ")

    def test_verify(self) -> None:
        """C{systemd-analyze verify} accepts both units without a complaint."""
        status, problems = self.verify(self.runnable_service())
        self.assertEqual((status, problems), (0, []))

    def test_verify_reports_mistakes(self) -> None:
        """
        The check above is not vacuous: an unknown key and a bad value in a copy are
        reported (even though C{verify} may still exit 0).
        """
        text = self.runnable_service().replace("Type=notify\n", "Type=notifyy\n")
        text = text.replace("ProtectClock=yes\n", "ProtectClok=yes\n")
        _, problems = self.verify(text)
        for mistake in ("notifyy", "ProtectClok"):
            self.assertTrue([line for line in problems if mistake in line], problems)

    def test_notify_service(self) -> None:
        """The service tells systemd when it is ready, from its main process."""
        unit = self.service["Service"]
        self.assertEqual(unit["Type"], ["notify"])
        self.assertEqual(unit["NotifyAccess"], ["main"])
        self.assertEqual(unit["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(self.service["Unit"]["Requires"], ["linkrouter.socket"])

    def test_stop_timeout_above_grace(self) -> None:
        """systemd waits longer than linkrouter's shutdown grace before SIGKILL."""
        grace = getattr(config_module, "DEFAULT_SHUTDOWN_GRACE", 30.0)
        self.assertEqual(self.service["Service"]["KillSignal"], ["SIGTERM"])
        timeout = self.service["Service"]["TimeoutStopSec"]
        self.assertGreater(int(timeout[-1]), grace)

    def test_hardening(self) -> None:
        """The sandbox settings are in place; W^X memory is deliberately not denied."""
        unit = self.service["Service"]
        expected = {
            "DynamicUser": "yes", "StateDirectory": "linkrouter", "StateDirectoryMode": "0700",
            "UMask": "0077", "ProtectSystem": "strict", "ProtectHome": "yes",
            "PrivateTmp": "yes", "PrivateDevices": "yes", "NoNewPrivileges": "yes",
            "CapabilityBoundingSet": "", "SystemCallFilter": "@system-service",
            "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        }
        for key, value in expected.items():
            self.assertEqual(unit.get(key), [value], key)
        # pyOpenSSL's cffi callbacks (every outgoing HTTPS request) need W+X memory.
        self.assertNotIn("MemoryDenyWriteExecute", unit)
        self.assertEqual(sorted(unit["LoadCredential"]), [
            "admin-key:/etc/linkrouter/admin-key",
            "token-secret:/etc/linkrouter/token-secret",
        ])

    def test_socket(self) -> None:
        """
        The socket's address family matches the service's C{systemd:domain=...}
        endpoint (an IPv6 socket adopted as INET reports garbled client addresses), and
        it asks for a large backlog.
        """
        sock = self.socket["Socket"]
        self.assertEqual(sock["ListenStream"], ["0.0.0.0:8080"])
        self.assertEqual(sock["Backlog"], ["1024"])
        self.assertEqual(self.socket["Install"]["WantedBy"], ["sockets.target"])
        self.assertIn("--listen systemd:domain=INET:index=0",
                      " ".join(self.service["Service"]["ExecStart"]))

    def test_execstart_parses(self) -> None:
        """
        C{ExecStart}'s arguments, as systemd expands them, are linkrouter options that
        put the data in C{$STATE_DIRECTORY} and read the secrets from the credentials.
        """
        state = Path(self.mktemp()).resolve()
        credentials = Path(self.mktemp()).resolve()
        environ = {"STATE_DIRECTORY": str(state), "CREDENTIALS_DIRECTORY": str(credentials)}
        argv = execstart_argv(self.service, environ)
        self.assertEqual(argv[:4],
                         ["/opt/linkrouter/venv/bin/twistd", "--nodaemon", "--pidfile=",
                          "linkrouter"])
        options = Options(environ={})
        options.parseOptions(argv[4:])
        cfg = options.config
        self.assertEqual(cfg.listen, ("systemd:domain=INET:index=0",))
        self.assertEqual(cfg.data_dir, state)
        self.assertEqual(cfg.token_secret_file, credentials / "token-secret")
        self.assertEqual(cfg.admin_key_file, credentials / "admin-key")

    def test_claude_code_home(self) -> None:
        """The Claude Code login lives in the (writable) state directory."""
        self.assertIn("CLAUDE_CODE_HOME=%S/linkrouter/claude",
                      self.service["Service"]["Environment"])


def execstart_argv(service: dict[str, dict[str, list[str]]], environ: dict[str, str]
                   ) -> list[str]:
    """The service's C{ExecStart} split into words and expanded as systemd would."""
    (command,) = service["Service"]["ExecStart"]
    return [expand(word, environ) for word in shlex.split(command)]


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """A GET on loopback (http.client: no proxy from the environment)."""
    connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_healthy(case: SynchronousTestCase, process: subprocess.Popen[bytes], port: int,
                 log: Path, timeout: float) -> None:
    """Poll C{GET /health} until it answers C{ok}, failing after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            case.fail(f"twistd exited ({process.returncode}):\n{log.read_text()}")
        try:
            status, body = get(port, "/health")
        except OSError:
            pass
        else:
            case.assertEqual((status, body.strip()), (200, b"ok"), log.read_text())
            return
        if time.monotonic() > deadline:
            case.fail(f"no answer on port {port} within {timeout} s:\n{log.read_text()}")
        time.sleep(0.1)


class SocketActivationTests(SynchronousTestCase):
    """
    C{twistd linkrouter} started the way systemd starts the shipped service: the
    listening socket already bound (by the test, on loopback) and passed as fd 3 with
    C{LISTEN_FDS}, C{LISTEN_PID} and C{LISTEN_FDNAMES}, the unit's own C{ExecStart}
    arguments, C{$STATE_DIRECTORY} and C{$CREDENTIALS_DIRECTORY}.
    """

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.home = self.base / "home"
        self.state = self.base / "state"
        self.credentials = self.base / "credentials"
        for directory in (self.home, self.state, self.credentials):
            directory.mkdir(parents=True)
        (self.credentials / "token-secret").write_text("x" * 48 + "\n")
        (self.credentials / "admin-key").write_text("la_admin_" + "y" * 32 + "\n")
        self.notify_receiver, self.notify_socket = datagram_socket(self)
        self.runs = 0

    def listener(self, family: socket.AddressFamily, address: str) -> socket.socket:
        """The socket "systemd" binds: listening on loopback, owned by the test."""
        listener = socket.socket(family, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind((address, 0))
        listener.listen(64)
        return listener

    def start(self, listener: socket.socket, listen: str) -> tuple[subprocess.Popen[bytes],
                                                                   Path]:
        """Start the service's C{ExecStart} (twistd replaced by this Python) on C{listener}."""
        environ = {
            "STATE_DIRECTORY": str(self.state),
            "CREDENTIALS_DIRECTORY": str(self.credentials),
        }
        argv = execstart_argv(unit_settings(SERVICE), environ)[1:]
        argv[argv.index("systemd:domain=INET:index=0")] = listen
        argv += ["--upstream", "http://127.0.0.1:9"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "PYTHONPATH": str(REPO),
            "CLAUDE_CODE_HOME": str(self.state / "claude"),
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": "http",
            "NOTIFY_SOCKET": self.notify_socket,
            "TEST_LISTEN_FD": str(listener.fileno()),
            **environ,
        }
        self.runs += 1
        log = self.base / f"twistd-{self.runs}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, *argv], cwd=self.base, env=env,
                stdout=out, stderr=subprocess.STDOUT, pass_fds=(listener.fileno(),),
            )

        def reap() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=STOP_TIMEOUT)

        self.addCleanup(reap)
        return process, log

    def stop(self, process: subprocess.Popen[bytes], log: Path) -> None:
        """SIGTERM, then a bounded wait for a clean exit."""
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"twistd did not exit within {STOP_TIMEOUT} s of SIGTERM")
        text = log.read_text()
        self.assertIn(process.returncode, (0, -signal.SIGTERM), text)
        self.assertNotIn("Traceback", text)

    def assertWellFormedNotifications(self) -> None:
        """Whatever linkrouter told systemd (if anything yet) is C{KEY=VALUE} lines."""
        for datagram in pending(self.notify_receiver):
            for line in datagram.decode("utf-8").split("\n"):
                self.assertRegex(line, r"^[A-Z_]+=", datagram)

    def test_serves_inherited_socket(self) -> None:
        """
        linkrouter serves C{/health} on the socket it inherited, and leaves that socket
        listening when it exits: a connection made while no router runs queues in the
        backlog (instead of being refused) and the next router answers it.
        """
        listener = self.listener(socket.AF_INET, "127.0.0.1")
        port = listener.getsockname()[1]
        process, log = self.start(listener, "systemd:domain=INET:index=0")
        wait_healthy(self, process, port, log, START_TIMEOUT)
        # The secrets came from the credentials; nothing was generated in the state.
        self.assertFalse((self.state / "token-secret").exists())
        self.assertFalse((self.state / "admin-key").exists())
        self.assertTrue((self.state / "linkrouter.sqlite3").exists())
        self.stop(process, log)
        self.assertWellFormedNotifications()

        # Between two runs ("systemctl restart"): the kernel still completes handshakes.
        waiting = socket.create_connection(("127.0.0.1", port), timeout=RECV_TIMEOUT)
        self.addCleanup(waiting.close)
        waiting.sendall(b"GET /health HTTP/1.1\r\nHost: router\r\nConnection: close\r\n\r\n")

        process, log = self.start(listener, "systemd:domain=INET:index=0")
        waiting.settimeout(START_TIMEOUT)
        response = b""
        try:
            while chunk := waiting.recv(65536):
                response += chunk
        except TimeoutError:
            self.fail(f"the queued request was not answered:\n{log.read_text()}")
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), response)
        self.assertEqual(body.strip(), b"ok", response)
        self.stop(process, log)

        # After the last run the test's copy of the socket still accepts connections.
        with socket.create_connection(("127.0.0.1", port), timeout=RECV_TIMEOUT):
            listener.settimeout(RECV_TIMEOUT)
            accepted, _ = listener.accept()
            accepted.close()

    def test_dual_stack(self) -> None:
        """
        The dual-stack variant in C{linkrouter.socket}'s comment: an IPv6 socket adopted
        with C{systemd:domain=INET6:index=0} serves IPv4 clients too (here through the
        IPv4-mapped loopback address, so nothing but loopback is bound).
        """
        if not socket.has_ipv6:
            self.fail("the dual-stack unit variant needs IPv6 in Python")
        try:
            listener = self.listener(socket.AF_INET6, "::ffff:127.0.0.1")
        except OSError as e:
            self.fail(f"the dual-stack unit variant needs an IPv6 socket: {e}")
        port = listener.getsockname()[1]
        process, log = self.start(listener, "systemd:domain=INET6:index=0")
        wait_healthy(self, process, port, log, START_TIMEOUT)
        self.stop(process, log)
