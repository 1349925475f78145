# -*- test-case-name: tests.test_service -*-
"""
Builds the router once: store, token authority, credentials, HTTP client, resources and
listeners, as one L{MultiService}.

Start-up work that may fail on bad configuration (data directory, secrets, opening and
migrating the store, parsing listen endpoints) happens here, before the reactor runs, and
raises L{ConfigError} naming the option.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Cooperator, LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import IResource

from linkrouter.access import AccessLog
from linkrouter.accounts import AccountPool, AccountWatch, build_accounts
from linkrouter.admin import MetricsResource, TokenAdmin, admin_resources
from linkrouter.adminguard import AdminGuard
from linkrouter.bedrock import BEDROCK, bedrock_route
from linkrouter.config import Config, ConfigError
from linkrouter.connections import ConnectionGuard
from linkrouter.credentials import claude_homes
from linkrouter.dialects import Aliases, Route, messages_route, vertex_route
from linkrouter.errors import MESSAGES, VERTEX, Dialect
from linkrouter.gate import TokenGate
from linkrouter.health import Health
from linkrouter.journal import NAME as JOURNAL_NAME
from linkrouter.journal import Journal
from linkrouter.metrics import Metrics
from linkrouter.oauth import TokenEndpoint
from linkrouter.outage import Outage
from linkrouter.profiles import InferenceProfiles, ModelCatalogue
from linkrouter.proxy import Proxy
from linkrouter.relay import Streams
from linkrouter.resource import RouterSite, admin_tree, build_tree, metrics_tree
from linkrouter.revocations import RevocationCache
from linkrouter.state import Secrets, load_secrets
from linkrouter.store import (
    Database,
    StoreError,
    TokenStore,
    prepare,
    redact_url,
)
from linkrouter.storerunner import StoreRunner
from linkrouter.surface import Surface
from linkrouter.systemd import Notifier
from linkrouter.tokens import Gatekeeper, TokenAuthority
from linkrouter.upstream import Upstream, http_client
from linkrouter.usage import UsageRecorder

_log = Logger(namespace="linkrouter")

#: How often revocations made elsewhere (CLI, other instances) are picked up, and usage
#: counters written.
POLL_SECONDS = 1.0
#: At stop, the last usage write gets at most this long before it goes to the journal.
STOP_WRITE_SECONDS = 2.0


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

    def resources(self) -> tuple[IResource, IResource | None]:
        """The client tree, and the admin tree when the admin API has its own listeners."""
        config = self.config

        aliases = Aliases.parse(config.model_aliases)

        def gate(route: Route, dialect: Dialect) -> IResource:
            proxy = Proxy(self.pool, self.upstream, self.usage, route, dialect, self.metrics,
                          self.streams)
            return TokenGate(self.gatekeeper, proxy, dialect, self.metrics)

        hint = (
            "in " + self.secrets.admin_key_source
            if not self.secrets.admin_key_source.startswith("--")
            else "set by --admin-key"
        )
        guard = AdminGuard(self.secrets.admin_key, self.admin.clock, hint)
        admin = admin_resources(self.admin, self.pool.to_json, guard)
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
        health = Health(self.revocations.problem)
        tree.putChild(b"health", health)
        admin_only = admin_tree(admin, guarded_metrics) if separate else None
        if admin_only is not None:
            admin_only.putChild(b"health", health)
        return tree, admin_only


class StoreService(Service):
    """
    Owns the store's runner and the two pollers that use it: the revocation refresh and
    the usage flush, each every L{POLL_SECONDS}. When the store was down at start, the
    revocation poller first migrates it, and usage is not written until that is done.

    Stop is bounded however the store behaves: calls in flight are given up, the last
    usage write gets L{STOP_WRITE_SECONDS}, and what it could not write goes to the
    usage journal (replayed at the next start).
    """

    def __init__(self, runner: StoreRunner, router: Router, clock: Any) -> None:
        self._runner = runner
        self._store = router.store
        self._revocations = router.revocations
        self._usage = router.usage
        self._migrated = router.revocations.loaded_at is not None
        self._loops = [
            LoopingCall(lambda: Deferred.fromCoroutine(self._poll_revocations())),
            LoopingCall(lambda: Deferred.fromCoroutine(self._flush())),
        ]
        self._stopped: list[Deferred[Any]] = []
        for loop in self._loops:
            loop.clock = clock

    def startService(self) -> None:  # noqa: N802 - twisted API
        super().startService()
        self._stopped = [loop.start(POLL_SECONDS, now=True) for loop in self._loops]

    async def _poll_revocations(self) -> None:
        if not self._migrated:
            try:
                before = await self._store.migrate()
            except Exception as e:  # noqa: BLE001 - logged once per outage; retried
                assert self._revocations.outage is not None
                self._revocations.outage.failed(e)
                return
            self._migrated = True
            _log.info("The token store answers (schema version {before} -> current); "
                      "loading revocations", before=before)
        try:
            await self._revocations.refresh()
        except Exception:  # noqa: BLE001 - the loop must keep running
            _log.failure("Refreshing revocations failed")

    async def _flush(self) -> None:
        if not self._migrated:
            return
        try:
            await self._usage.flush()
        except Exception:  # noqa: BLE001 - the loop must keep running
            _log.failure("Writing token usage failed")

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._runner.give_up_all("was given up: the router is stopping")
        for stopped in self._stopped:
            await stopped
        self._runner.timeout = min(self._runner.timeout, STOP_WRITE_SECONDS)
        try:
            if self._migrated:
                await self._usage.flush()
            await self._usage.save()
            if self._usage.unconfirmed:
                _log.warn("Stopping: usage of {n} request(s) could not be written to the "
                          "token store; it is kept in {path} and written at the next start",
                          n=sum(d.requests for b in self._usage.unconfirmed for d in b.deltas),
                          path=str(self._usage.journal.path if self._usage.journal else "-"))
        finally:
            self._runner.close()


class _PoolService(Service):
    def __init__(self, pool: HTTPConnectionPool) -> None:
        self._pool = pool

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()
        return self._pool.closeCachedConnections()


def build_router(config: Config, reactor: Any) -> tuple[Router, StoreRunner,
                                                       HTTPConnectionPool]:
    """Everything but the listeners. Blocking: call before the reactor runs."""
    secrets = load_secrets(config)
    for path in secrets.generated:
        _log.info("Generated a new secret file (mode 0600): {path}", path=str(path))
    _log.info("Token secret from {source}; admin key from {admin}",
              source=secrets.token_secret_source, admin=secrets.admin_key_source)

    store, runner, revocations, usage = _token_store(config, reactor)
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
    )
    accounts.check_now()  # true from the start; warns about each account needing a login
    upstream = Upstream(
        client, config.upstream, reactor, Cooperator(scheduler=_scheduler(reactor)),
        config.upstream_timeout, config.upstream_idle_timeout,
    )
    admin = TokenAdmin(authority, store, revocations, reactor)
    metrics = Metrics(accounts.to_json, revocations.age)
    for account in accounts.accounts:
        account.on_refresh = lambda outcome: metrics.refreshes.labels(outcome).inc()
    streams = Streams()
    revocations.subscribe(streams.revoked)
    router = Router(config, secrets, store, revocations, usage, gatekeeper, accounts,
                    upstream, admin, metrics, streams)
    return router, runner, http_pool


def _token_store(config: Config, reactor: Any) -> tuple[TokenStore, StoreRunner,
                                                         RevocationCache, UsageRecorder]:
    """
    Open and migrate the store, or (PostgreSQL not answering) start without it: tokens
    are refused until it answers. Usage left in the journal by the last run is taken up.
    """
    database = Database(config.database)
    revocations_known: frozenset[str] | None = None
    try:
        before, revocations_known = prepare(database, config.store_timeout)
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
    revocations = RevocationCache(store, clock=reactor,
                                  max_staleness=config.revocation_max_staleness)
    if revocations_known is not None:
        revocations.loaded(revocations_known)
    journal = Journal(config.data_dir / JOURNAL_NAME)
    usage = UsageRecorder(
        store, reactor, journal, deferToThread,
        Outage(reactor, "usage", f"usage is kept in memory and in {journal.path} until it "
                                 "answers"))
    try:
        usage.replay(journal.read())
    except OSError as e:
        raise ConfigError("--data-dir", f"cannot read {journal.path}: {e.strerror}") from None
    if usage.unconfirmed:
        _log.info("Writing {n} usage batch(es) left in {path} by the last run",
                  n=len(usage.unconfirmed), path=str(journal.path))
    return store, runner, revocations, usage


def _scheduler(reactor: Any) -> Any:
    return lambda work: reactor.callLater(0, work)


class RouterService(MultiService):
    """
    The router's top service: its children are the store, the upstream connection pool
    and the listeners (C{listeners}, C{admin_listeners}, C{other_listeners}, in the
    order given).

    It tells systemd when it is ready, reloading or stopping; on stop it drains: the
    listeners close first, idle connections close, requests in flight get
    C{shutdown_grace} seconds to finish, then whatever is left is cut and the store closes.
    Under twistd it handles SIGTERM itself (so the exit status is 0) and SIGHUP (reload
    the TLS certificate and re-read credential files).
    """

    def __init__(self, router: Router, reactor: Any, notifier: Notifier | None = None) -> None:
        super().__init__()
        self.router = router
        self.reactor = reactor
        self.notifier = notifier or Notifier({})
        self.listeners: list[StreamServerEndpointService] = []
        self.admin_listeners: list[StreamServerEndpointService] = []
        self.other_listeners: list[StreamServerEndpointService] = []
        self.sites: list[RouterSite] = []
        self.tls: list[Any] = []
        #: Called instead of raising when a listener cannot bind (twistd: print, exit 1).
        self.on_config_error: Callable[[ConfigError], None] | None = None
        #: Install SIGTERM/SIGHUP handlers when the reactor runs (twistd and the .tac).
        self.handle_signals = False
        self._watchdog: LoopingCall | None = None

    @property
    def all_listeners(self) -> list[StreamServerEndpointService]:
        return self.listeners + self.admin_listeners + self.other_listeners

    def privilegedStartService(self) -> None:  # noqa: N802 - twisted API
        """Bind the listeners; a port that cannot be bound is a configuration error."""
        Service.privilegedStartService(self)
        for child in self:
            try:
                child.privilegedStartService()
            except CannotListenError as e:
                option = "--admin-listen" if child in self.admin_listeners else "--listen"
                error = ConfigError(
                    option, f"cannot listen on {e.interface or '*'}:{e.port}: {_why_bind(e)}"
                )
                if self.on_config_error is None:
                    raise error from None
                self.on_config_error(error)

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if not self.running:
            return  # stopped before the reactor ran (a test that never runs it)
        # Signal handlers first: READY=1 tells systemd (and tests) that SIGHUP now reloads.
        if self.handle_signals:
            self._install_signals()
        Deferred.fromCoroutine(self.ports()).addCallbacks(
            self._ready, lambda f: _log.failure("A listener failed to start", f))

    def _ready(self, ports: list[IListeningPort]) -> None:
        where = ", ".join(_address(p) for p in ports)
        _log.info("linkrouter is ready on {where}", where=where)
        self.notifier.ready(f"serving on {where}")
        interval = self.notifier.watchdog_interval()
        if interval:
            self._watchdog = LoopingCall(self.notifier.watchdog)
            self._watchdog.clock = self.reactor
            self._watchdog.start(interval)

    def _install_signals(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reactor.stop)

        def reload(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def reload(self) -> Deferred[None]:
        """SIGHUP: reload TLS certificates and re-read credential files, keeping streams."""
        return Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> None:
        self.notifier.reloading()
        _log.info("Reloading (SIGHUP)")
        for tls in self.tls:
            if tls.reload():
                _log.info("TLS certificate reloaded: {subject}, valid until {until}",
                          subject=tls.subject, until=tls.not_after.isoformat())
        await self.router.pool.reread()
        self.notifier.ready("reloaded")

    def stopService(self) -> Deferred[None]:  # noqa: N802
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.notifier.stopping()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        Service.stopService(self)
        grace = self.router.config.shutdown_grace
        await gatherResults([maybeDeferred(listener.stopService)
                             for listener in self.all_listeners if listener.running],
                            consumeErrors=True)
        for site in self.sites:
            site.drain()
        deadline = self.reactor.seconds() + grace
        if any(site.inflight for site in self.sites):
            _log.info("Stopping: waiting up to {grace:g} s for requests in flight",
                      grace=grace)
        while any(site.inflight for site in self.sites) and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.05, lambda: None)
        left = sum(len(site.inflight) for site in self.sites)
        if left:
            _log.warn("Stopping: cutting {n} request(s) still in flight", n=left)
            # Streams end with their dialect's mid-stream error, not a reset.
            self.router.streams.end_all(
                "linkrouter is shutting down and its grace period (--shutdown-grace) is "
                "over; the answer is incomplete. Retry the request.")
        for site in self.sites:
            site.close()
        # Let what was written reach the clients before the reactor drops the sockets;
        # then cut what is left (a client that does not read).
        flush_until = self.reactor.seconds() + 2.0
        while (any(site.open_connections() for site in self.sites)
               and self.reactor.seconds() < flush_until):
            await deferLater(self.reactor, 0.02, lambda: None)
        for site in self.sites:
            site.close(abort=True)
        for child in reversed(list(self)):
            if child not in self.all_listeners and child.running:
                await maybeDeferred(child.stopService)

    async def ports(self) -> list[IListeningPort]:
        """The bound ports of all listeners (after start-up), e.g. to learn port 0's."""
        return [
            await listener._waitingForPort  # noqa: SLF001 - the service keeps no public handle
            for listener in self.all_listeners
        ]


def _address(port: IListeningPort) -> str:
    host = port.getHost()
    return f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}"


def _why_bind(error: CannotListenError) -> str:
    reason = error.socketError
    return getattr(reason, "strerror", None) or str(reason)


LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """
    A TCP or SSL endpoint string with C{backlog=1024} unless it sets one: Twisted's
    default of 50 makes the kernel drop handshakes under a burst of connections.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and ":backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def _listen(descriptions: tuple[str, ...], site: RouterSite, reactor: Any, option: str,
            parent: MultiService, into: list[StreamServerEndpointService]) -> None:
    for description in map(with_backlog, descriptions):
        try:
            listener = strports.service(description, site, reactor=reactor)
        except Exception as e:  # noqa: BLE001 - endpoint parsers raise many types
            raise ConfigError(option, f"{description!r} is not a usable endpoint: {e}") from None
        listener.setServiceParent(parent)
        into.append(listener)


HSTS = "max-age=63072000"


def makeService(config: Config, reactor: Any = None,  # noqa: N802
                environ: Mapping[str, str] | None = None) -> RouterService:
    """The router as a service: store, pollers and listeners."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    router, runner, http_pool = build_router(config, reactor)
    parent = RouterService(router, reactor, Notifier(os.environ if environ is None else environ))
    StoreService(runner, router, reactor).setServiceParent(parent)
    _PoolService(http_pool).setServiceParent(parent)
    AccountWatch(router.pool, reactor).setServiceParent(parent)

    access = AccessLog(config.verbose, router.metrics)
    hsts = HSTS if config.hsts else None

    # The client listeners share one cap; the admin and metrics listeners (operators,
    # usually loopback) keep the header timeout but are not counted against it.
    clients = ConnectionGuard(config.header_timeout, config.max_connections)
    operators = ConnectionGuard(config.header_timeout, None)

    def site(resource: IResource, max_body: int, guard: ConnectionGuard = operators
             ) -> RouterSite:
        made = RouterSite(resource, reactor=reactor, max_body_size=max_body, access=access,
                          hsts=hsts, guard=guard)
        parent.sites.append(made)
        return made

    tree, admin = router.resources()
    main = site(tree, config.max_body_size, clients)
    _listen(config.listen, main, reactor, "--listen", parent, parent.listeners)
    if config.tls_cert is not None and config.tls_key is not None:
        parent.tls.append(_tls_listener(config, main, reactor, parent))
    if admin is not None:
        _listen(config.admin_listen, site(admin, 64 * 1024), reactor, "--admin-listen",
                parent, parent.admin_listeners)
    if config.metrics_listen:
        metrics_root = metrics_tree(router.metrics)
        metrics_root.putChild(b"health", Health(router.revocations.problem))
        _listen(config.metrics_listen, site(metrics_root, 1024), reactor,
                "--metrics-listen", parent, parent.other_listeners)
    _log.info("Upstream {url}; serving dialects {formats}", url=config.upstream,
              formats=",".join(sorted(config.api_formats)))
    return parent


def _tls_listener(config: Config, site: RouterSite, reactor: Any,
                  parent: RouterService) -> Any:
    """The --tls-cert listener: its certificate is reloaded on SIGHUP."""
    from linkrouter.tls import ReloadableTLS, TLSConfigError, TLSServerEndpoint

    assert config.tls_cert is not None and config.tls_key is not None
    try:
        tls = ReloadableTLS(config.tls_cert, config.tls_key, config.tls_chain)
    except TLSConfigError as e:
        raise ConfigError("--tls-cert", str(e)) from None
    host = _default_host(config)
    endpoint = TLSServerEndpoint(reactor, config.tls_port, tls, interface=host,
                                 backlog=LISTEN_BACKLOG)
    listener = StreamServerEndpointService(endpoint, site)
    listener._raiseSynchronously = True  # noqa: SLF001 - as strports.service does
    listener.setServiceParent(parent)
    parent.other_listeners.append(listener)
    _log.info("TLS listener on port {port} with {subject} (valid until {until})",
              port=config.tls_port, subject=tls.subject, until=tls.not_after.isoformat())
    return tls


def _default_host(config: Config) -> str:
    """The interface of the default listener (ROUTER_HOST), for the TLS listener too."""
    first = config.listen[0] if config.listen else ""
    for part in first.split(":"):
        if part.startswith("interface="):
            return part[len("interface="):].replace("\\", "")
    return ""
