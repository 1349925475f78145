# -*- test-case-name: tests.unit.test_journal -*-
"""
The usage journal: token usage the store has not confirmed, kept in a file of the data
directory until it has.

One JSON object per line, C{{"batch": id, "usage": [delta, ...]}}, appended and fsync'd
(mode 0600). The router appends a batch when the store fails to take it (and, at stop,
whatever is left); at start it reads the file back and writes those batches first. The
store records each batch id it adds, so a batch written twice (the router stopped after
the write but before clearing the journal, or never heard the answer) counts once.
Only when every batch is confirmed is the file removed.

All methods block: the daemon calls them in a thread.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from attrs import asdict, frozen
from twisted.logger import Logger

from linkrouter.store import UsageDelta
from linkrouter.usage import UsageBatch

NAME = "usage-journal.jsonl"
#: The journals of C{--workers}: each worker appends to its own file (two processes never
#: append to one), named by its index so a restarted worker takes up its predecessor's.
WORKER_PATTERN = "usage-journal-worker-{index}.jsonl"


def journal_name(worker: int | None) -> str:
    """The journal file name of worker C{worker} (C{None}: a router of its own)."""
    return NAME if worker is None else WORKER_PATTERN.format(index=worker)


def gather(directory: Path, into: str, keep: Iterable[str] = ()) -> int:
    """
    Move every journal of C{directory} but C{into} and C{keep} (left by the workers of an
    earlier run, which may have had more of them, or by a router of its own) to the end
    of C{into}, so the process that owns C{into} writes them. Call it before any router
    of this run starts. Batches keep their ids, so one that was written already counts
    once. Returns how many files were taken up.
    """
    taken = 0
    kept = {into, *keep}
    for path in sorted(directory.glob("usage-journal*.jsonl")):
        if path.name in kept:
            continue
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text += "\n"  # a line cut short stays one bad line, skipped when read
        if text:
            _append_text(directory / into, text)
        path.unlink()
        taken += 1
    return taken


def _append_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, stat.S_IRUSR | stat.S_IWUSR)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)

_log = Logger(namespace="linkrouter")


@frozen
class Journal:
    """The journal file at C{path}."""

    path: Path

    def append(self, batches: list[UsageBatch]) -> None:
        """Add batches at the end, durably (written and fsync'd before this returns)."""
        text = "".join(
            json.dumps({"batch": b.id, "usage": [asdict(d) for d in b.deltas]}) + "\n"
            for b in batches
        )
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     stat.S_IRUSR | stat.S_IWUSR)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            self._sync_directory()

    def read(self) -> list[UsageBatch]:
        """
        The batches in the file (none if there is no file), each marked as journaled.
        A line that cannot be read (cut short by a crash mid-write) is skipped and logged.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        batches = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                deltas = [UsageDelta(**fields) for fields in entry["usage"]]
                batches.append(UsageBatch(deltas, str(entry["batch"]), journaled=True))
            except (ValueError, TypeError, KeyError):
                _log.warn("Skipping line {number} of {path}: not a usage batch (cut short?)",
                          number=number, path=str(self.path))
        return batches

    def clear(self) -> None:
        """Remove the file: every batch in it is in the store."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
