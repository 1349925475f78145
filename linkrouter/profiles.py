# -*- test-case-name: tests.unit.test_dialects,tests.integration.test_dialects -*-
"""
Bedrock's control plane, as Claude Code calls it: C{GET /inference-profiles} and
C{GET /inference-profiles/{id}}.

The profiles are made from the upstream's own model list (C{GET /v1/models}, fetched with
a pool account and cached), one C{us.anthropic.<model>} system-defined profile per model,
so Claude Code in Bedrock mode sees exactly the models the team's accounts can use. The
list needs no router token (Claude Code sends none with C{CLAUDE_CODE_SKIP_BEDROCK_AUTH});
a token that is sent must be valid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from linkrouter.accounts import Account, AccountPool
from linkrouter.bedrock import BEDROCK, bedrock_model
from linkrouter.bodies import read_small
from linkrouter.credentials import Credential
from linkrouter.errors import APIError, render_json, short_reason
from linkrouter.failover import Failover
from linkrouter.tokens import Gatekeeper, presented_token
from linkrouter.upstream import Upstream

CACHE_SECONDS = 600.0
#: How long a failed model listing is answered from memory before the upstream is asked
#: again (the route needs no token, so nobody can make the router hammer the upstream).
FAILURE_CACHE_SECONDS = 30.0
PROFILE_PREFIX = "us.anthropic."
REGION = "us-east-1"


def profile(model: dict[str, Any]) -> dict[str, Any]:
    """A system-defined inference profile for one upstream model."""
    model_id = model["id"]
    name = model.get("display_name") or model_id
    created = model.get("created_at") or "1970-01-01T00:00:00Z"
    profile_id = PROFILE_PREFIX + model_id
    return {
        "inferenceProfileName": f"US Anthropic {name}",
        "description": f"Routes requests to {name} through linkrouter.",
        "createdAt": created,
        "updatedAt": created,
        "inferenceProfileArn": f"arn:aws:bedrock:{REGION}:000000000000:inference-profile/"
                               f"{profile_id}",
        "models": [{"modelArn": f"arn:aws:bedrock:{REGION}::foundation-model/anthropic."
                                f"{model_id}"}],
        "inferenceProfileId": profile_id,
        "status": "ACTIVE",
        "type": "SYSTEM_DEFINED",
    }


@define
class ModelCatalogue:
    """
    The upstream's model list, fetched with a pool account and kept for a while.

    Anyone may ask (the route needs no token) and each fetch spends the team credential, so
    concurrent asks while nothing is cached share one fetch, and a failed fetch is
    remembered for L{FAILURE_CACHE_SECONDS} (its error answered to everyone meanwhile).
    """

    pool: AccountPool
    upstream: Upstream
    cached: list[dict[str, Any]] | None = None
    fetched_at: float | None = None
    failure: APIError | None = None
    failed_at: float | None = None
    _waiting: list[Deferred[list[dict[str, Any]]]] | None = None
    _log = Logger()

    async def models(self) -> list[dict[str, Any]]:
        now = self.upstream.reactor.seconds()
        if self.cached is not None and self.fetched_at is not None and (
                now - self.fetched_at < CACHE_SECONDS):
            return self.cached
        if self.failure is not None and self.failed_at is not None and (
                now - self.failed_at < FAILURE_CACHE_SECONDS):
            raise self.failure
        if self._waiting is not None:
            shared: Deferred[list[dict[str, Any]]] = Deferred()
            self._waiting.append(shared)
            return await shared
        self._waiting = []
        try:
            models = await self._fetch()
        except Exception as e:
            error = e if isinstance(e, APIError) else self._unexpected(e)
            self.failure, self.failed_at = error, self.upstream.reactor.seconds()
            self._settle(lambda d: d.errback(error))
            raise error from None
        self.cached, self.fetched_at = models, self.upstream.reactor.seconds()
        self.failure = self.failed_at = None
        self._settle(lambda d: d.callback(models))
        return models

    def _settle(self, fire: Callable[[Deferred[list[dict[str, Any]]]], object]) -> None:
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            fire(d)

    def _unexpected(self, e: Exception) -> APIError:
        self._log.error("Listing the upstream's models failed: {reason}", reason=short_reason(e))
        return APIError(502, "Cannot list models from the upstream; the router's log says why.")

    async def _fetch(self) -> list[dict[str, Any]]:
        """
        Ask the accounts in turn (the failover: a 401 refreshes and retries once, a 429
        rests the account) until one lists the models.
        """
        url = self.upstream.url(b"/v1/models?limit=1000")

        async def send(account: Account, credential: Credential) -> Any:
            return await self.upstream.ask(b"GET", url, Headers(), credential)

        outcome = await Failover(self.pool, accept=lambda code: code == 200).attempt(send)
        if outcome.response is None:
            problems = "; ".join(p.reason for p in outcome.problems)
            raise APIError(502, "Cannot list models: " + (problems or "no account"))
        data = json.loads(await read_small(outcome.response)).get("data", [])
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


class InferenceProfiles(Resource):
    """C{GET /inference-profiles[?type=...]} and C{GET /inference-profiles/{id}}."""

    isLeaf = True
    dialect = BEDROCK

    def __init__(self, catalogue: ModelCatalogue, gatekeeper: Gatekeeper) -> None:
        super().__init__()
        self._catalogue = catalogue
        self._gatekeeper = gatekeeper

    def render(self, request: IRequest) -> int | bytes:
        return render_json(request, self._answer(request),
                           APIError(502, "Cannot list inference profiles."), BEDROCK)

    async def _answer(self, request: IRequest) -> dict[str, Any]:
        if request.method not in (b"GET", b"HEAD"):
            raise APIError(405, "Inference profiles are read with GET.")
        if presented_token(request) is not None:
            self._gatekeeper.admit(request)
        profiles = [profile(m) for m in await self._catalogue.models()]
        segments = [s for s in request.postpath if s]
        if segments:
            wanted = unquote(b"/".join(segments).decode("utf-8", "replace"))
            try:
                model = bedrock_model(wanted)
            except APIError:
                model = wanted
            for candidate in profiles:
                if candidate["inferenceProfileId"] in (wanted, PROFILE_PREFIX + model):
                    return candidate
            raise APIError(404, f"Inference profile {wanted} not found.", "not_found_error")
        kinds = request.args.get(b"type", [])
        if kinds and b"SYSTEM_DEFINED" not in kinds:
            profiles = []
        return {"inferenceProfileSummaries": profiles}

