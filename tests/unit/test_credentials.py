"""Upstream credentials: sources in order, Claude Code's file format, re-reading on change."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.credentials import (
    ClaudeHome,
    Credential,
    credential_from_json,
)

from ..harness import capture_logs


def write(path: Path, data: Any) -> None:
    """Write JSON and move the mtime on, so a rewrite within one clock tick is seen."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    os.utime(path, ns=(previous + 10**9, previous + 10**9))


def claude_code(token: str, expires_ms: int = 1_900_000_000_000) -> dict[str, Any]:
    return {"claudeAiOauth": {"accessToken": token, "refreshToken": "rt-" + token,
                              "expiresAt": expires_ms, "scopes": ["user:inference"]},
            "mcpOAuth": {"x": 1}}


class CredentialFormatTests(SynchronousTestCase):
    """Parsing the credential files Claude Code and link-assistant-router use."""

    def test_claude_code_format(self) -> None:
        """claudeAiOauth gives an OAuth credential with refresh token and expiry (s)."""
        found = credential_from_json(claude_code("sk-ant-oat01-a", 1_800_000_000_500), "f")
        assert found is not None
        self.assertEqual((found.kind, found.secret, found.refresh_token, found.expires_at),
                         ("oauth", "sk-ant-oat01-a", "rt-sk-ant-oat01-a", 1_800_000_000.5))

    def test_flat_fields(self) -> None:
        """Each of the seed's flat field names is read."""
        for name in ("accessToken", "access_token", "oauthToken", "oauth_token"):
            found = credential_from_json({name: " tok-" + name + " "}, "f")
            assert found is not None
            self.assertEqual(found.secret, "tok-" + name)

    def test_nested_wins_and_blank_ignored(self) -> None:
        """Claude Code's layout wins over flat fields; blank or odd values are no token."""
        mixed = dict(claude_code("nested"), accessToken="flat")
        self.assertEqual(credential_from_json(mixed, "f").secret, "nested")  # type: ignore
        self.assertIsNone(credential_from_json({"accessToken": "  "}, "f"))
        self.assertIsNone(credential_from_json({"claudeAiOauth": {"accessToken": 5}}, "f"))
        self.assertIsNone(credential_from_json(["accessToken"], "f"))

    def test_headers(self) -> None:
        """OAuth goes as a bearer token, an API key as x-api-key."""
        self.assertEqual(Credential("oauth", "o", "s").headers(),
                         [(b"authorization", b"Bearer o")])
        self.assertEqual(Credential("api_key", "k", "s").headers(), [(b"x-api-key", b"k")])


class ClaudeHomeTests(SynchronousTestCase):
    """A Claude Code home directory, watched for changes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.reads = 0

        def run(fn: Callable[[], Any]) -> Deferred[Any]:
            self.reads += 1
            return maybeDeferred(fn)

        self.home = ClaudeHome(self.dir, self.clock, run)

    def current(self) -> Credential | None:
        return self.successResultOf(Deferred.fromCoroutine(self.home.credential()))

    def test_claude_code_file(self) -> None:
        """.credentials.json in Claude Code's format is found."""
        write(self.dir / ".credentials.json", claude_code("sk-ant-oat01-first"))
        found = self.current()
        assert found is not None
        self.assertEqual(found.secret, "sk-ant-oat01-first")
        self.assertEqual(found.source, str(self.dir / ".credentials.json"))

    def test_file_order(self) -> None:
        """Claude Code's file first, then the seed's files in the seed's order."""
        write(self.dir / "config.json", {"oauth_token": "from-config"})
        write(self.dir / "auth.json", {"access_token": "from-auth"})
        self.assertEqual(self.current().secret, "from-auth")  # type: ignore[union-attr]
        write(self.dir / "credentials.json", {"accessToken": "from-credentials"})
        self.clock.advance(1)
        self.assertEqual(self.current().secret, "from-credentials")  # type: ignore[union-attr]
        write(self.dir / ".credentials.json", claude_code("from-claude-code"))
        self.clock.advance(1)
        self.assertEqual(self.current().secret, "from-claude-code")  # type: ignore[union-attr]

    def test_changed_file_reread(self) -> None:
        """A file rewritten on disk is used from the next check on, without a restart."""
        path = self.dir / ".credentials.json"
        write(path, claude_code("old-token"))
        self.assertEqual(self.current().secret, "old-token")  # type: ignore[union-attr]
        write(path, claude_code("new-token"))
        self.clock.advance(0.5)
        self.assertEqual(self.current().secret, "old-token")  # type: ignore[union-attr]
        self.assertEqual(self.reads, 1)
        self.clock.advance(0.5)
        self.assertEqual(self.current().secret, "new-token")  # type: ignore[union-attr]
        self.assertEqual(self.reads, 2)

    def test_removed_file(self) -> None:
        """A login that disappears stops being used."""
        path = self.dir / ".credentials.json"
        write(path, claude_code("gone-soon"))
        self.assertIsNotNone(self.current())
        path.unlink()
        self.clock.advance(1)
        self.assertIsNone(self.current())

    def test_broken_file_skipped(self) -> None:
        """Invalid JSON is logged (by path) and skipped; the next file is used."""
        logs = capture_logs(self)
        write(self.dir / ".credentials.json", '{"claudeAiOauth": {"accessToken": "sk-ant-oat01')
        write(self.dir / "auth.json", {"accessToken": "fallback"})
        self.assertEqual(self.current().secret, "fallback")  # type: ignore[union-attr]
        self.assertIn("not valid JSON", logs.text())
        self.assertNotIn("sk-ant-oat01", logs.text())
        self.assertIn("auth.json", logs.text())
        self.assertNotIn("fallback", logs.text())

    def test_one_scan_for_concurrent_callers(self) -> None:
        """Callers arriving while a scan runs share it."""
        pending: list[Deferred[Any]] = []
        home = ClaudeHome(self.dir, self.clock, lambda fn: pending.append(Deferred())
                          or pending[-1])
        first = Deferred.fromCoroutine(home.credential())
        second = Deferred.fromCoroutine(home.credential())
        self.assertEqual(len(pending), 1)
        found = Credential("oauth", "shared", "x")
        pending[0].callback(found)
        self.assertIs(self.successResultOf(first), found)
        self.assertIs(self.successResultOf(second), found)

    def test_forced_read_after_scan_in_flight(self) -> None:
        """
        A forced read asked while a scan is in flight does not share it (that scan may
        predate a write): a new scan starts when it ends, and the forced caller gets that.
        """
        pending: list[Deferred[Any]] = []
        home = ClaudeHome(self.dir, self.clock, lambda fn: pending.append(Deferred())
                          or pending[-1])
        first = Deferred.fromCoroutine(home.credential())
        forced = Deferred.fromCoroutine(home.credential(force=True))
        self.assertEqual(len(pending), 1)
        old, new = Credential("oauth", "old", "x"), Credential("oauth", "new", "x")
        pending[0].callback(old)
        self.assertIs(self.successResultOf(first), old)
        self.assertNoResult(forced)
        self.assertEqual(len(pending), 2)
        pending[1].callback(new)
        self.assertIs(self.successResultOf(forced), new)
