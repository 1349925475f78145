"""
The connection-limit options (C{--header-timeout}, C{--max-connections}): flags,
environment variables and bad values; and the shipped systemd unit's file limit. Slow
and numerous clients over loopback: L{tests.integration.test_connections}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import DEFAULT_MAX_CONNECTIONS, ConfigError, resolve
from linkrouter.tap import Options

from .test_systemd import SERVICE, unit_settings


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
