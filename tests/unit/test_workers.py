"""
Tests for L{linkrouter.workers}' supervisor (on a L{MemoryReactorClock}, workers spawned
by a fake that records what it was asked), for what a worker tells it
(L{linkrouter.worker}) and for the worker's log lines. Real processes:
L{tests.integration.test_workers}.
"""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path
from typing import Any

from attrs import Factory, define
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import ConfigError, resolve
from linkrouter.systemd import Notifier
from linkrouter.worker import WorkerNotifier, decode, encode, log_observer, relayed
from linkrouter.workers import (
    FIRST_RESTART_SECONDS,
    HANG_SECONDS,
    RELOAD_SECONDS,
    STABLE_SECONDS,
    STOP_MARGIN_SECONDS,
    Supervisor,
    logs_elsewhere,
)
from linkrouter.workerslots import Channel
from linkrouter.workersockets import WORKER_VARIABLE, Bound, inherited_from


@define
class Recording(Notifier):
    """A notifier that keeps what it would tell systemd."""

    sent: list[str] = Factory(list)

    def _send(self, state: str) -> None:
        self.sent.append(state)


@define
class FakeProcess:
    pid: int
    signals: list[str] = Factory(list)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakePort:
    stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class Spawner:
    """Records each spawn; the processes it hands out never run."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, protocol: Channel, executable: str, argv: list[str],
                 env: dict[str, str], childFDs: dict[int, Any]) -> FakeProcess:
        process = FakeProcess(1000 + len(self.calls))
        self.calls.append({"protocol": protocol, "argv": argv, "env": env,
                           "fds": childFDs, "process": process})
        return process

    def say(self, n: int, state: str) -> None:
        """Worker spawn C{n} tells the supervisor C{state}, in two pieces."""
        data = encode(state)
        self.calls[n]["protocol"].childDataReceived(3, data[:5])
        self.calls[n]["protocol"].childDataReceived(3, data[5:])

    def end(self, n: int, reason: Failure) -> None:
        self.calls[n]["protocol"].processEnded(reason)


KILLED = Failure(ProcessTerminated(signal=9))


class SupervisorTests(SynchronousTestCase):
    """The supervisor of two workers, with fake processes."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.notifier = Recording({})
        self.spawn = Spawner()
        config = resolve({"workers": "2", "shutdown_grace": "3",
                          "admin_listen": ["tcp:9000"]},
                         {"HOME": self.mktemp()})
        self.supervisor = Supervisor(config, self.clock, self.notifier, ["--workers", "2"],
                                     {"NOTIFY_SOCKET": "@x", "PATH": "/bin"}, spawn=self.spawn)
        self.ports = [FakePort(), FakePort()]
        self.supervisor.bound = [
            Bound("--listen", 7, socket.AF_INET, "127.0.0.1:8080", self.ports[0]),
            Bound("--admin-listen", 8, socket.AF_INET, "127.0.0.1:9000", self.ports[1]),
        ]
        self.exits: list[int] = []
        self.supervisor.exit = self.exits.append
        for slot in self.supervisor.slots:
            slot.sockets = [b for b in self.supervisor.bound
                            if slot.index == 0 or b.option == "--listen"]
        self.supervisor.startService()
        self.clock.run()  # the hooks of callWhenRunning; the fake stops at once
        self.clock.running = True

    def serve_all(self) -> None:
        self.spawn.say(0, "READY=1\nSTATUS=serving")
        self.spawn.say(1, "READY=1\nSTATUS=serving")

    def test_workers_get_their_sockets(self) -> None:
        """
        Each worker is C{python -m linkrouter.worker} with the router's options, its
        sockets from descriptor 4 on (the admin listener for worker 0 alone), its line
        to the supervisor on 3, and none of systemd's variables.
        """
        first, second = self.spawn.calls
        board = self.supervisor.board_fd
        self.assertEqual(first["argv"][1:], ["-m", "linkrouter.worker", "--workers", "2"])
        self.assertEqual(first["fds"], {0: "w", 1: 1, 2: 2, 3: "r", 4: board, 5: 7, 6: 8})
        self.assertEqual(second["fds"], {0: "w", 1: 1, 2: 2, 3: "r", 4: board, 5: 7})
        self.assertNotIn("NOTIFY_SOCKET", first["env"])
        inheritance = inherited_from(second["env"])
        assert inheritance is not None
        self.assertEqual((inheritance.index, inheritance.workers, inheritance.board), (1, 2, 4))
        self.assertEqual([(s.option, s.fd, s.family) for s in inheritance.sockets],
                         [("--listen", 5, socket.AF_INET)])
        self.assertIn(str(Path(__file__).resolve().parents[2]), first["env"]["PYTHONPATH"])
        self.assertIn(WORKER_VARIABLE, first["env"])

    def test_ready_once_every_worker_serves(self) -> None:
        """READY=1 waits for the last worker; its status names them and the addresses."""
        self.spawn.say(0, "READY=1\nSTATUS=serving on 127.0.0.1:8080")
        self.assertEqual(self.notifier.sent, [])
        self.spawn.say(1, "WATCHDOG=1")
        self.assertEqual(self.notifier.sent, [])
        self.spawn.say(1, "READY=1\nSTATUS=serving on 127.0.0.1:8080")
        self.assertEqual(self.notifier.sent, [
            "READY=1\nSTATUS=2 workers serving on 127.0.0.1:8080, 127.0.0.1:9000"])

    def test_dead_worker_replaced_with_backoff(self) -> None:
        """
        A worker that dies is replaced after 0.5 s, then 1 s, 2 s... while it keeps dying
        young; one that lived a minute starts the pauses over. The status says how many
        serve.
        """
        self.serve_all()
        self.spawn.end(0, KILLED)
        self.assertEqual(self.notifier.sent[-1],
                         "STATUS=1 of 2 workers serving on 127.0.0.1:8080, 127.0.0.1:9000")
        for pause in (FIRST_RESTART_SECONDS, 2 * FIRST_RESTART_SECONDS,
                      4 * FIRST_RESTART_SECONDS):
            spawned = len(self.spawn.calls)
            self.clock.advance(pause - 0.01)
            self.assertEqual(len(self.spawn.calls), spawned)
            self.clock.advance(0.01)
            self.assertEqual(len(self.spawn.calls), spawned + 1)
            self.assertEqual(self.spawn.calls[-1]["fds"][6], 8)  # still worker 0's sockets
            self.spawn.end(len(self.spawn.calls) - 1, KILLED)
        self.clock.advance(8 * FIRST_RESTART_SECONDS)
        latest = len(self.spawn.calls) - 1
        self.spawn.say(latest, "READY=1")
        self.assertEqual(self.notifier.sent[-1],
                         "STATUS=2 workers serving on 127.0.0.1:8080, 127.0.0.1:9000")
        self.clock.advance(STABLE_SECONDS)
        self.spawn.end(latest, Failure(ProcessTerminated(exitCode=3)))
        self.clock.advance(FIRST_RESTART_SECONDS)
        self.assertEqual(len(self.spawn.calls), latest + 2)
        self.assertFalse(self.exits)

    def test_death_before_serving_stops_everything(self) -> None:
        """A worker that dies before the first READY stops the supervisor: exit 1."""
        self.spawn.say(0, "READY=1")
        self.spawn.end(1, Failure(ProcessTerminated(exitCode=1)))
        self.assertTrue(self.supervisor.failed)
        self.assertTrue(self.clock.hasStopped)
        self.assertEqual(len(self.spawn.calls), 2)  # not replaced
        self.assertEqual(self.notifier.sent, [])
        for trigger, args, kwargs in self.clock.triggers["after"]["shutdown"]:
            trigger(*args, **kwargs)
        self.assertEqual(self.exits, [1])

    def test_silent_worker_killed(self) -> None:
        """A serving worker that stops saying WATCHDOG=1 is killed (and then replaced)."""
        self.serve_all()
        for _ in range(int(HANG_SECONDS)):
            self.clock.advance(1)
            self.spawn.say(1, "WATCHDOG=1")
        self.assertEqual(self.spawn.calls[0]["process"].signals, [])
        self.clock.advance(1)
        self.assertEqual(self.spawn.calls[0]["process"].signals, ["KILL"])
        self.assertEqual(self.spawn.calls[1]["process"].signals, [])
        self.spawn.end(0, KILLED)
        self.clock.advance(FIRST_RESTART_SECONDS)
        self.assertEqual(len(self.spawn.calls), 3)

    def test_reload_reaches_every_worker(self) -> None:
        """
        SIGHUP: RELOADING=1, SIGHUP to each serving worker, READY=1 once both reloaded.
        """
        self.serve_all()
        self.notifier.sent.clear()
        done = self.supervisor.reload()
        self.assertTrue(self.notifier.sent[0].startswith("RELOADING=1\nMONOTONIC_USEC="))
        for call in self.spawn.calls:
            self.assertEqual(call["process"].signals, ["HUP"])
        self.spawn.say(0, "RELOADING=1")
        self.spawn.say(0, "READY=1\nSTATUS=reloaded")
        self.assertNoResult(done)
        self.spawn.say(1, "READY=1\nSTATUS=reloaded")
        self.successResultOf(done)
        self.assertEqual(self.notifier.sent[-1],
                         "READY=1\nSTATUS=2 workers serving on 127.0.0.1:8080, 127.0.0.1:9000")

    def test_reload_bounded(self) -> None:
        """A worker that never says it reloaded does not hold READY=1 forever."""
        self.serve_all()
        done = self.supervisor.reload()
        self.spawn.say(0, "READY=1")
        self.clock.advance(RELOAD_SECONDS)
        self.successResultOf(done)
        self.assertTrue(self.notifier.sent[-1].startswith("READY=1"))

    def test_stop_drains_then_kills(self) -> None:
        """
        Stop: STOPPING=1, the supervisor's copies of the sockets closed, SIGTERM to each
        worker; one still running after the grace (and the flush and margin) is killed.
        """
        self.serve_all()
        stopped = self.supervisor.stopService()
        self.assertEqual(self.notifier.sent[-1], "STOPPING=1")
        self.assertTrue(all(port.stopped for port in self.ports))
        first, second = (c["process"] for c in self.spawn.calls)
        self.assertEqual((first.signals, second.signals), (["TERM"], ["TERM"]))
        self.spawn.end(0, Failure(ProcessDone(0)))
        self.assertNoResult(stopped)
        self.clock.advance(3 + 2 + STOP_MARGIN_SECONDS)
        self.assertEqual(second.signals, ["TERM", "KILL"])
        self.spawn.end(1, KILLED)
        self.successResultOf(stopped)
        self.clock.advance(60)
        self.assertEqual(len(self.spawn.calls), 2)  # nothing replaced while stopping


class NotificationTests(SynchronousTestCase):
    """What a worker says to its supervisor, and how."""

    def test_round_trip(self) -> None:
        """A notification is one line, read back as its assignments."""
        line = encode("READY=1\nSTATUS=serving on a:1")
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(decode(line.strip()), {"READY": "1", "STATUS": "serving on a:1"})
        self.assertRaises(ValueError, decode, b"[1]")

    def test_worker_notifier(self) -> None:
        """The worker's notifier writes to its line and beats every second."""
        sent: list[bytes] = []
        notifier = WorkerNotifier({"NOTIFY_SOCKET": "@not-used"}, send=sent.append)
        notifier.ready("serving")
        notifier.watchdog()
        self.assertEqual([decode(x) for x in sent],
                         [{"READY": "1", "STATUS": "serving"}, {"WATCHDOG": "1"}])
        self.assertEqual(notifier.watchdog_interval(), 1.0)


class LogTests(SynchronousTestCase):
    """A worker's log lines carry its index."""

    def event(self) -> dict[str, Any]:
        return {"log_format": "GET {path} 200", "path": "/health", "log_time": 0.0,
                "log_level": LogLevel.info, "log_namespace": "linkrouter.access"}

    def test_text(self) -> None:
        out = io.StringIO()
        log_observer("text", 1, out)(self.event())
        self.assertIn("[linkrouter.access#info worker 1] GET /health 200", out.getvalue())

    def test_json(self) -> None:
        out = io.StringIO()
        log_observer("json", 3, out)(self.event())
        record = json.loads(out.getvalue())
        self.assertEqual((record["worker"], record["message"]), (3, "GET /health 200"))


class OptionTests(SynchronousTestCase):
    """C{--workers N|auto} (and C{LINKROUTER_WORKERS})."""

    def test_values(self) -> None:
        home = {"HOME": "/nowhere"}
        self.assertEqual(resolve({}, home).workers, 1)
        self.assertEqual(resolve({"workers": "3"}, home).workers, 3)
        self.assertEqual(resolve({}, {**home, "LINKROUTER_WORKERS": "4"}).workers, 4)
        self.assertEqual(resolve({"workers": "auto"}, home).workers, os.cpu_count() or 1)

    def test_bad(self) -> None:
        """Anything but auto or 1 to 256 stops start-up with a line naming the option."""
        for value in ("0", "-2", "many", "257", "1.5"):
            error = self.assertRaises(ConfigError, resolve, {"workers": value},
                                      {"HOME": "/nowhere"})
            self.assertEqual(error.option, "--workers")
            self.assertIn(repr(value), str(error))


class RelayTests(SynchronousTestCase):
    """A worker's log events through its supervisor (when its log is not stdout)."""

    def test_relayed(self) -> None:
        """The supervisor logs the worker's event as its own, marked, fields kept."""
        event = {"log_format": "GET {path} 200", "path": "/health", "log_time": 12.5,
                 "log_level": LogLevel.warn, "log_namespace": "linkrouter.access",
                 "access": True, "request_id": "req_1", "status": 200}
        record = json.loads(relayed(event))["log"]
        supervisor = Supervisor(resolve({"workers": "2"}, {"HOME": "/nowhere"}),
                                MemoryReactorClock(), Recording({}), [], {}, spawn=Spawner())
        with capturedLogs() as events:
            supervisor.relay(supervisor.slots[1], record)
        (logged,) = events
        self.assertEqual(formatEvent(logged), "GET /health 200")
        self.assertEqual((logged["log_level"], logged["log_time"], logged["log_system"]),
                         (LogLevel.warn, 12.5, "linkrouter.access#warn worker 1"))
        self.assertEqual((logged["request_id"], logged["status"]), ("req_1", 200))

    def test_where_the_log_goes(self) -> None:
        """
        Relayed with twistd's --logfile or --syslog, as a daemon, or when standard output
        goes nowhere; written directly to a foreground supervisor's standard output.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        foreground = {"nodaemon": True, "logfile": None, "syslog": False, "logger": None}
        self.assertFalse(logs_elsewhere(foreground, write))
        self.assertFalse(logs_elsewhere({**foreground, "logfile": "-"}, write))
        self.assertTrue(logs_elsewhere({**foreground, "logfile": "x.log"}, write))
        self.assertTrue(logs_elsewhere({**foreground, "syslog": True}, write))
        self.assertTrue(logs_elsewhere({**foreground, "nodaemon": False}, write))
        self.assertFalse(logs_elsewhere(None, write))
        with open(os.devnull, "wb") as null:
            self.assertTrue(logs_elsewhere(None, null.fileno()))
