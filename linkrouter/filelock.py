# -*- test-case-name: tests.integration.test_filelock -*-
"""
A lock shared by every process on the host: C{flock(2)} on a directory.

Several routers (or C{--workers}) given the same Claude Code home must spend its refresh
token once per rotation. Each takes this lock on the home directory before it re-reads
the credentials file and refreshes; the others wait, re-read, and find the new pair.
Locking the directory (not a lock file beside the credentials) leaves nothing behind and
works even when the directory is read-only.

The reactor never blocks on it: the directory is opened in a thread, and the lock is
tried without blocking (C{LOCK_NB}) and tried again on a timer while another process
holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from linkrouter.credentials import RunInThread

#: How often a waiting process tries the lock again.
POLL_SECONDS = 0.02


class LockTimeout(Exception):
    """Another process held the lock for longer than we were willing to wait."""


@define
class Held:
    """A lock this process holds; L{release} it exactly once."""

    fd: int | None = field(repr=False)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


@define
class DirectoryLock:
    """
    An exclusive lock on C{directory}, across processes (and across L{DirectoryLock}s
    in one process: C{flock} locks belong to an open file description).

    @ivar timeout: seconds to wait for another holder before giving up.
    """

    directory: Path
    clock: IReactorTime
    run_in_thread: RunInThread[Any]
    timeout: float = 60.0
    poll: float = POLL_SECONDS

    async def acquire(self) -> Held:
        """
        Wait (without blocking the reactor) until this process holds the lock.

        @raise LockTimeout: another process kept it for C{timeout} seconds.
        @raise OSError: the directory cannot be opened.
        """
        fd: int = await self.run_in_thread(self._open)
        deadline = self.clock.seconds() + self.timeout
        try:
            while not _try_lock(fd):
                if self.clock.seconds() >= deadline:
                    raise LockTimeout(
                        f"another process held the lock on {self.directory} for "
                        f"{self.timeout:g} s")
                await deferLater(self.clock, self.poll, lambda: None)
        except BaseException:
            os.close(fd)
            raise
        return Held(fd)

    def _open(self) -> int:
        return os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _try_lock(fd: int) -> bool:
    """One attempt that never blocks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
