"""
The status listener as the director's child service, on real loopback
sockets: it listens where [status] listen says, knows whether it is
loopback-only, closes with the director, and a port it cannot have does not
stop the director.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from lvsfeedback.director.service import DirectorService
from lvsfeedback.ipvs.memory import MemoryIPVS
from tests.helpers.director import write_config


class HeadersOnly(Protocol):
    """Sends a request's headers, never its body, and keeps what comes back until the close."""

    def __init__(self, head: bytes):
        self.head = head
        self.received = b""
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(self.head)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


class StatusListenerTests(TestCase):
    def start(self, **options) -> DirectorService:
        director = DirectorService(write_config(self, update_interval=3600, **options), reactor, table=MemoryIPVS())
        director.startService()
        self.addCleanup(lambda: director.running and director.stopService())
        return director

    def test_it_listens_on_loopback_and_knows_it(self):
        director = self.start()
        address = director.status.port.getHost()
        self.assertEqual(address.host, "127.0.0.1")
        self.assertNotEqual(address.port, 0)
        self.assertTrue(director.status.loopback_only)

    def test_it_samples_history_from_the_start(self):
        director = self.start()
        [sample] = director.status.history.samples
        self.assertEqual(set(sample["services"]), {"web", "dns"})

    @inlineCallbacks
    def test_it_samples_history_after_every_pass_while_it_runs(self):
        director = self.start()
        yield director.updater.run_pass()
        self.assertEqual(len(director.status.history.samples), 2)
        yield director.stopService()
        yield director.updater.run_pass()
        self.assertEqual(len(director.status.history.samples), 2)

    @inlineCallbacks
    def test_it_stops_listening_with_the_director(self):
        director = self.start()
        port = director.status.port.getHost().port
        yield director.stopService()
        self.assertIsNone(director.status.port)
        # The port is free again: something else can have it.
        again = reactor.listenTCP(port, Factory(), interface="127.0.0.1")
        yield again.stopListening()

    @inlineCallbacks
    def test_a_port_in_use_is_logged_and_the_director_runs_on(self):
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        with capturedLogs() as events:
            director = self.start(status_listen=f"tcp:{taken.getHost().port}:interface=127.0.0.1")
        [complaint] = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertIn("cannot listen on", complaint["log_format"])
        self.assertIsNone(director.status.port)
        self.assertFalse(director.status.loopback_only, "control must not open up without a listener")
        self.assertEqual(director.updater.passes, 1)
        yield director.stopService()

    @inlineCallbacks
    def test_a_body_over_the_limit_is_refused_before_it_is_sent(self):
        director = self.start()
        port = director.status.port.getHost().port
        client = HeadersOnly(
            b"POST /control/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        answer = yield client.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)

    # Without the limit the listener waits for the body, until its own 60 s idle timeout.
    test_a_body_over_the_limit_is_refused_before_it_is_sent.timeout = 10
