# -*- test-case-name: tests.test_dialects -*-
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
from typing import Any
from urllib.parse import unquote

from attrs import define
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from linkrouter.accounts import AccountPool, AccountUnavailable
from linkrouter.bodies import read_small
from linkrouter.dialects import aws_style, bedrock_model
from linkrouter.errors import APIError, render_json
from linkrouter.proxy import Upstream, upstream_headers
from linkrouter.tokens import Gatekeeper, presented_token

CACHE_SECONDS = 600.0
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
    """The upstream's model list, fetched with a pool account and kept for a while."""

    pool: AccountPool
    upstream: Upstream
    cached: list[dict[str, Any]] | None = None
    fetched_at: float | None = None

    async def models(self) -> list[dict[str, Any]]:
        now = self.upstream.reactor.seconds()
        if self.cached is not None and self.fetched_at is not None and (
                now - self.fetched_at < CACHE_SECONDS):
            return self.cached
        problems = []
        for account in self.pool.candidates(None):
            try:
                credential = await account.credential()
            except AccountUnavailable as e:
                problems.append(str(e))
                continue
            response = await self.upstream.client.get(
                self.upstream.base_url + "/v1/models?limit=1000",
                headers=upstream_headers(Headers(), credential),
                unbuffered=True, allow_redirects=False, timeout=self.upstream.timeout,
                reactor=self.upstream.reactor,
            )
            body = await read_small(response)
            if response.code != 200:
                problems.append(f"the upstream answered {response.code}")
                continue
            data = json.loads(body).get("data", [])
            self.cached = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
            self.fetched_at = now
            return self.cached
        raise APIError(502, "Cannot list models: " + ("; ".join(problems) or "no account"))


class InferenceProfiles(Resource):
    """C{GET /inference-profiles[?type=...]} and C{GET /inference-profiles/{id}}."""

    isLeaf = True

    def __init__(self, catalogue: ModelCatalogue, gatekeeper: Gatekeeper) -> None:
        super().__init__()
        self._catalogue = catalogue
        self._gatekeeper = gatekeeper

    def render(self, request: IRequest) -> int | bytes:
        return render_json(request, self._answer(request),
                           APIError(502, "Cannot list inference profiles."), aws_style)

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

