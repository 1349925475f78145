"""
What a router token opens upstream (L{linkrouter.surface}): path checks, the default
allowlist, C{--allow-upstream} rules from flags and the environment, and the Messages
route that uses them; JSON errors everywhere under /api, /v1 and the dialect routes.
"""

from __future__ import annotations

import json

import treq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from linkrouter import surface as surface_module
from linkrouter.dialects import messages_route
from linkrouter.errors import APIError
from linkrouter.resource import admin_tree, build_tree, not_found
from linkrouter.surface import DEFAULT_SURFACE, Rule, RuleError, Surface, path_problem

from .test_proxy import world

#: Paths that try to leave the checked path, each as a client could send it.
TRICKS = [
    b"/v1/../api/oauth/profile",
    b"/v1/./messages",
    b"/v1/%2e%2e/api/oauth/profile",
    b"/v1/%2E%2E/api/oauth/profile",
    b"/v1/.%2e/api/oauth/profile",
    b"/v1/messages%2f..%2f..%2fapi",
    b"/v1/messages%2F..",
    b"/v1/models%5c..%5capi",
    b"/v1/models%5C..",
    b"/v1/models\\..\\api",
    b"/v1//messages",
    b"/v1/models/%zz",
    b"/v1/models/\xc3\xa4",
    b"/v1/models/a<b>",
]


def refused(case: SynchronousTestCase, surface: Surface, method: bytes, target: bytes,
            status: int) -> str:
    error = case.assertRaises(APIError, surface.target, method, target)
    case.assertEqual(error.status, status, target)
    return error.message


class PathCheckTests(SynchronousTestCase):
    """Only plain paths pass; every trick is a 400 naming what is wrong."""

    def test_tricks_refused(self) -> None:
        """Dot segments, //, backslashes, encoded . / \\ and odd characters: 400."""
        for target in TRICKS:
            message = refused(self, DEFAULT_SURFACE, b"POST", target, 400)
            self.assertIn("refused", message)
        error = self.assertRaises(APIError, DEFAULT_SURFACE.target, b"GET", TRICKS[0])
        self.assertEqual(error.error_type, "invalid_request_error")

    def test_reasons(self) -> None:
        """The message says which rule the path broke."""
        self.assertIn("'..'", path_problem(b"/v1/../x") or "")
        self.assertIn("backslash", path_problem(b"/v1\\x") or "")
        self.assertIn("percent-encoded", path_problem(b"/v1/%2E") or "")
        self.assertIn("'//'", path_problem(b"/v1//x") or "")
        self.assertIsNone(path_problem(b"/v1/models/claude-opus-5-5"))

    def test_bad_query_refused(self) -> None:
        """A query with characters a URL may not carry raw is refused too."""
        refused(self, DEFAULT_SURFACE, b"GET", b"/v1/models?x=<script>", 400)
        refused(self, DEFAULT_SURFACE, b"GET", b"/v1/models?x=%g1", 400)

    def test_plain_target_unchanged(self) -> None:
        """A plain path and query come back byte for byte (that is what goes upstream)."""
        for method, target in ((b"POST", b"/v1/messages"),
                               (b"POST", b"/v1/messages?beta=true"),
                               (b"POST", b"/v1/messages/count_tokens?beta=true"),
                               (b"GET", b"/v1/models"),
                               (b"GET", b"/v1/models?limit=2&after_id=a%2Fb"),
                               (b"GET", b"/v1/models/claude-opus-5-5"),
                               (b"GET", b"/v1/models/claude%3Aopus@x")):
            self.assertEqual(DEFAULT_SURFACE.target(method, target), target)


class DefaultSurfaceTests(SynchronousTestCase):
    """By default only the inference calls of DESIGN section 8 are open."""

    def test_closed(self) -> None:
        """Files, batches, organizations, OAuth paths and other methods: 404."""
        for method, target in ((b"GET", b"/api/oauth/profile"),
                               (b"POST", b"/api/oauth/claude_cli/create_api_key"),
                               (b"GET", b"/v1/files"),
                               (b"DELETE", b"/v1/files/file_1"),
                               (b"GET", b"/v1/messages/batches"),
                               (b"GET", b"/v1/messages/batches/b_1/results"),
                               (b"GET", b"/v1/organizations/me"),
                               (b"GET", b"/v1/messages"),
                               (b"PUT", b"/v1/messages"),
                               (b"PATCH", b"/v1/messages"),
                               (b"TRACE", b"/v1/messages"),
                               (b"FOO", b"/v1/messages"),
                               (b"POST", b"/v1/models"),
                               (b"GET", b"/v1/models/a/b"),
                               (b"GET", b"/v1/models/"),
                               (b"GET", b"/v1/m%65ssages")):
            message = refused(self, DEFAULT_SURFACE, method, target, 404)
            self.assertIn("--allow-upstream", message)
            self.assertIn(target.split(b"?")[0].decode(), message)

    def test_not_found_type(self) -> None:
        """The 404 is a not_found_error."""
        error = self.assertRaises(APIError, DEFAULT_SURFACE.target, b"GET", b"/v1/files")
        self.assertEqual(error.error_type, "not_found_error")


class OpenedMemoTests(SynchronousTestCase):
    """A target once checked and opened is looked up, not checked again, per request."""

    def counted(self) -> list[bytes]:
        calls: list[bytes] = []
        real = surface_module.split_target

        def split_target(target: bytes) -> tuple[bytes, bytes | None]:
            calls.append(target)
            return real(target)

        self.patch(surface_module, "split_target", split_target)
        return calls

    def test_repeated_target_checked_once(self) -> None:
        calls = self.counted()
        surface = Surface()
        for _ in range(3):
            self.assertEqual(surface.target(b"POST", b"/v1/messages?beta=true"),
                             b"/v1/messages?beta=true")
        self.assertEqual(calls, [b"/v1/messages?beta=true"])

    def test_refused_checked_every_time(self) -> None:
        calls = self.counted()
        surface = Surface()
        for target, status in ((b"/v1/messages/../admin", 400), (b"/v1/files", 404)) * 2:
            with self.assertRaises(APIError) as caught:
                surface.target(b"POST", target)
            self.assertEqual(caught.exception.status, status)
        self.assertEqual(len(calls), 4)
        with self.assertRaises(APIError):
            surface.target(b"GET", b"/v1/messages?beta=true")  # opened for POST only

    def test_bounded(self) -> None:
        surface = Surface()
        for i in range(surface_module._MEMO_SIZE + 10):
            surface.target(b"GET", b"/v1/models/m%d" % i)
        self.assertLessEqual(len(surface._opened), surface_module._MEMO_SIZE)
        self.assertEqual(surface, Surface())


class RuleTests(SynchronousTestCase):
    """C{--allow-upstream} rules: what they open and what they refuse to be."""

    def test_rest_wildcard(self) -> None:
        """A final * opens the path above it and everything below, for that method."""
        surface = Surface.opening(["GET /v1/files/*"])
        for target in (b"/v1/files", b"/v1/files/f_1", b"/v1/files/f_1/content?x=1"):
            self.assertEqual(surface.target(b"GET", target), target)
        refused(self, surface, b"DELETE", b"/v1/files/f_1", 404)
        refused(self, surface, b"GET", b"/v1/filesx", 404)
        refused(self, surface, b"GET", b"/v1/files/../oauth", 400)

    def test_parameter_segment(self) -> None:
        """{name} matches exactly one non-empty segment."""
        surface = Surface.opening(["delete /v1/files/{file_id}"])
        self.assertEqual(surface.target(b"DELETE", b"/v1/files/f_1"), b"/v1/files/f_1")
        refused(self, surface, b"DELETE", b"/v1/files", 404)
        refused(self, surface, b"DELETE", b"/v1/files/f_1/content", 404)

    def test_defaults_kept(self) -> None:
        """Opening more keeps the defaults open."""
        surface = Surface.opening(["GET /v1/files/*"])
        self.assertEqual(surface.target(b"POST", b"/v1/messages"), b"/v1/messages")

    def test_bad_rules(self) -> None:
        """Each bad rule is a L{RuleError} with one line saying why."""
        for text, why in (("/v1/files", "METHOD /v1/path"),
                          ("GET /v1/files extra", "METHOD /v1/path"),
                          ("FOO /v1/files", "unknown method"),
                          ("GET /api/oauth/profile", "under /v1/"),
                          ("GET v1/files", "under /v1/"),
                          ("GET /v1/", "under /v1/"),
                          ("GET /v1/../api", "'..'"),
                          ("GET /v1/%2e%2e/api", "percent-encoded"),
                          ("GET /v1//files", "'//'"),
                          ("GET /v1/*/files", "'*' may only"),
                          ("GET /v1/files*", "'*' may only"),
                          ("GET /v1/files\\x", "backslash")):
            error = self.assertRaises(RuleError, Rule.parse, text)
            self.assertIn(why, str(error), text)
            self.assertEqual(len(str(error).splitlines()), 1)


def _request(uri: bytes, method: bytes = b"GET") -> DummyRequest:
    request = DummyRequest([])
    request.uri = uri
    request.method = method
    request.content = None
    return request


class MessagesRouteTests(SynchronousTestCase):
    """The Messages route sends upstream exactly the target the surface checked."""

    def test_legacy_prefix(self) -> None:
        """The legacy prefix is stripped before the check."""
        route = messages_route(b"/api/latest/anthropic")
        out = route(_request(b"/api/latest/anthropic/v1/messages?beta=true", b"POST"))
        self.assertEqual(out.path, b"/v1/messages?beta=true")
        error = self.assertRaises(APIError, route,
                                  _request(b"/api/latest/anthropic/api/oauth/profile"))
        self.assertEqual(error.status, 404)

    def test_encoded_prefix(self) -> None:
        """A prefix reached through percent-encoding (routed, but not literal) is a 404."""
        route = messages_route(b"/api/latest/anthropic")
        error = self.assertRaises(APIError, route,
                                  _request(b"/api/l%61test/anthropic/v1/models"))
        self.assertEqual(error.status, 404)

    def test_surface_given(self) -> None:
        """The route uses the surface it is given."""
        route = messages_route(b"", Surface.opening(["GET /v1/files/*"]))
        self.assertEqual(route(_request(b"/v1/files/f_1")).path, b"/v1/files/f_1")


class JSONErrorTests(SynchronousTestCase):
    """Every router answer under /api, /v1 and the dialect routes is Anthropic JSON."""

    def assertJSONError(self, response: object, status: int) -> None:
        self.assertEqual(response.code, status)  # type: ignore[attr-defined]
        content_type = response.headers.getRawHeaders(b"content-type")  # type: ignore
        self.assertEqual(content_type, [b"application/json"])
        body = json.loads(self.successResultOf(treq.content(response)))
        self.assertEqual(body["type"], "error")
        self.assertIn(body["error"]["type"], ("not_found_error", "invalid_request_error"))

    def test_client_tree(self) -> None:
        """Unknown names and bare directories under /api and /v1: JSON 404, no HTML."""
        w = world(self)
        for method, path in (("GET", "/api"), ("GET", "/api/"), ("POST", "/api"),
                             ("GET", "/api/nope"), ("GET", "/api/latest"),
                             ("GET", "/api/latest/"), ("DELETE", "/api/latest/nope"),
                             ("GET", "/api/latest/anthropic"), ("GET", "/api/tokens"),
                             ("POST", "/api/tokens"), ("GET", "/v1"), ("GET", "/nope")):
            response = self.successResultOf(w.request(method, path, headers={}))
            self.assertJSONError(response, 404)

    def test_method_not_allowed_json(self) -> None:
        """Wrong methods on the probes and /health: JSON 405 with an Allow header."""
        w = world(self)
        for method, path in (("POST", "/api/hello"), ("DELETE", "/health"), ("PUT", "/")):
            response = self.successResultOf(w.request(method, path, headers={}))
            self.assertJSONError(response, 405)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])

    def test_forbidden_path_json(self) -> None:
        """A closed upstream path through the whole tree: JSON 404, nothing upstream."""
        w = world(self)
        for method, path in (("GET", "/v1/files"), ("DELETE", "/v1/files/file_1"),
                             ("GET", "/api/latest/anthropic/api/oauth/profile"),
                             ("PUT", "/v1/messages")):
            self.assertJSONError(self.successResultOf(w.request(method, path)), 404)
        self.assertEqual(w.upstream.received, [])

    def test_admin_tree(self) -> None:
        """The --admin-listen tree answers JSON 404 under /api too."""
        from treq.testing import StubTreq

        root = admin_tree({b"tokens": not_found("admin")})
        client = StubTreq(root)
        for method, path in (("GET", "/api"), ("GET", "/api/nope"), ("PUT", "/api/x/y")):
            response = self.successResultOf(client.request(method, "http://admin" + path))
            self.assertJSONError(response, 404)

    def test_tree_without_admin(self) -> None:
        """With the admin API elsewhere, /api/tokens on the client tree is a JSON 404."""
        from treq.testing import StubTreq

        root = build_tree(not_found("m"), not_found("m"), None, frozenset({"anthropic"}))
        client = StubTreq(root)
        for method in ("GET", "POST", "DELETE"):
            response = self.successResultOf(
                client.request(method, "http://router/api/tokens/x", data=b"{}"))
            self.assertJSONError(response, 404)
