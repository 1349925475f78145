"""
Real C{twistd -n linkrouter} processes for tests where process behaviour is the point
(several routers sharing one login; a router running as an unprivileged user). Each
reports READY (with its ports) to a datagram socket the test owns, as under systemd.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .harness import ADMIN_KEY, TOKEN_SECRET, in_thread

REPO = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class RouterProcess:
    """
    One C{twistd -n linkrouter} child on a loopback port, with the test's token secret
    and admin key, and C{args} (credential options and the like).

    @ivar honour_modes: drop C{CAP_DAC_OVERRIDE} and C{CAP_DAC_READ_SEARCH} from the
        child's capability bounding set before exec, so that even as root it obeys file
        modes like any service user (tests run as root; the interpreter lives under
        C{/root}, so the child cannot simply C{setuid} to nobody).
    """

    def __init__(self, case: TestCase, base: Path, *args: str,
                 honour_modes: bool = False) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.notify_path = "@linkrouter-test-" + os.urandom(8).hex()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind("\0" + self.notify_path[1:])
        self.notify.setblocking(False)
        case.addCleanup(self.notify.close)
        self.log_path = base / "daemon.log"
        self.log = open(self.log_path, "w+")  # closed in cleanup
        case.addCleanup(self.log.close)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
               "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": self.notify_path}
        state = base / "state"
        state.mkdir(mode=0o700, exist_ok=True)
        preexec: Callable[[], None] | None = _drop_dac if honour_modes else None
        self.process = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "linkrouter",
             "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", str(state),
             "--token-secret", TOKEN_SECRET, "--admin-key", ADMIN_KEY,
             "--shutdown-grace", "1", *args],
            cwd=base, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=preexec,  # one prctl call, before exec
        )
        case.addCleanup(self._kill)
        self.port: int | None = None

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, timeout: float = 30) -> int:
        """Wait for READY=1; return the port."""
        waited = 0.0
        while True:
            try:
                message = self.notify.recv(65536).decode()
            except BlockingIOError:
                if waited > timeout or self.process.poll() is not None:
                    raise AssertionError("the router did not start; log:\n"
                                         + self.text()[-3000:]) from None
                await sleep(0.05)
                waited += 0.05
                continue
            if message.startswith("READY=1"):
                status = [x for x in message.splitlines() if x.startswith("STATUS=")][0]
                self.port = int(status.rsplit(":", 1)[1])
                return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        """An admin API call, answered as JSON."""
        assert self.port is not None
        return await in_thread(_admin, self.port, method, path, body)  # type: ignore[no-any-return]


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


async def start_fleet(case: TestCase, count: int, upstream_url: str, *args: str
                      ) -> tuple[list[RouterProcess], Path]:
    """
    C{count} routers in front of C{upstream_url}, sharing one Claude Code login (a home
    under the case's temp dir, returned) and C{args} (a shared C{--database}, say), each
    started and ready.
    """
    from .harness import write_claude_home

    base = Path(case.mktemp()).resolve()
    home = base / "claude"
    write_claude_home(home)
    routers = [
        RouterProcess(case, base / f"router{i}", "--upstream", upstream_url,
                      "--claude-code-home", str(home), *args)
        for i in range(count)
    ]
    for router in routers:
        await router.ready()
    return routers, home


async def traffic_during_refresh(routers: list[RouterProcess], client_tokens: list[str],
                                 tokens: Any, hold: Deferred[None], seconds: float,
                                 clients_per_router: int) -> list[int]:
    """
    Keep C{clients_per_router} clients per router asking C{GET /v1/models} for
    C{seconds}, while the held token endpoint C{tokens} answers its first refresh 0.3 s
    after it arrives (as the real endpoint takes a while); the statuses received.
    """
    from .harness import http_client

    codes: list[int] = []
    stop_at = time.monotonic() + seconds
    http = http_client()

    async def client(router: RouterProcess, token: str) -> None:
        while time.monotonic() < stop_at:
            response = await http.get(router.url + "/v1/models", headers={"x-api-key": token})
            await response.content()
            codes.append(response.code)
            await sleep(0.01)

    async def slow_endpoint() -> None:
        while not tokens.received and time.monotonic() < stop_at:
            await sleep(0.01)
        await sleep(0.3)
        hold.callback(None)

    await gatherResults([
        Deferred.fromCoroutine(slow_endpoint()),
        *(Deferred.fromCoroutine(client(router, token))
          for router, token in zip(routers, client_tokens)
          for _ in range(clients_per_router)),
    ])
    return codes


def _drop_dac() -> None:
    """In the child before exec: lose the capabilities that let root ignore modes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _admin(port: int, method: str, path: str, body: dict[str, Any] | None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  f"Authorization: Bearer {ADMIN_KEY}\r\ncontent-length: {len(data)}\r\n\r\n"
                  .encode() + data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:500]
    if b"transfer-encoding: chunked" in head.lower():
        payload = _unchunk(payload)
    return json.loads(payload)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
