"""
The JSON log line format. Metrics, request ids, access lines and the graceful stop of a
running router: L{tests.integration.test_observability}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.access import new_request_id
from linkrouter.logs import json_line


class JSONLineTests(SynchronousTestCase):
    """The JSON line format itself."""

    def test_plain_event(self) -> None:
        """A non-access event is time, level, namespace and message."""
        from twisted.logger import LogLevel

        record = json.loads(json_line({"log_format": "hello {who}", "who": "you",
                                       "log_time": 0, "log_level": LogLevel.warn,
                                       "log_namespace": "x"}))
        self.assertEqual(record, {"time": "1970-01-01T00:00:00+00:00", "level": "warn",
                                  "namespace": "x", "message": "hello you"})


class RequestIdTests(SynchronousTestCase):
    """Request ids: C{req_} and 24 hex digits, unique."""

    def test_unique(self) -> None:
        ids = [new_request_id() for _ in range(10000)]
        self.assertEqual(len(set(ids)), len(ids))
        for found in ids[:3] + ids[-3:]:
            self.assertRegex(found, r"^req_[0-9a-f]{24}$")
