"""
The audit trail of the console and the accounts on a running router: console sign-ins
(refused ones included) and sign-outs, changes made in a console session named by its
handle, a change without the session's CSRF token, account disable, enable and reset,
and a login started and finished. No cookie, CSRF token, admin key or credential appears
in a row or a log line. The token actions and C{GET /api/audit}:
L{tests.integration.test_audit}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from ..harness import ADMIN_KEY, Running, admin_call, start_router
from .test_console_http import cookie_of, fetch


async def audit_rows(running: Running, query: str = "") -> list[dict[str, Any]]:
    """C{GET /api/audit}'s rows, oldest first."""
    code, body = await admin_call(running, "GET", "/api/audit" + query)
    assert code == 200, body
    rows: list[dict[str, Any]] = body["rows"]
    return rows[::-1]


class ConsoleAuditTests(TestCase):
    """The console's sign-ins, sign-outs and changes in the trail."""

    timeout = 30

    async def test_console_session(self) -> None:
        """
        Two wrong keys are two refused C{console.signin} rows (not C{admin.refused}); a
        sign-in, a token issued in the session, a change refused for a missing CSRF token
        and the sign-out are rows naming the session by its handle (the refusal as
        C{admin.refused}). Neither the cookie, the CSRF token nor the admin key is in
        the rows or the logs.
        """
        running = await start_router(self)
        for key in ("wrong-1", "wrong-2"):
            code, _, _ = await fetch(running, "POST", "/console/session", {"key": key})
            self.assertEqual(code, 401)
        code, headers, body = await fetch(running, "POST", "/console/session",
                                          {"key": ADMIN_KEY})
        self.assertEqual(code, 200, body)
        value, _ = cookie_of(headers)
        csrf = json.loads(body)["csrf_token"]
        cookie = {"cookie": "linkrouter_console=" + value}
        code, _, body = await fetch(running, "POST", "/console/api/tokens", {"label": "web"},
                                    {**cookie, "x-csrf-token": csrf})
        self.assertEqual(code, 200, body)
        issued = json.loads(body)
        code, _, _ = await fetch(running, "DELETE", "/console/api/tokens/" + issued["id"],
                                 headers=cookie)
        self.assertEqual(code, 403)
        code, _, _ = await fetch(running, "DELETE", "/console/session",
                                 headers={**cookie, "x-csrf-token": csrf})
        self.assertEqual(code, 200)

        rows = await audit_rows(running)
        self.assertEqual([(r["action"], r["outcome"], r["actor"]) for r in rows[:2]],
                         [("console.signin", "refused", "anonymous")] * 2)
        self.assertEqual(rows[0]["detail"], {"status": 401})
        signin, made, refused, signout = rows[2:]
        actor = signin["actor"]
        self.assertTrue(actor.startswith("console:") and len(actor) > len("console:"))
        self.assertEqual([(r["action"], r["actor"], r["address"]) for r in (signin, made,
                                                                            signout)],
                         [("console.signin", actor, "127.0.0.1"),
                          ("token.issued", actor, "127.0.0.1"),
                          ("console.signout", actor, "127.0.0.1")])
        self.assertEqual((made["target"], made["detail"]["label"]), (issued["id"], "web"))
        self.assertEqual((refused["action"], refused["outcome"], refused["target"],
                          refused["detail"]["status"]),
                         ("admin.refused", "refused", "/console/api/tokens/" + issued["id"],
                          403))
        seen = json.dumps(rows) + running.logs.text()
        for secret in (value, csrf, ADMIN_KEY, issued["token"], *running.secrets()):
            self.assertNotIn(secret, seen)


class FakeLogins:
    """
    The admin API's C{Logins} (L{linkrouter.adminaccounts.Logins}) answering as the
    built-in login does, without a token endpoint.
    """

    async def start(self, body: bytes) -> dict[str, Any]:
        return {"login_id": "login-1", "authorize_url": "https://claude.ai/oauth/authorize?"
                "code_challenge=x&state=secret-state", "expires_at": "2030-01-01T00:00:00Z"}

    async def finish(self, login_id: str, body: bytes) -> dict[str, Any]:
        return {"id": "managed-1", "name": "alice-max", "kind": "oauth", "status": "ok"}


class AccountAuditTests(TestCase):
    """Account controls and logins in the trail."""

    timeout = 30

    async def test_controls(self) -> None:
        """
        Disable, enable and reset are rows naming the account (its id, name and status
        after); a control of an unknown account is refused and not recorded.
        """
        running = await start_router(self)
        [account] = running.router.pool.accounts
        for action in ("disable", "enable", "reset"):
            code, body = await admin_call(running, "POST",
                                          f"/api/accounts/{account.id}/{action}")
            self.assertEqual(code, 200, body)
        code, _ = await admin_call(running, "POST", "/api/accounts/nobody/disable")
        self.assertEqual(code, 404)
        rows = await audit_rows(running, "?action=account")
        self.assertEqual([(r["action"], r["target"], r["actor"], r["detail"]["status"])
                          for r in rows],
                         [("account.disabled", account.id, "admin-key", "disabled"),
                          ("account.enabled", account.id, "admin-key", "ok"),
                          ("account.reset", account.id, "admin-key", "ok")])
        self.assertEqual({r["detail"]["name"] for r in rows}, {account.name})

    async def test_login(self) -> None:
        """
        A login started is a row with its id and the account's name (not the authorize
        URL or its state); a login finished is an C{account.added} row for the new account.
        """
        running = await start_router(self)
        # This router offers no login of its own: give its accounts admin one.
        object.__setattr__(running.router.accounts, "logins", FakeLogins())
        code, started = await admin_call(running, "POST", "/api/accounts/login",
                                         {"name": "alice-max"})
        self.assertEqual(code, 200, started)
        code, added = await admin_call(running, "POST", "/api/accounts/login/login-1",
                                       {"code": "the-code#secret-state"})
        self.assertEqual(code, 200, added)
        rows = await audit_rows(running, "?action=account")
        self.assertEqual([(r["action"], r["target"], r["detail"]) for r in rows], [
            ("account.login_started", "login-1", {"name": "alice-max"}),
            ("account.added", "managed-1",
             {"name": "alice-max", "kind": "oauth", "login_id": "login-1"})])
        seen = json.dumps(rows) + running.logs.text()
        self.assertNotIn("secret-state", seen)
        self.assertNotIn("the-code", seen)
