"""
Tests for L{linkrouter.filelock}: a real C{flock} on a real directory, held by this
process or by a child process, waited for on a L{Clock} without blocking.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.filelock import POLL_SECONDS, DirectoryLock, Held, LockTimeout

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


class DirectoryLockTests(SynchronousTestCase):
    """An exclusive lock on a directory, shared with other processes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def lock(self, timeout: float = 1.0) -> DirectoryLock:
        return DirectoryLock(self.directory, self.clock, maybeDeferred, timeout=timeout)

    def acquire(self, lock: DirectoryLock) -> Deferred[Held]:
        return Deferred.fromCoroutine(lock.acquire())

    def test_free_lock_taken_at_once(self) -> None:
        """A free lock is taken without waiting, and leaves no file behind."""
        held = self.successResultOf(self.acquire(self.lock()))
        held.release()
        held.release()  # a second release is harmless
        self.assertEqual(list(self.directory.iterdir()), [])

    def test_second_holder_waits(self) -> None:
        """
        A second L{DirectoryLock} on the same directory waits (polling on the clock)
        until the first is released, then gets it.
        """
        first = self.successResultOf(self.acquire(self.lock()))
        waiting = self.acquire(self.lock())
        self.clock.advance(POLL_SECONDS)
        self.assertNoResult(waiting)
        first.release()
        self.clock.advance(POLL_SECONDS)
        self.successResultOf(waiting).release()

    def test_timeout(self) -> None:
        """A lock held too long by someone else gives LockTimeout, not a hang."""
        first = self.successResultOf(self.acquire(self.lock()))
        waiting = self.acquire(self.lock(timeout=0.5))
        self.clock.pump([POLL_SECONDS] * 30)
        failure = self.failureResultOf(waiting, LockTimeout)
        self.assertIn(str(self.directory), str(failure.value))
        first.release()
        self.successResultOf(self.acquire(self.lock())).release()

    def test_other_process(self) -> None:
        """The lock excludes another process that holds it with flock(2)."""
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(child.wait, 10)
        self.addCleanup(child.kill)
        self.assertEqual(child.stdout.readline().strip(), "held")  # type: ignore[union-attr]
        waiting = self.acquire(self.lock(timeout=5))
        self.clock.advance(POLL_SECONDS)
        self.assertNoResult(waiting)
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(10)
        self.clock.advance(POLL_SECONDS)
        self.successResultOf(waiting).release()

    def test_missing_directory(self) -> None:
        """A directory that does not exist is an OSError from acquire."""
        lock = DirectoryLock(self.directory / "absent", self.clock, maybeDeferred)
        self.failureResultOf(self.acquire(lock), OSError)
