# -*- test-case-name: tests.unit.test_surface,tests.integration.test_surface -*-
"""
What a router token opens upstream (DESIGN section 8): the inference calls, nothing else.

By default a Messages-dialect request reaches the upstream only as one of

    POST /v1/messages
    POST /v1/messages/count_tokens
    GET  /v1/models
    GET  /v1/models/{id}

(query string kept). C{--allow-upstream "METHOD /v1/path"} opens more: a C{{name}}
segment matches any one segment, and a final C{*} matches the path above it and
everything below (C{GET /v1/files/*} opens C{/v1/files}, C{/v1/files/f_1} and
C{/v1/files/f_1/content}).

Before any of that, the path must be plain: no C{.} or C{..} segment, no empty segment
(C{//}), no backslash, no percent-encoded C{.} C{/} C{\\} (any case), no malformed
percent escape, and only the characters RFC 3986 allows in a path (query likewise). A
path that passes is sent upstream byte for byte as checked: the HTTP client leaves such
a URL unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrs import field, frozen

from linkrouter.errors import APIError

#: The calls a router token opens when the operator adds nothing.
DEFAULT_RULES = (
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "GET /v1/models",
    "GET /v1/models/{id}",
)

#: Methods an C{--allow-upstream} rule may name.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

OPTION = "--allow-upstream"

#: RFC 3986 C{pchar} without C{%} (checked separately): unreserved, sub-delims, ":", "@".
_PCHAR = re.compile(rb"^[A-Za-z0-9\-._~!$&'()*+,;=:@%]*$")
_QUERY = re.compile(rb"^[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$")
_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(rb"%(2e|2f|5c)", re.IGNORECASE)
_PARAMETER = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
_MAX_SHOWN = 200
#: How many opened targets L{Surface} remembers, and the longest it remembers.
_MEMO_SIZE = 1024
_MEMO_TARGET = 512


class RuleError(ValueError):
    """An C{--allow-upstream} rule that cannot be used; C{str()} is one line."""


def _shown(path: bytes) -> str:
    text = path.decode("ascii", "backslashreplace")
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _bad_path(path: bytes, why: str) -> APIError:
    return APIError(
        400,
        f"The path {_shown(path)} is refused: {why}. Paths with '.' or '..' segments, '//', "
        "backslashes or percent-encoded '.', '/' or '\\' never reach the upstream.",
        "invalid_request_error",
    )


def path_problem(path: bytes) -> str | None:
    """Why C{path} (without its query) is not a plain path, or C{None} when it is."""
    if not path.startswith(b"/"):
        return "it does not start with '/'"
    if b"\\" in path:
        return "it contains a backslash"
    if _PERCENT.search(path):
        return "it has a malformed percent escape"
    if _ENCODED_SEPARATOR.search(path):
        return "it has a percent-encoded '.', '/' or '\\'"
    if not _PCHAR.match(path.replace(b"/", b"")):
        return "it has characters a URL path may not carry unencoded"
    segments = path[1:].split(b"/")
    if any(s in (b".", b"..") for s in segments):
        return "it has a '.' or '..' segment"
    if any(not s for s in segments[:-1]):
        return "it has an empty segment ('//')"
    return None


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """
    A request target's path and query (C{None} without a C{?}), both checked.

    @raise APIError: 400 C{invalid_request_error} when either is not plain.
    """
    path, sep, query = target.partition(b"?")
    why = path_problem(path)
    if why is not None:
        raise _bad_path(path, why)
    if sep and (not _QUERY.match(query) or _PERCENT.search(query)):
        raise _bad_path(path, "its query string has characters a URL may not carry "
                              "unencoded, or a malformed percent escape")
    return path, (query if sep else None)


@frozen
class Rule:
    """One opened call: a method and a path pattern (see the module docstring)."""

    method: bytes
    segments: tuple[bytes | None, ...]  # None: any one segment
    rest: bool  # a final "*": this path and everything below it
    text: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        """
        Parse C{"METHOD /v1/path"}.

        @raise RuleError: saying what is wrong with it.
        """
        parts = text.split()
        if len(parts) != 2:
            raise RuleError(f"{text!r} is not 'METHOD /v1/path' (e.g. 'GET /v1/files/*')")
        method, pattern = parts[0].upper(), parts[1]
        if method not in METHODS:
            raise RuleError(f"{text!r}: unknown method {parts[0]!r}; use one of "
                            f"{', '.join(sorted(METHODS))}")
        if not pattern.startswith("/v1/") or pattern == "/v1/":
            raise RuleError(f"{text!r}: the path must be under /v1/ (e.g. /v1/files/*)")
        pieces = pattern[1:].split("/")
        rest = pieces[-1] == "*"
        if rest:
            pieces = pieces[:-1]
        segments: list[bytes | None] = []
        for piece in pieces:
            if _PARAMETER.match(piece):
                segments.append(None)
                continue
            encoded = piece.encode("ascii", "replace")
            why = path_problem(b"/" + encoded) if piece else "it has an empty segment ('//')"
            if why is None and any(c in piece for c in "*{}?"):
                why = "'*' may only be a whole last segment, '{name}' a whole segment"
            if why is not None or not piece.isascii():
                raise RuleError(f"{text!r}: {why or 'the path must be ASCII'}")
            segments.append(encoded)
        return cls(method.encode("ascii"), tuple(segments), rest, f"{method} {pattern}")

    def matches(self, method: bytes, segments: list[bytes]) -> bool:
        if method != self.method:
            return False
        fixed = len(self.segments)
        if len(segments) < fixed or (len(segments) > fixed and not self.rest):
            return False
        return all((want is None and got != b"") or want == got
                   for want, got in zip(self.segments, segments, strict=False))


def parse_rules(texts: Iterable[str]) -> tuple[Rule, ...]:
    """Parse several rules (each C{--allow-upstream} value), raising L{RuleError}."""
    return tuple(Rule.parse(text) for text in texts)


@frozen
class Surface:
    """The calls a router token may make upstream through the Messages dialect."""

    rules: tuple[Rule, ...] = parse_rules(DEFAULT_RULES)
    #: (method, target) pairs already checked and opened: a repeated request (the same
    #: call, the same query) is looked up instead of checked again. Bounded (see
    #: L{_MEMO_SIZE}, L{_MEMO_TARGET}): a client sending many targets only makes it forget.
    _opened: set[tuple[bytes, bytes]] = field(factory=set, init=False, eq=False, repr=False)

    @classmethod
    def opening(cls, extra: Iterable[str]) -> Surface:
        """The default surface plus the C{--allow-upstream} rules C{extra}."""
        return cls(parse_rules(DEFAULT_RULES) + parse_rules(extra))

    def target(self, method: bytes, target: bytes) -> bytes:
        """
        The upstream request target for a client's C{method} and C{target} (path and
        query, the router's own prefix already removed): C{target} itself, once checked.

        @raise APIError: 400 for a path that is not plain, 404 for a call not opened.
        """
        if (method, target) in self._opened:
            return target
        path, _ = split_target(target)
        segments = path[1:].split(b"/")
        if any(rule.matches(method, segments) for rule in self.rules):
            if len(target) <= _MEMO_TARGET:
                if len(self._opened) >= _MEMO_SIZE:
                    self._opened.clear()
                self._opened.add((method, target))
            return target
        shown_method = method.decode("ascii", "backslashreplace")[:20]
        raise APIError(
            404,
            f"{shown_method} {_shown(path)} is not forwarded upstream by this router: a router "
            "token opens POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models and "
            "GET /v1/models/{id}. The router's operator can open more with "
            f"{OPTION} \"METHOD /v1/path/*\".",
            "not_found_error",
        )


#: What a router token opens when the operator opens nothing more.
DEFAULT_SURFACE = Surface()
