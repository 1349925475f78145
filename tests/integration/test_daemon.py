"""
The daemon as systemd runs it: a real `twistd linkrouter` process with TLS, telling a
datagram socket the test owns when it is ready, reloading on SIGHUP without breaking a
stream, and draining on SIGTERM with exit status 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, load_answers

from ..certs import PKI
from ..harness import RESPONSES, in_thread, start_upstream

REPO = Path(__file__).resolve().parents[2]
TWISTD = "from twisted.scripts.twistd import run; run()"
STREAM = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8, "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]}).encode()
SECRET = "daemon-test-token-secret-0123456789abcdef"
ADMIN = "daemon-test-admin-key-0123456789abcdef"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Daemon:
    """A twistd linkrouter child process and the notify socket it reports to."""

    def __init__(self, case: TestCase, upstream: str, *args: str) -> None:
        base = Path(case.mktemp()).resolve()
        base.mkdir()
        # An abstract socket: a temporary directory's path is too long for AF_UNIX.
        self.notify_path = "@linkrouter-test-" + os.urandom(8).hex()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind("\0" + self.notify_path[1:])
        self.notify.setblocking(False)
        case.addCleanup(self.notify.close)
        self.messages: list[str] = []
        self.log = open(base / "daemon.log", "w+")  # closed in cleanup
        case.addCleanup(self.log.close)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "PYTHONPATH": str(REPO),
            "NOTIFY_SOCKET": str(self.notify_path),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "linkrouter",
             "--listen", "tcp:0:interface=127.0.0.1", "--upstream", upstream,
             "--data-dir", str(base / "state"), "--token-secret", SECRET,
             "--admin-key", ADMIN, "--oauth-token", "sk-ant-oat01-daemon-test",
             "--shutdown-grace", "15", *args],
            cwd=base, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        case.addCleanup(self._kill)

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    async def expect(self, prefix: str, timeout: float = 20) -> str:
        """Wait for the next notify message that starts with C{prefix}."""
        waited = 0.0
        while True:
            try:
                message = self.notify.recv(65536).decode()
            except BlockingIOError:
                if waited > timeout or self.process.poll() is not None:
                    self.log.seek(0)
                    raise AssertionError(f"no {prefix!r} (got {self.messages}); log:\n"
                                         + self.log.read()[-3000:]) from None
                await sleep(0.05)
                waited += 0.05
                continue
            self.messages.append(message)
            if message.startswith(prefix):
                return message

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    async def exit_status(self, timeout: float = 30) -> int:
        waited = 0.0
        while self.process.poll() is None:
            if waited > timeout:
                raise AssertionError("the daemon did not exit")
            await sleep(0.1)
            waited += 0.1
        return self.process.returncode


def ports_of(ready: str) -> list[int]:
    """The ports in READY's STATUS line ("serving on 127.0.0.1:1, 127.0.0.1:2")."""
    status = [line for line in ready.splitlines() if line.startswith("STATUS=")][0]
    return [int(part.rsplit(":", 1)[1]) for part in status.split("serving on ")[1].split(", ")]


def token_for(port: int) -> str:
    """Issue a token through the daemon's admin API."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        body = b'{"label": "daemon"}'
        s.sendall(b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Authorization: Bearer " + ADMIN.encode() + b"\r\ncontent-length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])["token"]


class TLSStream:
    """A streamed request over TLS in a thread: records the server's certificate."""

    def __init__(self, port: int, root: Path, token: str) -> None:
        self.first = threading.Event()
        self.data = b""
        self.serial: int | None = None
        context = ssl.create_default_context(cafile=str(root))
        self.done = in_thread(self._run, port, context, token)

    def _run(self, port: int, context: ssl.SSLContext, token: str) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as s:
            self.serial = _serial(s)
            s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      b"x-api-key: " + token.encode() + b"\r\ncontent-length: "
                      + str(len(STREAM)).encode() + b"\r\n\r\n" + STREAM)
            while chunk := s.recv(65536):
                self.data += chunk
                if b"message_start" in self.data:
                    self.first.set()


def _serial(s: ssl.SSLSocket) -> int:
    from cryptography import x509

    der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def handshake_serial(port: int, root: Path) -> int:
    context = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as s:
        return _serial(s)


class DaemonTests(TestCase):
    """The whole lifecycle of one daemon process."""

    timeout = 120

    async def test_ready_reload_stop(self) -> None:
        """
        READY=1 comes once the ports are bound; SIGHUP swaps the certificate for new
        handshakes while a stream opened before finishes intact; SIGTERM lets a stream in
        flight finish, refuses new connections, and exits 0.
        """
        holds: list[Deferred[None]] = []

        def between(index: int) -> Deferred[None] | None:
            if index == 2:
                holds.append(Deferred())
                return holds[-1]
            return None

        fake = FakeAnthropic(load_answers(RESPONSES), between_events=between)
        _, upstream = await start_upstream(self, fake)
        pki = PKI.create()
        tls_dir = Path(self.mktemp()).resolve()
        first = pki.leaf()
        files = pki.write(tls_dir, first)
        daemon = Daemon(self, upstream, "--tls-cert", str(files.cert), "--tls-key",
                        str(files.key), "--tls-chain", str(files.chain), "--tls-port", "0",
                        "--hsts")

        ready = await daemon.expect("READY=1")
        http_port, tls_port = ports_of(ready)
        health = await in_thread(_get, http_port, b"/health")
        self.assertTrue(health.endswith(b"\r\n\r\nok"), health)
        token = await in_thread(token_for, http_port)

        old = TLSStream(tls_port, files.root, token)
        await in_thread(old.first.wait, 20)
        self.assertEqual(old.serial, first.serial)

        second = pki.leaf()
        pki.write(tls_dir, second)
        daemon.signal(signal.SIGHUP)
        reloading = await daemon.expect("RELOADING=1")
        self.assertIn("MONOTONIC_USEC=", reloading)
        await daemon.expect("READY=1")
        self.assertEqual(await in_thread(handshake_serial, tls_port, files.root), second.serial)

        holds[0].callback(None)
        await old.done
        self.assertIn(b"message_stop", old.data)
        self.assertTrue(old.data.endswith(b"0\r\n\r\n"), old.data[-40:])
        head = old.data.split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"strict-transport-security: max-age=63072000", head)
        self.assertNotIn(b"content-encoding", head)

        last = TLSStream(tls_port, files.root, token)
        await in_thread(last.first.wait, 20)
        daemon.signal(signal.SIGTERM)
        await daemon.expect("STOPPING=1")
        await sleep(0.3)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", http_port), timeout=2).close()
        self.assertIsNone(daemon.process.poll())
        holds[1].callback(None)
        await last.done
        self.assertIn(b"message_stop", last.data)
        self.assertTrue(last.data.endswith(b"0\r\n\r\n"), last.data[-40:])
        self.assertEqual(await daemon.exit_status(), 0)

    async def test_bad_certificate_refused_on_reload(self) -> None:
        """A bad new certificate at SIGHUP is refused with a log line; the old one stays."""
        _, upstream = await start_upstream(self)
        pki = PKI.create()
        tls_dir = Path(self.mktemp()).resolve()
        leaf = pki.leaf()
        files = pki.write(tls_dir, leaf)
        daemon = Daemon(self, upstream, "--tls-cert", str(files.cert), "--tls-key",
                        str(files.key), "--tls-chain", str(files.chain), "--tls-port", "0")
        _, tls_port = ports_of(await daemon.expect("READY=1"))
        files.cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        daemon.signal(signal.SIGHUP)
        await daemon.expect("RELOADING=1")
        await daemon.expect("READY=1")
        self.assertEqual(await in_thread(handshake_serial, tls_port, files.root), leaf.serial)
        daemon.log.flush()
        daemon.log.seek(0)
        self.assertIn("TLS reload failed", daemon.log.read())
        daemon.signal(signal.SIGTERM)
        self.assertEqual(await daemon.exit_status(), 0)


def _get(port: int, path: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data





class JSONLogTests(TestCase):
    """--log-format json: every line twistd writes is one JSON object."""

    timeout = 60

    async def test_json_lines(self) -> None:
        """Start-up, access and shutdown lines are JSON; access lines carry their fields."""
        _, upstream = await start_upstream(self)
        daemon = Daemon(self, upstream, "--log-format", "json")
        [http_port] = ports_of(await daemon.expect("READY=1"))
        answer = await in_thread(_get, http_port, b"/health")
        request_id = [line.split(b": ", 1)[1] for line in answer.split(b"\r\n")
                      if line.lower().startswith(b"x-request-id")][0].decode()
        daemon.signal(signal.SIGTERM)
        self.assertEqual(await daemon.exit_status(), 0)
        daemon.log.flush()
        daemon.log.seek(0)
        records = [json.loads(line) for line in daemon.log.read().splitlines() if line]
        self.assertGreater(len(records), 5)
        [access] = [r for r in records if r.get("access")]
        self.assertEqual((access["method"], access["path"], access["status"],
                          access["request_id"]), ("GET", "/health", 200, request_id))
        self.assertTrue(all({"time", "level", "namespace", "message"} <= set(r)
                            for r in records))
        self.assertNotIn(SECRET, json.dumps(records))
        self.assertNotIn(ADMIN, json.dumps(records))


def _stream(port: int, token: str, first: threading.Event) -> bytes:
    """A streamed request over plain HTTP; sets C{first} once the answer has begun."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"x-api-key: " + token.encode() + b"\r\ncontent-length: "
                  + str(len(STREAM)).encode() + b"\r\n\r\n" + STREAM)
        while chunk := s.recv(65536):
            data += chunk
            if b"message_start" in data:
                first.set()
    return data


class SecondSignalTests(TestCase):
    """Signals that arrive while the daemon is already draining."""

    timeout = 60

    async def test_second_sigterm_during_drain(self) -> None:
        """
        A second SIGTERM while a stream drains neither logs a C{ReactorNotRunning}
        traceback nor cuts the stream: it finishes, and the exit status is 0.
        """
        holds: list[Deferred[None]] = []

        def between(index: int) -> Deferred[None] | None:
            if index == 2:
                holds.append(Deferred())
                return holds[-1]
            return None

        fake = FakeAnthropic(load_answers(RESPONSES), between_events=between)
        _, upstream = await start_upstream(self, fake)
        daemon = Daemon(self, upstream)
        [port] = ports_of(await daemon.expect("READY=1"))
        token = await in_thread(token_for, port)
        first = threading.Event()
        stream = in_thread(_stream, port, token, first)
        await in_thread(first.wait, 20)
        daemon.signal(signal.SIGTERM)
        await daemon.expect("STOPPING=1")
        daemon.signal(signal.SIGTERM)
        daemon.signal(signal.SIGINT)
        await sleep(0.5)
        self.assertIsNone(daemon.process.poll())
        holds[0].callback(None)
        data = await stream
        self.assertIn(b"message_stop", data)
        self.assertEqual(await daemon.exit_status(), 0)
        daemon.log.flush()
        daemon.log.seek(0)
        log = daemon.log.read()
        self.assertNotIn("ReactorNotRunning", log)
        self.assertNotIn("Traceback", log)
