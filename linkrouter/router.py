# -*- test-case-name: tests.unit.test_tap,tests.integration.test_tap -*-
"""
The router's collaborators, built once: secrets, the token store, the token authority,
the account pool, the upstream client, the admin API, the audit trail and the metrics
(L{build_router}),
and the resource trees they serve (L{Router.resources}).

Start-up work that may fail on bad configuration (data directory, secrets, opening and
migrating the store) happens here, before the reactor runs, and raises L{ConfigError}
naming the option.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.task import Cooperator
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import IResource

from linkrouter.accounts import AccountPool, build_accounts
from linkrouter.admin import MetricsResource, TokenAdmin, admin_resources
from linkrouter.adminaccounts import AccountAdmin
from linkrouter.adminguard import AdminGuard
from linkrouter.admission import Admitter
from linkrouter.audit import AuditTrail
from linkrouter.auditrows import AuditQueries
from linkrouter.bedrock import BEDROCK, bedrock_route
from linkrouter.books import Books, preload
from linkrouter.codeexchange import CodeExchange, treq_post
from linkrouter.config import Config
from linkrouter.console.pages import console_resource
from linkrouter.console.sessions import SessionTable
from linkrouter.controls import ControlsBook
from linkrouter.controls import preload as preload_controls
from linkrouter.credentials import claude_homes
from linkrouter.database import Database, StoreError, redact_url
from linkrouter.dialects import Aliases, Route, messages_route, vertex_route
from linkrouter.errors import MESSAGES, VERTEX, Dialect
from linkrouter.fleetrpm import fleet_rpm
from linkrouter.gate import TokenGate
from linkrouter.health import Health
from linkrouter.journal import Journal, journal_name
from linkrouter.limitsbook import LimitsBook
from linkrouter.login import Describe, Logins, PendingLogins
from linkrouter.managedbook import ManagedBook, managed_book
from linkrouter.metrics import Metrics
from linkrouter.oauth import TokenEndpoint
from linkrouter.outage import Outage
from linkrouter.parsing import ConfigError
from linkrouter.policy import Policy
from linkrouter.profiles import InferenceProfiles, ModelCatalogue
from linkrouter.proxy import Proxy
from linkrouter.relay import Streams
from linkrouter.resource import admin_tree, build_tree
from linkrouter.revocations import RevocationCache
from linkrouter.sealing import AccountKey
from linkrouter.spendbook import SpendBook
from linkrouter.state import Secrets, load_secrets
from linkrouter.store import TokenStore, prepare
from linkrouter.storerunner import StoreRunner
from linkrouter.surface import Surface
from linkrouter.tokens import Gatekeeper, TokenAuthority
from linkrouter.upstream import Upstream, http_client
from linkrouter.usage import UsageRecorder

_log = Logger(namespace="linkrouter")


@frozen
class Router:
    """The collaborators of one running router, built once and shared by its resources."""

    config: Config
    secrets: Secrets
    store: TokenStore
    revocations: RevocationCache
    usage: UsageRecorder
    gatekeeper: Gatekeeper
    pool: AccountPool
    upstream: Upstream
    admin: TokenAdmin
    metrics: Metrics
    streams: Streams
    admitter: Admitter
    accounts: AccountAdmin
    #: The managed accounts (in the store) and their place in C{pool}.
    managed: ManagedBook
    audit: AuditTrail

    def _problem(self) -> str | None:
        """Why tokens are refused now (revocations or limits unknown), or C{None}."""
        return self.revocations.problem() or self.admitter.limits.problem()

    def resources(self) -> tuple[IResource, IResource | None]:
        """The client tree, and the admin tree when the admin API has its own listeners."""
        config = self.config

        aliases = Aliases.parse(config.model_aliases)

        def gate(route: Route, dialect: Dialect) -> IResource:
            proxy = Proxy(self.pool, self.upstream, self.usage, route, dialect, self.metrics,
                          self.streams, self.admitter)
            return TokenGate(self.gatekeeper, proxy, dialect, self.metrics)

        hint = (
            "in " + self.secrets.admin_key_source
            if not self.secrets.admin_key_source.startswith("--")
            else "set by --admin-key"
        )
        sessions = SessionTable(self.admin.clock)
        guard = AdminGuard(self.secrets.admin_key, self.admin.clock, hint, sessions=sessions,
                           on_refused=self.audit.refused)
        admin = admin_resources(self.admin, self.accounts, guard, self.audit)
        guarded_metrics = MetricsResource(self.metrics, guard)
        separate = bool(config.admin_listen)
        surface = Surface.opening(config.allow_upstream)
        tree = build_tree(
            gate(messages_route(b"", surface), MESSAGES),
            gate(messages_route(b"/api/latest/anthropic", surface), MESSAGES),
            None if separate else admin,
            config.api_formats,
            bedrock=gate(bedrock_route(aliases), BEDROCK),
            profiles=InferenceProfiles(ModelCatalogue(self.pool, self.upstream),
                                       self.gatekeeper),
            vertex=gate(vertex_route(aliases), VERTEX),
            metrics=None if separate else guarded_metrics,
        )
        health = Health(self._problem)
        tree.putChild(b"health", health)
        admin_only = admin_tree(admin, guarded_metrics) if separate else None
        if admin_only is not None:
            admin_only.putChild(b"health", health)
        # The console lives where the admin API does.
        on_admin = tree if admin_only is None else admin_only
        on_admin.putChild(b"console", console_resource(
            admin, guard, sessions, on_sign_in=self.audit.signed_in,
            on_sign_out=self.audit.signed_out))
        return tree, admin_only


def build_router(config: Config, reactor: Any) -> tuple[Router, StoreRunner,
                                                       HTTPConnectionPool]:
    """Everything but the listeners. Blocking: call before the reactor runs."""
    secrets = load_secrets(config)
    for path in secrets.generated:
        _log.info("Generated a new secret file (mode 0600): {path}", path=str(path))
    _log.info("Token secret from {source}; admin key from {admin}; account key from "
              "{account}", source=secrets.token_secret_source, admin=secrets.admin_key_source,
              account=secrets.account_key_source)

    store, runner, revocations, usage, books = _token_store(config, reactor)
    authority = TokenAuthority(secrets.token_secret.encode("utf-8"), reactor)
    gatekeeper = Gatekeeper(authority, revocations.is_revoked)
    client, http_pool = http_client(reactor)
    endpoint = TokenEndpoint(client, config.oauth_token_url, reactor, config.oauth_client_id)
    accounts = AccountPool(
        build_accounts(
            config.upstream_api_key,
            config.oauth_token,
            claude_homes(config.claude_code_homes, reactor, deferToThread),
            reactor,
            endpoint,
            deferToThread,
            config.refresh_margin,
        ),
        reactor,
        config.max_cooldown,
        config.pause_at_percent,
        config.subscription_clients,
    )
    accounts.check_now()  # true from the start; warns about each account needing a login
    upstream = Upstream(
        client, config.upstream, reactor, Cooperator(scheduler=_scheduler(reactor)),
        config.upstream_timeout, config.upstream_idle_timeout,
    )
    admin = TokenAdmin(authority, store, revocations, reactor, books.limits.changed)
    metrics = Metrics(lambda: accounts.accounts, revocations.age)
    usage.metrics = metrics
    fleet = fleet_rpm(config.database, config.workers, runner)
    admitter = Admitter(Policy(reactor), books.limits, books.spend, metrics, fleet)

    def refreshed(outcome: str) -> None:
        metrics.refreshes.labels(outcome).inc()

    for account in accounts.accounts:
        account.on_refresh = refreshed
    managed = managed_book(
        Database(config.database), runner,
        AccountKey.from_secret(secrets.account_key, secrets.account_key_source), accounts,
        reactor, endpoint, config.refresh_margin, refreshed, config.store_timeout,
        store_up=revocations.loaded_at is not None)
    streams = Streams()
    revocations.subscribe(streams.revoked)
    logins = Logins(
        PendingLogins(reactor, config.oauth_authorize_url, config.oauth_client_id),
        CodeExchange(treq_post(client, reactor), config.oauth_token_url, reactor,
                     config.oauth_client_id),
        managed.store, reactor, describe=_joining(managed, accounts))
    account_admin = _account_admin(config, accounts, store, revocations, reactor, logins)
    managed.on_join = account_admin.book.apply  # a disabled account never serves
    audit = AuditTrail(store.run, AuditQueries(store.queries.placeholder), reactor)
    router = Router(config, secrets, store, revocations, usage, gatekeeper, accounts,
                    upstream, admin, metrics, streams, admitter, account_admin, managed, audit)
    return router, runner, http_pool


def _joining(managed: ManagedBook, pool: AccountPool) -> Describe:
    """
    A logged-in account joins this router's pool at once (the others' at their next
    poll) and is answered as C{GET /api/accounts} shows it.
    """

    async def describe(account_id: str) -> dict[str, Any] | None:
        record = await managed.store.get(account_id)
        if record is not None:
            managed.apply(record)
        for shown in pool.to_json()["accounts"]:
            if shown["id"] == account_id:
                return dict(shown)
        return None

    return describe


def _account_admin(config: Config, pool: AccountPool, store: TokenStore,
                   revocations: RevocationCache, reactor: Any,
                   logins: Logins | None = None) -> AccountAdmin:
    """
    The accounts' admin, with the operator's controls read from the store when it
    answered at start (else polled once it does): a disabled account never serves.
    """
    book = ControlsBook(store, pool, reactor)
    if revocations.loaded_at is not None:
        try:
            preload_controls(Database(config.database), config.store_timeout, book)
        except StoreError as e:
            _log.warn("{problem}; the account controls are applied once it answers",
                      problem=str(e))
    return AccountAdmin(pool, store, book, reactor, logins)


def _token_store(config: Config, reactor: Any) -> tuple[TokenStore, StoreRunner,
                                                         RevocationCache, UsageRecorder, Books]:
    """
    Open and migrate the store, or (PostgreSQL not answering) start without it: tokens
    are refused until it answers. Usage left in the journal by the last run is taken up.
    """
    database = Database(config.database)
    revocations_known: frozenset[str] | None = None
    books = Books(LimitsBook(None, reactor, config.default_limits), SpendBook(None, reactor))
    try:
        before, revocations_known = prepare(database, config.store_timeout)
        preload(database, config.store_timeout, books)
    except StoreError as e:
        if not e.transient:
            raise ConfigError("--database", str(e)) from None
        _log.warn("{problem}; starting anyway: router tokens are refused (503) until the "
                  "token store answers", problem=str(e))
    else:
        _log.info("Token store {url} (schema version {before} -> current)",
                  url=redact_url(config.database), before=before)
    runner = StoreRunner(database, reactor, config.store_timeout,
                         size=1 if database.kind == "sqlite" else 4)
    store = TokenStore(database.queries(), runner)
    books.limits.store = books.spend.store = store
    revocations = RevocationCache(store, clock=reactor,
                                  max_staleness=config.revocation_max_staleness)
    if revocations_known is not None:
        revocations.loaded(revocations_known)
    journal = Journal(config.data_dir / journal_name(config.worker))
    usage = UsageRecorder(
        store, reactor, journal, deferToThread,
        Outage(reactor, "usage", f"usage is kept in memory and in {journal.path} until it "
                                 "answers"),
        prices=config.prices, spend=books.spend)
    try:
        usage.replay(journal.read())
    except OSError as e:
        raise ConfigError("--data-dir", f"cannot read {journal.path}: {e.strerror}") from None
    if usage.unconfirmed:
        _log.info("Writing {n} usage batch(es) left in {path} by the last run",
                  n=len(usage.unconfirmed), path=str(journal.path))
    return store, runner, revocations, usage, books


def _scheduler(reactor: Any) -> Any:
    return lambda work: reactor.callLater(0, work)


