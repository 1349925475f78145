# -*- test-case-name: tests.unit.test_workers,tests.integration.test_workers -*-
"""
One serving process of C{--workers} (DESIGN §12), started by L{linkrouter.workers} as
C{python -m linkrouter.worker ARGS}: the router of a C{twistd linkrouter ARGS} process,
serving the listening sockets its supervisor bound.

What it tells its supervisor it says in systemd's words (L{WorkerNotifier}: C{READY=1}
once it serves, C{RELOADING=1} and C{READY=1} around a reload, C{STOPPING=1}, and
C{WATCHDOG=1} every second), one JSON string a line on descriptor 3. Its standard input
is the other end: when the supervisor is gone it stops (drains) on its own.

Its log lines go to the supervisor's standard output, in the configured format, marked
with the worker's index; when the supervisor logs elsewhere (a file, syslog, or it is a
daemon), they travel on descriptor 3 too and the supervisor logs them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any, NoReturn

from attrs import define, evolve, field
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone, ReactorNotRunning
from twisted.internet.fdesc import readFromFD, setNonBlocking
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    eventAsText,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from linkrouter.systemd import Notifier
from linkrouter.textlog import text_line

#: How often a worker tells its supervisor it is alive (C{WATCHDOG=1}).
HEARTBEAT_SECONDS = 1.0
#: The descriptor a worker writes its notifications to.
NOTIFY_FD = 3

_log = Logger(namespace="linkrouter")


def encode(state: str) -> bytes:
    """A notification as one line of the worker's channel."""
    return json.dumps(state).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, str]:
    """A notification line as its assignments (C{{"READY": "1", "STATUS": ...}})."""
    state = json.loads(line)
    if not isinstance(state, str):
        raise ValueError("not a notification")
    return dict(part.split("=", 1) for part in state.splitlines() if "=" in part)


def read(line: bytes) -> dict[str, Any]:
    """
    A line of the channel: a notification's assignments, or C{{"log": fields}} for a
    relayed log event. @raise ValueError: neither.
    """
    found = json.loads(line)
    if isinstance(found, dict) and isinstance(found.get("log"), dict):
        return found
    return decode(line)


@define
class WorkerNotifier(Notifier):
    """A L{Notifier} that tells the supervisor (through C{send}) instead of systemd."""

    send: Callable[[bytes], object] = field(kw_only=True, default=lambda data: None)

    def _send(self, state: str) -> None:
        self.send(encode(state))

    def watchdog_interval(self) -> float | None:
        return HEARTBEAT_SECONDS


class SupervisorLine(FileDescriptor):
    """
    The worker's end of its channel: what it says is written to descriptor 3 at once
    (as a log line is written: in order, nothing lost when the worker ends); standard
    input is only watched, its end meaning the supervisor is gone (then the worker stops,
    draining, on its own).
    """

    def __init__(self, reactor: Any, watch: int = 0, out: int = NOTIFY_FD) -> None:
        super().__init__(reactor)
        self._core = reactor
        self._watch = watch
        self._out = out
        self.gone = False
        setNonBlocking(watch)
        self.startReading()

    def fileno(self) -> int:
        return self._watch

    def doRead(self) -> Any:
        return readFromFD(self._watch, lambda data: None)

    def send(self, data: bytes) -> None:
        """Write C{data} whole (blocking while the supervisor's pipe is full)."""
        while data and not self.gone:
            try:
                data = data[os.write(self._out, data):]
            except InterruptedError:
                continue
            except OSError:  # the supervisor is gone; the end of stdin says so too
                self.gone = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason or Failure(ConnectionDone()))
        if not self._core.running:  # the reactor's own shutdown (it drops every reader)
            return
        _log.warn("The supervising process is gone: stopping")
        try:
            self._core.stop()
        except ReactorNotRunning:
            pass


#: The fields of an access line that travel with a relayed event (for JSON logs).
_ACCESS_FIELDS = ("access", "request_id", "method", "path", "status", "duration_ms",
                  "bytes", "token_id", "account_id", "upstream_status")


def relayed(event: dict[str, Any]) -> bytes:
    """
    A log event as one line of the worker's channel (when the supervisor's log is not
    its standard output): its text (and traceback), level, namespace, time and the
    access fields; the supervisor logs it as its own, marked with the worker.
    """
    record = {key: event[key] for key in _ACCESS_FIELDS if key in event}
    record.update(text=eventAsText(event, includeTimestamp=False, includeSystem=False),
                  level=getattr(event.get("log_level"), "name", "info"),
                  namespace=event.get("log_namespace", "-"),
                  system=event.get("log_system"), time=event.get("log_time", 0.0))
    return json.dumps({"log": record}, default=str).encode("utf-8") + b"\n"


def as_event(fields: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A relayed event (L{relayed}) back as a log event of worker C{index}."""
    event = {key: value for key, value in fields.items()
             if key not in ("text", "level", "namespace", "system", "time")}
    system = fields.get("system") or f"{fields.get('namespace')}#{fields.get('level')}"
    event.update(log_format="{log_text}", log_text=fields.get("text", ""),
                 log_level=LogLevel.levelWithName(str(fields.get("level", "info"))),
                 log_namespace=fields.get("namespace", "-"),
                 log_system=f"{system} worker {index}", log_time=fields.get("time", 0.0))
    return event


@implementer(ILogObserver)
class _Relay:
    """Sends each event to the supervisor (L{relayed})."""

    def __init__(self, send: Callable[[bytes], object]) -> None:
        self._send = send

    def __call__(self, event: dict[str, Any]) -> None:
        self._send(relayed(event))


def log_observer(log_format: str, index: int, out: IO[str],
                 relay: Callable[[bytes], object] | None = None) -> ILogObserver:
    """
    The worker's log lines: its supervisor's format, marked with the worker's index;
    with C{relay}, each event goes to the supervisor instead (L{relayed}).
    """
    if relay is not None:
        return _Relay(relay)
    if log_format == "json":
        from linkrouter.logs import json_line

        def as_json(event: dict[str, Any]) -> str:
            # json_line writes one JSON object and a newline: add the worker before "}".
            return json_line(event)[:-2] + f', "worker": {index}}}\n'

        return FileLogObserver(out, as_json)

    suffix = f" worker {index}"
    return FileLogObserver(out, lambda event: text_line(event, suffix))


def main(argv: list[str]) -> NoReturn:
    """Run worker C{$LINKROUTER_WORKER} of a router started with C{argv} (its options)."""
    from twisted.application import app, service
    from twisted.internet import reactor

    from linkrouter.parsing import ConfigError
    from linkrouter.service import makeService
    from linkrouter.tap import Options, _stop
    from linkrouter.workersockets import inherited_from, relay_logs

    inheritance = inherited_from(os.environ)
    if inheritance is None:
        _stop("linkrouter.worker runs only under a linkrouter started with --workers")
    index = inheritance.index
    options = Options(os.environ, daemon=True)
    options.parseOptions(argv)
    config = evolve(options.config, worker=index)
    line = SupervisorLine(reactor)
    relay = line.send if relay_logs(os.environ) else None
    globalLogBeginner.beginLoggingTo(
        [log_observer(config.log_format, index, sys.stdout, relay)],
        redirectStandardIO=False)
    try:
        router = makeService(config, reactor, inheritance=inheritance,
                             notifier=WorkerNotifier(send=line.send))
    except ConfigError as e:
        _stop(str(e))
    router.handle_signals = True
    router.on_config_error = lambda error: _stop(str(error))
    application = service.Application("linkrouter")
    router.setServiceParent(application)
    app.startApplication(application, False)
    reactor.run()
    sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
