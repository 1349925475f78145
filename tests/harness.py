"""
Run a whole router on loopback for integration tests: the daemon's own service (built by
C{makeService} from options, listening on port 0) in front of the fake Anthropic API on
another loopback port, with every log line captured so tests can search it for secrets.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from linkrouter.config import resolve
from linkrouter.service import RouterService, makeService
from linkrouter.testing import FakeAnthropic, Recorded, load_answers

FIXTURES = Path(__file__).parent / "fixtures"
RESPONSES = FIXTURES / "responses"

#: Values that must never appear in a log line, an error body or an upstream request.
#: Random per run, so a test cannot pass by accident of a hard-coded string.
OAUTH_TOKEN = "sk-ant-oat01-upstream-" + secrets.token_hex(12)
REFRESH_TOKEN = "sk-ant-ort01-refresh-" + secrets.token_hex(12)
TOKEN_SECRET = "token-secret-" + secrets.token_hex(16)
ADMIN_KEY = "la_admin_test-" + secrets.token_hex(16)


def write_claude_home(directory: Path, token: str = OAUTH_TOKEN,
                      expires_in: float = 8 * 3600) -> Path:
    """A Claude Code home with a login in Claude Code's own file format."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".credentials.json"
    path.write_text(json.dumps({
        "claudeAiOauth": {
            "accessToken": token,
            "refreshToken": REFRESH_TOKEN,
            "expiresAt": int((time.time() + expires_in) * 1000),
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
        }
    }))
    path.chmod(0o600)
    return path


@define
class LogCapture:
    """Every log event while installed, formatted, with failures' tracebacks."""

    lines: list[str] = field(factory=list)

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        self.lines.append(text)

    def text(self) -> str:
        return "\n".join(self.lines)


def capture_logs(case: TestCase) -> LogCapture:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    case.addCleanup(globalLogPublisher.removeObserver, capture)
    return capture


@define
class Running:
    """A started router and its fake upstream."""

    service: RouterService
    url: str
    upstream: FakeAnthropic
    upstream_url: str
    home: Path
    logs: LogCapture
    admin_url: str | None = None

    @property
    def router(self) -> Any:
        return self.service.router

    @property
    def http(self) -> HTTPClient:
        """A treq client that keeps no connection open after a response."""
        return http_client()

    async def issue(self, label: str = "test", ttl_hours: int = 24) -> dict[str, Any]:
        """Issue a token through the admin API, over the network."""
        response = await self.http.post(
            (self.admin_url or self.url) + "/api/tokens",
            json={"label": label, "ttl_hours": ttl_hours},
            headers={"Authorization": "Bearer " + ADMIN_KEY},
        )
        body = await response.json()
        assert response.code == 200, body
        return body

    def secrets(self) -> list[str]:
        return [OAUTH_TOKEN, REFRESH_TOKEN, TOKEN_SECRET, ADMIN_KEY]


async def start_upstream(case: TestCase, upstream: FakeAnthropic | None = None
                         ) -> tuple[FakeAnthropic, str]:
    fake = upstream or FakeAnthropic(load_answers(RESPONSES))
    site = Site(fake)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return fake, f"http://127.0.0.1:{port.getHost().port}"


async def start_router(
    case: TestCase,
    upstream: FakeAnthropic | None = None,
    env: dict[str, str] | None = None,
    admin_listen: bool = False,
    upstream_url: str | None = None,
    **flags: Any,
) -> Running:
    """
    Start a router built exactly as C{twistd linkrouter} builds it, on loopback port 0,
    in front of a fake upstream (or C{upstream_url}, to point it elsewhere). C{flags} are
    option values (C{max_body_size="1000"}).
    """
    logs = capture_logs(case)
    fake, fake_url = await start_upstream(case, upstream)
    base = Path(case.mktemp())
    home = base / "claude"
    write_claude_home(home)
    raw: dict[str, Any] = {
        "listen": ["tcp:0:interface=127.0.0.1"],
        "admin_listen": ["tcp:0:interface=127.0.0.1"] if admin_listen else [],
        "claude_code_homes": [str(home)],
        "data_dir": str(base / "state"),
        "token_secret": TOKEN_SECRET,
        "admin_key": ADMIN_KEY,
        "upstream": upstream_url or fake_url,
        "shutdown_grace": "1",
    }
    raw.update(flags)
    config = resolve(raw, env or {})
    service = makeService(config, reactor, environ={})
    service.startService()

    async def stop() -> None:
        await service.stopService()
        # let closed client connections finish closing before the reactor is checked
        await deferLater(reactor, 0.05, lambda: None)

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    ports = await service.ports()
    url = f"http://127.0.0.1:{ports[0].getHost().port}"
    admin_url = f"http://127.0.0.1:{ports[-1].getHost().port}" if admin_listen else None
    return Running(service, url, fake, upstream_url or fake_url, home, logs, admin_url)


async def admin_call(running: Running, method: str, path: str, body: Any = None,
                     key: str | None = ADMIN_KEY, raw: bytes | None = None) -> tuple[int, Any]:
    """One admin API call over the network: its status and its JSON answer (or None)."""
    headers = {"Authorization": "Bearer " + key} if key is not None else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    response = await running.http.request(method, (running.admin_url or running.url) + path,
                                          headers=headers, data=data)
    content = await response.content()
    return response.code, json.loads(content) if content else None


def http_client() -> HTTPClient:
    """A treq client with its own non-persistent pool (nothing left open after a test)."""
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Run a blocking client (the anthropic SDK) off the reactor thread."""
    return deferToThread(fn, *args, **kwargs)


def fixture_requests(name: str) -> list[dict[str, Any]]:
    with open(FIXTURES / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def clean_env() -> None:
    """The SDK reads these; a developer's own must not leak into a test."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        os.environ.pop(name, None)


def recorded(name: str) -> Recorded:
    return Recorded.load(RESPONSES / name)
