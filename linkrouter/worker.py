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
with the worker's index.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any, NoReturn

from attrs import define, evolve, field
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Protocol
from twisted.logger import (
    FileLogObserver,
    Logger,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.python.failure import Failure

from linkrouter.systemd import Notifier

#: How often a worker tells its supervisor it is alive (C{WATCHDOG=1}).
HEARTBEAT_SECONDS = 1.0
#: The descriptor a worker writes its notifications to.
NOTIFY_FD = 3

_log = Logger(namespace="linkrouter")


def encode(state: str) -> bytes:
    """A notification as one line of the worker's channel."""
    return json.dumps(state).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, str]:
    """A line of the channel as its assignments (C{{"READY": "1", "STATUS": ...}})."""
    state = json.loads(line)
    if not isinstance(state, str):
        raise ValueError("not a notification")
    return dict(part.split("=", 1) for part in state.splitlines() if "=" in part)


@define
class WorkerNotifier(Notifier):
    """A L{Notifier} that tells the supervisor (through C{send}) instead of systemd."""

    send: Callable[[bytes], object] = field(kw_only=True, default=lambda data: None)

    def _send(self, state: str) -> None:
        self.send(encode(state))

    def watchdog_interval(self) -> float | None:
        return HEARTBEAT_SECONDS


class SupervisorLine(Protocol):
    """
    The worker's end of its channel (standard input from the supervisor, descriptor 3
    to it). Nothing is expected on standard input; its end means the supervisor is gone.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.gone = False

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.gone:
            self.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        if not self._reactor.running:
            return
        _log.warn("The supervising process is gone: stopping")
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass


def log_observer(log_format: str, index: int, out: IO[str]) -> FileLogObserver:
    """The worker's log lines: its supervisor's format, marked with the worker's index."""
    if log_format == "json":
        from linkrouter.logs import json_line

        def as_json(event: dict[str, Any]) -> str:
            # json_line writes one JSON object and a newline: add the worker before "}".
            return json_line(event)[:-2] + f', "worker": {index}}}\n'

        return FileLogObserver(out, as_json)

    def as_text(event: dict[str, Any]) -> str | None:
        system = event.get("log_system") or (
            f"{event.get('log_namespace', '-')}#{getattr(event.get('log_level'), 'name', '-')}")
        event["log_system"] = f"{system} worker {index}"
        return formatEventAsClassicLogText(event)

    return FileLogObserver(out, as_text)


def main(argv: list[str]) -> NoReturn:
    """Run worker C{$LINKROUTER_WORKER} of a router started with C{argv} (its options)."""
    from twisted.application import app, service
    from twisted.internet import reactor
    from twisted.internet._posixstdio import StandardIO

    from linkrouter.parsing import ConfigError
    from linkrouter.service import makeService
    from linkrouter.tap import Options, _stop
    from linkrouter.workersockets import Inheritance, inherited_from

    found = inherited_from(os.environ)
    if found is None:
        _stop("linkrouter.worker runs only under a linkrouter started with --workers")
    index, sockets = found
    options = Options(os.environ, daemon=True)
    options.parseOptions(argv)
    config = evolve(options.config, worker=index)
    globalLogBeginner.beginLoggingTo([log_observer(config.log_format, index, sys.stdout)],
                                     redirectStandardIO=False)
    line = SupervisorLine(reactor)
    StandardIO(line, stdin=0, stdout=NOTIFY_FD, reactor=reactor)
    try:
        router = makeService(config, reactor, inheritance=Inheritance(index, sockets),
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
