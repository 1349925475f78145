# -*- test-case-name: tests.unit.test_tap,tests.integration.test_tap -*-
"""
The composition root: L{makeService} builds the router once (L{linkrouter.router}), adds
the store service (L{linkrouter.storeservice}), the upstream connection pool and the
account watch, and opens the listeners (L{linkrouter.listeners}), all children of one
L{RouterService}, which starts, reloads and stops them (L{linkrouter.lifecycle}).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from linkrouter import lifecycle
from linkrouter.accounts import AccountWatch
from linkrouter.audit import AuditService
from linkrouter.config import Config
from linkrouter.listeners import HSTS, Listeners, address, open_listeners, with_backlog
from linkrouter.parsing import ConfigError
from linkrouter.router import Router, build_router
from linkrouter.site import RouterSite
from linkrouter.storeservice import POLL_SECONDS, STOP_WRITE_SECONDS, StoreService
from linkrouter.systemd import Notifier

if TYPE_CHECKING:
    from linkrouter.workers import Supervisor
    from linkrouter.workersockets import Inheritance

__all__ = ["HSTS", "POLL_SECONDS", "STOP_WRITE_SECONDS", "RouterService", "StoreService",
           "build_router", "makeService", "with_backlog"]

_log = Logger(namespace="linkrouter")


class RouterService(MultiService):
    """
    The router's top service: its children are the store, the upstream connection pool
    and the listeners (L{Listeners}: clients, admin, others, in the order given).

    It tells systemd when it is ready, reloading or stopping; on stop it drains: the
    listeners close first, idle connections close, requests in flight get
    C{shutdown_grace} seconds to finish, then whatever is left is cut and the store closes.
    With C{handle_signals} (twistd, the .tac) it handles SIGTERM and SIGINT itself (so
    the exit status is 0) and SIGHUP (reload the TLS certificate and credential files).
    """

    def __init__(self, router: Router, reactor: Any, notifier: Notifier | None = None) -> None:
        super().__init__()
        self.router = router
        self.reactor = reactor
        self.notifier = notifier or Notifier({})
        self.listening = Listeners(self, reactor)
        #: Called instead of raising when a listener cannot bind (twistd: print, exit 1).
        self.on_config_error: Callable[[ConfigError], None] | None = None
        #: Install SIGTERM/SIGHUP handlers when the reactor runs (twistd and the .tac).
        self.handle_signals = False
        self.signals = lifecycle.Signals(reactor, self.reload)
        self._watchdog: LoopingCall | None = None

    @property
    def sites(self) -> list[RouterSite]:
        return self.listening.sites

    @property
    def other_listeners(self) -> list[StreamServerEndpointService]:
        return self.listening.other

    def privilegedStartService(self) -> None:
        """Bind the listeners; a port that cannot be bound is a configuration error."""
        Service.privilegedStartService(self)
        for child in self:
            try:
                child.privilegedStartService()
            except CannotListenError as e:
                error = self.listening.bind_error(child, e)
                if self.on_config_error is None:
                    raise error from None
                self.on_config_error(error)

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if not self.running:
            return  # stopped before the reactor ran (a test that never runs it)
        # Signal handlers first: READY=1 tells systemd (and tests) that SIGHUP now reloads.
        if self.handle_signals:
            self.signals.install()
        Deferred.fromCoroutine(self.ports()).addCallbacks(
            self._ready, lambda f: _log.failure("A listener failed to start", f))

    def _ready(self, ports: list[IListeningPort]) -> None:
        where = ", ".join(address(p) for p in ports)
        _log.info("linkrouter is ready on {where}", where=where)
        self.notifier.ready(f"serving on {where}")
        interval = self.notifier.watchdog_interval()
        if interval:
            self._watchdog = LoopingCall(self.notifier.watchdog)
            self._watchdog.clock = self.reactor
            self._watchdog.start(interval)

    def reload(self) -> Deferred[None]:
        """SIGHUP: reload TLS certificates and re-read credential files, keeping streams."""
        return Deferred.fromCoroutine(
            lifecycle.reload(self.listening.tls, self.router.pool, self.notifier))

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.notifier.stopping()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        Service.stopService(self)
        await self.listening.stop()
        await lifecycle.drain(self.sites, self.reactor, self.router.config.shutdown_grace,
                              self.router.streams)
        await lifecycle.close_connections(self.sites, self.reactor)
        for child in reversed(list(self)):
            if child not in self.listening.all and child.running:
                await maybeDeferred(child.stopService)

    async def ports(self) -> list[IListeningPort]:
        """The bound ports of all listeners (after start-up), e.g. to learn port 0's."""
        return await self.listening.ports()


class _PoolService(Service):
    """Closes the upstream connection pool's idle connections at stop."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self._pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


def _gather_journals(config: Config) -> None:
    """A router of its own writes the usage journals workers of an earlier run left."""
    from linkrouter.journal import NAME, gather

    try:
        if config.data_dir.is_dir():
            gather(config.data_dir, NAME)
    except OSError as e:
        raise ConfigError("--data-dir", f"cannot take up the usage journals in "
                                        f"{config.data_dir}: {e.strerror}") from None


def makeService(config: Config, reactor: Any = None,
                environ: Mapping[str, str] | None = None, *,
                inheritance: Inheritance | None = None, notifier: Notifier | None = None,
                args: Sequence[str] = ()) -> RouterService | Supervisor:
    """
    The router as a service: collaborators, store, pollers and listeners. With
    C{--workers} above 1 it is the L{Supervisor} of that many worker processes (started
    with C{args}, the router's options); a worker passes the sockets it inherited.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    env = os.environ if environ is None else environ
    if config.workers > 1 and inheritance is None:
        from linkrouter.workers import Supervisor

        return Supervisor.prepare(config, reactor, Notifier(env), args, env)
    if inheritance is None:
        _gather_journals(config)
    router, runner, http_pool = build_router(config, reactor)
    service = RouterService(router, reactor, notifier or Notifier(env))
    service.listening.inherited = inheritance
    if inheritance is not None:
        from linkrouter.workermetrics import MetricsShare
        from linkrouter.workerstart import metrics_directory

        MetricsShare(router.metrics, inheritance.index, metrics_directory(config), reactor
                     ).setServiceParent(service)
        if inheritance.board is not None:
            from linkrouter.workerbalance import Balance, Board

            inheritance.balance = Balance(Board.attach(inheritance.board, inheritance.workers),
                                          inheritance.index, reactor)
            inheritance.balance.setServiceParent(service)
    StoreService(runner, router.store, router.revocations, router.usage, reactor,
                 (router.admitter.limits, router.admitter.spend, router.managed,
                  router.accounts.book)
                 ).setServiceParent(service)
    # after the store: stopped before it, so the trail stops retrying before it closes
    AuditService(router.audit).setServiceParent(service)
    _PoolService(http_pool).setServiceParent(service)
    AccountWatch(router.pool, reactor).setServiceParent(service)
    open_listeners(service.listening, config, router)
    _log.info("Upstream {url}; serving dialects {formats}", url=config.upstream,
              formats=",".join(sorted(config.api_formats)))
    return service
