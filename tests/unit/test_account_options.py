"""
C{--pause-at-percent} and C{--subscription-clients}: read from the flag or the
environment, checked with one-line errors; and what the pool makes of them (a pool in
memory, real recorded request headers).
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from linkrouter.accounts import Account, AccountPool
from linkrouter.config import ConfigError
from linkrouter.credentials import Credential

from ..harness import FIXTURES
from .test_accountstate import request_headers
from .test_config import config
from .test_oauth import NOW, random_secret
from .test_tap import parsed


class PauseAtPercentOptionTests(SynchronousTestCase):
    """--pause-at-percent P / LINKROUTER_PAUSE_AT_PERCENT."""

    def test_absent(self) -> None:
        """Without it, accounts are never paused."""
        self.assertIsNone(config().pause_at_percent)

    def test_given(self) -> None:
        """The flag or the variable, 1 to 100 (a % sign is allowed); the flag wins."""
        self.assertEqual(config(pause_at_percent="80").pause_at_percent, 80.0)
        self.assertEqual(config({"LINKROUTER_PAUSE_AT_PERCENT": "92.5%"}).pause_at_percent,
                         92.5)
        self.assertEqual(config({"LINKROUTER_PAUSE_AT_PERCENT": "50"},
                                pause_at_percent="1").pause_at_percent, 1.0)
        self.assertEqual(config(pause_at_percent="100").pause_at_percent, 100.0)

    def test_bad(self) -> None:
        """0, over 100, not a number, NaN: one line naming the option."""
        for text in ("0", "101", "lots", "nan", "-5"):
            error = self.assertRaises(ConfigError, config, pause_at_percent=text)
            self.assertEqual(error.option, "--pause-at-percent")
            self.assertIn("is not a percentage from 1 to 100", str(error))
            self.assertNotIn("\n", str(error))
        error = self.assertRaises(usage.UsageError, parsed, [],
                                  {"LINKROUTER_PAUSE_AT_PERCENT": "200"})
        self.assertIn("--pause-at-percent", str(error))


class SubscriptionClientsOptionTests(SynchronousTestCase):
    """--subscription-clients any|claude-code / LINKROUTER_SUBSCRIPTION_CLIENTS."""

    def test_values(self) -> None:
        """any by default; claude-code from the flag or the variable."""
        self.assertEqual(config().subscription_clients, "any")
        self.assertEqual(config(subscription_clients="claude-code").subscription_clients,
                         "claude-code")
        self.assertEqual(config({"LINKROUTER_SUBSCRIPTION_CLIENTS": "Claude-Code"})
                         .subscription_clients, "claude-code")

    def test_bad(self) -> None:
        """Anything else is one line naming the option and the choices."""
        error = self.assertRaises(ConfigError, config, subscription_clients="cli")
        self.assertEqual(str(error),
                         "--subscription-clients: 'cli' is not one of any, claude-code")


class SubscriptionPoolTests(SynchronousTestCase):
    """The pool keeps subscription accounts for Claude Code's requests when told to."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.login = Account.for_static(Credential("oauth", random_secret("oat01"), "t"),
                                        self.clock)
        self.key = Account.for_static(Credential("api_key", random_secret("api03"), "k"),
                                      self.clock)
        self.pool = AccountPool([self.login, self.key], self.clock,
                                subscription_clients="claude-code")

    def test_allows(self) -> None:
        """Claude Code's recorded requests may use subscriptions; the SDKs' may not."""
        [claude_code] = request_headers(FIXTURES / "claude-code" / "anthropic-bearer.jsonl")
        [*sdk, _] = request_headers(FIXTURES / "sdk" / "python-anthropic-2.12.0.jsonl")
        self.assertTrue(self.pool.allows_subscription(claude_code))
        self.assertFalse(self.pool.allows_subscription(sdk[0]))
        self.assertFalse(self.pool.allows_subscription(Headers()))
        anyone = AccountPool([self.login], self.clock)
        self.assertTrue(anyone.allows_subscription(sdk[0]))

    def test_candidates(self) -> None:
        """
        Kept off subscriptions, only the API-key account is a candidate, and only its
        cooldown counts for the retry-after; a disabled API key serves nobody.
        """
        self.assertEqual(self.pool.candidates(subscription=False), [self.key])
        self.assertEqual(set(map(id, self.pool.candidates())), {id(self.login), id(self.key)})
        self.login.cooling_until = NOW + 10
        self.key.cooling_until = NOW + 50
        self.assertEqual(self.pool.next_available(), NOW + 10)
        self.assertEqual(self.pool.next_available(subscription=False), NOW + 50)
        self.assertTrue(self.pool.serves_without_subscription())
        self.key.disabled = True
        self.assertFalse(self.pool.serves_without_subscription())
