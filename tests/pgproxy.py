"""
A loopback TCP proxy in front of the real PostgreSQL server that a test can break:

- L{PausableProxy.freeze}: connections stay open and accepted, nothing is forwarded
  either way (a frozen server or network path: the client waits for an answer);
- L{PausableProxy.down}: existing connections are cut and new ones closed at once
  (a server that is down);
- L{PausableProxy.up}: forward normally (held bytes are delivered).

It runs in a thread of its own, so it keeps its state even while the reactor thread is
blocked, and stops (cutting every connection) in the test's cleanup.
"""

from __future__ import annotations

import selectors
import socket
import threading

from twisted.trial.unittest import SynchronousTestCase

from . import pg


class PausableProxy:
    """A proxy from C{127.0.0.1:port} to the PostgreSQL server of L{tests.pg}."""

    def __init__(self, case: SynchronousTestCase, target: tuple[str, int] = ("127.0.0.1", 5432),
                 state: str = "up") -> None:
        self.target = target
        self.state = state
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._held: dict[socket.socket, list[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg-proxy")
        self._thread.start()
        case.addCleanup(self.close)

    def url(self, database_url: str) -> str:
        """C{database_url} (a L{pg.fresh_database} URL) reached through this proxy."""
        return database_url.replace(pg.SERVER, f"postgresql://postgres@127.0.0.1:{self.port}")

    def freeze(self) -> None:
        self.state = "frozen"

    def down(self) -> None:
        with self._lock:
            self.state = "down"
            for sock in list(self._pairs):
                self._drop(sock)

    def up(self) -> None:
        with self._lock:
            self.state = "up"
            for sock, chunks in self._held.items():
                peer = self._pairs.get(sock)
                if peer is not None:
                    for chunk in chunks:
                        peer.sendall(chunk)
            self._held.clear()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        with self._lock:
            for sock in list(self._pairs):
                self._drop(sock)
        self._listener.close()
        self._selector.close()

    def _drop(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            self._held.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.05):
                with self._lock:
                    if key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._forward(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self.state == "down":
            client.close()
            return
        server = socket.create_connection(self.target, timeout=5)
        for s in (client, server):
            s.setblocking(True)
            self._selector.register(s, selectors.EVENT_READ, None)
        self._pairs[client] = server
        self._pairs[server] = client

    def _forward(self, sock: socket.socket) -> None:
        if sock not in self._pairs:
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        if self.state == "frozen":
            self._held.setdefault(sock, []).append(data)
            return
        self._pairs[sock].sendall(data)
