# -*- test-case-name: tests.unit.test_admission,tests.integration.test_limits_enforced -*-
"""
The policy stage of the request path (DESIGN §9, §13): after the dialect route has said
what goes upstream and before the failover picks an account, the token's limits are
applied: its model rule, its concurrency, its rpm and its budgets, in that order.

The model a rule is checked against is the upstream model id: the Bedrock and Vertex
routes read it (after their own normalisation and C{--model-alias}); a Messages request's
body is read here, only for a token that has a model rule. Such a token's Messages body
must be plain JSON naming C{model} once: an encoded body, or a body naming the model
twice (parsers disagree on which one wins), is refused rather than forwarded unread. A
message batch (C{requests[].params.model}) is checked request by request.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, BinaryIO

from attrs import define, frozen
from twisted.internet import defer
from twisted.web.iweb import IRequest

from linkrouter.dialects import Outgoing, bad_request
from linkrouter.errors import APIError
from linkrouter.fleetrpm import FleetRpm
from linkrouter.limits import Limits
from linkrouter.limitsbook import LimitsBook
from linkrouter.metrics import Metrics
from linkrouter.outage import Outage
from linkrouter.policy import Admission, Policy, Refusal, rpm_message
from linkrouter.spendbook import SpendBook

_NO_SPEND: dict[str, Decimal] = {}
CancelledError = defer.CancelledError


@frozen(eq=False)
class Refused(APIError):
    """A request the policy refused; C{retry_after} (seconds) goes in a header."""

    retry_after: int | None = None
    limit: str = ""

    @classmethod
    def of(cls, refusal: Refusal) -> Refused:
        return cls(refusal.status, refusal.message, refusal.error_type,
                   refusal.retry_after, refusal.limit)


@define
class Admitter:
    """Admits a token's request under the limits that apply to it, or refuses it."""

    policy: Policy
    limits: LimitsBook
    spend: SpendBook
    metrics: Metrics | None = None
    #: Counts C{rpm} across every router sharing a PostgreSQL store (C{None}: this
    #: router's own count is the whole count, as with SQLite).
    fleet: FleetRpm | None = None
    outage: Outage | None = None

    def __attrs_post_init__(self) -> None:
        if self.outage is None:
            self.outage = Outage(self.limits.clock, "rpm", "each router counts rpm alone")

    async def admit(self, request: IRequest, token_id: str, outgoing: Outgoing) -> Admission:
        """
        The admission to hold until the answer ends.

        @raise Refused: the token may not send this request now.
        @raise APIError: the limits cannot be known (503), or the body cannot be checked.
        """
        problem = self.limits.problem()
        if problem is not None:
            raise APIError(503, f"Token limits cannot be checked: {problem}. Try again "
                           "shortly.", "api_error")
        limits = self.limits.limits_for(token_id)
        if limits is None:
            return Admission(token_id, None)
        models = _models(request, outgoing, limits)
        spend = self.spend.spend(token_id, limits.budget_usd) if limits.budget_usd \
            else _NO_SPEND
        # One admission per request: under the first model the rule refuses, if any.
        model = models[0] if len(models) == 1 else next(
            (m for m in models if not limits.allows_model(m)), models[0])
        verdict = self.policy.admit(token_id, limits, model, spend)
        if not isinstance(verdict, Refusal) and limits.rpm is not None \
                and self.fleet is not None:
            verdict = await self._fleet_rpm(self.fleet, verdict, token_id, limits.rpm)
        if isinstance(verdict, Refusal):
            if self.metrics is not None:
                self.metrics.refused(verdict.limit)
            raise Refused.of(verdict)
        return verdict

    async def _fleet_rpm(self, fleet: FleetRpm, admission: Admission, token_id: str,
                         rpm: int) -> Admission | Refusal:
        """The store's word on C{rpm} across the fleet (its own count, if it cannot say)."""
        try:
            verdict = await fleet.admit(token_id, rpm)
        except BaseException as e:
            if isinstance(e, CancelledError):
                admission.withdraw()
                raise
            assert self.outage is not None
            self.outage.failed(e)
            return admission
        assert self.outage is not None
        self.outage.answered()
        if verdict.admitted:
            return admission
        admission.withdraw()
        return Refusal(429, "rate_limit_error", rpm_message(rpm, verdict.count,
                       verdict.retry_after, "by the routers sharing this store "),
                       verdict.retry_after, "rpm")


def _models(request: IRequest, outgoing: Outgoing, limits: Limits) -> list[str | None]:
    """The upstream models the request names (C{[None]}: none, or no rule to check)."""
    if outgoing.model is not None or not limits.models:
        return [outgoing.model]
    if request.method != b"POST" or outgoing.body is None:
        return [None]
    return body_models(request, outgoing.body)


def body_models(request: IRequest, body: BinaryIO) -> list[str | None]:
    """
    The models a Messages-dialect JSON body names: its C{model}, or each batch request's.
    The body is read and rewound.
    """
    codings = [c.strip().lower() for v in request.requestHeaders.getRawHeaders(
        b"content-encoding", []) for c in v.split(b",") if c.strip()]
    if any(c != b"identity" for c in codings):
        raise bad_request("This router token has a model rule, so its request body is "
                          "checked: send it without Content-Encoding.")
    raw = body.read()
    body.seek(0)
    if not raw.strip():
        return [None]
    quick = _quick_model(raw)
    if quick is not None:
        return [quick]
    try:
        # Objects come back as lists of (key, value) pairs (the hook is C's list: no
        # Python call per object), so a repeated key is still there to be seen.
        document = json.loads(raw, object_pairs_hook=list)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return [None]  # not JSON: it names no model (the upstream refuses it if it must)
    top = _pairs(document)
    if top is None:
        return [None]
    found: list[str | None] = [_model(v) for v in _values(top, "model")]
    for requests in _values(top, "requests"):
        for item in requests if isinstance(requests, list) else ():
            for params in _values(_pairs(item) or [], "params"):
                found.extend(_model(v) for v in _values(_pairs(params) or [], "model"))
    return found or [None]


#: An escape of a printable ASCII character (C{\\u0065} for C{e}): how a key could spell
#: C{model} without the bytes C{"model"}. Serialisers do not write these for letters.
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")
_MODEL_KEY = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')


def _quick_model(raw: bytes) -> str | None:
    """
    The model of a body that names it once, found without parsing the whole body (a
    Claude Code body is often hundreds of kilobytes): only when the bytes C{"model"}
    occur once, as a key with a plain string value, and no key can be spelt with
    escapes. C{None}: parse it (L{body_models} does).
    """
    if raw.count(b'"model"') != 1 or _ASCII_ESCAPE.search(raw):
        return None
    found = _MODEL_KEY.search(raw)
    if found is None:
        return None
    try:
        return found.group(1).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _pairs(value: Any) -> list[tuple[str, Any]] | None:
    """A decoded JSON object (a list of pairs), else C{None}."""
    if isinstance(value, list) and all(type(p) is tuple for p in value):
        return value
    return None


def _values(pairs: list[tuple[str, Any]], key: str) -> list[Any]:
    """The value of C{key} in an object; a key given twice is refused."""
    values = [v for k, v in pairs if k == key]
    if len(values) > 1:
        raise bad_request(f"The request body names {key!r} more than once.")
    return values


def _model(value: Any) -> str:
    """A model field as the rule sees it: a non-string is a model no rule allows."""
    return value if isinstance(value, str) else json.dumps(value)[:100]
