# -*- test-case-name: tests.unit.test_admin,tests.integration.test_admin -*-
"""
The admin API: issue, list, show (with usage per window), change (label, limits) and
revoke router tokens; usage reports (L{linkrouter.adminusage}); the upstream accounts
(L{linkrouter.adminaccounts}); the audit trail (L{linkrouter.adminaudit}), where every
change made here is recorded with who made it (L{linkrouter.audit}).

Every call needs C{Authorization: Bearer <admin key>}, compared in constant time. The
request and response of C{POST /api/tokens} keep link-assistant-router's field names
(C{ttl_hours}, C{label}, C{token}); the store keeps the token's id and metadata, never
the token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from linkrouter.adminguard import AdminGuard
from linkrouter.audit import AuditTrail, actor_of, issued_detail, mark_actor, updated_detail
from linkrouter.errors import APIError, Dialect, anthropic_style, render_json, write_error
from linkrouter.labels import MAX_LABEL_LENGTH, label_problem  # noqa: F401 - re-exported
from linkrouter.ledger import GroupingError, check_group_by
from linkrouter.limits import Limits, LimitsError
from linkrouter.store import RevocationCache, TokenRecord, TokenStore
from linkrouter.timefmt import isoformat
from linkrouter.tokens import TokenAuthority

if TYPE_CHECKING:
    from linkrouter.adminaccounts import AccountAdmin

DEFAULT_TTL_HOURS = 24
MAX_TTL_HOURS = 10 * 366 * 24  # ten years; anything longer is a mistake
MAX_ADMIN_BODY = 64 * 1024


def _bad(message: str) -> APIError:
    return APIError(400, message, "invalid_request_error")


@frozen
class IssueRequest:
    """A validated C{POST /api/tokens} body."""

    ttl_hours: int
    label: str
    limits: Limits | None = None

    @classmethod
    def parse(cls, raw: bytes) -> IssueRequest:
        """
        Validate a request body.

        @raise APIError: 400 with the reason.
        """
        return cls.from_json(_json_body(raw))

    @classmethod
    def from_json(cls, data: Any) -> IssueRequest:
        """Validate parsed JSON (the CLI builds the same object from its flags)."""
        if not isinstance(data, dict):
            raise _bad('The request body must be a JSON object, e.g. {"ttl_hours": 24}.')
        unknown = sorted(set(data) - {"ttl_hours", "label", "limits"})
        if unknown:
            raise _bad(f"Unknown field(s): {', '.join(unknown)[:200]}. "
                       "Known: ttl_hours, label, limits.")
        ttl = data.get("ttl_hours", DEFAULT_TTL_HOURS)
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise _bad("ttl_hours must be a whole number of hours.")
        if ttl <= 0:
            raise _bad("ttl_hours must be at least 1.")
        if ttl > MAX_TTL_HOURS:
            raise _bad(f"ttl_hours must be at most {MAX_TTL_HOURS} (ten years).")
        return cls(ttl_hours=ttl, label=_checked_label(data.get("label", "")),
                   limits=_checked_limits(data.get("limits")))


def _json_body(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("The request body is not valid JSON.") from None


def _checked_label(label: object) -> str:
    if label is None:
        label = ""
    if not isinstance(label, str):
        raise _bad("label must be a string.")
    problem = label_problem(label)
    if problem is not None:
        raise _bad(problem)
    return label


def _checked_limits(value: object) -> Limits | None:
    try:
        return Limits.from_json(value, field="limits")
    except LimitsError as e:
        raise _bad(str(e)[:500]) from None


@frozen
class UpdateRequest:
    """A validated C{PATCH /api/tokens/{id}} body: each field is changed only if given."""

    label: str | None = None
    limits: Limits | None = None
    set_limits: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> UpdateRequest:
        """
        Validate a request body.

        @raise APIError: 400 with the reason.
        """
        data = _json_body(raw)
        if not isinstance(data, dict):
            raise _bad('The request body must be a JSON object, e.g. {"limits": {"rpm": 60}}.')
        unknown = sorted(set(data) - {"label", "limits"})
        if unknown:
            raise _bad(f"Unknown field(s): {', '.join(unknown)[:200]}. Known: label, limits.")
        label = _checked_label(data["label"]) if "label" in data else None
        return cls(label=label, limits=_checked_limits(data.get("limits")),
                   set_limits="limits" in data)


@frozen
class TokenAdmin:
    """The token lifecycle, shared by the admin API (and, through the store, the CLI)."""

    authority: TokenAuthority
    store: TokenStore
    revocations: RevocationCache
    clock: IReactorTime
    #: Told of every change of a token's own limits made here (this router's policy
    #: applies it at once; other routers poll the store for it).
    limits_changed: Callable[[str, Limits | None], None] | None = None

    async def issue(self, ask: IssueRequest) -> dict[str, Any]:
        token, claims = self.authority.mint(ask.label, ask.ttl_hours * 3600)
        record = TokenRecord(
            id=claims.id,
            label=claims.label,
            created_at=claims.issued_at,
            expires_at=claims.expires_at,
            limits=ask.limits,
        )
        await self.store.insert(record)
        if self.limits_changed is not None and ask.limits is not None:
            self.limits_changed(claims.id, ask.limits)
        return {
            "token": token,
            "id": claims.id,
            "label": claims.label,
            "ttl_hours": ask.ttl_hours,
            "created_at": isoformat(claims.issued_at),
            "expires_at": isoformat(claims.expires_at),
            "limits": None if ask.limits is None else ask.limits.to_json(),
        }

    async def list(self) -> dict[str, Any]:
        records = await self.store.list()
        return {"tokens": [r.to_json() for r in records]}

    async def show(self, token_id: str) -> dict[str, Any]:
        """The token's record with its C{usage} per window (L{windows})."""
        token_id = _token_id(token_id)
        record: TokenRecord | None = await self.store.get(token_id)
        if record is None:
            raise _not_found(token_id)
        return {**record.to_json(), "usage": await self.windows(token_id)}

    async def windows(self, token_id: str) -> dict[str, dict[str, Any]]:
        """
        A token's usage in the windows C{5h}, C{1d}, C{7d}, C{30d} (whole hours, up to
        now) and C{total}: requests, tokens of each kind and C{cost_usd}.
        """
        windows: dict[str, dict[str, Any]] = await self.store.token_windows(
            _token_id(token_id), int(self.clock.seconds()))
        return windows

    async def usage(self, since: int, until: int | None = None,
                    group_by: Sequence[str] = ()) -> dict[str, Any]:
        """
        Usage from C{since} up to C{until} (Unix seconds, by the hour) grouped by
        C{group_by} (token, model, account, day or hour): C{{"rows", "totals"}}.

        @raise APIError: 400 naming C{group_by} or C{until} when either is wrong.
        """
        try:
            keys = check_group_by(group_by)
        except GroupingError as e:
            raise _bad(f"group_by: {e}") from None
        if until is not None and until < since:
            raise _bad("until: must not be before since")
        report: dict[str, Any] = await self.store.usage_report(since, until, keys)
        return report

    async def update(self, token_id: str, ask: UpdateRequest) -> dict[str, Any]:
        token_id = _token_id(token_id)
        record: TokenRecord | None = await self.store.update(
            token_id, ask.label, ask.limits, ask.set_limits, int(self.clock.seconds()))
        if record is None:
            raise _not_found(token_id)
        if ask.set_limits and self.limits_changed is not None:
            self.limits_changed(token_id, record.limits)
        return record.to_json()

    async def revoke(self, token_id: str) -> dict[str, Any]:
        token_id = _token_id(token_id)
        record: TokenRecord | None = await self.store.revoke(token_id, int(self.clock.seconds()))
        if record is None:
            raise _not_found(token_id)
        self.revocations.add(token_id)
        return record.to_json()


def _not_found(token_id: str) -> APIError:
    return APIError(404, f"No token with id {token_id}.", "not_found_error")


def _token_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise APIError(404, "No such token: token ids are UUIDs.", "not_found_error") from None


def _refused_early(guard: AdminGuard, request: IRequest) -> tuple[APIError, Dialect] | None:
    """The guard's refusal of C{request} (made with its headers only), or C{None}."""
    try:
        guard.check(request)
    except APIError as error:
        return error, _keeping_retry_after(request)
    return None


def _keeping_retry_after(request: IRequest) -> Dialect:
    """Anthropic's error shape, with the C{retry-after} the guard set on C{request}."""

    def style(error: APIError, headers: Headers) -> bytes:
        retry = request.responseHeaders.getRawHeaders(b"retry-after")
        if retry:
            headers.setRawHeaders(b"retry-after", retry)
        return anthropic_style(error, headers)

    return Dialect("admin", style)


class _AdminResource(Resource):
    """An admin endpoint: checks the admin key, answers JSON (or an Anthropic error)."""

    isLeaf = True

    def __init__(self, guard: AdminGuard) -> None:
        super().__init__()
        self._guard = guard

    def refuse_early(self, request: IRequest) -> tuple[APIError, Dialect] | None:
        """A missing or wrong admin key is refused before the body is read."""
        return _refused_early(self._guard, request)

    def render(self, request: IRequest) -> int | bytes:
        return render_json(request, self._authorized_dispatch(request),
                           APIError(500, "The token store failed; nothing was changed."))

    async def _authorized_dispatch(self, request: IRequest) -> dict[str, Any]:
        mark_actor(request, self._guard.check(request))
        return await self._dispatch(request, [s for s in request.postpath if s])

    async def _dispatch(self, request: IRequest, segments: list[bytes]) -> dict[str, Any]:
        raise APIError(404, "No such admin route.", "not_found_error")


class TokensResource(_AdminResource):
    """C{/api/tokens} and C{/api/tokens/{id}}; each change made is in the audit trail."""

    def __init__(self, admin: TokenAdmin, guard: AdminGuard, trail: AuditTrail) -> None:
        super().__init__(guard)
        self._admin = admin
        self._trail = trail

    async def _dispatch(self, request: IRequest, segments: list[bytes]) -> dict[str, Any]:
        method = request.method
        if not segments:
            if method == b"POST":
                issued = await self._admin.issue(IssueRequest.parse(_body(request)))
                self._trail.record(actor_of(request), "token.issued", issued["id"],
                                   issued_detail(issued))
                return issued
            if method == b"GET":
                return await self._admin.list()
            raise _not_allowed(request, b"GET, POST")
        if len(segments) == 1:
            token_id = segments[0].decode("utf-8", "replace")
            if method == b"GET":
                return await self._admin.show(token_id)
            if method == b"PATCH":
                return await self._update(request, token_id, UpdateRequest.parse(_body(request)))
            if method == b"DELETE":
                revoked = await self._admin.revoke(token_id)
                self._trail.record(actor_of(request), "token.revoked", revoked["id"],
                                   {"label": revoked["label"]})
                return revoked
            raise _not_allowed(request, b"GET, PATCH, DELETE")
        return await super()._dispatch(request, segments)

    async def _update(self, request: IRequest, token_id: str,
                      ask: UpdateRequest) -> dict[str, Any]:
        """PATCH: the change, recorded with what each field was before and after."""
        before: TokenRecord | None = await self._admin.store.get(_token_id(token_id))
        after = await self._admin.update(token_id, ask)
        self._trail.record(actor_of(request), "token.updated", after["id"],
                           updated_detail(before, after, ask.label is not None,
                                          ask.set_limits))
        return after


def _body(request: IRequest) -> bytes:
    raw: bytes = request.content.read(MAX_ADMIN_BODY + 1) if request.content else b""
    if len(raw) > MAX_ADMIN_BODY:
        raise APIError(413, "Admin requests are small; this body is too large.")
    return raw


def admin_resources(admin: TokenAdmin, accounts: AccountAdmin,
                    guard: AdminGuard, trail: AuditTrail) -> dict[bytes, Resource]:
    """The admin endpoints, by their name under C{/api}."""
    # imported here: adminusage, adminaccounts and adminaudit build on this module's
    # resources
    from linkrouter.adminaccounts import AccountsResource
    from linkrouter.adminaudit import AuditResource
    from linkrouter.adminusage import UsageResource

    return {
        b"tokens": TokensResource(admin, guard, trail),
        b"accounts": AccountsResource(accounts, guard, trail),
        b"usage": UsageResource(admin, guard),
        b"audit": AuditResource(trail, guard),
    }


def _not_allowed(request: IRequest, allowed: bytes) -> APIError:
    request.responseHeaders.setRawHeaders(b"allow", [allowed])
    return APIError(
        405,
        f"Method {request.method.decode('ascii', 'replace')} is not allowed here "
        f"(allowed: {allowed.decode()}).",
        "invalid_request_error",
    )


class MetricsResource(Resource):
    """
    C{GET /metrics} in the Prometheus text format: behind the admin key on the admin
    surface, open on a C{--metrics-listen} endpoint (C{admin_key} None).
    """

    isLeaf = True

    def __init__(self, metrics: Any, guard: AdminGuard | None = None) -> None:
        super().__init__()
        self._metrics = metrics
        self._guard = guard

    def refuse_early(self, request: IRequest) -> tuple[APIError, Dialect] | None:
        """Behind the admin key, a missing or wrong key is refused before any body."""
        return _refused_early(self._guard, request) if self._guard is not None else None

    def render(self, request: IRequest) -> int | bytes:
        try:
            if self._guard is not None:
                self._guard.check(request)
            if request.method not in (b"GET", b"HEAD"):
                raise _not_allowed(request, b"GET")
        except APIError as error:
            write_error(request, error)
            return NOT_DONE_YET
        body: bytes
        content_type: str
        body, content_type = self._metrics.exposition()
        request.responseHeaders.setRawHeaders(b"content-type", [content_type.encode()])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        return body
