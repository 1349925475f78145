"""
C{--workers 2} as an operator runs it: a real C{twistd linkrouter} supervisor and its two
worker processes on one port, telling a datagram socket the test owns (as systemd) when
they serve; a killed worker replaced; SIGHUP reaching both (TLS certificate); SIGTERM
draining both with exit status 0; a revocation and an rpm limit holding across them on
SQLite (and the rpm on PostgreSQL); socket activation; where their log lines go; workers
that lose their supervisor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, load_answers

from ..certs import PKI
from ..harness import RESPONSES, in_thread, start_upstream
from ..pg import fresh_database
from .test_daemon import ADMIN, Daemon, TLSStream, handshake_serial, ports_of, sleep

#: An access line of a worker: its index, method, path and status.
ACCESS = re.compile(r"#info worker (\d+)\] (GET|POST|DELETE|PATCH) (\S+) (\S+) \d+ms ")
ASK = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8,
                  "messages": [{"role": "user", "content": "hi"}]}).encode()


def call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes = b"", context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """One request on a connection of its own: the status and the body."""
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        s = context.wrap_socket(raw, server_hostname="localhost") if context else raw
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                  f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    payload = data.split(b"\r\n\r\n", 1)[1]
    if b"transfer-encoding: chunked" in data.split(b"\r\n\r\n", 1)[0].lower():
        payload = _unchunk(payload)
    return status, payload


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def burst(port: int, count: int, *args: object, **kwargs: object) -> list[tuple[int, bytes]]:
    """C{count} requests at once, each on its own connection (blocking: in a thread)."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(port, *args, **kwargs), range(count)))  # type: ignore[arg-type]


def admin(port: int, method: str, path: str, body: object = None) -> dict[str, object]:
    status, data = call(port, method, path, {"Authorization": f"Bearer {ADMIN}"},
                        json.dumps(body).encode() if body is not None else b"")
    assert status == 200, (status, data)
    answer: dict[str, object] = json.loads(data)
    return answer


def ask(token: str) -> dict[str, object]:
    """The keywords of L{call} for a Messages request with C{token}."""
    return {"method": "POST", "body": ASK,
            "headers": {"x-api-key": token, "content-type": "application/json"}}


class Workers:
    """The log of a supervised daemon, read for its workers' lines."""

    def __init__(self, log: Path) -> None:
        self.log = log

    @classmethod
    def of(cls, daemon: Daemon) -> Workers:
        return cls(Path(daemon.log.name))

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""  # not written yet

    def served(self, path: str, since: int = 0) -> dict[int, list[str]]:
        """The statuses each worker answered C{path} with (log lines after C{since})."""
        found: dict[int, list[str]] = {}
        for match in ACCESS.finditer(self.text()[since:]):
            if match.group(3) == path:
                found.setdefault(int(match.group(1)), []).append(match.group(4))
        return found

    def pids(self) -> dict[int, int]:
        """Each worker's latest pid, from the supervisor's "Worker N started" lines."""
        return {int(i): int(pid) for i, pid in
                re.findall(r"Worker (\d+) started \(pid (\d+)\)", self.text())}

    async def until(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        started = time.monotonic()
        while not (found := re.search(pattern, self.text())):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"no {pattern!r} in the log:\n{self.text()[-4000:]}")
            await sleep(0.1)
        return found


async def on_both(port: int, path: str, workers: Workers, rounds: int = 10,
                  **request: object) -> list[tuple[int, bytes]]:
    """Bursts of requests until both workers have answered C{path}; every answer."""
    since = len(workers.text())
    answers: list[tuple[int, bytes]] = []
    for _ in range(rounds):
        answers += await in_thread(burst, port, 8, path=path, **request)
        await sleep(0.2)  # the access lines reach the log
        if len(workers.served(path, since)) == 2:
            return answers
    raise AssertionError(f"requests never reached both workers: {workers.served(path, since)}")


class WorkersTests(TestCase):
    """Two workers behind one supervisor."""

    timeout = 150

    async def test_ready_shared_and_replaced(self) -> None:
        """
        READY=1 comes once both workers serve; requests on the one port land on both,
        and the metrics show both; a killed worker is replaced while the other serves.
        """
        _, upstream = await start_upstream(self)
        daemon = Daemon(self, upstream, "--workers", "2")
        workers = Workers.of(daemon)
        ready = await daemon.expect("READY=1")
        text = workers.text()
        self.assertRegex(text, r"Worker 0 \(pid \d+\) serves")
        self.assertRegex(text, r"Worker 1 \(pid \d+\) serves")
        self.assertIn("STATUS=2 workers serving on 127.0.0.1:", ready)
        (port,) = ports_of(ready)

        await on_both(port, "/health", workers, method="GET")
        # Each worker leaves its metrics for the others every second: within two, every
        # scrape shows both workers' requests.
        started = time.monotonic()
        while True:
            status, metrics = await in_thread(call, port, "GET", "/metrics",
                                              {"Authorization": f"Bearer {ADMIN}"})
            self.assertEqual(status, 200)
            counted = re.findall(rb'linkrouter_requests_total\{worker="(\d)",dialect="none",'
                                 rb'route="none",status="200"\} ([0-9.]+)', metrics)
            if {w for w, n in counted if float(n) >= 1} == {b"0", b"1"}:
                break
            self.assertLess(time.monotonic() - started, 2.5, metrics[:1500])
            await sleep(0.2)
        self.assertEqual(metrics.count(b"# TYPE linkrouter_requests_total counter"), 1)

        victim = workers.pids()[0]
        os.kill(victim, signal.SIGKILL)
        answers = await in_thread(burst, port, 8, "GET", "/health")
        self.assertEqual([s for s, _ in answers], [200] * 8)
        await workers.until(r"Worker 0 \(pid \d+\) was killed by signal 9; a new one starts")
        status_line = await daemon.expect("STATUS=1 of 2 workers serving")
        self.assertIn("127.0.0.1:", status_line)
        await workers.until(rf"Worker 0 \(pid (?!{victim})\d+\) serves")
        await daemon.expect("STATUS=2 workers serving")
        self.assertNotEqual(workers.pids()[0], victim)
        mark = len(workers.text())
        await on_both(port, "/health", workers, method="GET")
        self.assertIn(0, workers.served("/health", mark))

        daemon.signal(signal.SIGTERM)
        self.assertEqual(await daemon.exit_status(), 0)

    async def test_tls_reload_and_drain(self) -> None:
        """
        Both workers serve the --tls-cert listener; SIGHUP reaches both (new handshakes
        get the new certificate, RELOADING=1 then READY=1); SIGTERM lets streams in
        flight in both workers finish, refuses new connections, and exits 0.
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
        daemon = Daemon(self, upstream, "--workers", "2", "--tls-cert", str(files.cert),
                        "--tls-key", str(files.key), "--tls-chain", str(files.chain),
                        "--tls-port", "0", "--shutdown-grace", "15")
        workers = Workers.of(daemon)
        http_port, tls_port = ports_of(await daemon.expect("READY=1"))
        context = ssl.create_default_context(cafile=str(files.root))
        await on_both(tls_port, "/health", workers, method="GET", context=context)

        second = pki.leaf()
        pki.write(tls_dir, second)
        daemon.signal(signal.SIGHUP)
        await daemon.expect("RELOADING=1")
        await daemon.expect("READY=1")
        text = workers.text()
        self.assertIn("#info worker 0] Reloading (SIGHUP)", text)
        self.assertIn("#info worker 1] Reloading (SIGHUP)", text)
        serials = await in_thread(lambda: [handshake_serial(tls_port, files.root)
                                           for _ in range(12)])
        self.assertEqual(set(serials), {second.serial})

        token = str(admin(http_port, "POST", "/api/tokens", {"label": "drain"})["token"])
        streams = [TLSStream(tls_port, files.root, token) for _ in range(8)]
        for stream in streams:
            await in_thread(stream.first.wait, 20)
        inflight = await self._inflight(http_port)
        self.assertEqual(sorted(inflight), [0, 1], inflight)  # streams open in both

        daemon.signal(signal.SIGTERM)
        await daemon.expect("STOPPING=1")
        await sleep(0.5)
        for port in (http_port, tls_port):
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        self.assertIsNone(daemon.process.poll())
        for hold in holds:
            hold.callback(None)
        for stream in streams:
            await stream.done
            self.assertIn(b"message_stop", stream.data)
            self.assertTrue(stream.data.endswith(b"0\r\n\r\n"), stream.data[-40:])
        self.assertEqual(await daemon.exit_status(), 0)
        text = workers.text()
        self.assertRegex(text, r"Worker 0 \(pid \d+\) exited with status 0")
        self.assertRegex(text, r"Worker 1 \(pid \d+\) exited with status 0")

    async def test_rpm_across_workers_on_postgresql(self) -> None:
        """On PostgreSQL a token's rpm holds across both workers (the fleet's lock)."""
        _, upstream = await start_upstream(self)
        daemon = Daemon(self, upstream, "--workers", "2", "--database", fresh_database(self))
        (port,) = ports_of(await daemon.expect("READY=1"))
        await self._rpm_holds(port, Workers.of(daemon))
        daemon.signal(signal.SIGTERM)
        self.assertEqual(await daemon.exit_status(), 0)
        await sleep(0.2)

    async def _rpm_holds(self, port: int, workers: Workers) -> None:
        """A burst of 10 with rpm 4, on both workers: exactly 4 admitted."""
        for attempt in range(3):
            limited = admin(port, "POST", "/api/tokens",
                            {"label": f"rpm{attempt}", "limits": {"rpm": 4}})
            await sleep(2.0)  # the new token's limits reach every worker
            mark = len(workers.text())
            answers = await in_thread(burst, port, 10, path="/v1/messages",
                                      **ask(str(limited["token"])))
            statuses = sorted(s for s, _ in answers)
            self.assertEqual(statuses, [200] * 4 + [429] * 6, answers)
            await sleep(0.3)
            if len(workers.served("/v1/messages", mark)) == 2:
                return
        self.fail("the bursts never reached both workers")

    async def _inflight(self, port: int) -> dict[int, float]:
        """The workers with streams in flight, from the metrics (shared every second)."""
        found: dict[int, float] = {}
        for _ in range(30):
            _, text = await in_thread(call, port, "GET", "/metrics",
                                      {"Authorization": f"Bearer {ADMIN}"})
            found = {int(w): float(v) for w, v in re.findall(
                rb'linkrouter_inflight_requests\{worker="(\d+)"\} (\S+)', text) if float(v)}
            if len(found) == 2:
                break
            await sleep(0.2)
        return found

    async def test_revocation_and_rpm_across_workers(self) -> None:
        """
        On SQLite: a token's rpm holds across both workers (4 admitted of a burst that
        both took part in), and a revocation made through one worker's admin API holds
        in both within two seconds.
        """
        _, upstream = await start_upstream(self)
        daemon = Daemon(self, upstream, "--workers", "2")
        workers = Workers.of(daemon)
        (port,) = ports_of(await daemon.expect("READY=1"))
        await self._rpm_holds(port, workers)

        issued = admin(port, "POST", "/api/tokens", {"label": "revoked"})
        await on_both(port, "/v1/messages", workers, **ask(str(issued["token"])))
        admin(port, "DELETE", f"/api/tokens/{issued['id']}")
        await sleep(2.0)
        mark = len(workers.text())
        answers = await on_both(port, "/v1/messages", workers, **ask(str(issued["token"])))
        self.assertEqual({s for s, _ in answers}, {403})
        self.assertEqual({w: set(s) for w, s in workers.served("/v1/messages", mark).items()},
                         {0: {"403"}, 1: {"403"}})
        daemon.signal(signal.SIGTERM)  # the workers close their upstream connections
        self.assertEqual(await daemon.exit_status(), 0)
        await sleep(0.2)


#: What systemd does between fork and exec (as L{tests.integration.test_systemd}): the
#: listening socket becomes fd 3 and C{LISTEN_PID} names this process.
LAUNCHER = """
import os, sys
fd = int(os.environ.pop("TEST_LISTEN_FD"))
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
sys.exit(run())
"""


class SocketActivationTests(TestCase):
    """Workers serve the socket systemd passed to their supervisor."""

    timeout = 90

    async def test_workers_serve_the_passed_socket(self) -> None:
        """Both workers answer on C{systemd:domain=INET:index=0}; it outlives them."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        log = base / "twistd.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
               "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
               "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http",
               "TEST_LISTEN_FD": str(listener.fileno())}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, "-n", "--pidfile=", "linkrouter",
                 "--listen", "systemd:domain=INET:index=0", "--workers", "2",
                 "--data-dir", str(base / "state"), "--upstream", "http://127.0.0.1:9",
                 "--upstream-api-key", "sk-test", "--shutdown-grace", "1"],
                cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        daemon = Daemon.__new__(Daemon)
        daemon.log = open(log)  # Workers reads the file by name
        self.addCleanup(daemon.log.close)
        workers = Workers.of(daemon)
        await workers.until(rf"linkrouter is ready on 127\.0\.0\.1:{port} with 2 workers")
        await on_both(port, "/health", workers, method="GET")
        process.send_signal(signal.SIGTERM)
        await in_thread(process.wait, 30)
        self.assertEqual(process.returncode, 0, workers.text()[-3000:])
        # Still listening (systemd's copy): a connection queues for the next start.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


class LogAndParentTests(TestCase):
    """Where the workers' lines go, and workers outliving no supervisor."""

    timeout = 90

    def start(self, *twistd: str) -> tuple[subprocess.Popen[bytes], Path, Workers]:
        """A supervisor of two workers with twistd options C{twistd}; its output, log."""
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        out = base / "stdout.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        with open(out, "wb") as stdout:
            process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", *twistd, "linkrouter", "--listen",
                 "tcp:0:interface=127.0.0.1", "--workers", "2", "--data-dir",
                 str(base / "state"), "--upstream", "http://127.0.0.1:9",
                 "--upstream-api-key", "sk-test", "--shutdown-grace", "1"],
                cwd=base, env=env, stdout=stdout, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process, out, Workers(base / "twistd.log" if twistd else out)

    async def test_logfile(self) -> None:
        """
        With twistd's --logfile the workers' lines (to their last) are in that file,
        marked with the worker, and nothing is written to standard output.
        """
        process, out, workers = self.start("--logfile", "twistd.log")
        ready = await workers.until(r"linkrouter is ready on 127\.0\.0\.1:(\d+) with 2")
        port = int(ready.group(1))
        await on_both(port, "/health", workers, method="GET")
        process.send_signal(signal.SIGTERM)
        await in_thread(process.wait, 30)
        self.assertEqual(process.returncode, 0)
        text = workers.text()
        for index in (0, 1):
            self.assertIn(f"[twisted.internet.base#info worker {index}] Main loop terminated",
                          text)
        self.assertEqual(out.read_text(), "")

    async def test_supervisor_gone(self) -> None:
        """Workers whose supervisor was killed stop on their own, closing the port."""
        process, _, workers = self.start()
        ready = await workers.until(r"linkrouter is ready on 127\.0\.0\.1:(\d+) with 2")
        port = int(ready.group(1))
        pids = list(workers.pids().values())
        process.kill()
        await in_thread(process.wait, 10)
        await workers.until(r"worker 0\] The supervising process is gone: stopping")
        await workers.until(r"worker 1\] The supervising process is gone: stopping")
        for _ in range(100):
            if not any(_alive(pid) for pid in pids):
                break
            await sleep(0.1)
        self.assertEqual([pid for pid in pids if _alive(pid)], [])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie, reaped by nobody here, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
