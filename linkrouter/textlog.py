# -*- test-case-name: tests.unit.test_textlog -*-
"""
The text log on standard output, as twistd writes it, for less per line.

twistd's own observer (C{textFileLogObserver}) formats every event's time with a time zone
lookup and C{strftime}, then parses the event's format string: about 30 µs a line, which
with one access line per request was a tenth of what the router spent on a request.
L{text_line} writes the same line (C{"2026-11-29T20:10:00+0000 [system] text"}), making
the time's text once per second (the format has no finer part) and taking an access
line's C{"{line}"} as it is. L{text_observer} is what twistd uses when it logs to
standard output (the tap names it as twistd's C{--logger}).
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)

#: The dotted name twistd's C{--logger} takes.
TEXT_OBSERVER = "linkrouter.textlog.text_observer"


class _Clock:
    """The text of the last second an event was logged in."""

    second: int | None = None
    text = "-"

    def stamp(self, when: float) -> str:
        second = int(when // 1)
        if second != self.second:
            self.text = formatTime(second, timeFormatRFC3339)
            self.second = second
        return self.text


_clock = _Clock()


def text_line(event: dict[str, Any], system_suffix: str = "") -> str | None:
    """
    One event as twistd's classic text line (L{formatEventAsClassicLogText}), with
    C{system_suffix} after its system (a worker's C{" worker N"}).
    """
    line = event.get("line")
    when = event.get("log_time")
    if (event.get("log_format") != "{line}" or type(line) is not str or "\n" in line
            or "log_failure" in event or type(when) is not float):
        return _slow(event, system_suffix)
    return f"{_clock.stamp(when)} [{_system(event)}{system_suffix}] {line}\n"


def _system(event: dict[str, Any]) -> str:
    """The event's system, as twistd names it: C{log_system}, else namespace#level."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
    return str(system)


def _slow(event: dict[str, Any], system_suffix: str) -> str | None:
    """Any other event, through twistd's own formatting."""
    if system_suffix:
        event = {**event, "log_system": _system(event) + system_suffix}
    return formatEventAsClassicLogText(event)


def text_observer(out: IO[str] | None = None) -> FileLogObserver:
    """A log observer writing text lines to C{out} (standard output by default)."""
    return FileLogObserver(out or sys.stdout, text_line)
