# -*- test-case-name: tests.unit.test_lifecycle -*-
"""
How a running router stops and reloads.

  - L{drain}: on stop, requests in flight get the grace period to finish; the wait is on
    their own C{notifyFinish()} Deferreds, bounded by a timer on the injected clock.
    Streams still open after it end with their dialect's mid-stream error.
  - L{close_connections}: what was written reaches the clients, then every connection
    is cut.
  - L{Signals}: SIGTERM and SIGINT stop the reactor once (a second one during the drain
    is logged, not an error); SIGHUP reloads.
  - L{reload}: TLS certificates and the accounts' credential files are read again.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

if TYPE_CHECKING:
    from linkrouter.accounts import AccountPool
    from linkrouter.relay import Streams
    from linkrouter.systemd import Notifier
    from linkrouter.tls import ReloadableTLS

_log = Logger(namespace="linkrouter")

#: After the drain, how long written answers get to reach their clients before every
#: connection is cut, and how often that is checked.
FLUSH_SECONDS = 2.0
FLUSH_POLL_SECONDS = 0.02
CUT_MESSAGE = ("linkrouter is shutting down and its grace period (--shutdown-grace) is "
               "over; the answer is incomplete. Retry the request.")


class Drainable(Protocol):
    """What L{drain} and L{close_connections} need of a site (L{RouterSite})."""

    inflight: set[Any]

    def drain(self) -> None: ...

    def close(self, abort: bool = False) -> None: ...

    def open_connections(self) -> int: ...


def wait_for(requests: Iterable[Any], clock: IReactorTime,
             timeout: float) -> Deferred[bool]:
    """
    Fires with C{True} once every one of C{requests} (each with C{notifyFinish()}, as
    L{twisted.web.server.Request}) has finished (or lost its client),
    or with C{False} after C{timeout} seconds of C{clock}, whichever comes first.
    """
    pending = list(requests)
    if not pending:
        return succeed(True)
    result: Deferred[bool] = Deferred()
    left = [len(pending)]

    def finished(_: object) -> None:
        left[0] -= 1
        if left[0] == 0 and not result.called:
            if timer.active():
                timer.cancel()
            result.callback(True)

    def expired() -> None:
        if not result.called:
            result.callback(False)

    timer = clock.callLater(timeout, expired)
    for request in pending:
        request.notifyFinish().addBoth(finished)
    return result


async def drain(sites: Sequence[Drainable], clock: IReactorTime, grace: float,
                streams: Streams) -> int:
    """
    Stop keeping connections alive and give the requests in flight up to C{grace}
    seconds; requests that begin meanwhile (on a connection already open) are waited for
    too. Streams still open then are ended. Returns how many requests were cut.
    """
    for site in sites:
        site.drain()
    deadline = clock.seconds() + grace
    if _inflight(sites):
        _log.info("Stopping: waiting up to {grace:g} s for requests in flight", grace=grace)
    while (pending := _inflight(sites)) and clock.seconds() < deadline:
        await wait_for(pending, clock, deadline - clock.seconds())
    cut = len(_inflight(sites))
    if cut:
        _log.warn("Stopping: cutting {n} request(s) still in flight", n=cut)
        # Streams end with their dialect's mid-stream error, not a reset.
        streams.end_all(CUT_MESSAGE)
    return cut


def _inflight(sites: Sequence[Drainable]) -> list[Any]:
    return [request for site in sites for request in site.inflight]


async def close_connections(sites: Sequence[Drainable], clock: IReactorTime,
                            flush: float = FLUSH_SECONDS) -> None:
    """
    Close every connection gracefully, give what was written up to C{flush} seconds to
    reach the clients, then cut what is left (a client that does not read).
    """
    for site in sites:
        site.close()
    until = clock.seconds() + flush
    while any(site.open_connections() for site in sites) and clock.seconds() < until:
        await deferLater(clock, FLUSH_POLL_SECONDS, lambda: None)
    for site in sites:
        site.close(abort=True)


async def reload(tls: Iterable[ReloadableTLS], pool: AccountPool, notifier: Notifier) -> None:
    """SIGHUP: reload TLS certificates and re-read credential files, keeping streams."""
    notifier.reloading()
    _log.info("Reloading (SIGHUP)")
    for certificate in tls:
        if certificate.reload():
            _log.info("TLS certificate reloaded: {subject}, valid until {until}",
                      subject=certificate.subject, until=certificate.not_after.isoformat())
    await pool.reread()
    notifier.ready("reloaded")


@define
class Signals:
    """
    The daemon's signal handlers: SIGTERM and SIGINT stop the reactor (so twistd stops
    the service: a graceful stop with exit status 0), SIGHUP calls C{on_reload}.

    Handlers run in signal context, so each only schedules its work on the reactor.
    """

    reactor: Any
    on_reload: Callable[[], object]
    stopping: bool = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._signalled_stop)
        signal.signal(signal.SIGINT, self._signalled_stop)
        signal.signal(signal.SIGHUP, self._signalled_reload)

    def _signalled_stop(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.stop, signum)

    def _signalled_reload(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.on_reload)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop the reactor, once: a signal while already stopping is only logged."""
        name = signal.Signals(signum).name
        if self.stopping:
            _log.info("{signal}: already stopping (requests in flight are draining)",
                      signal=name)
            return
        self.stopping = True
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            _log.info("{signal}: already stopping", signal=name)
