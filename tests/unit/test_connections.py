"""
The connection-limit options (C{--header-timeout}, C{--max-connections}): flags,
environment variables and bad values; and the shipped systemd unit's file limit. Slow
and numerous clients over loopback: L{tests.integration.test_connections}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.static import Data

from linkrouter.config import DEFAULT_MAX_CONNECTIONS, ConfigError, resolve
from linkrouter.connections import GuardedHTTPChannel
from linkrouter.tap import Options

from .test_systemd import SERVICE, unit_settings

REQUEST = b"GET / HTTP/1.1\r\nHost: router\r\n\r\n"


class OptionTests(SynchronousTestCase):
    """The flags, their environment variables, and bad values."""

    def test_flags(self) -> None:
        """Both flags parse and appear in --help with their variables."""
        options = Options(environ={})
        options.parseOptions(["--header-timeout", "5", "--max-connections", "7"])
        self.assertEqual(options.config.header_timeout, 5.0)
        self.assertEqual(options.config.max_connections, 7)
        usage = str(options)
        self.assertIn("LINKROUTER_HEADER_TIMEOUT", usage)
        self.assertIn("LINKROUTER_MAX_CONNECTIONS", usage)

    def test_environment(self) -> None:
        """The environment variables set both; defaults are 20 s and 10000."""
        config = resolve({}, {"LINKROUTER_HEADER_TIMEOUT": "2m",
                              "LINKROUTER_MAX_CONNECTIONS": "50"})
        self.assertEqual((config.header_timeout, config.max_connections), (120.0, 50))
        default = resolve({}, {})
        self.assertEqual((default.header_timeout, default.max_connections), (20.0, 10000))

    def test_bad(self) -> None:
        """Zero, negative or non-numeric values stop with a line naming the option."""
        for raw in ({"header_timeout": "0"}, {"header_timeout": "soon"},
                    {"max_connections": "0"}, {"max_connections": "many"},
                    {"max_connections": "-3"}):
            with self.assertRaises(ConfigError) as caught:
                resolve(raw, {})
            self.assertIn("--" + next(iter(raw)).replace("_", "-"), str(caught.exception))


class UnitLimitTests(SynchronousTestCase):
    """The shipped systemd unit lets one process hold its connection cap."""

    def test_limit_nofile(self) -> None:
        """
        LimitNOFILE is 65536: two descriptors per stream (client and upstream) at the
        default --max-connections, with room to spare; systemd's default is 1024.
        """
        [limit] = unit_settings(SERVICE)["Service"]["LimitNOFILE"]
        self.assertEqual(int(limit), 65536)
        self.assertGreater(int(limit), 2 * DEFAULT_MAX_CONNECTIONS + 1024)


class HeadTimerTests(SynchronousTestCase):
    """
    The header timeout's timer: one per connection, re-armed lazily (not cancelled and
    armed again for every request), each head still cut exactly at its own deadline.
    """

    def channel(self) -> tuple[GuardedHTTPChannel, Clock, StringTransport, list[float]]:
        clock = Clock()
        armed: list[float] = []

        def call_later(delay: float, f: Any, *a: Any, **kw: Any) -> Any:
            armed.append(delay)
            return clock.callLater(delay, f, *a, **kw)

        page = Data(b"ok", "text/plain")
        page.isLeaf = True
        site = Site(page)
        channel = GuardedHTTPChannel()
        channel.header_timeout = 1.0
        channel.timeOut = None
        channel.site = site
        channel.requestFactory = site.requestFactory
        channel.callLater = call_later  # type: ignore[method-assign]
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, clock, transport, armed

    def test_one_timer_for_requests(self) -> None:
        """Ten keep-alive requests within the timeout arm the timer once."""
        channel, clock, transport, armed = self.channel()
        for _ in range(10):
            channel.dataReceived(REQUEST)
            clock.advance(0.01)
        self.assertEqual(transport.value().count(b"200 OK"), 10)
        self.assertEqual(armed, [1.0])

    def test_later_head_gets_its_whole_timeout(self) -> None:
        """
        A head begun 0.6 s after the first (the timer still armed for the first's
        deadline) is not cut at that deadline, and is cut 1 s after its own first byte.
        """
        channel, clock, transport, armed = self.channel()
        channel.dataReceived(REQUEST)
        clock.advance(0.6)
        channel.dataReceived(REQUEST[:10])
        clock.advance(0.4)  # the first head's deadline: the timer re-arms for the rest
        self.assertNotIn(b"408", transport.value())
        self.assertFalse(transport.disconnecting)
        clock.advance(0.59)
        self.assertNotIn(b"408", transport.value())
        clock.advance(0.02)
        self.assertIn(b"408 Request Timeout", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_idle_connection_timer_lapses(self) -> None:
        """After a complete request the timer fires once, finds no head, and is gone."""
        channel, clock, transport, armed = self.channel()
        channel.dataReceived(REQUEST)
        clock.advance(5)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertNotIn(b"408", transport.value())
        channel.dataReceived(REQUEST[:5])
        clock.advance(1.01)
        self.assertIn(b"408 Request Timeout", transport.value())
        self.assertEqual(armed, [1.0, 1.0, 2.0])

class AddressTests(SynchronousTestCase):
    """A connection's addresses are asked of its transport once, however many requests."""

    def test_asked_once(self) -> None:
        asked: list[str] = []

        class Counting(StringTransport):
            def getHost(self) -> Any:
                asked.append("host")
                return super().getHost()

            def getPeer(self) -> Any:
                asked.append("peer")
                return super().getPeer()

        page = Data(b"ok", "text/plain")
        page.isLeaf = True
        site = Site(page)
        channel = GuardedHTTPChannel()
        channel.timeOut = None
        channel.site, channel.requestFactory = site, site.requestFactory
        transport = Counting()
        channel.makeConnection(transport)
        for _ in range(3):
            channel.dataReceived(REQUEST)
        self.assertEqual(transport.value().count(b"200 OK"), 3)
        self.assertEqual(sorted(asked), ["host", "peer"])
        self.assertEqual(channel.getHost(), transport.getHost())
        self.assertEqual(channel.getPeer(), transport.getPeer())
