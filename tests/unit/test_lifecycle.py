"""
Tests for L{linkrouter.lifecycle}: the drain waits on the requests in flight themselves
(their C{notifyFinish()}), bounded by the grace period on a fake clock; the signal
handlers stop the reactor once; a reload re-reads certificates and accounts.
"""

from __future__ import annotations

import signal
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ReactorNotRunning
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from linkrouter import lifecycle
from linkrouter.relay import Streams


class FakeRequest:
    """A request in flight: C{notifyFinish()} as L{twisted.web.server.Request} has it."""

    def __init__(self, site: FakeSite | None = None) -> None:
        self._waiting: list[Deferred[None]] = []
        self.site = site
        if site is not None:
            site.inflight.add(self)

    def notifyFinish(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def finish(self) -> None:
        self._end(None)

    def lose(self) -> None:
        self._end(Failure(ConnectionDone()))

    def _end(self, result: Any) -> None:
        if self.site is not None:
            self.site.inflight.discard(self)
        for d in self._waiting:
            d.callback(None) if result is None else d.errback(result)


class FakeSite:
    """What the drain needs of L{linkrouter.site.RouterSite}."""

    def __init__(self) -> None:
        self.inflight: set[Any] = set()
        self.drained = False
        self.closed: list[bool] = []
        self.connections = 0

    def drain(self) -> None:
        self.drained = True

    def close(self, abort: bool = False) -> None:
        self.closed.append(abort)
        if abort:
            self.connections = 0

    def open_connections(self) -> int:
        return self.connections


class RecordingStreams(Streams):
    def __init__(self) -> None:
        super().__init__()
        self.ended: list[str] = []

    def end_all(self, message: str) -> int:
        self.ended.append(message)
        return 0


class WaitForTests(SynchronousTestCase):
    """L{lifecycle.wait_for}."""

    def test_nothing_in_flight(self) -> None:
        """With no request in flight it has already fired, with C{True}."""
        self.assertTrue(self.successResultOf(lifecycle.wait_for([], Clock(), 5)))

    def test_all_finish(self) -> None:
        """It fires C{True} when the last request finishes, and leaves no timer behind."""
        clock = Clock()
        a, b = FakeRequest(), FakeRequest()
        d = lifecycle.wait_for([a, b], clock, 30)
        a.finish()
        self.assertNoResult(d)
        b.lose()  # a client that leaves counts as finished
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """It fires C{False} at the timeout; a request finishing later changes nothing."""
        clock = Clock()
        request = FakeRequest()
        d = lifecycle.wait_for([request], clock, 30)
        clock.advance(29.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertFalse(self.successResultOf(d))
        request.finish()


class DrainTests(SynchronousTestCase):
    """L{lifecycle.drain}: no polling; the grace period is a timer on the clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = FakeSite()
        self.streams = RecordingStreams()

    def drain(self, grace: float = 30.0) -> Deferred[int]:
        return Deferred.fromCoroutine(
            lifecycle.drain([self.site], self.clock, grace, self.streams))

    def test_idle(self) -> None:
        """With nothing in flight the drain ends at once, cutting nothing."""
        self.assertEqual(self.successResultOf(self.drain()), 0)
        self.assertTrue(self.site.drained)
        self.assertEqual(self.streams.ended, [])

    def test_finishes_when_requests_finish(self) -> None:
        """The drain ends the moment the last request in flight finishes, with no timer
        or polling call left on the clock."""
        request = FakeRequest(self.site)
        d = self.drain()
        self.assertNoResult(d)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the grace timer only
        self.clock.advance(10)
        self.assertNoResult(d)
        request.finish()
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.streams.ended, [])

    def test_grace_over(self) -> None:
        """After the grace period the streams still open are ended; the count is returned."""
        FakeRequest(self.site)
        FakeRequest(self.site)
        d = self.drain(grace=5)
        self.clock.advance(4.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(len(self.streams.ended), 1)
        self.assertIn("--shutdown-grace", self.streams.ended[0])

    def test_request_begun_during_drain(self) -> None:
        """A request that begins during the drain (on a connection already open) is
        waited for too, within the same grace period."""
        first = FakeRequest(self.site)
        d = self.drain(grace=10)
        self.clock.advance(3)
        late = FakeRequest(self.site)
        first.finish()
        self.assertNoResult(d)
        self.clock.advance(6)
        late.finish()
        self.assertEqual(self.successResultOf(d), 0)

    def test_late_request_gets_the_rest_of_the_grace(self) -> None:
        """The grace period is one deadline, not renewed by each new request."""
        first = FakeRequest(self.site)
        d = self.drain(grace=10)
        self.clock.advance(8)
        FakeRequest(self.site)
        first.finish()
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(d), 1)

    def test_zero_grace(self) -> None:
        """C{--shutdown-grace 0} cuts at once."""
        FakeRequest(self.site)
        self.assertEqual(self.successResultOf(self.drain(grace=0)), 1)


class CloseConnectionsTests(SynchronousTestCase):
    """L{lifecycle.close_connections}."""

    def test_closed_connections(self) -> None:
        """Connections that close at once end it without waiting; then all are aborted."""
        site = FakeSite()
        self.successResultOf(Deferred.fromCoroutine(
            lifecycle.close_connections([site], Clock())))
        self.assertEqual(site.closed, [False, True])

    def test_flush_bounded(self) -> None:
        """A client that never reads is cut after the flush time."""
        clock = Clock()
        site = FakeSite()
        site.connections = 1
        d = Deferred.fromCoroutine(lifecycle.close_connections([site], clock, flush=2.0))
        clock.pump([lifecycle.FLUSH_POLL_SECONDS] * 99)
        self.assertNoResult(d)
        clock.pump([lifecycle.FLUSH_POLL_SECONDS] * 2)
        self.successResultOf(d)
        self.assertEqual(site.closed, [False, True])


class FakeReactor:
    """A reactor that stops once, as a real one does: the second stop raises."""

    def __init__(self) -> None:
        self.stops = 0
        self.stopped = False

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)

    def stop(self) -> None:
        self.stops += 1
        if self.stopped:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stopped = True


def deliver(number: int) -> None:
    """Call the installed handler of signal C{number}, as the interpreter would."""
    handler = signal.getsignal(number)
    assert callable(handler)
    handler(number, None)


class SignalsTests(SynchronousTestCase):
    """L{lifecycle.Signals}."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.addCleanup(signal.signal, number, signal.getsignal(number))

    def test_second_stop(self) -> None:
        """A second SIGTERM (or SIGINT) while stopping does not call C{reactor.stop}
        again, so no C{ReactorNotRunning} is raised or logged as an error."""
        reactor = FakeReactor()
        signals = lifecycle.Signals(reactor, lambda: None)
        signals.install()
        deliver(signal.SIGTERM)
        deliver(signal.SIGTERM)
        deliver(signal.SIGINT)
        self.assertEqual(reactor.stops, 1)
        self.assertFalse([e for e in self.events if e.get("log_level") in
                          (LogLevel.error, LogLevel.critical)])
        self.assertTrue([e for e in self.events
                         if "already stopping" in e.get("log_format", "")])

    def test_reactor_stopped_elsewhere(self) -> None:
        """When something else stopped the reactor first, a SIGTERM is not an error."""
        reactor = FakeReactor()
        reactor.stopped = True
        signals = lifecycle.Signals(reactor, lambda: None)
        signals.stop(signal.SIGTERM)
        self.assertEqual(reactor.stops, 1)
        self.assertTrue(signals.stopping)

    def test_hangup_reloads(self) -> None:
        """SIGHUP calls the reload (on the reactor thread), and does not stop."""
        reactor = FakeReactor()
        reloads: list[None] = []
        lifecycle.Signals(reactor, lambda: reloads.append(None)).install()
        deliver(signal.SIGHUP)
        self.assertEqual((len(reloads), reactor.stops), (1, 0))


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def reloading(self) -> None:
        self.sent.append("RELOADING=1")

    def ready(self, status: str) -> None:
        self.sent.append("READY=1 " + status)


class FakeTLS:
    subject = "CN=localhost"

    def __init__(self, changed: bool) -> None:
        self.changed = changed
        self.reloads = 0

    def reload(self) -> bool:
        self.reloads += 1
        return self.changed

    @property
    def not_after(self) -> Any:
        from datetime import datetime, timezone

        return datetime(2030, 1, 1, tzinfo=timezone.utc)


class FakePool:
    def __init__(self) -> None:
        self.rereads = 0
        self.done: Deferred[None] = Deferred()

    def reread(self) -> Deferred[None]:
        self.rereads += 1
        return self.done


class ReloadTests(SynchronousTestCase):
    """L{lifecycle.reload}."""

    def test_reload(self) -> None:
        """RELOADING=1, every certificate reloaded, the accounts re-read, then READY=1
        only once the accounts are re-read."""
        notifier, pool = FakeNotifier(), FakePool()
        tls = [FakeTLS(True), FakeTLS(False)]
        d = Deferred.fromCoroutine(lifecycle.reload(tls, pool, notifier))  # type: ignore[arg-type]
        self.assertEqual([t.reloads for t in tls], [1, 1])
        self.assertEqual((pool.rereads, notifier.sent), (1, ["RELOADING=1"]))
        self.assertNoResult(d)
        pool.done.callback(None)
        self.successResultOf(d)
        self.assertEqual(notifier.sent, ["RELOADING=1", "READY=1 reloaded"])

    def test_no_tls(self) -> None:
        """Without a TLS listener only the accounts are re-read."""
        notifier, pool = FakeNotifier(), FakePool()
        pool.done = succeed(None)
        self.successResultOf(Deferred.fromCoroutine(
            lifecycle.reload([], pool, notifier)))  # type: ignore[arg-type]
        self.assertEqual(pool.rereads, 1)
