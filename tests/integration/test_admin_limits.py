"""
Per-token limits through the admin API over loopback: POST with limits, PATCH to replace,
clear and relabel, the 400s that name the field, 404, GET showing limits, PATCH behind the
admin key.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from twisted.trial.unittest import TestCase

from ..harness import ADMIN_KEY, admin_call, start_router
from .test_admin import store_file

LIMITS = {"rpm": 60, "concurrency": 4, "budget_usd": {"5h": 2.5, "1d": 25},
          "models": ["claude-sonnet-*"]}
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class AdminLimitsTests(TestCase):
    """Limits in the admin API of a running router."""

    timeout = 30

    async def test_issue_with_limits(self) -> None:
        """POST /api/tokens with limits stores them; GET (list and one) shows them."""
        running = await start_router(self)
        code, issued = await admin_call(running, "POST", "/api/tokens",
                                       {"label": "capped", "limits": LIMITS})
        self.assertEqual((code, issued["limits"]), (200, LIMITS))
        code, plain = await admin_call(running, "POST", "/api/tokens", {"label": "free"})
        self.assertEqual((code, plain["limits"]), (200, None))
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual({t["label"]: t["limits"] for t in listed["tokens"]},
                         {"capped": LIMITS, "free": None})
        code, shown = await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        self.assertEqual((code, shown["limits"]), (200, LIMITS))

    async def test_issue_bad_limits(self) -> None:
        """A bad limits value is 400 naming the field, and no token is stored."""
        running = await start_router(self)
        cases: list[tuple[Any, str]] = [
            ({"rpm": 0}, "limits.rpm"),
            ({"budget_usd": {"2d": 5}}, "limits.budget_usd.2d"),
            ({"models": [""]}, "limits.models[0]"),
            ({"wpm": 1}, "limits.wpm"),
            ("lots", "limits"),
        ]
        for limits, field in cases:
            code, body = await admin_call(running, "POST", "/api/tokens",
                                         {"label": "x", "limits": limits})
            self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"))
            self.assertTrue(body["error"]["message"].startswith(field + ":"), body)
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual(listed["tokens"], [])

    async def test_patch(self) -> None:
        """PATCH replaces limits, clears them with null, and changes the label alone."""
        running = await start_router(self)
        code, issued = await admin_call(running, "POST", "/api/tokens",
                                       {"label": "a", "limits": LIMITS})
        path = "/api/tokens/" + issued["id"]
        code, patched = await admin_call(running, "PATCH", path, {"limits": {"rpm": 5}})
        self.assertEqual((code, patched["limits"], patched["label"]), (200, {"rpm": 5}, "a"))
        code, patched = await admin_call(running, "PATCH", path, {"label": "b"})
        self.assertEqual((code, patched["limits"], patched["label"]), (200, {"rpm": 5}, "b"))
        code, patched = await admin_call(running, "PATCH", path,
                                        {"label": "c", "limits": None})
        self.assertEqual((code, patched["limits"], patched["label"]), (200, None, "c"))
        code, shown = await admin_call(running, "GET", path)
        self.assertEqual((shown["limits"], shown["label"], shown["id"]),
                         (None, "c", issued["id"]))

    async def test_patch_refusals(self) -> None:
        """
        Unknown fields, bad limits and bad labels are 400 naming what is wrong and change
        nothing; an unknown id is 404; PATCH without the admin key is 401.
        """
        running = await start_router(self)
        code, issued = await admin_call(running, "POST", "/api/tokens",
                                       {"label": "a", "limits": LIMITS})
        path = "/api/tokens/" + issued["id"]
        refusals: list[tuple[Any, str]] = [
            ({"ttl_hours": 3}, "ttl_hours"),
            ({"label": "b", "limits": {"concurrency": -1}}, "limits.concurrency"),
            ({"label": 5}, "label"),
            ({"label": "x" * 10_000, "limits": None}, "label"),
            ([1], "JSON object"),
        ]
        for body, named in refusals:
            code, answer = await admin_call(running, "PATCH", path, body)
            self.assertEqual((code, answer["error"]["type"]), (400, "invalid_request_error"))
            self.assertIn(named, answer["error"]["message"])
        code, answer = await admin_call(running, "PATCH", path, raw=b"{oops")
        self.assertEqual(code, 400)
        code, shown = await admin_call(running, "GET", path)
        self.assertEqual((shown["label"], shown["limits"]), ("a", LIMITS))

        code, answer = await admin_call(running, "PATCH", "/api/tokens/" + UNKNOWN_ID,
                                       {"limits": None})
        self.assertEqual((code, answer["error"]["type"]), (404, "not_found_error"))
        code, answer = await admin_call(running, "PATCH", "/api/tokens/not-a-uuid", {})
        self.assertEqual(code, 404)
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual([t["id"] for t in listed["tokens"]], [issued["id"]])

        for key in (None, "wrong"):
            code, answer = await admin_call(running, "PATCH", path, {"limits": None}, key=key)
            self.assertEqual((code, answer["error"]["type"]), (401, "authentication_error"))
        code, shown = await admin_call(running, "GET", path)
        self.assertEqual(shown["limits"], LIMITS)

    async def test_allow_lists_patch(self) -> None:
        """A wrong method on a token is 405 whose Allow lists PATCH; not on the list."""
        running = await start_router(self)
        issued = await running.issue("a")
        for method, path, allowed in (("PUT", "/api/tokens/" + issued["id"],
                                       "GET, PATCH, DELETE"),
                                      ("PATCH", "/api/tokens", "GET, POST")):
            response = await running.http.request(
                method, running.url + path,
                headers={"Authorization": "Bearer " + ADMIN_KEY}, data=b"{}")
            await response.content()
            self.assertEqual(response.code, 405)
            self.assertEqual(response.headers.getRawHeaders("allow"), [allowed])

    async def test_unreadable_limits_listed(self) -> None:
        """A row whose limits text is not valid limits is listed with limits null."""
        running = await start_router(self)
        issued = await running.issue("odd")
        with closing(sqlite3.connect(str(store_file(running)), timeout=15)) as conn:
            conn.execute("UPDATE tokens SET limits = ? WHERE id = ?",
                         ('{"rpm": "many"', issued["id"]))
            conn.commit()
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual((code, [t["limits"] for t in listed["tokens"]]), (200, [None]))
