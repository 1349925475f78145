"""
A token store that misbehaves, for real: the router's PostgreSQL reached through a
loopback proxy the test freezes (connections open, nothing answered) or takes down
(connections cut), in front of the real server.

What must hold: admin calls answer 503 within the store timeout, stop is bounded, a
router starts (refusing tokens, unhealthy) while its store is down and serves once it
answers, revocations may be required to be fresh, and an outage is two log lines.
"""

from __future__ import annotations

import json
import signal
import stat
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.tokens import TokenAuthority

from .. import pg
from ..harness import ADMIN_KEY, TOKEN_SECRET, Running, start_router
from ..pgproxy import PausableProxy

MODEL = "claude-opus-5-5"
HELLO = json.dumps({"model": MODEL, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "say hi"}]}).encode()


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def bounded(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """C{d}, failing with TimeoutError after C{seconds} (so a hang fails the test)."""
    return d.addTimeout(seconds, reactor)


def mint(label: str = "outage") -> str:
    """A router token minted with the router's secret (no store needed)."""
    token, _ = TokenAuthority(TOKEN_SECRET.encode(), reactor).mint(label, 3600)
    return token


async def ask(running: Running, token: str) -> tuple[int, dict[str, Any]]:
    response = await bounded(running.http.post(
        running.url + "/v1/messages", data=HELLO,
        headers={"x-api-key": token, "content-type": "application/json"}), 10)
    return response.code, json.loads(await response.content())


async def health(running: Running) -> tuple[int, bytes]:
    response = await bounded(running.http.get(running.url + "/health"), 10)
    return response.code, await response.content()


async def admin_get(running: Running, path: str) -> tuple[int, float, dict[str, Any]]:
    started = time.monotonic()
    response = await bounded(running.http.get(
        running.url + path, headers={"Authorization": "Bearer " + ADMIN_KEY}), 8)
    body = json.loads(await response.content())
    return response.code, time.monotonic() - started, body


async def eventually(check: Any, seconds: float, step: float = 0.1) -> Any:
    """Wait until C{await check()} is true-ish (returning it), failing after C{seconds}."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await sleep(step)


class FrozenStoreTests(TestCase):
    """PostgreSQL that holds connections open and never answers."""

    timeout = 60

    async def test_admin_calls_answer_503_in_time(self) -> None:
        """
        With the store frozen, admin calls answer 503 C{api_error} naming the timeout
        within about the store timeout (not 7-10 s, not never), tokens already known keep
        working, and once the store answers again admin calls work again.
        """
        proxy = PausableProxy(self)
        running = await start_router(self, database=proxy.url(pg.fresh_database(self)),
                                     store_timeout="1")
        self.addCleanup(proxy.up)  # before the router stops (cleanups run in reverse)
        issued = await running.issue("frozen")
        proxy.freeze()
        code, took, body = await admin_get(running, "/api/tokens")
        self.assertEqual(code, 503, body)
        self.assertEqual(body["error"]["type"], "api_error")
        self.assertIn("did not answer within 1 s", body["error"]["message"])
        self.assertLess(took, 3.0)
        code, _ = await ask(running, issued["token"])
        self.assertEqual(code, 200)
        proxy.up()
        code, _, body = await admin_get(running, "/api/tokens/" + issued["id"])
        self.assertEqual((code, body["label"]), (200, "frozen"))

    async def test_stop_is_bounded(self) -> None:
        """
        Stopping while the store is frozen, with a poll and a usage write stuck in it,
        finishes within --shutdown-grace + 5 s.
        """
        proxy = PausableProxy(self)
        running = await start_router(self, database=proxy.url(pg.fresh_database(self)),
                                     store_timeout="3", shutdown_grace="1")
        self.addCleanup(proxy.up)
        issued = await running.issue("frozen")
        proxy.freeze()
        code, _ = await ask(running, issued["token"])
        self.assertEqual(code, 200)
        await sleep(1.5)  # the pollers are now waiting on the frozen store
        started = time.monotonic()
        await bounded(running.service.stopService(), 10)
        self.assertLess(time.monotonic() - started, 1 + 5)


class DownAtStartTests(TestCase):
    """A router whose PostgreSQL is down when it starts."""

    timeout = 60

    async def test_starts_refusing_then_serves(self) -> None:
        """
        The router starts; /health answers 503 with a reason and a valid token gets 503
        "revocations cannot be checked" (never let through unchecked); once PostgreSQL
        answers, the store is migrated, /health is C{200 ok} and the token is served.
        The outage is logged once, and its end once.
        """
        proxy = PausableProxy(self, state="down")
        running = await start_router(self, database=proxy.url(pg.fresh_database(self)),
                                     store_timeout="1")
        token = mint()
        code, text = await health(running)
        self.assertEqual(code, 503)
        self.assertIn(b"token store", text)
        code, body = await ask(running, token)
        self.assertEqual(code, 503, body)
        self.assertIn("Revocations cannot be checked", body["error"]["message"])
        self.assertEqual(running.upstream.received, [])
        await sleep(2.5)
        proxy.up()

        async def healthy() -> bool:
            return await health(running) == (200, b"ok")

        self.assertTrue(await eventually(healthy, 5))
        code, body = await ask(running, token)
        self.assertEqual(code, 200, body)
        text = running.logs.text()
        self.assertEqual(text.count("The token store is not answering"), 1, text)
        self.assertEqual(text.count("The token store answers again"), 1, text)


class StalenessTests(TestCase):
    """--revocation-max-staleness: how old a revocation view may be and still be trusted."""

    timeout = 60

    async def test_refused_once_stale(self) -> None:
        """
        With --revocation-max-staleness 2, a token is served while the store answers and
        for about 2 s of an outage, then refused (503) and /health is 503; the age is a
        Prometheus gauge. When the store answers again the token is served.
        """
        proxy = PausableProxy(self)
        running = await start_router(self, database=proxy.url(pg.fresh_database(self)),
                                     store_timeout="1", revocation_max_staleness="2")
        self.addCleanup(proxy.up)
        issued = await running.issue("stale")
        code, _ = await ask(running, issued["token"])
        self.assertEqual(code, 200)
        proxy.down()
        code, _ = await ask(running, issued["token"])
        self.assertEqual(code, 200)
        await sleep(3.5)
        code, body = await ask(running, issued["token"])
        self.assertEqual(code, 503, body)
        self.assertIn("--revocation-max-staleness", body["error"]["message"])
        self.assertEqual((await health(running))[0], 503)
        metrics = await bounded(running.http.get(
            running.url + "/metrics", headers={"Authorization": "Bearer " + ADMIN_KEY}), 5)
        text = (await metrics.content()).decode()
        [age] = [float(line.split()[1]) for line in text.splitlines()
                 if line.startswith("linkrouter_revocations_age_seconds ")]
        self.assertGreater(age, 2.0)
        proxy.up()

        async def served() -> bool:
            return (await ask(running, issued["token"]))[0] == 200

        self.assertTrue(await eventually(served, 5))

    async def test_default_serves_on_last_known(self) -> None:
        """Without the option, an outage does not stop tokens known to be good."""
        proxy = PausableProxy(self)
        running = await start_router(self, database=proxy.url(pg.fresh_database(self)),
                                     store_timeout="1")
        self.addCleanup(proxy.up)
        issued = await running.issue("kept")
        proxy.down()
        await sleep(2.5)
        code, _ = await ask(running, issued["token"])
        self.assertEqual(code, 200)
        self.assertEqual((await health(running)), (200, b"ok"))


def _post_many(port: int, token: str, count: int) -> list[int]:
    """C{count} Messages requests on one keep-alive connection; their statuses."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    try:
        for _ in range(count):
            conn.request("POST", "/v1/messages", body=HELLO,
                         headers={"x-api-key": token, "content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    return statuses


class StopDuringOutageTests(TestCase):
    """The usage counted during an outage, when the daemon is stopped before it ends."""

    timeout = 120

    async def test_sigterm_journals_usage_and_next_start_writes_it(self) -> None:
        """
        50 requests are written while PostgreSQL answers, 100 more are served while it
        is frozen; SIGTERM exits (status 0) within --shutdown-grace + 5 s and leaves the
        100 in the journal (mode 0600). The next start, with PostgreSQL back, writes them
        and removes the journal: the store counts all 150, once.
        """
        from ..harness import in_thread, start_upstream
        from .test_daemon import Daemon, ports_of, token_for

        _, upstream = await start_upstream(self)
        url = pg.fresh_database(self)
        proxy = PausableProxy(self)
        self.addCleanup(proxy.up)
        state = Path(self.mktemp()).resolve()
        args = ("--database", proxy.url(url), "--data-dir", str(state),
                "--shutdown-grace", "1", "--store-timeout", "2")
        first = Daemon(self, upstream, *args)
        [port] = ports_of(await first.expect("READY=1"))
        token = await in_thread(token_for, port)
        self.assertEqual(await in_thread(_post_many, port, token, 50), [200] * 50)

        def counted() -> int:
            rows = pg.connect(self, url).execute(
                "SELECT COALESCE(SUM(request_count), 0) FROM tokens").fetchall()
            return int(rows[0][0])

        async def count_is(n: int) -> bool:
            return await in_thread(counted) == n

        self.assertTrue(await eventually(lambda: count_is(50), 5))
        proxy.freeze()
        self.assertEqual(await in_thread(_post_many, port, token, 100), [200] * 100)
        await sleep(1.5)  # a usage write is now stuck in the frozen store
        started = time.monotonic()
        first.signal(signal.SIGTERM)
        self.assertEqual(await first.exit_status(timeout=15), 0)
        self.assertLess(time.monotonic() - started, 1 + 5)
        journal = state / "usage-journal.jsonl"
        self.assertEqual(stat.S_IMODE(journal.stat().st_mode), 0o600)
        self.assertEqual(sum(delta["requests"] for line in journal.read_text().splitlines()
                             for delta in json.loads(line)["usage"]), 100)
        proxy.up()
        await in_thread(lambda: None)
        self.assertEqual(await in_thread(counted), 50)

        second = Daemon(self, upstream, *args)
        await second.expect("READY=1")
        self.assertTrue(await eventually(lambda: count_is(150), 10))
        self.assertTrue(await eventually(lambda: _gone(journal), 5))
        second.signal(signal.SIGTERM)
        self.assertEqual(await second.exit_status(timeout=15), 0)
        self.assertEqual(await in_thread(counted), 150)


async def _gone(path: Path) -> bool:
    return not path.exists()
