"""
Tests for L{linkrouter.workerbalance}: the board the workers share and a worker's client
port standing back while another worker holds fewer connections (the port's socket is
never used: accepting is Twisted's own, replaced here by a recorder). Real sockets
spread over real workers: L{tests.integration.test_workers}.
"""

from __future__ import annotations

import os

from twisted.internet import tcp
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.workerbalance import EMPTY, STAND_BACK_SECONDS, BalancedPort, Board


class BoardTests(SynchronousTestCase):
    def test_shared(self) -> None:
        """Two attachments to one board see each other's counts; empty slots do not count."""
        board, fd = Board.create(3)
        self.addCleanup(os.close, fd)
        other = Board.attach(fd, 3)
        self.assertEqual(board.least_other(0), EMPTY)
        other.publish(1, 4)
        other.publish(2, 2)
        self.assertEqual(board.least_other(0), 2)
        self.assertEqual(board.least_other(2), 4)
        board.publish(2, EMPTY)
        self.assertEqual(other.least_other(0), 4)


class Port(BalancedPort):
    """A balanced port whose accepting is only counted."""

    def __init__(self, board: Board, index: int, clock: Clock) -> None:
        self.board, self.index, self.clock = board, index, clock
        self.held = 0
        self.load = lambda: self.held
        self.reading = True
        self.accepts: list[int] = []
        self.connected, self.disconnecting = True, False

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


class PortTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.board, fd = Board.create(2)
        self.addCleanup(os.close, fd)
        self.clock = Clock()
        self.port = Port(self.board, 0, self.clock)
        self.patch(tcp.Port, "doRead", lambda port: self.accept(port))

    def accept(self, port: Port) -> None:
        port.accepts.append(port.numberAccepts)
        port.held += port.numberAccepts

    def test_least_loaded_accepts(self) -> None:
        """
        Holding no more than the other worker, the port accepts up to one past its count;
        holding more, it stands back a moment, then accepts one anyway.
        """
        self.board.publish(1, 3)
        self.port.doRead()
        self.assertEqual(self.port.accepts, [4])
        self.assertEqual(self.board.count(0), 4)
        self.port.doRead()
        self.assertEqual(self.port.accepts, [4])
        self.assertFalse(self.port.reading)
        self.clock.advance(STAND_BACK_SECONDS)
        self.assertTrue(self.port.reading)
        self.port.doRead()
        self.assertEqual(self.port.accepts, [4, 1])

    def test_alone(self) -> None:
        """With no other live worker, nothing holds the port back (one wake, one batch)."""
        self.port.held = 50
        self.port.doRead()
        self.assertEqual(self.port.accepts, [100])
