"""
What a peer that does not read its answers may leave queued on an NECP
endpoint (#15): Twisted's buffer is bounded by the protocol's flow control,
and the kernel's send buffer by the socket's size, which the protocol sets
from C{max_queued_output}. Once over real TCP on 127.0.0.1, where Linux
would otherwise grow that buffer to net.ipv4.tcp_wmem's maximum (4 MB).
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import sys
import termios

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lvsfeedback.director.factory import NEFactory
from lvsfeedback.necp.framing import encode
from lvsfeedback.necp.messages import ExceptionAdd, ExceptionQuery, Init
from lvsfeedback.necp.units import ExceptionRule
from tests.helpers.necp import RecordingEvents


def queued_in_kernel(sock: socket.socket) -> int:
    """Bytes in C{sock}'s send queue: written, not yet acknowledged by the peer (Linux's SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def reactor_turns_until(predicate) -> Deferred:
    """A Deferred that fires once C{predicate()} holds, checked once per reactor turn."""
    done = Deferred()

    def check():
        if predicate():
            done.callback(None)
        else:
            reactor.callLater(0, check)

    check()
    return done


class SocketTransport(StringTransport):
    """An in-memory transport whose handle is a real (unconnected) TCP socket, as Twisted's TCP transport's is."""

    def __init__(self):
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.2", 40000))
        self.socket = socket.socket()

    def getHandle(self):
        return self.socket


class SendBufferTests(SynchronousTestCase):
    def test_the_sockets_send_buffer_holds_at_most_max_queued_output(self):
        director = NEFactory(RecordingEvents(), clock=Clock(), max_queued_output=100_000)
        transport = SocketTransport()
        self.addCleanup(transport.socket.close)
        director.buildProtocol(transport.getPeer()).makeConnection(transport)
        size = transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        # Linux doubles what it is asked for, for its bookkeeping; others do not.
        self.assertIn(size, (50_000, 100_000))

    def test_a_transport_without_a_socket_is_left_alone(self):
        director = NEFactory(RecordingEvents(), clock=Clock())
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 40000))
        protocol = director.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(encode(Init(request_id=1)))
        self.assertTrue(protocol.established)


class LoopbackQueuedOutputTests(TestCase):
    """A director in the real reactor, and a peer on a plain socket that never reads."""

    if not sys.platform.startswith("linux"):
        skip = "SIOCOUTQ, the send queue's length, is Linux's"

    def test_a_peer_that_does_not_read_leaves_at_most_max_queued_output_in_the_kernel(self):
        limit = 256 * 1024
        events = RecordingEvents()
        up, lost = Deferred(), Deferred()
        events.agentUp = up.callback
        events.agentLost = lambda agent, reason: lost.callback(reason)
        director = NEFactory(events, clock=reactor, max_queued_output=limit, max_exceptions_per_agent=1000)
        port = reactor.listenTCP(0, director, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = socket.socket()
        self.addCleanup(peer.close)
        # A small receive window, never read: what the director sends stays on its side.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(("127.0.0.1", port.getHost().port))
        # 1,000 exceptions, then 400 queries: 400 answers of 32 KB, 12.8 MB in all.
        rules = tuple(ExceptionRule(port=number) for number in range(1, 1001))
        peer.sendall(
            encode(Init(request_id=1))
            + encode(ExceptionAdd(request_id=2, rules=rules))
            + b"".join(encode(ExceptionQuery(request_id=3 + n)) for n in range(400))
        )

        def stalled(session):
            handle = session.transport.getHandle()
            return session.transport.producerPaused and not select.select([], [handle], [], 0)[1]

        def flooded(agent):
            session = director.session(agent)
            return reactor_turns_until(lambda: stalled(session)).addCallback(lambda _: session)

        def check(session):
            queued = queued_in_kernel(session.transport.getHandle())
            self.assertLessEqual(queued, limit, f"{queued} bytes queued in the kernel")
            self.assertFalse(session.transport.disconnecting, "a peer within the limit keeps its session")
            session.transport.abortConnection()
            return lost

        return up.addCallback(flooded).addCallback(check)
