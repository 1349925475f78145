# -*- test-case-name: tests.unit.test_tap,tests.integration.test_tap -*-
"""
The router's listeners and the sites behind them: the client listeners (C{--listen}),
the reloadable TLS listener (C{--tls-cert}), the admin listeners (C{--admin-listen}) and
the metrics listeners (C{--metrics-listen}), each a child service of the router.

Endpoint strings are parsed here, so a bad one raises L{ConfigError} naming its option
before the reactor runs; TCP and SSL listeners get a large backlog unless they set one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import Factory, define
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource

from linkrouter.access import AccessLog
from linkrouter.config import Config
from linkrouter.connections import ConnectionGuard
from linkrouter.defaults import LISTEN_BACKLOG
from linkrouter.health import Health
from linkrouter.parsing import ConfigError
from linkrouter.resource import metrics_tree
from linkrouter.site import RouterSite

if TYPE_CHECKING:
    from linkrouter.router import Router
    from linkrouter.tls import ReloadableTLS
    from linkrouter.workersockets import Inheritance

_log = Logger(namespace="linkrouter")

#: Strict-Transport-Security with C{--hsts}: two years.
HSTS = "max-age=63072000"
#: Largest request body on the admin and the metrics listeners.
ADMIN_MAX_BODY = 64 * 1024
METRICS_MAX_BODY = 1024


def with_backlog(description: str) -> str:
    """
    A TCP or SSL endpoint string with C{backlog=1024} unless it sets one: Twisted's
    default of 50 makes the kernel drop handshakes under a burst of connections.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and ":backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


@define
class Listeners:
    """The listener services of one router (children of C{parent}) and their sites."""

    parent: MultiService
    reactor: Any
    clients: list[StreamServerEndpointService] = Factory(list)
    admin: list[StreamServerEndpointService] = Factory(list)
    other: list[StreamServerEndpointService] = Factory(list)
    sites: list[RouterSite] = Factory(list)
    tls: list[ReloadableTLS] = Factory(list)
    #: A worker's sockets (C{--workers}): its listeners adopt them instead of binding.
    inherited: Inheritance | None = None

    @property
    def all(self) -> list[StreamServerEndpointService]:
        return self.clients + self.admin + self.other

    def bind_error(self, child: IService, error: CannotListenError) -> ConfigError:
        """A bind failure as a configuration error naming the child's option."""
        option = "--admin-listen" if child in self.admin else "--listen"
        reason = error.socketError
        why = getattr(reason, "strerror", None) or str(reason)
        return ConfigError(option, f"cannot listen on {error.interface or '*'}:{error.port}: "
                                   f"{why}")

    def listen(self, descriptions: tuple[str, ...], site: RouterSite, option: str,
               into: list[StreamServerEndpointService]) -> None:
        """One listener for each endpoint string."""
        if self.inherited is not None and not self.inherited.serves(option):
            return
        for description in map(with_backlog, descriptions):
            listener = self._service(description, site, option)
            listener.setServiceParent(self.parent)
            into.append(listener)

    def _service(self, description: str, site: RouterSite, option: str
                 ) -> StreamServerEndpointService:
        """The listener of one endpoint string; a worker's on the socket it inherited."""
        if self.inherited is not None:
            from linkrouter.workersockets import adopted_endpoint

            endpoint = adopted_endpoint(self.inherited.adopter(self.reactor, option),
                                        description, option)
            listener = StreamServerEndpointService(endpoint, site)
            listener._raiseSynchronously = True  # as strports.service does
            return listener
        try:
            return strports.service(description, site, reactor=self.reactor)
        except Exception as e:  # endpoint parsers raise many types
            raise ConfigError(option, f"{description!r} is not a usable endpoint: {e}"
                              ) from None

    def listen_tls(self, config: Config, site: RouterSite) -> None:
        """The --tls-cert listener: its certificate is reloaded on SIGHUP."""
        from linkrouter.tls import ReloadableTLS, TLSConfigError, TLSServerEndpoint

        assert config.tls_cert is not None and config.tls_key is not None
        try:
            tls = ReloadableTLS(config.tls_cert, config.tls_key, config.tls_chain)
        except TLSConfigError as e:
            raise ConfigError("--tls-cert", str(e)) from None
        reactor = self.reactor
        if self.inherited is not None:
            from linkrouter.workersockets import TLS_CERT

            reactor = self.inherited.adopter(self.reactor, TLS_CERT)
        endpoint = TLSServerEndpoint(reactor, config.tls_port, tls,
                                     interface=_default_host(config), backlog=LISTEN_BACKLOG)
        listener = StreamServerEndpointService(endpoint, site)
        listener._raiseSynchronously = True  # as strports.service does
        listener.setServiceParent(self.parent)
        self.other.append(listener)
        self.tls.append(tls)
        _log.info("TLS listener on port {port} with {subject} (valid until {until})",
                  port=config.tls_port, subject=tls.subject, until=tls.not_after.isoformat())

    async def ports(self) -> list[IListeningPort]:
        """The bound ports of all listeners (after start-up), e.g. to learn port 0's."""
        ports = []
        for listener in self.all:
            waiting = listener._waitingForPort  # the service keeps no public handle
            assert waiting is not None, "ports() before the listeners started"
            ports.append(await waiting)
        return ports

    async def stop(self) -> None:
        """Stop listening (connections already open stay)."""
        await gatherResults([maybeDeferred(listener.stopService)
                             for listener in self.all if listener.running],
                            consumeErrors=True)


def open_listeners(listeners: Listeners, config: Config, router: Router) -> None:
    """The sites and listeners C{config} asks for, serving C{router}'s resources."""
    access = AccessLog(config.verbose, router.metrics)
    hsts = HSTS if config.hsts else None
    # The client listeners share one cap; the admin and metrics listeners (operators,
    # usually loopback) keep the header timeout but are not counted against it.
    clients = ConnectionGuard(config.header_timeout, config.max_connections)
    operators = ConnectionGuard(config.header_timeout, None)

    def site(resource: IResource, max_body: int, guard: ConnectionGuard = operators
             ) -> RouterSite:
        made = RouterSite(resource, reactor=listeners.reactor, max_body_size=max_body,
                          access=access, hsts=hsts, guard=guard)
        listeners.sites.append(made)
        return made

    tree, admin = router.resources()
    main = site(tree, config.max_body_size, clients)
    if listeners.inherited is not None and listeners.inherited.balance is not None:
        listeners.inherited.balance.load = lambda: clients.open  # what the workers compare
    listeners.listen(config.listen, main, "--listen", listeners.clients)
    if config.tls_cert is not None and config.tls_key is not None:
        listeners.listen_tls(config, main)
    if admin is not None:
        listeners.listen(config.admin_listen, site(admin, ADMIN_MAX_BODY), "--admin-listen",
                         listeners.admin)
    if config.metrics_listen:
        metrics_root = metrics_tree(router.metrics)
        metrics_root.putChild(b"health", Health(router.revocations.problem))
        listeners.listen(config.metrics_listen, site(metrics_root, METRICS_MAX_BODY),
                         "--metrics-listen", listeners.other)


def address(port: IListeningPort) -> str:
    host = port.getHost()
    return f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}"


def _default_host(config: Config) -> str:
    """The interface of the default listener (ROUTER_HOST), for the TLS listener too."""
    first = config.listen[0] if config.listen else ""
    for part in first.split(":"):
        if part.startswith("interface="):
            return part[len("interface="):].replace("\\", "")
    return ""
