"""
The model catalogue behind C{/inference-profiles} through a running router, over
loopback, with the fake upstream counting. In memory: L{tests.unit.test_profiles}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, Recorded, load_answers

from ..harness import RESPONSES, start_router


class InferenceProfilesLoopbackTests(TestCase):
    """The same through a running router, over loopback, with the fake upstream counting."""

    timeout = 30

    def model_calls(self, running: Any) -> int:
        return len([r for r in running.upstream.received if r.uri.startswith(b"/v1/models")])

    async def test_concurrent_cold_requests(self) -> None:
        """Fifty concurrent cold GET /inference-profiles: one upstream call, fifty answers."""
        running = await start_router(self)
        http = running.http

        async def one() -> int:
            response = await http.get(running.url + "/inference-profiles")
            listed = json.loads(await response.content())["inferenceProfileSummaries"]
            self.assertTrue(listed)
            return int(response.code)

        codes = await gatherResults([Deferred.fromCoroutine(one()) for _ in range(50)])
        self.assertEqual(codes, [200] * 50)
        self.assertEqual(self.model_calls(running), 1)

    async def test_failing_upstream_asked_once(self) -> None:
        """While the upstream fails, twenty requests in a row make one upstream call."""
        upstream = FakeAnthropic(load_answers(RESPONSES),
                                 override=Recorded.error(500, "api_error", "down"))
        running = await start_router(self, upstream)
        for _ in range(20):
            response = await running.http.get(running.url + "/inference-profiles")
            body = await response.content()
            self.assertEqual(response.code, 502, body)
        self.assertEqual(self.model_calls(running), 1)
