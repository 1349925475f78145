# -*- test-case-name: tests.unit.test_workersockets,tests.integration.test_workers -*-
"""
One set of listening sockets for every worker (C{--workers}, DESIGN §12).

The supervisor binds each listener the configuration asks for once (L{bind_all}), stops
its own reactor from accepting on it, and hands the descriptors to its workers. A worker
then builds the very same listeners as a router of its own would, from the same endpoint
strings, with a reactor stand-in (L{Adopter}) that adopts the inherited descriptor
wherever the endpoint would bind: so C{ssl:} and C{tls:} endpoints and the C{--tls-cert}
listener build their TLS contexts in each worker, and C{systemd:} sockets are passed on
as they came.

Both sides walk the listeners in one order (L{plan}): the client listeners, the
C{--tls-cert} listener, the admin listeners, the metrics listeners. The admin listeners
are served by worker 0 alone, which keeps the console's sessions and the pending
account logins in one process.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import directlyProvides, providedBy

from linkrouter.defaults import LISTEN_BACKLOG
from linkrouter.parsing import ConfigError

if TYPE_CHECKING:
    from linkrouter.config import Config
    from linkrouter.workerbalance import Balance

#: The option of the C{--tls-cert} listener in a plan (it has no endpoint string).
TLS_CERT = "--tls-cert"
#: The options whose listeners only worker 0 serves.
FIRST_WORKER_ONLY = frozenset({"--admin-listen"})
#: The variable that tells a worker its index and the sockets it inherited.
WORKER_VARIABLE = "LINKROUTER_WORKER"
#: The descriptor of the board the workers share (L{linkrouter.workerbalance}), and the
#: first of the inherited sockets in a worker (0-2 are stdio, 3 the worker's line to
#: the supervisor).
BOARD_FD = 4
FIRST_SOCKET_FD = 5
#: The listeners whose new connections the workers spread by load.
BALANCED = frozenset({"--listen", TLS_CERT})


@frozen
class Planned:
    """One listener: its option and endpoint string (C{--tls-cert}: the port, as text)."""

    option: str
    description: str


def plan(config: Config) -> list[Planned]:
    """The listeners C{config} asks for, in the order L{linkrouter.listeners} opens them."""
    from linkrouter.listeners import with_backlog

    found = [Planned("--listen", with_backlog(d)) for d in config.listen]
    if config.tls_cert is not None and config.tls_key is not None:
        found.append(Planned(TLS_CERT, str(config.tls_port)))
    found += [Planned("--admin-listen", with_backlog(d)) for d in config.admin_listen]
    found += [Planned("--metrics-listen", with_backlog(d)) for d in config.metrics_listen]
    return found


def serves(index: int, option: str) -> bool:
    """Whether worker C{index} serves the listeners of C{option}."""
    return index == 0 or option not in FIRST_WORKER_ONLY


@frozen
class Inherited:
    """A listening socket a worker got from its supervisor."""

    option: str
    fd: int
    family: int


@define
class Inheritance:
    """
    The sockets a worker inherited, handed out to its listeners in L{plan}'s order, and
    (with a board) how the client listeners spread new connections over the workers.
    """

    index: int
    sockets: list[Inherited]
    workers: int = 1
    board: int | None = None
    balance: Balance | None = None

    def adopter(self, reactor: Any, option: str) -> Adopter:
        """The reactor stand-in for the next listener of C{option}."""
        inherited = self.take(option)
        balance = self.balance if option in BALANCED else None
        return Adopter(reactor, inherited.fd, inherited.family, balance)

    def serves(self, option: str) -> bool:
        return serves(self.index, option)

    def take(self, option: str) -> Inherited:
        """The next inherited socket of C{option}'s listeners."""
        for n, inherited in enumerate(self.sockets):
            if inherited.option == option:
                return self.sockets.pop(n)
        raise ConfigError(option, "the supervisor passed no socket for this listener")


class _Stand(Protocol):
    """Never used: the supervisor's copy of a socket accepts nothing."""


class _Held(Factory):
    """The factory of the supervisor's copy of a socket (quiet: it serves nothing)."""

    protocol = _Stand
    noisy = False

    def logPrefix(self) -> str:
        return "Supervisor (for its workers)"


@define(eq=False, slots=False)
class Binder:
    """
    A reactor stand-in for the supervisor: an endpoint that listens through it binds for
    real, on the real reactor, and the port is at once taken out of the reactor (it
    accepts nothing here). C{adoptStreamPort} (C{systemd:}) only records the descriptor.
    """

    reactor: Any
    port: IListeningPort | None = None
    fd: int = -1
    family: int = socket.AF_INET

    def __attrs_post_init__(self) -> None:
        directlyProvides(self, *providedBy(self.reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)

    def _keep(self, port: Any) -> Any:
        port.stopReading()
        self.port, self.fd, self.family = port, port.fileno(), port.addressFamily
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = ""
                  ) -> Any:
        return self._keep(self.reactor.listenTCP(port, _Held(),
                                                 backlog, interface))

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        return self.listenTCP(port, factory, backlog, interface)

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: int = 0) -> Any:
        return self._keep(self.reactor.listenUNIX(address, _Held(),
                                                  backlog, mode, wantPID))

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        # The endpoint closes its descriptor once this returns: keep a copy.
        self.fd, self.family = os.dup(fileDescriptor), addressFamily
        return None


@define(eq=False, slots=False)
class Adopter:
    """
    A reactor stand-in for a worker: wherever an endpoint would listen, the inherited
    descriptor C{fd} is adopted instead (wrapped in TLS where the endpoint asks for
    it), and the inherited copy closed (the adopted port holds its own).
    """

    reactor: Any
    fd: int
    family: int
    balance: Balance | None = None

    def __attrs_post_init__(self) -> None:
        directlyProvides(self, *providedBy(self.reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)

    def _adopt(self, factory: Any) -> Any:
        port = self._port(factory)
        os.close(self.fd)
        return port

    def _port(self, factory: Any) -> Any:
        if self.balance is not None and self.family in (socket.AF_INET, socket.AF_INET6):
            from linkrouter.workerbalance import adopt

            return adopt(self.reactor, self.fd, self.family, factory, self.balance)
        return self.reactor.adoptStreamPort(self.fd, self.family, factory)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = ""
                  ) -> Any:
        return self._adopt(factory)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: int = 0) -> Any:
        return self._adopt(factory)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        # An endpoint that adopts (systemd:) closes the descriptor itself.
        return self._port(factory)


def parse(reactor: Any, description: str, option: str) -> IStreamServerEndpoint:
    """An endpoint string as an endpoint on C{reactor}, or L{ConfigError} naming C{option}."""
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except Exception as e:  # endpoint parsers raise many types
        raise ConfigError(option, f"{description!r} is not a usable endpoint: {e}") from None
    return endpoint


def adopted_endpoint(adopter: Adopter, description: str, option: str
                     ) -> IStreamServerEndpoint:
    """
    The endpoint a worker serves C{description} on: the inherited socket, adopted. A
    C{systemd:} socket is adopted directly (the worker is not the process systemd
    passed it to, so it cannot look it up again).
    """
    if description.startswith("systemd:"):
        return AdoptedStreamServerEndpoint(adopter, adopter.fd, adopter.family)
    return parse(adopter, description, option)


@define(eq=False)
class Bound:
    """A socket the supervisor holds for its workers."""

    option: str
    fd: int
    family: int
    address: str
    port: Any = field(default=None, repr=False)

    def close(self) -> None:
        """Stop holding it (the workers' copies decide when it stops accepting)."""
        if self.port is not None:
            self.port.stopListening()
        elif self.fd >= 0:
            os.close(self.fd)  # a copy of a socket passed to the supervisor (systemd:)
        self.port, self.fd = None, -1


def bind(reactor: Any, planned: Planned, config: Config) -> Bound:
    """
    Bind one planned listener in the supervisor (blocking, before the reactor runs).

    @raise CannotListenError: the address is taken or not allowed.
    @raise ConfigError: the endpoint string (or the TLS files) cannot be used.
    """
    binder = Binder(reactor)
    if planned.option == TLS_CERT:
        from linkrouter.listeners import _default_host

        binder.listenTCP(int(planned.description), None, LISTEN_BACKLOG,
                         _default_host(config))
    else:
        endpoint = parse(binder, planned.description, planned.option)
        failure: list[Any] = []
        endpoint.listen(_Held()).addErrback(failure.append)
        if failure:
            failure[0].raiseException()
    return Bound(planned.option, binder.fd, binder.family, _address(binder), binder.port)


def _address(binder: Binder) -> str:
    """C{host:port} (or the path) the socket listens on."""
    with socket.socket(binder.family, socket.SOCK_STREAM, fileno=os.dup(binder.fd)) as s:
        name = s.getsockname()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)


def describe(index: int, sockets: Sequence[tuple[str, int]], relay: bool = False,
             workers: int = 1, board: bool = False) -> str:
    """
    The value of L{WORKER_VARIABLE}: the worker's index, its sockets (option, family),
    whether it sends its log events to the supervisor (L{relay_logs}), how many workers
    there are and whether it got their board (L{BOARD_FD}).
    """
    return json.dumps({"index": index, "sockets": [list(s) for s in sockets],
                       "relay_logs": relay, "workers": workers, "board": board})


def relay_logs(environ: Mapping[str, str]) -> bool:
    """Whether this worker sends its log events to the supervisor (see L{describe})."""
    return bool(json.loads(environ.get(WORKER_VARIABLE) or "{}").get("relay_logs"))


def inherited_from(environ: Mapping[str, str]) -> Inheritance | None:
    """What L{describe} gave this process; C{None} outside a worker."""
    text = environ.get(WORKER_VARIABLE)
    if not text:
        return None
    found = json.loads(text)
    sockets = [Inherited(option, FIRST_SOCKET_FD + n, int(family))
               for n, (option, family) in enumerate(found["sockets"])]
    return Inheritance(int(found["index"]), sockets, int(found.get("workers", 1)),
                       BOARD_FD if found.get("board") else None)


def addresses(bound: Iterable[Bound]) -> str:
    """The client-facing addresses, for logs and systemd's status line."""
    return ", ".join(b.address for b in bound)
