# -*- test-case-name: tests.unit.test_store,tests.integration.test_store -*-
"""
Where the token store lives (a C{sqlite:///} file or a C{postgresql://} server), how to
open it, and the errors that say it cannot be used. Messages never carry a password.
"""

from __future__ import annotations

import math
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from attrs import frozen

from linkrouter.errors import APIError
from linkrouter.parsing import sqlite_file


class StoreError(Exception):
    """
    The store cannot be opened or used; the message is safe to show (no password).

    @ivar transient: the server could not be reached (down, or not answering), as opposed
        to a server that answered with a refusal (no such database, bad password).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class StoreUnavailable(APIError):
    """The token store did not answer in time (or is closed): a 503 for admin callers."""


def _transient(e: BaseException) -> bool:
    """Whether a connection failure means "nobody answered" rather than "refused"."""
    text = str(e)
    return "FATAL:" not in text or "starting up" in text or "shutting down" in text


def redact_url(url: str) -> str:
    """
    The database URL with any password (user:pw@ or ?password=) replaced; a URL with
    none is returned exactly as given, so what is printed can be pasted back.
    """
    parts = urlsplit(url)
    if parts.password is None and "password=" not in parts.query.lower():
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@")
    query = "&".join(
        (item.split("=", 1)[0] + "=***") if item.lower().startswith("password=") else item
        for item in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class _Cursor(Protocol):
    rowcount: int

    def execute(self, sql: str, params: Iterable[object] = ...) -> object: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


@frozen
class Database:
    """Where the store lives: a C{sqlite:///} file or a C{postgresql://} server."""

    url: str

    @property
    def kind(self) -> str:
        return "sqlite" if self.url.startswith("sqlite:") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        return sqlite_file(self.url)

    @property
    def module(self) -> str:
        return "sqlite3" if self.kind == "sqlite" else "psycopg"

    def _connect_args(self, timeout: float = 10.0) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.kind == "sqlite":
            return (str(self.sqlite_path),), {"timeout": 15.0, "check_same_thread": False}
        # libpq counts whole seconds, and treats 1 as 2.
        seconds = max(2, math.ceil(timeout))
        return (self.url.replace("postgres://", "postgresql://", 1),), {"connect_timeout": seconds}

    def _prepare_file(self) -> None:
        """
        Create the SQLite file with mode 0600 before SQLite creates it with 0644. Its
        directory must exist: a mistyped path is refused rather than created.
        """
        path = self.sqlite_path
        if not path.exists():
            if not path.parent.is_dir():
                problem = "is not a directory" if path.parent.exists() else "does not exist"
                raise StoreError(f"cannot open {self.url}: {path.parent} {problem}")
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, stat.S_IRUSR | stat.S_IWUSR))

    def connect(self, timeout: float | None = None) -> Any:
        """
        A new DB-API connection (blocking: for start-up checks, the CLI and the daemon's
        store threads). With C{timeout}, PostgreSQL gets as long to connect and each of
        its statements as long to run (C{statement_timeout}).
        """
        args, kwargs = self._connect_args(timeout or 10.0)
        try:
            if self.kind == "sqlite":
                self._prepare_file()
                conn = sqlite3.connect(*args, **kwargs)
                _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
                return conn
            import psycopg

            conn = psycopg.connect(*args, **kwargs)
            if timeout is not None:
                conn.execute("SELECT set_config('statement_timeout', %s, false)",
                              (str(int(timeout * 1000)),))
                conn.commit()
            return conn
        except StoreError:
            raise
        except ImportError:
            raise StoreError(
                "PostgreSQL support needs psycopg: pip install 'linkrouter[postgresql]'"
            ) from None
        except Exception as e:  # DB-API errors have no common base
            raise StoreError(f"cannot open {redact_url(self.url)}: {_reason(e)}",
                             transient=self.kind == "postgresql" and _transient(e)) from None

    def queries(self) -> Any:
        """The store's queries in this database's SQL dialect."""
        from linkrouter.store import Queries

        return Queries("?" if self.kind == "sqlite" else "%s", self.kind)


def _retry_busy(operation: Callable[[], object], attempts: int = 150) -> None:
    """Run a SQLite operation that fails at once (no busy wait) while another holds a lock."""
    import time

    for attempt in range(attempts):
        try:
            operation()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
