"""
Tests for the account model of DESIGN §10 (L{linkrouter.account},
L{linkrouter.accountstate}, L{linkrouter.ratelimit}): utilization read from the recorded
answers' real header shapes, statuses and which wins, the pause of C{--pause-at-percent}
and its resumption on a fake clock, the operator's reset, the pool's C{find}, C{add} and
C{remove}, and the admin JSON's fields.
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from linkrouter.account import Account
from linkrouter.accounts import AccountPool
from linkrouter.accountstate import STATUSES, from_claude_code, pause_for
from linkrouter.credentials import ClaudeHome, Credential
from linkrouter.ratelimit import Window, windows

from ..harness import FIXTURES, RESPONSES
from .test_oauth import NOW, random_secret

HOUR = 3600.0
#: The recorded answers' 5h and 7d windows: 1% used, resetting then.
RECORDED_5H_RESET = 1795513390.0
RECORDED_7D_RESET = 1796100190.0


def recorded_headers(name: str) -> Headers:
    """The headers of a recorded upstream answer, as twisted.web hands them over."""
    headers = Headers()
    for key, value in json.loads((RESPONSES / name).read_text())["headers"]:
        headers.addRawHeader(key.encode(), value.encode())
    return headers


def window_headers(**windows: tuple[float, float]) -> Headers:
    """Rate-limit headers for C{window=(fraction, reset)}, in the upstream's shape."""
    headers = Headers({b"content-type": [b"application/json"]})
    for name, (fraction, reset) in windows.items():
        prefix = f"anthropic-ratelimit-unified-{name.removeprefix('w')}-"
        headers.addRawHeader((prefix + "utilization").encode(), str(fraction).encode())
        headers.addRawHeader((prefix + "reset").encode(), str(int(reset)).encode())
    return headers


def request_headers(path: Path) -> list[Headers]:
    """The headers of each recorded client request in a fixture file."""
    found = []
    for line in path.read_text().splitlines():
        headers = Headers()
        for key, value in json.loads(line)["headers"]:
            headers.addRawHeader(key.encode(), value.encode())
        found.append(headers)
    return found


class WindowHeaderTests(SynchronousTestCase):
    """The anthropic-ratelimit-unified-* headers every answer carries."""

    def test_recorded_answers(self) -> None:
        """
        Every recorded Anthropic answer (JSON, SSE, count_tokens, models) gives the 5h and
        7d windows with their fraction and reset; the window-less reset and status headers
        are not windows.
        """
        for name in ("anthropic-messages.json", "anthropic-messages-stream.json",
                     "anthropic-count-tokens.json", "anthropic-models.json"):
            self.assertEqual(windows(recorded_headers(name)), {
                "5h": Window(0.01, RECORDED_5H_RESET),
                "7d": Window(0.01, RECORDED_7D_RESET),
            }, name)

    def test_percent(self) -> None:
        """percent is the fraction as 0..100, exactly for figures like 0.29."""
        self.assertEqual(Window(0.29).percent, 29.0)
        self.assertEqual(Window(0.01).percent, 1.0)
        self.assertEqual(Window(1.0).percent, 100.0)

    def test_unusable_values(self) -> None:
        """A non-number or infinite figure is ignored; a reset without a figure is none."""
        found = windows(Headers({
            b"anthropic-ratelimit-unified-5h-utilization": [b"nan-ish"],
            b"anthropic-ratelimit-unified-7d-utilization": [b"inf"],
            b"anthropic-ratelimit-unified-7d_opus-reset": [b"1800000000"],
            b"anthropic-ratelimit-unified-7d_opus-utilization": [b"0.5"],
            b"anthropic-ratelimit-unified-5h-reset": [b"1800000000"],
        }))
        self.assertEqual(found, {"7d_opus": Window(0.5, 1800000000.0)})

    def test_current(self) -> None:
        """A window reported before its reset counts as unused once the reset passed."""
        window = Window(0.9, NOW + 10)
        self.assertEqual(window.current(NOW + 9), 0.9)
        self.assertEqual(window.current(NOW + 10), 0.0)
        self.assertEqual(Window(0.9).current(NOW + 10**6), 0.9)


class ClientTests(SynchronousTestCase):
    """Which requests come from Claude Code, by their recorded headers."""

    def test_claude_code_recorded(self) -> None:
        """Claude Code's recorded Messages, Bedrock and Vertex requests are Claude Code's."""
        for path in sorted((FIXTURES / "claude-code").glob("*.jsonl")):
            for headers in request_headers(path):
                if (headers.getRawHeaders(b"user-agent") or [b""])[0].startswith(b"aws-sdk"):
                    continue  # the AWS SDK's own inference-profile lookup
                self.assertTrue(from_claude_code(headers), path.name)

    def test_sdks_recorded(self) -> None:
        """The recorded Anthropic SDK requests (Python, JS, Bedrock, Vertex) are not."""
        paths = sorted((FIXTURES / "sdk").glob("*.jsonl"))
        self.assertTrue(paths)
        for path in paths:
            for headers in request_headers(path):
                self.assertFalse(from_claude_code(headers), path.name)

    def test_both_needed(self) -> None:
        """The User-Agent alone, or x-app alone, is not Claude Code; curl is not."""
        self.assertFalse(from_claude_code(Headers({b"user-agent": [b"claude-cli/2.1.0"]})))
        self.assertFalse(from_claude_code(Headers({b"x-app": [b"cli"],
                                                   b"user-agent": [b"curl/8.5.0"]})))
        self.assertFalse(from_claude_code(Headers()))
        self.assertTrue(from_claude_code(Headers({b"x-app": [b"cli"],
                                                  b"user-agent": [b"claude-cli/2.1.0 (x)"]})))


class PauseRuleTests(SynchronousTestCase):
    """pause_for: which report calls for a pause, until when, and why."""

    def test_under(self) -> None:
        """Below the threshold in both windows: no pause."""
        self.assertIsNone(pause_for({"5h": Window(0.79, NOW + 60),
                                     "7d": Window(0.5, NOW + 600)}, 80, NOW))

    def test_at_threshold(self) -> None:
        """At the threshold exactly (0.29 is 29%), the window's reset ends the pause."""
        pause = pause_for({"5h": Window(0.29, NOW + 60)}, 29, NOW)
        assert pause is not None
        self.assertEqual(pause.until, NOW + 60)
        self.assertIn("5h utilization 29% ", pause.reason)
        self.assertIn("--pause-at-percent 29%", pause.reason)

    def test_both_over(self) -> None:
        """With both windows over, the pause lasts until the later reset (the 7d one)."""
        pause = pause_for({"5h": Window(0.95, NOW + 60), "7d": Window(0.9, NOW + 5 * HOUR)},
                          90, NOW)
        assert pause is not None
        self.assertEqual(pause.until, NOW + 5 * HOUR)
        self.assertIn("7d utilization 90%", pause.reason)

    def test_other_windows_ignored(self) -> None:
        """Only the 5h and 7d windows pause an account."""
        self.assertIsNone(pause_for({"7d_opus": Window(1.0, NOW + 60)}, 50, NOW))

    def test_stale_report(self) -> None:
        """A report whose reset has passed calls for nothing."""
        self.assertIsNone(pause_for({"5h": Window(0.99, NOW)}, 50, NOW))


class StatusTests(SynchronousTestCase):
    """An account's status, and which wins when several hold."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.account = Account.for_static(Credential("oauth", random_secret("oat01"),
                                                     "--oauth-token"), self.clock)

    def status(self) -> str:
        return self.account.status(self.clock.seconds())

    def test_order(self) -> None:
        """disabled wins, then needs_login, then cooling, then paused; else ok."""
        self.assertEqual(STATUSES, ("disabled", "needs_login", "cooling", "paused", "ok"))
        self.assertEqual(self.status(), "ok")
        self.account.pause(NOW + 100, "5h over")
        self.assertEqual(self.status(), "paused")
        self.account.cooling_until = NOW + 50
        self.assertEqual(self.status(), "cooling")
        self.account.needs_login = "refused"
        self.assertEqual(self.status(), "needs_login")
        self.account.disabled = True
        self.assertEqual(self.status(), "disabled")
        self.assertEqual(self.account.reason(NOW), "disabled by the operator")
        self.account.disabled = False
        self.account.needs_login = None
        self.clock.advance(50)
        self.assertEqual(self.status(), "paused")
        self.assertEqual(self.account.resumes_at(self.clock.seconds()), NOW + 100)
        self.clock.advance(50)
        self.assertEqual(self.status(), "ok")
        self.assertIsNone(self.account.reason(self.clock.seconds()))

    def test_reset(self) -> None:
        """reset() clears a cooldown and a pause (the disabled flag is the operator's)."""
        self.account.pause(NOW + 100, "5h over")
        self.account.cooling_until = NOW + 50
        self.successResultOf(Deferred.fromCoroutine(self.account.reset()))
        self.assertEqual(self.status(), "ok")
        self.assertIsNone(self.account.pause_reason)
        self.account.disabled = True
        self.successResultOf(Deferred.fromCoroutine(self.account.reset()))
        self.assertEqual(self.status(), "disabled")

    def test_reset_rereads_login(self) -> None:
        """
        reset() re-reads a login's file at once: an account with no login becomes ok as
        soon as one is written, without waiting for the once-a-second check.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        account = Account.for_home(ClaudeHome(directory, self.clock, maybeDeferred),
                                   self.clock, None, maybeDeferred)
        account.check_now()
        self.assertEqual(account.status(NOW), "needs_login")
        self.assertEqual(account.kind, "oauth")
        (directory / ".credentials.json").write_text(json.dumps(
            {"claudeAiOauth": {"accessToken": random_secret("oat01"),
                               "refreshToken": random_secret("ort01"),
                               "expiresAt": (NOW + HOUR) * 1000}}))
        self.successResultOf(Deferred.fromCoroutine(account.reset()))
        self.assertEqual(account.status(NOW), "ok")

    def test_names(self) -> None:
        """A login's name is its directory's (with the parent for a hidden one)."""
        base = Path(self.mktemp())
        for directory, name in ((base / "alice", "alice"),
                                (base / "bob" / ".claude", "bob/.claude")):
            account = Account.for_home(ClaudeHome(directory, self.clock, maybeDeferred),
                                       self.clock, None, maybeDeferred)
            self.assertEqual(account.name, name)
        key = Account.for_static(Credential("api_key", random_secret("api03"),
                                            "--upstream-api-key"), self.clock)
        self.assertEqual((key.kind, key.name), ("api-key", "upstream-api-key"))
        self.assertFalse(key.subscription)
        self.assertTrue(self.account.subscription)

    def test_ids_stable(self) -> None:
        """The ids keep the form they had before the public kinds (oauth-token-…)."""
        self.assertTrue(self.account.id.startswith("oauth-token-"))


class PoolTests(SynchronousTestCase):
    """The pool: find, add, remove, and never picking an account that is not ok."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.a, self.b, self.c = (
            Account.for_static(Credential("oauth", random_secret("oat01"), f"t{i}"),
                               self.clock) for i in range(3))
        self.pool = AccountPool([self.a, self.b], self.clock, pause_at_percent=80)

    def test_find_add_remove(self) -> None:
        """Accounts appear and disappear at run time; a duplicate id is refused."""
        self.assertIs(self.pool.find(self.b.id), self.b)
        self.assertIsNone(self.pool.find(self.c.id))
        self.pool.add(self.c)
        self.assertIs(self.pool.find(self.c.id), self.c)
        self.assertIn(self.c, self.pool.candidates())
        self.assertRaises(ValueError, self.pool.add, self.c)
        self.assertIs(self.pool.remove(self.a.id), self.a)
        self.assertIsNone(self.pool.remove(self.a.id))
        self.assertEqual([x["id"] for x in self.pool.to_json()["accounts"]],
                         [self.b.id, self.c.id])

    def test_disabled_skipped(self) -> None:
        """A disabled account is never picked, even when it is the only one."""
        self.a.disabled = True
        self.assertEqual(self.pool.candidates(), [self.b])
        self.b.disabled = True
        self.assertEqual(self.pool.candidates(), [])
        self.assertIsNone(self.pool.next_available())

    def test_pause_and_resume(self) -> None:
        """
        An answer reporting the 5h window at 80% pauses the account until its reset:
        the pool skips it, next_available names the reset, and at the reset it serves
        again. A later answer below the threshold ends the pause at once.
        """
        reset = NOW + 2 * HOUR
        self.pool.observe(self.a, window_headers(w5h=(0.8, reset), w7d=(0.3, NOW + 99 * HOUR)))
        self.assertEqual(self.a.status(NOW), "paused")
        self.assertEqual(self.a.paused_until, reset)
        self.assertIn("5h utilization 80%", self.a.pause_reason or "")
        self.assertEqual(self.pool.candidates(), [self.b])
        self.pool.cool_down(self.b, Headers({b"retry-after": [b"30"]}))
        self.assertEqual(self.pool.candidates(), [])
        self.assertEqual(self.pool.next_available(), NOW + 30)
        self.clock.advance(30)
        self.assertEqual(self.pool.candidates(), [self.b])
        self.assertEqual(self.pool.next_available(), reset)
        self.clock.advance(reset - self.clock.seconds() - 1)
        self.assertNotIn(self.a, self.pool.candidates())
        self.clock.advance(1)
        self.assertEqual(self.a.status(self.clock.seconds()), "ok")
        self.assertIn(self.a, self.pool.candidates())
        self.pool.observe(self.b, window_headers(w7d=(0.95, NOW + 50 * HOUR)))
        self.assertEqual(self.b.status(self.clock.seconds()), "paused")
        self.pool.observe(self.b, window_headers(w7d=(0.2, NOW + 50 * HOUR)))
        self.assertEqual(self.b.status(self.clock.seconds()), "ok")

    def test_no_pause_without_option(self) -> None:
        """Without --pause-at-percent, a full window pauses nothing (a 429 will say)."""
        pool = AccountPool([self.c], self.clock)
        pool.observe(self.c, window_headers(w5h=(1.0, NOW + HOUR)))
        self.assertEqual(pool.candidates(), [self.c])

    def test_to_json_fields(self) -> None:
        """
        Every field of DESIGN §10: id, name, kind, status, reason, expires_at,
        utilization (percent 0..100, resets_at ISO 8601), requests, last_used_at, and
        the paused account's resume time.
        """
        self.pool.observe(self.a, window_headers(w5h=(0.85, NOW + HOUR),
                                                 w7d=(0.4, NOW + 48 * HOUR)))
        self.pool.served(self.b, None)
        a, b = self.pool.to_json()["accounts"]
        for field in ("id", "name", "kind", "status", "reason", "expires_at", "utilization",
                      "requests", "last_used_at"):
            self.assertIn(field, a)
        self.assertEqual((a["status"], a["kind"], a["requests"], a["last_used_at"]),
                         ("paused", "setup-token", 0, None))
        self.assertEqual(a["utilization"], {
            "5h": {"percent": 85.0, "resets_at": "2027-01-15T09:00:00Z"},
            "7d": {"percent": 40.0, "resets_at": "2027-01-17T08:00:00Z"}})
        self.assertEqual(a["resumes_at"], "2027-01-15T09:00:00Z")
        self.assertIn("85%", a["reason"])
        self.assertEqual((b["status"], b["reason"], b["requests"], b["last_used_at"]),
                         ("ok", None, 1, "2027-01-15T08:00:00Z"))
        self.assertEqual(b["utilization"], {"5h": {"percent": None, "resets_at": None},
                                            "7d": {"percent": None, "resets_at": None}})
