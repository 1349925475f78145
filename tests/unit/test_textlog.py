"""
The text log's lines (L{linkrouter.textlog}): the same as twistd's own observer writes,
for every kind of event, and the tap choosing it when twistd logs to standard output.
"""

from __future__ import annotations

import io
import time
from typing import Any

from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.tap import Options
from linkrouter.textlog import TEXT_OBSERVER, text_line, text_observer


def access(when: float, **extra: Any) -> dict[str, Any]:
    return {"log_format": "{line}", "line": "POST /v1/messages 200 3ms token=t",
            "log_time": when, "log_level": LogLevel.info,
            "log_namespace": "linkrouter.access.AccessLog", "status": 200, **extra}


class LineTests(SynchronousTestCase):
    """L{text_line} writes what twistd's C{formatEventAsClassicLogText} writes."""

    def same(self, event: dict[str, Any]) -> None:
        self.assertEqual(text_line(dict(event)), formatEventAsClassicLogText(dict(event)))

    def test_access_lines_across_seconds(self) -> None:
        """The time's text is right on each side of a second's boundary, and each new one."""
        now = float(int(time.time()))
        for when in (now - 0.001, now, now + 0.5, now + 0.999, now + 1, now + 86400 * 183,
                     1.0, 0.25):
            self.same(access(when))

    def test_other_events(self) -> None:
        """Formats with fields, a system, no time, several lines, a failure, no level."""
        try:
            1 / 0  # noqa: B018 - a failure to log
        except ZeroDivisionError:
            failure = Failure()
        now = time.time()
        for event in (
            {"log_format": "GET {path} {code}", "path": "/health", "code": 200,
             "log_time": now, "log_level": LogLevel.warn, "log_namespace": "x"},
            access(now, log_system="linkrouter.access#info worker 2"),
            {**access(now), "log_time": None},
            {**access(now), "line": "two\nlines"},
            {**access(now), "log_failure": failure},
            {"log_format": "{line}", "line": 42, "log_time": now},
            {"log_format": "{line}", "line": "no level", "log_time": now},
            {"log_format": "{line}", "line": "an int time", "log_time": 5},
            {"log_time": now},
        ):
            self.same(event)

    def test_suffix(self) -> None:
        """A worker's suffix follows the system, fast or slow, the event left as it was."""
        now = time.time()
        fast, slow = access(now), {**access(now), "line": "a\nb"}
        for event in (fast, slow):
            line = text_line(event, " worker 3")
            self.assertIn("[linkrouter.access.AccessLog#info worker 3] ", line or "")
            self.assertNotIn("log_system", event)

    def test_observer(self) -> None:
        """The observer writes each line to its file as it comes."""
        out = io.StringIO()
        observer = text_observer(out)
        observer(access(time.time()))
        observer(access(time.time(), line="second"))
        self.assertEqual(out.getvalue().count("\n"), 2)
        self.assertTrue(out.getvalue().endswith("] second\n"))


class TapTests(SynchronousTestCase):
    """The tap names the text observer as twistd's logger only for standard output."""

    def logger(self, **twistd: Any) -> object:
        options = Options({"HOME": "/nowhere"})
        options.parent = {"nodaemon": True, "logfile": None, "syslog": False, "logger": None,
                          **twistd}
        options.parseOptions(["--upstream", "http://127.0.0.1:9"])
        return options.parent["logger"]

    def test_chosen(self) -> None:
        self.assertEqual(self.logger(), TEXT_OBSERVER)
        self.assertEqual(self.logger(logfile="-"), TEXT_OBSERVER)

    def test_not_chosen(self) -> None:
        """A log file, syslog, a daemon's twistd.log or the operator's own logger stay."""
        self.assertIsNone(self.logger(logfile="/var/log/router.log"))
        self.assertIsNone(self.logger(syslog=True))
        self.assertIsNone(self.logger(nodaemon=False))
        self.assertEqual(self.logger(logger="my.observer"), "my.observer")
