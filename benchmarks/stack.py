"""
The system under test: the fake upstream, linkrouter and the two bare contenders.

L{Stack} starts them on free loopback ports, issues linkrouter a client token (the
contenders verify it with the same token secret), and checks that one JSON and one SSE
answer come through each proxy byte for byte and that a bad token gets 401 from each.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
from common import LOOPBACK, REPO, RESPONSES, fetch, free_port
from processes import Failed, Processes, script, twistd_command
from upstream import Answers

#: The bare pass-through contenders: column name -> role of C{baseline.py}.
CONTENDERS = {"treq": "treq", "agent": "agent"}

#: A token with every kind of limit set, none reachable in a run: the router's policy
#: stage and spend book then run on every request.
LIMITS = {"rpm": 1_000_000, "concurrency": 100_000,
          "budget_usd": {"5h": 1_000_000, "1d": 1_000_000, "7d": 1_000_000,
                         "30d": 1_000_000},
          "models": ["claude-*"]}

#: Environment variables the router must not inherit from whoever runs the benchmark.
ROUTER_ENV_DROP = (
    "LINKROUTER_", "TOKEN_SECRET", "ADMIN_KEY", "CLAUDE_CODE_", "UPSTREAM_",
    "OAUTH_TOKEN_URL", "DATABASE_URL", "VERBOSE", "ROUTER_", "STATE_DIRECTORY", "PYTHONPATH",
)


def error_type(body: bytes) -> object:
    """The C{error.type} of an Anthropic-style error answer (None when it is not one)."""
    try:
        return json.loads(body)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Proxy:
    """One proxy under test: its column name, port and process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]


class Stack:
    """The upstream and the proxies in front of it, and the requests they are sent."""

    def __init__(self, procs: Processes, backlog: int) -> None:
        self.procs = procs
        self.backlog = f":backlog={backlog}" if backlog else ""
        self.token = ""
        self.admin_key = "la_admin_bench-" + secrets.token_hex(16)
        self.token_secret = "bench-secret-" + secrets.token_hex(24)
        self.oauth = "sk-ant-oat01-bench-" + secrets.token_hex(16)
        fixture = json.loads((RESPONSES / "anthropic-messages.json").read_text("utf-8"))
        self.path = fixture["request"]["path"]  # /v1/messages?beta=true, as Claude Code sends
        self.body = json.dumps(fixture["request"]["body"], separators=(",", ":"))
        self.stream_body = json.dumps({**fixture["request"]["body"], "stream": True},
                                      separators=(",", ":"))
        answers = Answers(RESPONSES)
        self.expected_json = answers.json_body
        self.expected_sse = answers.sse_raw
        self.headers: dict[str, str] = {}
        self.proxies: list[Proxy] = []
        self.router_cmd: list[str] = []
        #: Extra flags for linkrouter (e.g. C{--database URL}), after the usual ones.
        self.router_args: list[str] = []
        #: The limits the client token is issued with (C{None}: none).
        self.token_limits: dict[str, object] | None = None
        #: The limits the router says the token was issued with.
        self.issued_limits: object = None

    @property
    def router(self) -> Proxy:
        return self.proxies[0]

    def targets(self) -> dict[str, int]:
        """Column name -> port of every proxy, linkrouter first."""
        return {proxy.name: proxy.port for proxy in self.proxies}

    def start(self) -> None:
        self.upstream_port = free_port()
        upstream = self.procs.spawn("upstream", script(
            "upstream.py", port=self.upstream_port, responses=str(RESPONSES)))
        self.procs.wait_health("upstream", upstream, self.upstream_port)
        upstream_url = f"http://{LOOPBACK}:{self.upstream_port}"
        self.proxies = [self.start_router(upstream_url)]
        for name, role in CONTENDERS.items():
            port = free_port()
            process = self.procs.spawn(name, script(
                "baseline.py", role, port=port, upstream=upstream_url, backlog=self.backlog,
                token_secret=self.token_secret,
            ), proxy=True)
            self.proxies.append(Proxy(name, port, process))
        for proxy in self.proxies:
            log = "router" if proxy is self.router else proxy.name
            self.procs.wait_health(log, proxy.process, proxy.port)
        self.issue_token()

    def start_router(self, upstream_url: str) -> Proxy:
        """linkrouter, started as an operator starts it (twistd, the plugin, flags)."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(ROUTER_ENV_DROP)}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        self.router_state = self.procs.tmp / "router-state"
        self.router_cmd = twistd_command() + [
            "-n", "--pidfile=", "linkrouter",
            "--listen", f"tcp:{port}:interface={LOOPBACK}{self.backlog}",
            "--upstream", upstream_url,
            "--data-dir", str(self.router_state),
            "--token-secret", self.token_secret,
            "--admin-key", self.admin_key,
            "--oauth-token", self.oauth,
        ] + self.router_args
        return Proxy("linkrouter", port, self.procs.spawn(
            "router", self.router_cmd, env=env, proxy=True))

    def issue_token(self) -> None:
        """Issue the client token with L{token_limits}; keep the limits the router set."""
        ask: dict[str, object] = {"label": "bench", "ttl_hours": 2}
        if self.token_limits is not None:
            ask["limits"] = self.token_limits
        status, body = fetch(
            self.router.port, "POST", "/api/tokens", json.dumps(ask).encode(),
            {"Authorization": "Bearer " + self.admin_key, "Content-Type": "application/json"},
        )
        if status != 200:
            raise Failed(f"POST /api/tokens answered {status}: {body[:300]!r}")
        answer = json.loads(body)
        self.token = str(answer["token"])
        self.issued_limits = answer.get("limits")
        self.headers = {
            "Authorization": "Bearer " + self.token,
            "Content-Type": "application/json",
            "anthropic-version": "2023-06-01",
        }

    def sanity(self) -> None:
        """
        One JSON and one SSE answer through each proxy, compared byte for byte, and a token
        signed with another secret (in either header) refused with 401 by each.
        """
        for name, port in self.targets().items():
            status, body = fetch(port, "POST", self.path, self.body.encode(), self.headers)
            if status != 200 or body != self.expected_json:
                raise Failed(f"{name}: JSON answer {status} differs from the fixture: "
                             f"{body[:200]!r}")
            status, body = fetch(port, "POST", self.path, self.stream_body.encode(),
                                 self.headers)
            if status != 200 or body != self.expected_sse:
                raise Failed(f"{name}: SSE answer {status} differs from the fixture")
            for headers in self.bad_tokens():
                status, body = fetch(port, "POST", self.path, self.body.encode(), headers)
                if status != 401 or error_type(body) != "authentication_error":
                    raise Failed(f"{name} answered {status} to a bad token, not 401 with an "
                                 f"authentication_error: {body[:200]!r}")

    def bad_tokens(self) -> list[dict[str, str]]:
        """Headers with a token no proxy may accept: malformed, or signed with another
        secret (in C{Authorization} and in C{x-api-key})."""
        forged = "la_sk_" + jwt.encode({"sub": "bench", "exp": 9_999_999_999},
                                       secrets.token_hex(32), algorithm="HS256")
        without = {k: v for k, v in self.headers.items() if k != "Authorization"}
        return [{**without, "Authorization": "Bearer la_sk_wrong"},
                {**without, "Authorization": "Bearer " + forged},
                {**without, "x-api-key": forged}]

    def redact(self, cmd: list[str]) -> Iterator[str]:
        hidden = {self.token_secret, self.admin_key, self.oauth}
        for part in cmd:
            yield "***" if part in hidden else part
