"""
The admin API over loopback: issue, list, show, revoke, and every refusal. The body
checks alone: L{tests.unit.test_admin}.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from linkrouter.adminguard import MAX_FAILURES
from linkrouter.tokens import TokenAuthority

from ..harness import ADMIN_KEY, TOKEN_SECRET, admin_call, start_router
from ..unit.test_labels import UNPRINTABLE


class AdminAPITests(TestCase):
    """The admin Resource, served by a running router."""

    timeout = 30

    async def test_lifecycle(self) -> None:
        """Issue, list, show and revoke a token; its record never holds the token."""
        running = await start_router(self)
        code, issued = await admin_call(running, "POST", "/api/tokens",
                                       {"ttl_hours": 2, "label": "alice"})
        self.assertEqual(code, 200)
        self.assertEqual(set(issued) >= {"token", "id", "label", "ttl_hours", "expires_at"},
                         True)
        self.assertEqual((issued["label"], issued["ttl_hours"]), ("alice", 2))
        authority = TokenAuthority(TOKEN_SECRET.encode(), running.router.upstream.reactor)
        claims = authority.verify(issued["token"])
        self.assertEqual(claims.id, issued["id"])
        self.assertEqual(claims.expires_at - claims.issued_at, 2 * 3600)

        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual(code, 200)
        self.assertEqual([t["id"] for t in listed["tokens"]], [issued["id"]])
        self.assertNotIn(issued["token"], json.dumps(listed))
        self.assertNotIn("token", listed["tokens"][0])

        code, shown = await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        self.assertEqual((code, shown["label"], shown["revoked_at"]), (200, "alice", None))

        code, revoked = await admin_call(running, "DELETE", "/api/tokens/" + issued["id"])
        self.assertEqual(code, 200)
        self.assertIsNotNone(revoked["revoked_at"])
        code, again = await admin_call(running, "DELETE", "/api/tokens/" + issued["id"])
        self.assertEqual((code, again["revoked_at"]), (200, revoked["revoked_at"]))

        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": issued["token"]})
        body = json.loads(await response.content())
        self.assertEqual((response.code, body["error"]["type"]), (403, "permission_error"))

    async def test_admin_key_required(self) -> None:
        """No key, a wrong key or a router token instead: 401, and nothing issued."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        for key in (None, "wrong", ADMIN_KEY[:-1], token):
            code, body = await admin_call(running, "POST", "/api/tokens", {}, key=key)
            self.assertEqual(code, 401)
            self.assertEqual(body["error"]["type"], "authentication_error")
            self.assertNotIn(ADMIN_KEY, json.dumps(body))
            self.assertIn("admin-key", body["error"]["message"])
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual(len(listed["tokens"]), 1)

    async def test_bad_input(self) -> None:
        """Bad bodies, unknown ids and wrong methods get clear Anthropic-shaped errors."""
        running = await start_router(self)
        code, body = await admin_call(running, "POST", "/api/tokens", raw=b"{oops")
        self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"))
        code, body = await admin_call(running, "POST", "/api/tokens", {"ttl_hours": 0})
        self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"))
        code, body = await admin_call(running, "GET",
                                     "/api/tokens/00000000-0000-4000-8000-000000000000")
        self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))
        code, body = await admin_call(running, "DELETE", "/api/tokens/not-a-uuid")
        self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))
        code, body = await admin_call(running, "PUT", "/api/tokens", {})
        self.assertEqual((code, body["error"]["type"]), (405, "invalid_request_error"))
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual(listed["tokens"], [])

    async def test_separate_admin_listener(self) -> None:
        """With --admin-listen, the admin API is there and gone from the client port."""
        running = await start_router(self, admin_listen=True)
        self.assertNotEqual(running.admin_url, running.url)
        code, _ = await admin_call(running, "POST", "/api/tokens", {"label": "x"})
        self.assertEqual(code, 200)
        response = await running.http.get(running.url + "/api/tokens",
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        self.assertEqual(response.code, 404)
        await response.content()


def store_file(running: Any) -> Path:
    """The running router's SQLite store (the default, in its data directory)."""
    return Path(running.home).parent / "state" / "linkrouter.sqlite3"


class AdminHardeningTests(TestCase):
    """Labels, odd store rows, foreign tokens and key guessing, through a running router."""

    timeout = 30

    async def test_unprintable_labels_refused(self) -> None:
        """
        Every control, bidi, zero-width or separator character, and a lone surrogate
        (which used to give 500), is refused with 400 naming the label field; nothing is
        stored.
        """
        running = await start_router(self)
        for char in UNPRINTABLE:
            code, body = await admin_call(running, "POST", "/api/tokens",
                                         raw=json.dumps({"label": "a" + char + "b"}).encode())
            self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"),
                             repr(char))
            self.assertIn("label", body["error"]["message"])
            self.assertIn(f"U+{ord(char):04X}", body["error"]["message"])
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual((code, listed["tokens"]), (200, []))

    async def test_foreign_label_escaped(self) -> None:
        """
        A token minted elsewhere with a label full of terminal escapes works; once its
        usage is written, the admin API lists the label escaped and the answer holds no
        raw control byte.
        """
        running = await start_router(self)
        authority = TokenAuthority(TOKEN_SECRET.encode(), running.router.upstream.reactor)
        token, claims = authority.mint("\x1b]0;pwned\x07\x1b[2J\n" + "x  " * 3 + "\u202e", 3600)
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        await response.content()
        self.assertEqual(response.code, 200)
        await running.router.usage.flush()
        response = await running.http.get(running.url + "/api/tokens",
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        raw = await response.content()
        self.assertEqual(response.code, 200)
        self.assertFalse([b for b in raw if b < 0x20 or b >= 0x7f], raw)
        (record,) = json.loads(raw)["tokens"]
        self.assertEqual(record["id"], claims.id)
        self.assertEqual(record["label"],
                         "\\x1b]0;pwned\\x07\\x1b[2J\\x0a" + "x  " * 3 + "\\u202e")

    async def test_odd_row_listed(self) -> None:
        """
        A row whose dates are past year 9999 or absurd (written by an older version or by
        hand) no longer makes GET /api/tokens answer 500: the dates show clamped.
        """
        running = await start_router(self)
        issued = await running.issue("fine")
        odd = str(uuid.uuid4())
        with closing(sqlite3.connect(str(store_file(running)), timeout=15)) as conn:
            conn.execute("INSERT INTO tokens (id, label, created_at, expires_at, last_used_at)"
                         " VALUES (?, ?, ?, ?, ?)",
                         (odd, "odd\x1b[31m", 253402300800, 2**63 - 1, -5))
            conn.commit()
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual(code, 200, listed)
        records = {r["id"]: r for r in listed["tokens"]}
        self.assertEqual(set(records), {odd, issued["id"]})
        self.assertEqual((records[odd]["created_at"], records[odd]["expires_at"],
                          records[odd]["last_used_at"], records[odd]["label"]),
                         ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z",
                          "1970-01-01T00:00:00Z", "odd\\x1b[31m"))
        code, shown = await admin_call(running, "GET", "/api/tokens/" + odd)
        self.assertEqual((code, shown["expires_at"]), (200, "9999-12-31T23:59:59Z"))

    async def test_revoke_before_first_use(self) -> None:
        """
        DELETE of a well-formed id never seen here (a token minted elsewhere) records the
        revocation (200, label empty, dates unknown) and the token is refused from then
        on; a malformed id is still 404 and records nothing.
        """
        running = await start_router(self)
        authority = TokenAuthority(TOKEN_SECRET.encode(), running.router.upstream.reactor)
        token, claims = authority.mint("elsewhere", 3600)
        code, record = await admin_call(running, "DELETE", "/api/tokens/" + claims.id.upper())
        self.assertEqual(code, 200, record)
        self.assertEqual((record["id"], record["label"], record["revoked"], record["created_at"],
                          record["expires_at"]), (claims.id, "", True, None, None))
        self.assertIsNotNone(record["revoked_at"])
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        body = json.loads(await response.content())
        self.assertEqual((response.code, body["error"]["type"]), (403, "permission_error"))
        code, again = await admin_call(running, "DELETE", "/api/tokens/" + claims.id)
        self.assertEqual((code, again["revoked_at"]), (200, record["revoked_at"]))
        code, body = await admin_call(running, "DELETE", "/api/tokens/not-a-uuid")
        self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual([t["id"] for t in listed["tokens"]], [claims.id])

    async def test_guessing_slowed(self) -> None:
        """
        Ten wrong admin keys from one address within a minute: the next call from there
        is 429 rate_limit_error with retry-after, even with the right key, on the admin
        API and on /metrics alike.
        """
        running = await start_router(self)
        for _ in range(MAX_FAILURES):
            code, body = await admin_call(running, "GET", "/api/tokens", key="guess")
            self.assertEqual(code, 401)
        for key in ("guess", ADMIN_KEY):
            for method, data in (("GET", None), ("POST", b'{"label": "x"}')):
                # a POST with a body is refused when its headers arrive
                response = await running.http.request(
                    method, running.url + "/api/tokens", data=data,
                    headers={"Authorization": "Bearer " + key})
                body = json.loads(await response.content())
                self.assertEqual((response.code, body["error"]["type"]),
                                 (429, "rate_limit_error"), (method, key == ADMIN_KEY))
                retry = int(response.headers.getRawHeaders(b"retry-after")[0])
                self.assertTrue(1 <= retry <= 60, retry)
        response = await running.http.get(running.url + "/metrics",
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        await response.content()
        self.assertEqual(response.code, 429)

    async def test_401_names_no_file(self) -> None:
        """
        With the admin key in a file, an anonymous 401 does not say where that file is;
        the log does.
        """
        key_file = Path(self.mktemp())
        key_file.write_text(ADMIN_KEY + "\n")
        running = await start_router(self, admin_key=None, admin_key_file=str(key_file))
        code, body = await admin_call(running, "GET", "/api/tokens", key="nope")
        self.assertEqual((code, body["error"]["type"]), (401, "authentication_error"))
        self.assertNotIn(str(key_file), body["error"]["message"])
        self.assertNotIn(key_file.name, body["error"]["message"])
        self.assertIn(str(key_file), running.logs.text())
        code, _ = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual(code, 200)
