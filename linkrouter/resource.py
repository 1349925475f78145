# -*- test-case-name: tests.unit.test_surface,tests.integration.test_integration -*-
"""
The resource tree.

    /health                         200 ok, no auth
    HEAD /, HEAD /api/hello         Claude Code's start-up probes, no auth
    /v1/...                         Messages dialect (token gate -> proxy)
    /api/latest/anthropic/...       the same, legacy prefix stripped
    /api/tokens[/{id}], /api/accounts   admin API (unless it has listeners of its own)
    /console/...                    the admin console, where the admin API is (router.py)
    /model/..., /inference-profiles, .../projects/...   Bedrock and Vertex dialects

The site that serves it (its requests, connections and drain) is L{linkrouter.site}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from linkrouter.admin import MetricsResource
from linkrouter.errors import APIError, ErrorResource, write_error


class PlainText(Resource):
    """A fixed plain-text answer to GET and HEAD, without auth."""

    isLeaf = True

    def __init__(self, text: bytes) -> None:
        super().__init__()
        self._text = text

    def render(self, request: IRequest) -> int | bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request, b"GET, HEAD")
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        return self._text


def _method_not_allowed(request: IRequest, allowed: bytes) -> int:
    method = request.method.decode("ascii", "replace")
    request.responseHeaders.setRawHeaders(b"allow", [allowed])
    write_error(request, APIError(405, f"Method {method} is not allowed here.",
                                  "invalid_request_error"))
    return NOT_DONE_YET


class Branch(Resource):
    """
    A node whose static children are tried first; any other path goes to C{default}.
    Itself it answers with C{own} (a 404 unless given).
    """

    def __init__(self, default: IResource, own: IResource | None = None) -> None:
        super().__init__()
        self._default = default
        self._own = own or not_found()

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return self._default

    def render(self, request: IRequest) -> int | bytes:
        return self._own.render(request)


class Root(Resource):
    """The root: HEAD / answers for Claude Code's probe; unknown paths get a JSON 404."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"" and not request.postpath:
            return self  # "/" itself
        return not_found()

    def render(self, request: IRequest) -> int | bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request, b"GET, HEAD")
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        return b"linkrouter: send Anthropic API requests to /v1/ with a router token\n"


def not_found(message: str = "No such route on this router.") -> ErrorResource:
    return ErrorResource(APIError(404, message, "not_found_error"))


def not_served(dialect: str) -> ErrorResource:
    return ErrorResource(
        APIError(
            403,
            f"This router does not serve the {dialect} dialect (--api-format).",
            "permission_error",
        )
    )


def build_tree(
    messages: IResource,
    legacy_messages: IResource,
    admin: Mapping[bytes, IResource] | None,
    api_formats: frozenset[str],
    bedrock: IResource | None = None,
    profiles: IResource | None = None,
    vertex: IResource | None = None,
    metrics: IResource | None = None,
) -> Resource:
    """
    Assemble the client-facing tree.

    @param messages: serves C{/v1/...} (already behind the token gate).
    @param legacy_messages: serves C{/api/latest/anthropic/...}.
    @param admin: the admin endpoints by name under C{/api}, or C{None} when the admin
        API has listeners of its own.
    @param bedrock: serves C{/model/...} (Bedrock runtime), or C{None} (404).
    @param profiles: serves C{/inference-profiles} (Bedrock control plane), or C{None}.
    @param vertex: serves Vertex paths, or C{None} (404).
    @param metrics: serves C{/metrics} (behind the admin key), or C{None}.
    """
    # A dialect the router does not serve has no route of its own: its paths answer in
    # the router's own (Anthropic) shape, as every other path it does not serve.
    def dialect(name: str, served: IResource | None, label: str) -> IResource:
        if name not in api_formats:
            return not_served(label)
        return served or not_found(f"The {label} dialect is not available in this version.")

    root = Root()
    root.putChild(b"health", PlainText(b"ok"))

    anthropic_v1 = dialect("anthropic", messages, "Anthropic Messages")
    anthropic_legacy = dialect("anthropic", legacy_messages, "Anthropic Messages")
    vertex_resource = dialect("vertex", vertex, "Vertex")
    bedrock_resource = dialect("bedrock", bedrock, "Bedrock")
    profiles_resource = dialect("bedrock", profiles, "Bedrock")

    v1 = Branch(anthropic_v1)
    v1.putChild(b"projects", vertex_resource)
    root.putChild(b"v1", v1)
    root.putChild(b"projects", vertex_resource)
    root.putChild(b"model", bedrock_resource)
    root.putChild(b"inference-profiles", profiles_resource)

    api = Branch(not_found())
    latest = Branch(not_found())
    latest.putChild(b"anthropic", Branch(anthropic_legacy))
    api.putChild(b"latest", latest)
    api.putChild(b"hello", PlainText(b""))
    for name, endpoint in (admin or {}).items():
        api.putChild(name, endpoint)
    root.putChild(b"api", api)
    if metrics is not None:
        root.putChild(b"metrics", metrics)
    return root


def admin_tree(admin: Mapping[bytes, IResource], metrics: IResource | None = None) -> Resource:
    """The tree served on C{--admin-listen} endpoints: the admin API, /metrics, /health."""
    root = Root()
    root.putChild(b"health", PlainText(b"ok"))
    api = Branch(not_found())
    for name, endpoint in admin.items():
        api.putChild(name, endpoint)
    root.putChild(b"api", api)
    if metrics is not None:
        root.putChild(b"metrics", metrics)
    return root


def metrics_tree(metrics: Any) -> Resource:
    """The tree served on C{--metrics-listen} endpoints: /metrics without a key, /health."""
    root = Root()
    root.putChild(b"health", PlainText(b"ok"))
    root.putChild(b"metrics", MetricsResource(metrics))
    return root
