# -*- test-case-name: tests.unit.test_proxy -*-
"""
The token gate: who is asking. A request reaches the server behind it only with a valid,
unrevoked router token; any other is refused in its route's dialect, when its headers
arrive (L{linkrouter.early}) or, failing that, when it is rendered.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from linkrouter.access import note
from linkrouter.errors import MESSAGES, APIError, Dialect, write_error
from linkrouter.metrics import Metrics
from linkrouter.tokens import Gatekeeper, TokenClaims


class Server(Protocol):
    def serve(self, request: IRequest, claims: TokenClaims) -> int | bytes: ...


class TokenGate(Resource):
    """
    Lets a request through to C{inner} only with a valid, unrevoked router token.

    A leaf: C{inner} reads the path from the request itself.
    """

    isLeaf = True

    def __init__(self, gatekeeper: Gatekeeper, inner: Server, dialect: Dialect = MESSAGES,
                 metrics: Metrics | None = None) -> None:
        super().__init__()
        self._gatekeeper = gatekeeper
        self._inner = inner
        self.dialect = dialect
        self._metrics = metrics

    def refuse_early(self, request: IRequest) -> tuple[APIError, Dialect] | None:
        """
        Called when the headers have arrived, before any of the body is read: the
        refusal (and its dialect) for a request without a valid, unrevoked token.
        """
        try:
            self._gatekeeper.admit(request)
        except APIError as error:
            self._rejected(request, error)
            return error, self.dialect
        return None

    def _rejected(self, request: IRequest, error: APIError) -> None:
        note(request).dialect = self.dialect.name
        if self._metrics is not None:
            self._metrics.rejections.labels(getattr(error, "reason", "other")).inc()

    def render(self, request: IRequest) -> int | bytes:
        try:
            claims = self._gatekeeper.admit(request)
        except APIError as error:
            self._rejected(request, error)
            write_error(request, error, self.dialect)
            return NOT_DONE_YET
        note(request).token_id = claims.id
        return self._inner.serve(request, claims)
