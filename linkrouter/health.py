# -*- test-case-name: tests.integration.test_outage -*-
"""
C{/health}: C{200 ok} while the router can serve tokens, C{503} with a short reason when
it cannot (its token store has not answered since start, or for longer than
C{--revocation-max-staleness}), so a load balancer sends clients elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from linkrouter.errors import error_body


class Health(Resource):
    """The health answer: C{problem()} is C{None} when healthy, else why not."""

    isLeaf = True

    def __init__(self, problem: Callable[[], str | None]) -> None:
        super().__init__()
        self._problem = problem

    def render(self, request: IRequest) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.responseHeaders.setRawHeaders(b"allow", [b"GET, HEAD"])
            request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
            method = request.method.decode("ascii", "replace")
            return error_body("invalid_request_error", f"Method {method} is not allowed here.")
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        problem = self._problem()
        if problem is None:
            return b"ok"
        request.setResponseCode(503)
        return f"unavailable: {problem}\n".encode()
