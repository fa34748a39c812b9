"""
What a peer that does not read its answers may leave queued on an NECP
endpoint (#15): Twisted's buffer is bounded by the protocol's flow control,
and the kernel's send buffer by the socket's size, which the protocol sets
from C{max_queued_output}. Once over real TCP on 127.0.0.1, where Linux
would otherwise grow that buffer to net.ipv4.tcp_wmem's maximum (4 MB).
Messages go to a TCP socket at once while the kernel takes them, and
through the transport, in order, once it does not.
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
from lvsfeedback.necp.framing import Decoder, encode
from lvsfeedback.necp.messages import ExceptionAdd, ExceptionQuery, Init, Keepalive
from lvsfeedback.necp.units import ExceptionRule, Query
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


def director_and_peer(test: TestCase, events: RecordingEvents, **settings) -> tuple[NEFactory, socket.socket]:
    """A director listening in the real reactor, and a plain socket connected to it with a small receive window."""
    director = NEFactory(events, clock=reactor, **settings)
    port = reactor.listenTCP(0, director, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    peer = socket.socket()
    test.addCleanup(peer.close)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(("127.0.0.1", port.getHost().port))
    return director, peer


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
        # The peer never reads: what the director sends stays on its side.
        director, peer = director_and_peer(self, events, max_queued_output=limit, max_exceptions_per_agent=1000)
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


class LoopbackDirectWriteTests(TestCase):
    """A director's session in the real reactor, its peer a plain non-blocking socket."""

    def session_and_peer(self, **settings) -> Deferred:
        """Fires with the director's session and the peer's socket, the INIT_ACK read."""
        events = RecordingEvents()
        up = Deferred()
        events.agentUp = up.callback
        director, peer = director_and_peer(self, events, **settings)
        peer.sendall(encode(Init(request_id=1)))
        peer.setblocking(False)

        def acknowledged(agent):
            session = director.session(agent)
            self.addCleanup(session.transport.abortConnection)
            return reactor_turns_until(lambda: select.select([peer], [], [], 0)[0]).addCallback(
                lambda _: (session, peer, peer.recv(65536))
            )

        return up.addCallback(acknowledged)

    def test_a_message_is_in_the_peers_socket_before_the_reactor_turns(self):
        def send(found):
            session, peer, _ = found
            session.send_message(Keepalive(request_id=7))
            self.assertEqual(peer.recv(65536), encode(Keepalive(request_id=7)))

        return self.session_and_peer().addCallback(send)

    def test_what_the_kernel_does_not_take_follows_through_the_transport_in_order(self):
        # 200 KEEPALIVEs of 60 queries, 390 KB: over the peer's small window
        # and the director's 256 KB send buffer, under that again queued.
        queries = tuple(Query.health(6, port) for port in range(1, 61))
        sent = [Keepalive(request_id=number, queries=queries) for number in range(1, 201)]
        expected = b"".join(encode(message) for message in sent)

        def send(found):
            session, peer, _ = found
            for message in sent:
                session.send_message(message)
            self.assertGreater(len(session.transport.dataBuffer) + session.transport._tempDataLen, 0,
                               "the transport holds what the kernel did not take")
            received = bytearray()

            def all_read():
                try:
                    received.extend(peer.recv(1 << 20))
                except BlockingIOError:
                    pass
                return len(received) >= len(expected)

            return reactor_turns_until(all_read).addCallback(lambda _: received)

        def check(received):
            decoder = Decoder()
            decoder.feed(bytes(received))
            read = []
            while (message := decoder.next_message()) is not None:
                read.append(message.request_id)
            self.assertEqual(read, list(range(1, 201)))

        return self.session_and_peer(max_queued_output=256 * 1024).addCallback(send).addCallback(check)
