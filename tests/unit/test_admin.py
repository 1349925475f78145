"""
The admin API's input checks in memory: the POST /api/tokens body. The API itself over
loopback: L{tests.integration.test_admin}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.admin import MAX_LABEL_LENGTH, MAX_TTL_HOURS, IssueRequest
from linkrouter.errors import APIError


class IssueRequestTests(SynchronousTestCase):
    """Validation of the POST /api/tokens body."""

    def assertBad(self, raw: bytes, fragment: str) -> None:
        with self.assertRaises(APIError) as caught:
            IssueRequest.parse(raw)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.error_type, "invalid_request_error")
        self.assertIn(fragment, caught.exception.message)

    def test_defaults(self) -> None:
        """An empty object (or empty body) means 24 hours and no label, as in the seed."""
        self.assertEqual(IssueRequest.parse(b"{}"), IssueRequest(24, ""))
        self.assertEqual(IssueRequest.parse(b""), IssueRequest(24, ""))

    def test_valid(self) -> None:
        """ttl_hours and label are taken as given."""
        self.assertEqual(IssueRequest.parse(b'{"ttl_hours": 2, "label": "alice"}'),
                         IssueRequest(2, "alice"))

    def test_refusals(self) -> None:
        """Bad JSON, wrong types, non-positive or absurd TTLs, long labels: 400."""
        self.assertBad(b"{not json", "not valid JSON")
        self.assertBad(b"[1]", "JSON object")
        self.assertBad(b'{"ttl_hours": "24"}', "whole number")
        self.assertBad(b'{"ttl_hours": true}', "whole number")
        self.assertBad(b'{"ttl_hours": 1.5}', "whole number")
        self.assertBad(b'{"ttl_hours": 0}', "at least 1")
        self.assertBad(b'{"ttl_hours": -3}', "at least 1")
        self.assertBad(json.dumps({"ttl_hours": MAX_TTL_HOURS + 1}).encode(), "at most")
        self.assertBad(b'{"label": 5}', "label must be a string")
        self.assertBad(json.dumps({"label": "x" * (MAX_LABEL_LENGTH + 1)}).encode(),
                       "at most 200")
        self.assertBad(b'{"label": "a\\nb"}', "control characters")
        self.assertBad(b'{"ttl": 5}', "Unknown field")
