"""
Accounts that heal by themselves, in memory through the pool and the proxy
(L{tests.unit.test_failover.pooled}): a login that needed one (none at start, a refused
refresh token) serves again, without a restart, once a new login is on disk; the state is
true from the start; the default C{~/.claude} is an account only when nothing else is
configured. End to end: L{tests.integration.test_heal}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accounts import PROBE_SECONDS, Account, AccountPool, AccountWatch
from linkrouter.config import resolve
from linkrouter.credentials import ClaudeHome
from linkrouter.oauth import TokenEndpoint
from linkrouter.testing import FakeAnthropic, FakeTokenEndpoint, load_answers

from ..harness import (
    RESPONSES,
    capture_logs,
)
from .test_failover import NOW, Pooled, bearer, pooled
from .test_oauth import TOKEN_URL, claude_code_file, random_secret


def write_login(directory: Path, access: str, expires_at: float,
                refresh: str | None = None) -> Path:
    """A Claude Code login, written like Claude Code writes it (mtime moved on)."""
    path = directory / ".credentials.json"
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(json.dumps(claude_code_file(access, refresh or random_secret("ort01"),
                                                expires_at)))
    os.utime(path, ns=(previous + 10**9, previous + 10**9))
    return path


def home_account(directory: Path) -> Any:
    def make(clock: MemoryReactorClock, endpoint: TokenEndpoint) -> Account:
        return Account.for_home(ClaudeHome(directory, clock, maybeDeferred), clock, endpoint,
                                maybeDeferred)
    return make


class PoolHealingTests(SynchronousTestCase):
    """Through the pool and the proxy: an account that needed a login serves again."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.logs = capture_logs(self)  # type: ignore[arg-type]

    def world(self, tokens: FakeTokenEndpoint | None = None) -> Pooled:
        return pooled(self, [home_account(self.directory)],
                      FakeAnthropic(load_answers(RESPONSES)), tokens)

    def code(self, world: Pooled) -> int:
        return self.successResultOf(world.post()).code  # type: ignore[no-any-return]

    def test_login_written_after_start(self) -> None:
        """
        No login at start: 502. A login written into the home is used by the next
        request once the once-a-second re-check is due; nothing restarts.
        """
        world = self.world()
        self.assertEqual(self.code(world), 502)
        self.assertEqual(self.code(world), 502)
        access = random_secret("oat01")
        write_login(self.directory, access, NOW + 8 * 3600)
        world.clock.advance(1)
        self.assertEqual(self.code(world), 200)
        self.assertEqual([bearer(r) for r in world.upstream.received], [access])
        [account] = world.pool.accounts
        self.assertEqual(account.to_json(world.clock.seconds())["status"], "ok")
        self.assertIn("has a new login", self.logs.text())
        self.assertNotIn(access, self.logs.text())

    def test_refused_refresh_then_new_login(self) -> None:
        """
        A refused refresh token makes the account need a login; a new login written
        over it serves the next request (after the re-check), and the dead refresh
        token is not spent again meanwhile.
        """
        write_login(self.directory, random_secret("oat01"), NOW - 5)
        tokens = FakeTokenEndpoint()
        tokens.answers.append((400, {"error": "invalid_grant"}, {}))
        world = self.world(tokens)
        self.assertEqual(self.code(world), 502)
        world.clock.advance(5)
        self.assertEqual(self.code(world), 502)
        self.assertEqual(len(tokens.received), 1)
        access = random_secret("oat01")
        write_login(self.directory, access, NOW + 8 * 3600)
        world.clock.advance(1)
        self.assertEqual(self.code(world), 200)
        self.assertEqual(bearer(world.upstream.received[-1]), access)
        self.assertEqual(len(tokens.received), 1)

    def test_reread_heals_at_once(self) -> None:
        """
        The pool's re-read (what SIGHUP does) sees a new login at once, even within the
        once-a-second re-check, and the account reports ok before any request.
        """
        world = self.world()
        self.assertEqual(self.code(world), 502)
        write_login(self.directory, random_secret("oat01"), NOW + 8 * 3600)
        self.successResultOf(Deferred.fromCoroutine(world.pool.reread()))
        [account] = world.pool.accounts
        self.assertEqual(account.to_json(world.clock.seconds())["status"], "ok")
        self.assertEqual(self.code(world), 200)

    def test_reread_never_refreshes(self) -> None:
        """
        A re-read (SIGHUP) finding an expiring login does not call the token endpoint,
        so a reload never waits on it; the next request refreshes.
        """
        tokens = FakeTokenEndpoint()
        tokens.hold = Deferred()
        self.addCleanup(lambda: tokens.hold.called or tokens.hold.callback(None))
        world = self.world(tokens)
        write_login(self.directory, random_secret("oat01"), NOW + 10)
        self.successResultOf(Deferred.fromCoroutine(world.pool.reread()))
        self.assertEqual(tokens.received, [])
        [account] = world.pool.accounts
        self.assertEqual(account.expires_at, NOW + 10)

    def test_watch_heals_without_traffic(self) -> None:
        """
        L{AccountWatch} looks again at accounts needing a login every few seconds, so
        the state turns ok without any request.
        """
        world = self.world()
        world.pool.check_now()
        [account] = world.pool.accounts
        self.assertEqual(account.to_json(world.clock.seconds())["status"], "needs_login")
        watch = AccountWatch(world.pool, world.clock)
        watch.startService()
        self.addCleanup(watch.stopService)
        write_login(self.directory, random_secret("oat01"), NOW + 8 * 3600)
        world.clock.advance(PROBE_SECONDS)
        self.assertEqual(account.to_json(world.clock.seconds())["status"], "ok")
        self.assertLessEqual(PROBE_SECONDS, 2.0)


class StartStateTests(SynchronousTestCase):
    """The state of each account is true from the start, with the reason."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.logs = capture_logs(self)  # type: ignore[arg-type]

    def pool(self, *directories: Path) -> AccountPool:
        endpoint = TokenEndpoint(HTTPClient(RequestTraversalAgent(FakeTokenEndpoint())),
                                 TOKEN_URL, self.clock)
        return AccountPool([Account.for_home(ClaudeHome(d, self.clock, maybeDeferred),
                                             self.clock, endpoint, maybeDeferred)
                            for d in directories], self.clock)

    def test_no_login_at_start(self) -> None:
        """
        An empty home and a home that does not exist are needs_login from the start,
        each with its reason, and each gets a warning line; a home with a login is ok
        with its expiry.
        """
        empty, missing, good = (Path(self.mktemp()) for _ in range(3))
        empty.mkdir()
        good.mkdir()
        write_login(good, random_secret("oat01"), NOW + 3600)
        pool = self.pool(empty, missing, good)
        pool.check_now()
        report = {a["source"]: a for a in pool.to_json()["accounts"]}
        self.assertEqual(report[str(empty)]["status"], "needs_login")
        self.assertEqual(report[str(empty)]["reason"], f"no Claude Code login in {empty}")
        self.assertEqual(report[str(missing)]["status"], "needs_login")
        self.assertIn(f"{missing} does not exist", report[str(missing)]["reason"])
        self.assertEqual(report[str(good)]["status"], "ok")
        self.assertIsNone(report[str(good)]["reason"])
        self.assertIsNotNone(report[str(good)]["expires_at"])
        text = self.logs.text()
        self.assertIn(f"needs a login: no Claude Code login in {empty}", text)
        self.assertIn(f"{missing} does not exist", text)


class DefaultHomeTests(SynchronousTestCase):
    """The default ~/.claude is an account only when nothing else is configured."""

    def homes(self, raw: dict[str, Any], env: dict[str, str]) -> tuple[Path, ...]:
        base = {"data_dir": self.mktemp()}
        return resolve({**base, **raw}, env).claude_code_homes

    def test_default_only_alone(self) -> None:
        """
        Nothing configured: ~/.claude. A setup token, an API key (flag or environment)
        or an explicit home: no default home.
        """
        self.assertEqual(self.homes({}, {}), (Path("~/.claude").expanduser(),))
        self.assertEqual(self.homes({"oauth_token": "sk-ant-oat01-x"}, {}), ())
        self.assertEqual(self.homes({}, {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-x"}), ())
        self.assertEqual(self.homes({"upstream_api_key": "sk-ant-api03-x"}, {}), ())
        self.assertEqual(self.homes({}, {"UPSTREAM_API_KEY": "sk-ant-api03-x"}), ())
        explicit = Path(self.mktemp())
        self.assertEqual(self.homes({"oauth_token": "sk-ant-oat01-x",
                                     "claude_code_homes": [str(explicit)]}, {}), (explicit,))
        self.assertEqual(self.homes({}, {"CLAUDE_CODE_HOME": str(explicit)}), (explicit,))
