# -*- test-case-name: tests.unit.test_credentials -*-
"""
Where the upstream credential comes from.

An Anthropic API key (C{--upstream-api-key}), an OAuth token (C{--oauth-token} /
C{CLAUDE_CODE_OAUTH_TOKEN}, e.g. from C{claude setup-token}), or a Claude Code home: its
C{.credentials.json} in Claude Code's own format
(C{{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt"}}}), then the flat files
and fields link-assistant-router reads. Files are re-read when they change on disk, from a
thread, at most once a second. (L{linkrouter.accounts} turns these into a pool.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from linkrouter.timefmt import isoformat

T = TypeVar("T")
RunInThread = Callable[[Callable[[], T]], "Deferred[T]"]

#: The flat files link-assistant-router reads, in its order, after Claude Code's own file.
FLAT_FILES = ("credentials.json", ".credentials.json", "auth.json", "oauth.json", "config.json")
FLAT_FIELDS = ("accessToken", "access_token", "oauthToken", "oauth_token")
CLAUDE_CODE_FILE = ".credentials.json"
RECHECK_SECONDS = 1.0


@frozen
class Credential:
    """
    One upstream credential. C{secret} never appears in a repr, a log line or an error.

    @ivar kind: C{"oauth"} (sent as C{Authorization: Bearer}) or C{"api_key"}
        (sent as C{x-api-key}).
    @ivar source: where it came from, for logs and messages.
    @ivar expires_at: Unix seconds, when known.
    """

    kind: str
    secret: str = field(repr=False)
    source: str
    expires_at: float | None = None
    refresh_token: str | None = field(default=None, repr=False)

    @property
    def is_oauth(self) -> bool:
        return self.kind == "oauth"

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header that carries this credential upstream."""
        if self.is_oauth:
            return [(b"authorization", b"Bearer " + self.secret.encode("latin-1"))]
        return [(b"x-api-key", self.secret.encode("latin-1"))]

    def describe(self) -> str:
        what = "OAuth token" if self.is_oauth else "API key"
        expiry = f", expires {isoformat(self.expires_at)}" if self.expires_at else ""
        return f"{what} from {self.source}{expiry}"


def credential_from_json(data: Any, source: str) -> Credential | None:
    """
    The credential in a parsed credentials file, or C{None}.

    Claude Code's own layout (C{claudeAiOauth}) wins over the flat fields.
    """
    if not isinstance(data, dict):
        return None
    nested = data.get("claudeAiOauth") or data.get("claude_ai_oauth")
    if isinstance(nested, dict):
        token = nested.get("accessToken") or nested.get("access_token")
        if isinstance(token, str) and token.strip():
            expires = nested.get("expiresAt") or nested.get("expires_at")
            refresh = nested.get("refreshToken") or nested.get("refresh_token")
            return Credential(
                kind="oauth",
                secret=token.strip(),
                source=source,
                expires_at=expires / 1000.0 if isinstance(expires, (int, float)) else None,
                refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            )
    for name in FLAT_FIELDS:
        token = data.get(name)
        if isinstance(token, str) and token.strip():
            return Credential(kind="oauth", secret=token.strip(), source=source)
    return None


@frozen
class _Seen:
    signature: tuple[int, int, int, int]
    credential: Credential | None


@frozen
class Problem:
    """
    Why a home has no usable credential.

    @ivar reason: for the operator (logs, the admin API): may name the path.
    @ivar public: for a proxied client's error: never names a path.
    """

    reason: str
    public: str


@define
class ClaudeHome:
    """
    One Claude Code home directory, watched for changes to its credential files.

    @ivar run_in_thread: runs the blocking file work off the reactor thread.
    @ivar problem: after a scan that found nothing, why (no directory, no file, or a
        file the daemon may not read).
    """

    directory: Path
    clock: IReactorTime
    run_in_thread: RunInThread[Credential | None]
    _seen: dict[Path, _Seen] = field(factory=dict)
    _checked_at: float | None = None
    _current: Credential | None = None
    problem: Problem | None = None
    _scan_problem: Problem | None = None
    _scanning: bool = False
    _waiters: list[Deferred[Credential | None]] = field(factory=list)
    _queued: list[Deferred[Credential | None]] = field(factory=list)
    _log = Logger()

    def candidates(self) -> list[Path]:
        """The files looked at, in order (Claude Code's own file is read in both forms)."""
        names = [CLAUDE_CODE_FILE] + [n for n in FLAT_FILES if n != CLAUDE_CODE_FILE]
        return [self.directory / n for n in names]

    @property
    def path(self) -> Path:
        """Claude Code's own credentials file, where refreshed logins are written."""
        return self.directory / CLAUDE_CODE_FILE

    async def credential(self, force: bool = False) -> Credential | None:
        """
        The directory's credential, re-read if a file changed (checked once a second,
        or now when C{force} is set: then from a scan that starts after this call, so
        it sees every write made before it).
        """
        now = self.clock.seconds()
        fresh = self._checked_at is not None and now - self._checked_at < RECHECK_SECONDS
        if fresh and not force:
            return self._current
        waiter: Deferred[Credential | None] = Deferred()
        if self._scanning and force:
            self._queued.append(waiter)  # the scan in flight may predate a write
        else:
            self._waiters.append(waiter)  # one scan at a time; later callers share it
            if not self._scanning:
                self._scan()
        return await waiter

    def read_now(self) -> Credential | None:
        """
        Blocking: scan now (at start-up, before the reactor runs). The first use
        afterwards still looks at the files again.
        """
        self._scanning = True
        self._scanned(self._read())
        self._checked_at = None
        return self._current

    def _scan(self) -> None:
        self._scanning = True
        self.run_in_thread(self._read).addBoth(self._scanned)

    def _scanned(self, result: Credential | None | Failure) -> None:
        waiters, self._waiters, self._queued = self._waiters, self._queued, []
        self._scanning = False
        if not isinstance(result, Failure):
            self._checked_at = self.clock.seconds()
            self.problem = None if result is not None else (
                self._scan_problem or _no_login(self.directory))
            if result != self._current:
                self._announce(result)
            self._current = result
        if self._waiters:
            self._scan()
        for waiter in waiters:
            waiter.callback(result)

    def _announce(self, credential: Credential | None) -> None:
        if credential is None:
            self._log.warn("No upstream credential in {directory}: {why}",
                           directory=str(self.directory),
                           why=self.problem.reason if self.problem else "no login")
        else:
            self._log.info("Upstream credential: {what}", what=credential.describe())

    def _read(self) -> Credential | None:
        """
        Blocking: stat each candidate, re-parse those that changed, return the first hit
        (and note in C{_scan_problem} why there is none).
        """
        self._scan_problem = None
        for path in self.candidates():
            try:
                st = path.stat()
            except PermissionError as e:
                self._denied(path, e)
                continue
            except OSError:
                self._seen.pop(path, None)
                continue
            # ctime too: a chmod or chown (a fixed permission) changes only that.
            signature = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
            seen = self._seen.get(path)
            if seen is None or seen.signature != signature:
                try:
                    seen = _Seen(signature, self._parse(path))
                except PermissionError as e:
                    self._seen.pop(path, None)  # read again at the next scan
                    self._denied(path, e)
                    continue
                self._seen[path] = seen
            if seen.credential is not None:
                return seen.credential
        if self._scan_problem is None and not self.directory.is_dir():
            self._scan_problem = Problem(
                f"no Claude Code login: {self.directory} does not exist",
                "no Claude Code login")
        return None

    def _denied(self, path: Path, error: OSError) -> None:
        if self._scan_problem is None:
            self._scan_problem = Problem(
                f"permission denied reading {path} ({error.strerror}); the router's user "
                "must be able to read and write it",
                "its credentials file cannot be read (permission denied)")

    def _parse(self, path: Path) -> Credential | None:
        """The credential in one file; a file the daemon may not read raises."""
        try:
            data = json.loads(path.read_bytes())
        except PermissionError:
            raise
        except OSError as e:
            self._log.warn("Cannot read {path}: {reason}", path=str(path), reason=e.strerror)
            return None
        except ValueError:
            self._log.warn("{path} is not valid JSON; skipping it", path=str(path))
            return None
        return credential_from_json(data, str(path))


def _no_login(directory: Path) -> Problem:
    return Problem(f"no Claude Code login in {directory}", "no Claude Code login")


def claude_homes(
    directories: list[Path] | tuple[Path, ...],
    clock: IReactorTime,
    run_in_thread: RunInThread[Credential | None],
) -> list[ClaudeHome]:
    return [ClaudeHome(Path(os.path.expanduser(d)), clock, run_in_thread) for d in directories]
