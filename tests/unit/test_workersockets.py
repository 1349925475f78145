"""
Tests for L{linkrouter.workersockets} and the worker side of L{linkrouter.service}: the
order of the listeners, what a worker is told of its sockets, and a worker's listeners
adopting the sockets it inherited (TLS wrapped, the admin listener in worker 0 only), on
a L{MemoryReactorClock}. The supervisor binding real sockets:
L{tests.integration.test_workers}.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import Config, resolve
from linkrouter.parsing import ConfigError
from linkrouter.service import RouterService, makeService
from linkrouter.workermetrics import MetricsShare
from linkrouter.workersockets import (
    TLS_CERT,
    Adopter,
    Inheritance,
    Inherited,
    Planned,
    describe,
    inherited_from,
    plan,
)

from ..certs import PKI
from ..harness import ADMIN_KEY, TOKEN_SECRET


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


class PlanTests(SynchronousTestCase):
    def test_order(self) -> None:
        """Clients, the --tls-cert listener, admin, metrics: the order the router opens."""
        config = resolve({"listen": ["tcp:1", "tcp:2"], "admin_listen": ["tcp:3"],
                          "metrics_listen": ["tcp:4"], "tls_cert": "c.pem",
                          "tls_key": "k.pem", "tls_port": "5"}, {"HOME": "/nowhere"})
        self.assertEqual(plan(config), [
            Planned("--listen", "tcp:1:backlog=1024"),
            Planned("--listen", "tcp:2:backlog=1024"),
            Planned(TLS_CERT, "5"),
            Planned("--admin-listen", "tcp:3:backlog=1024"),
            Planned("--metrics-listen", "tcp:4:backlog=1024"),
        ])

    def test_described(self) -> None:
        """A worker reads back its index and its sockets, numbered from descriptor 4."""
        env = {"LINKROUTER_WORKER": describe(1, [("--listen", 2), ("--tls-cert", 10)],
                                             workers=3, board=True)}
        self.assertEqual(inherited_from(env), Inheritance(
            1, [Inherited("--listen", 5, 2), Inherited("--tls-cert", 6, 10)], 3, 4))
        self.assertIsNone(inherited_from({}))

    def test_taken_in_order(self) -> None:
        """Each listener takes the next socket of its option; a missing one is an error."""
        inheritance = Inheritance(1, [Inherited("--listen", 4, 2),
                                      Inherited("--metrics-listen", 5, 2),
                                      Inherited("--listen", 6, 2)])
        self.assertEqual(inheritance.take("--listen").fd, 4)
        self.assertEqual(inheritance.take("--listen").fd, 6)
        self.assertRaises(ConfigError, inheritance.take, "--listen")
        self.assertFalse(inheritance.serves("--admin-listen"))
        self.assertTrue(Inheritance(0, []).serves("--admin-listen"))


class AdopterTests(SynchronousTestCase):
    def descriptor(self) -> int:
        """A descriptor the adopter may close (a real one: it is closed)."""
        read, write = os.pipe()
        os.close(write)
        return read

    def test_listen_adopts(self) -> None:
        """Where an endpoint would bind, the inherited descriptor is adopted and closed."""
        reactor = MemoryReactorClock()
        fd = self.descriptor()
        factory = object()
        Adopter(reactor, fd, socket.AF_INET).listenTCP(8080, factory, 50, "0.0.0.0")  # noqa: S104
        self.assertEqual(reactor.adoptedPorts, [(fd, socket.AF_INET, factory)])
        self.assertEqual(reactor.tcpServers, [])
        self.assertTrue(closed(fd))

    def test_ssl_endpoint_wrapped(self) -> None:
        """An C{ssl:} endpoint string builds its TLS context and serves the adopted socket."""
        pki = PKI.create()
        files = pki.write(Path(self.mktemp()), pki.leaf())
        reactor = MemoryReactorClock()
        fd = self.descriptor()
        from linkrouter.workersockets import adopted_endpoint

        endpoint = adopted_endpoint(Adopter(reactor, fd, socket.AF_INET6),
                                    f"ssl:8443:privateKey={files.key}:certKey={files.cert}",
                                    "--listen")
        endpoint.listen(object())  # type: ignore[arg-type]
        ((adopted, family, factory),) = reactor.adoptedPorts
        self.assertEqual((adopted, family), (fd, socket.AF_INET6))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)

    def test_systemd_adopted_directly(self) -> None:
        """A C{systemd:} socket is adopted as inherited (the worker cannot look it up)."""
        reactor = MemoryReactorClock()
        fd = self.descriptor()
        from linkrouter.workersockets import adopted_endpoint

        endpoint = adopted_endpoint(Adopter(reactor, fd, socket.AF_INET),
                                    "systemd:domain=INET:index=0", "--listen")
        endpoint.listen(object())  # type: ignore[arg-type]
        self.assertEqual(reactor.adoptedPorts[0][:2], (fd, socket.AF_INET))
        self.assertTrue(closed(fd))  # by the endpoint, once


class WorkerServiceTests(SynchronousTestCase):
    """L{makeService} for a worker: its listeners adopt what it inherited."""

    def config(self, **extra: object) -> Config:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        raw: dict[str, object] = {
            "listen": ["tcp:8080"], "admin_listen": ["tcp:9000"],
            "metrics_listen": ["tcp:9100"], "data_dir": str(base / "state"),
            "token_secret": TOKEN_SECRET, "admin_key": ADMIN_KEY,
            "upstream_api_key": "sk-test", "workers": "2", **extra}
        return resolve(raw, {"HOME": str(base)})

    def sockets(self, *options: str) -> list[Inherited]:
        found = []
        for option in options:
            read, write = os.pipe()
            os.close(write)
            found.append(Inherited(option, read, socket.AF_INET))
        return found

    def start(self, config: Config, inheritance: Inheritance) -> MemoryReactorClock:
        reactor = MemoryReactorClock()
        service = makeService(config, reactor, {}, inheritance=inheritance)
        assert isinstance(service, RouterService)
        self.assertEqual(service.listening.inherited, inheritance)
        self.assertEqual(sum(isinstance(s, MetricsShare) for s in service), 1)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return reactor

    def test_first_worker(self) -> None:
        """Worker 0 serves the client, admin and metrics listeners, binding none."""
        sockets = self.sockets("--listen", "--admin-listen", "--metrics-listen")
        reactor = self.start(self.config(), Inheritance(0, list(sockets)))
        self.assertEqual([fd for fd, _, _ in reactor.adoptedPorts], [s.fd for s in sockets])
        self.assertEqual(reactor.tcpServers, [])

    def test_other_worker(self) -> None:
        """Another worker serves no admin listener."""
        sockets = self.sockets("--listen", "--metrics-listen")
        reactor = self.start(self.config(), Inheritance(1, list(sockets)))
        self.assertEqual([fd for fd, _, _ in reactor.adoptedPorts], [s.fd for s in sockets])

    def test_tls_listener(self) -> None:
        """The --tls-cert listener builds its context in the worker, on the adopted socket."""
        pki = PKI.create()
        files = pki.write(Path(self.mktemp()), pki.leaf())
        config = self.config(tls_cert=str(files.cert), tls_key=str(files.key),
                             admin_listen=[], metrics_listen=[])
        sockets = self.sockets("--listen", TLS_CERT)
        reactor = self.start(config, Inheritance(1, list(sockets)))
        self.assertEqual([fd for fd, _, _ in reactor.adoptedPorts], [s.fd for s in sockets])
        self.assertIsInstance(reactor.adoptedPorts[1][2], TLSMemoryBIOFactory)
