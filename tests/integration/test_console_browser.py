"""
The console in a real Chromium against a running router: sign in, issue a token with
limits and read it from the page, see it in the list, edit its limits, revoke it; sign
out; a usage chart after traffic through the router; the console behind a path prefix;
a thousand tokens listed in well under a second; accounts' utilization and controls; an
account added through the login flow against a fake token endpoint.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from linkrouter.records import TokenRecord
from linkrouter.testing import FakeTokenEndpoint, Recorded

from ..browser import open_browser, screenshots_on_failure, sign_in
from ..harness import ADMIN_KEY, Running, admin_call, start_router
from .test_refresh import token_endpoint

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 8,
           "messages": [{"role": "user", "content": "hi"}]}


def _issue_with_limits(page: Any) -> dict[str, str]:
    """Issue "alice" with limits through the form; what the page shows."""
    page.fill("#issue-label", "alice")
    page.select_option("#issue-ttl", "168")
    form = page.locator("form.issue")
    form.locator("input[name=rpm]").fill("30")
    form.locator("input[name=concurrency]").fill("2")
    form.locator("input[name=budget-1d]").fill("5")
    form.locator("input[name=models]").fill("claude-sonnet-*, claude-haiku-*")
    form.locator("button[type=submit]").click()
    shown = page.locator(".once")
    expect(shown).to_be_visible()
    page.click("#copy-token")
    expect(shown.locator("[role=status]")).to_have_text("Copied.")
    row = page.locator("table.tokens tbody tr", has_text="alice")
    expect(row).to_have_count(1)
    return {
        "token": page.input_value("#issued-token"),
        "clipboard": page.evaluate("navigator.clipboard.readText()"),
        "id": shown.get_attribute("data-token-id") or "",
        "limits": row.locator("td.limits").inner_text(),
        "status": row.get_attribute("data-status") or "",
        "row_id": row.get_attribute("data-token-id") or "",
    }


def _revoke(page: Any, token_id: str) -> str:
    row = page.locator(f"tr[data-token-id='{token_id}']")
    row.locator("button.revoke").click()
    dialog = page.locator("dialog.modal")
    expect(dialog).to_contain_text("Revoke this token?")
    dialog.locator("button[type=submit]").click()
    expect(row).to_have_attribute("data-status", "revoked")
    expect(row.locator("button.revoke")).to_have_count(0)
    return str(row.locator(".badge").inner_text())


def _edit_limits(page: Any, token_id: str) -> None:
    page.locator(f"tr[data-token-id='{token_id}'] button.edit").click()
    dialog = page.locator("dialog.modal")
    expect(dialog.locator("input[name=rpm]")).to_have_value("30")
    dialog.locator("input[name=rpm]").fill("90")
    dialog.locator("input[name=budget-1d]").fill("")
    dialog.locator("input[name=budget-7d]").fill("12.5")
    dialog.locator("button[type=submit]").click()
    expect(dialog).to_have_count(0)
    expect(page.locator(f"tr[data-token-id='{token_id}'] td.limits")).to_contain_text("90 rpm")


def _sign_out(page: Any, base: str) -> bool:
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    page.goto(f"{base}/console/#tokens")
    expect(page.locator("#sign-in")).to_be_visible()
    return bool(page.locator("#nav").is_hidden())


async def _v1_status(running: Running, token: str) -> int:
    response = await running.http.post(
        running.url + "/v1/messages", data=json.dumps(MESSAGE).encode(),
        headers={"x-api-key": token, "content-type": "application/json"})
    await response.content()
    return int(response.code)


class ConsoleTokensTests(TestCase):
    """The tokens page, end to end in Chromium."""

    timeout = 90

    @screenshots_on_failure
    async def test_issue_edit_revoke(self) -> None:
        """
        Signed in with the admin key (a wrong one is refused on the page), a token issued
        with limits is shown once, works against the router, is listed with its limits,
        has its limits edited, and once revoked is refused by the router; signing out
        returns to the sign-in form, also after a reload.
        """
        running = await start_router(self)
        browser = await open_browser(self, running.url)

        def wrong_key(page: Any) -> str:
            page.goto(f"{running.url}/console/")
            page.fill("#sign-in-key", "not-the-key")
            page.click("#sign-in-form button[type=submit]")
            expect(page.locator("#sign-in-error")).not_to_be_empty()
            return str(page.locator("#sign-in-error").inner_text())

        refused = await browser.run(wrong_key)
        self.assertIn("admin key", refused)
        await browser.run(sign_in, running.url, ADMIN_KEY)
        issued = await browser.run(_issue_with_limits)
        self.assertTrue(issued["token"].startswith("la_sk_"), issued)
        self.assertEqual(issued["clipboard"], issued["token"])
        self.assertEqual((issued["row_id"], issued["status"]), (issued["id"], "active"))
        self.assertIn("30 rpm", issued["limits"])
        self.assertIn("$5.00/1d", issued["limits"])
        self.assertIn("claude-sonnet-*", issued["limits"])
        code, record = await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        self.assertEqual(record["limits"], {"rpm": 30, "concurrency": 2,
                                            "budget_usd": {"1d": 5},
                                            "models": ["claude-sonnet-*", "claude-haiku-*"]})
        self.assertEqual(await _v1_status(running, issued["token"]), 200)

        await browser.run(_edit_limits, issued["id"])
        code, record = await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        self.assertEqual(record["limits"]["rpm"], 90)
        self.assertEqual(record["limits"]["budget_usd"], {"7d": 12.5})

        badge = await browser.run(_revoke, issued["id"])
        self.assertEqual(badge, "revoked")
        code, record = await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        self.assertTrue(record["revoked"])
        self.assertEqual(await _v1_status(running, issued["token"]), 403)
        self.assertTrue(await browser.run(_sign_out, running.url))

    @screenshots_on_failure
    async def test_thousand_tokens(self) -> None:
        """
        With 1,000 tokens the tokens page is fetched, drawn and painted in well under a
        second (the page's own mark, from the start of the navigation); the newest 200
        are drawn first, the rest on "Show more", and the filter finds any of them.
        """
        running = await start_router(self)
        now = int(time.time())
        for i in range(1000):
            await running.router.store.insert(TokenRecord(
                id=f"00000000-0000-4000-8000-{i:012d}", label=f"person-{i}",
                created_at=now - i, expires_at=now + 86400))
        browser = await open_browser(self, running.url)
        await browser.run(sign_in, running.url, ADMIN_KEY)

        def reload(page: Any) -> float:
            """Milliseconds from a reload's start until the list has been painted."""
            page.reload()
            # (wait_for_function would evaluate a string: the page's CSP forbids that)
            for _ in range(500):
                painted = page.evaluate("performance.getEntriesByName("
                                        "'linkrouter:tokens-painted').map(e => e.startTime)")
                if painted:
                    return float(painted[0])
                time.sleep(0.02)
            raise AssertionError("the tokens list was never painted")

        def all_of_them(page: Any) -> dict[str, Any]:
            rows = page.locator("table.tokens tbody tr")
            expect(rows).to_have_count(200)
            first = rows.first.locator("td.label").inner_text()
            count = page.inner_text("#token-count")
            for shown in (400, 600, 800, 1000):
                page.click("#show-more")
                expect(rows).to_have_count(shown)
            expect(page.locator("#show-more")).to_have_count(0)
            page.fill("input[type=search]", "person-999")
            expect(rows).to_have_count(1)
            return {"first": first, "count": count, "found": rows.first.inner_text()}

        took = min([await browser.run(reload) for _ in range(3)])
        print(f"1000 tokens: the list painted {took:.0f} ms after the navigation started")
        self.assertLess(took, 800)
        seen = await browser.run(all_of_them)
        self.assertEqual(seen["first"], "person-0")
        self.assertEqual(seen["count"], "1000 of 1000 tokens")
        self.assertIn("person-999", seen["found"])


class ConsoleUsageTests(TestCase):
    """The usage page draws what went through the router."""

    timeout = 90

    @screenshots_on_failure
    async def test_chart_after_traffic(self) -> None:
        """
        After requests through the router with two tokens, the usage page shows the
        spend, a bar in the spend-per-day chart, and both people in the per-person chart
        and its table.
        """
        running = await start_router(self)
        for label, times in (("alice", 2), ("bob", 1)):
            issued = await running.issue(label)
            for _ in range(times):
                self.assertEqual(await _v1_status(running, issued["token"]), 200)
        await running.router.usage.flush()
        code, report = await admin_call(running, "GET", "/api/usage")
        self.assertGreater(report["totals"]["cost_usd"], 0)
        browser = await open_browser(self, running.url)
        await browser.run(sign_in, running.url, ADMIN_KEY)

        def usage(page: Any) -> dict[str, Any]:
            page.click("#nav a[data-page=usage]")
            day = page.locator("figure[data-chart=spend-per-day]")
            expect(day.locator("svg rect.bar")).to_have_count(1)
            person = page.locator("figure[data-chart=per-person]")
            expect(person.locator("svg rect.bar")).to_have_count(2)
            person.locator("summary").click()
            seen = {
                "total": page.inner_text("#total-spend"),
                "axis": day.locator("svg text.tick").all_text_contents(),
                "people": person.locator("tbody tr td:first-child").all_inner_texts(),
                "caption": day.locator("figcaption").inner_text(),
                "models": page.locator("figure[data-chart=per-model] svg text.name")
                .all_text_contents(),
            }
            page.select_option("#usage-window", "24h")
            hourly = page.locator("figure[data-chart=spend-per-hour]")
            expect(hourly.locator("svg rect.bar")).to_have_count(1)
            return {**seen, "hours": hourly.locator("tbody tr").count()}

        seen = await browser.run(usage)
        self.assertRegex(seen["total"], r"^\$\d")
        self.assertNotEqual(seen["total"], "$0.00")
        self.assertIn(seen["total"], seen["caption"])
        self.assertEqual(sorted(seen["people"]), ["alice", "bob"])
        self.assertIn("$0", seen["axis"])
        self.assertEqual(len(seen["models"]), 1)
        self.assertEqual(seen["hours"], 25)  # the hour now and the 24 before it


class ConsolePrefixTests(TestCase):
    """The console behind a reverse proxy that adds a path prefix."""

    timeout = 60

    @screenshots_on_failure
    async def test_behind_prefix(self) -> None:
        """
        Through a proxy serving the router under /team/router/, the page loads its
        assets, signs in (the cookie scoped to the prefixed mount), and lists tokens.
        """
        running = await start_router(self, admin_listen=True)
        await running.issue("carol")
        assert running.admin_url is not None
        port = int(running.admin_url.rsplit(":", 1)[1])
        root = Resource()
        team = Resource()
        root.putChild(b"team", team)
        team.putChild(b"router", ReverseProxyResource("127.0.0.1", port, b""))
        site = Site(root)
        site.noisy = False
        listening = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        base = f"http://127.0.0.1:{listening.getHost().port}/team/router"
        browser = await open_browser(self, base)

        def prefixed(page: Any) -> dict[str, Any]:
            sign_in(page, base, ADMIN_KEY)
            expect(page.locator("table.tokens tbody tr", has_text="carol")).to_have_count(1)
            cookies = page.context.cookies()
            return {"url": page.url, "cookies": [(c["name"], c["path"]) for c in cookies]}

        seen = await browser.run(prefixed)
        self.assertTrue(seen["url"].startswith(base + "/console/"), seen)
        self.assertEqual(seen["cookies"], [("linkrouter_console", "/team/router/console")])


class ConsoleAccountsTests(TestCase):
    """The accounts page: utilization as reported, and the controls."""

    timeout = 90

    @screenshots_on_failure
    async def test_utilization_and_controls(self) -> None:
        """
        The account shows the 5 h and 7 d utilization the upstream reported, with the 5 h
        reset; disabling it (after a confirmation) and enabling it again hold on the
        router, and a reset is acknowledged.
        """
        running = await start_router(self)
        reset = int(time.time()) // 60 * 60 + 3 * 3600
        running.upstream.respond = lambda seen: Recorded(200, (
            ("content-type", "application/json"),
            ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
            ("anthropic-ratelimit-unified-5h-reset", str(reset)),
            ("anthropic-ratelimit-unified-7d-utilization", "0.07")), b'{"data": []}')
        token = (await running.issue())["token"]
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        await response.content()
        code, listed = await admin_call(running, "GET", "/api/accounts")
        (account,) = listed["accounts"]
        browser = await open_browser(self, running.url)
        await browser.run(sign_in, running.url, ADMIN_KEY)

        def shown(page: Any) -> dict[str, Any]:
            page.click("#nav a[data-page=accounts]")
            card = page.locator(f"article.account[data-account-id='{account['id']}']")
            expect(card).to_have_attribute("data-status", "ok")
            five, seven = card.locator("[data-window='5h']"), card.locator("[data-window='7d']")
            return {"5h": five.get_attribute("data-percent"), "5h text": five.inner_text(),
                    "7d": seven.get_attribute("data-percent"), "name": card.locator("h2")
                    .inner_text()}

        def control(page: Any, action: str, status: str, said: str) -> None:
            card = page.locator(f"article.account[data-account-id='{account['id']}']")
            card.locator(f"button.{action}").click()
            if action == "disable":
                page.locator("dialog.modal button[type=submit]").click()
            expect(card).to_have_attribute("data-status", status)
            expect(page.locator("#toast")).to_have_text(f"{said} {account['name']}.")

        seen = await browser.run(shown)
        self.assertEqual((seen["5h"], seen["7d"]), ("42", "7"))
        self.assertIn("42%", seen["5h text"])
        self.assertIn("resets", seen["5h text"])
        self.assertEqual(seen["name"], account["name"])
        await browser.run(control, "disable", "disabled", "Disabled")
        code, listed = await admin_call(running, "GET", "/api/accounts/" + account["id"])
        self.assertEqual(listed["status"], "disabled")
        await browser.run(control, "enable", "ok", "Enabled")
        await browser.run(control, "reset", "ok", "Reset")
        code, listed = await admin_call(running, "GET", "/api/accounts/" + account["id"])
        self.assertEqual(listed["status"], "ok")


class AuthorizePage(Resource):
    """
    The authorize page of a fake Claude login: what the operator sees after signing in,
    the C{code#state} to paste, minted by the fake token endpoint for this URL.
    """

    isLeaf = True

    def __init__(self, tokens: FakeTokenEndpoint, base: str) -> None:
        super().__init__()
        self._tokens = tokens
        self._base = base

    def render_GET(self, request: Any) -> bytes:
        paste = self._tokens.authorize(self._base + request.uri.decode())
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (b"<!doctype html><title>Authorized</title><p>Paste this code:</p>"
                b"<code id='code'>" + paste.encode() + b"</code>")


class ConsoleLoginTests(TestCase):
    """Adding an account through the login flow, from the accounts page."""

    timeout = 90

    @screenshots_on_failure
    async def test_login_flow(self) -> None:
        """
        On the accounts page a new account is named, its authorize page opened from the
        console, the code it shows pasted back; the fake token endpoint trades it, and
        the account is listed and serves requests.
        """
        tokens = FakeTokenEndpoint(prefix="sk-ant-oat01-console-" + secrets.token_hex(8))
        token_url = await token_endpoint(self, tokens)
        site = Site(Resource())
        site.noisy = False
        listening = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        page_base = f"http://127.0.0.1:{listening.getHost().port}"
        site.resource.putChild(b"authorize", AuthorizePage(tokens, page_base))
        empty = Path(self.mktemp()).resolve()
        empty.mkdir(parents=True)
        running = await start_router(self, claude_code_homes=[str(empty)],
                                     oauth_token_url=token_url,
                                     oauth_authorize_url=page_base + "/authorize")
        browser = await open_browser(self, running.url)
        await browser.run(sign_in, running.url, ADMIN_KEY)

        def log_in(page: Any) -> dict[str, Any]:
            page.click("#nav a[data-page=accounts]")
            page.fill("#login-name", "team-max")
            page.click("form.login-start button[type=submit]")
            link = page.locator("#authorize-url")
            expect(link).to_be_visible()
            with page.context.expect_page() as opened:
                link.click()
            authorize = opened.value
            authorize.wait_for_load_state()
            paste = authorize.inner_text("#code")
            authorize.close()
            page.fill("#login-code", paste)
            page.click("form.login-finish button[type=submit]")
            expect(page.locator("#toast")).to_have_text("Added team-max.")
            card = page.locator("article.account", has_text="team-max")
            expect(card).to_have_attribute("data-status", "ok")
            return {"id": card.get_attribute("data-account-id"),
                    "form back": page.locator("form.login-start").is_visible()}

        seen = await browser.run(log_in)
        self.assertTrue(seen["form back"])
        code, listed = await admin_call(running, "GET", "/api/accounts")
        (added,) = [a for a in listed["accounts"] if a["name"] == "team-max"]
        self.assertEqual((added["id"], added["kind"], added["status"]),
                         (seen["id"], "oauth", "ok"))
        self.assertEqual(len(tokens.received), 1)
        self.assertEqual(tokens.received[0]["grant_type"], "authorization_code")
        issued = await running.issue()
        deadline = time.monotonic() + 5  # a new account serves within 5 s
        while await _v1_status(running, issued["token"]) != 200:
            self.assertLess(time.monotonic(), deadline, "the new account does not serve")
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(running.upstream.received[-1].header(b"authorization"),
                         f"Bearer {tokens.prefix}-access-1".encode())


class ConsoleAuditTests(TestCase):
    """The audit page shows who changed what, from the console and with the key."""

    timeout = 90

    @screenshots_on_failure
    async def test_audit_rows(self) -> None:
        """
        A refused sign-in, a sign-in, a token issued on the console and one revoked with
        the admin key are rows of the audit page, newest first, each with who made it
        (the session's actor, the admin key, anonymous) and from where; no token string
        appears on the page; the family filter keeps only the token rows.
        """
        running = await start_router(self)
        browser = await open_browser(self, running.url)

        def refused_then_signed_in(page: Any) -> None:
            page.goto(f"{running.url}/console/")
            page.fill("#sign-in-key", "not-the-key")
            page.click("#sign-in-form button[type=submit]")
            expect(page.locator("#sign-in-error")).not_to_be_empty()
            sign_in(page, running.url, ADMIN_KEY)
            page.fill("#issue-label", "erin")
            page.locator("form.issue button[type=submit]").click()
            expect(page.locator(".once")).to_be_visible()

        await browser.run(refused_then_signed_in)
        issued = await running.issue("frank")
        code, _ = await admin_call(running, "DELETE", "/api/tokens/" + issued["id"])
        self.assertEqual(code, 200)

        def audit(page: Any) -> dict[str, Any]:
            page.click("#nav a[data-page=audit]")
            rows = page.locator("table.audit tbody tr")
            expect(rows.first).to_be_visible()
            seen = [(row.get_attribute("data-action"), row.get_attribute("data-outcome"),
                     row.locator("td").nth(1).inner_text(), row.locator("td").nth(2).inner_text())
                    for row in rows.all()]
            text = page.inner_text("main")
            page.select_option("#audit-action", "token")
            expect(rows.first).to_have_attribute("data-action", re.compile(r"^token\."))
            expect(rows).to_have_count(3)
            return {"rows": seen, "text": text}

        seen = await browser.run(audit)
        rows = seen["rows"]
        self.assertEqual([r[0] for r in rows[:5]], [
            "token.revoked", "token.issued", "token.issued", "console.signin",
            "console.signin"])
        revoked, frank, erin, signed_in, refused = rows[:5]
        self.assertEqual((revoked[2], frank[2]), ("admin-key", "admin-key"))
        self.assertTrue(erin[2].startswith("console:"), erin)
        self.assertEqual(signed_in[1:3], ("ok", erin[2]))
        self.assertEqual(refused[1:3], ("refused", "anonymous"))
        self.assertEqual({r[3] for r in rows[:5]}, {"127.0.0.1"})
        self.assertNotIn("la_sk_", seen["text"])
        self.assertNotIn(ADMIN_KEY, seen["text"])
