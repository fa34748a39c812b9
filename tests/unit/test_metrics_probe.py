"""The probe metric against listening and closed loopback ports."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricReadError, MetricSpecError
from lvsfeedback.agent.metrics.interfaces import OnError
from lvsfeedback.agent.metrics.spec import MetricRegistry


class Accepting(Factory):
    """Counts the connections it accepts."""

    protocol = Protocol

    def __init__(self):
        self.accepted = 0

    def buildProtocol(self, address):
        self.accepted += 1
        return super().buildProtocol(address)


class ProbeTests(TestCase):
    timeout = 15

    def metric(self, spec: str):
        return MetricRegistry.discover().build(spec, MetricEnvironment(reactor)).metric

    @inlineCallbacks
    def test_listening_service_is_fully_healthy(self):
        factory = Accepting()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        health = yield self.metric(f"probe:port={port.getHost().port}").sample()
        self.assertEqual((health, factory.accepted), (100.0, 1))

    @inlineCallbacks
    def test_probing_does_not_log_each_connection(self):
        port = reactor.listenTCP(0, Accepting(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.metric(f"probe:port={port.getHost().port}").sample()
        self.assertEqual([formatEvent(event) for event in events], [])

    @inlineCallbacks
    def test_ipv6_host(self):
        try:
            port = reactor.listenTCP(0, Accepting(), interface="::1")
        except CannotListenError as error:
            self.skipTest(f"no IPv6 loopback: {error}")
        self.addCleanup(port.stopListening)
        health = yield self.metric(f"probe:host=::1,port={port.getHost().port}").sample()
        self.assertEqual(health, 100.0)

    @inlineCallbacks
    def test_closed_port_fails_the_reading(self):
        port = reactor.listenTCP(0, Accepting(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        reading = self.metric(f"probe:port={number}").sample()
        error = yield self.assertFailure(reading, MetricReadError)
        self.assertRegex(str(error), rf"^cannot connect to 127.0.0.1 port {number}: .*refused")


class ProbeConfigTests(SynchronousTestCase):
    def test_failing_probe_counts_as_zero_by_default(self) -> None:
        configured = MetricRegistry.discover().build("probe:port=80", MetricEnvironment(Clock()))
        self.assertEqual(configured.on_error, OnError.ZERO)

    def test_connect_timeout_fails_the_reading(self) -> None:
        memory = MemoryReactorClock()
        metric = MetricRegistry.discover().build(
            "probe:port=80,host=10.0.0.1,timeout=3", MetricEnvironment(memory)
        ).metric
        reading = metric.sample()
        host, port, factory, timeout, _ = memory.tcpClients[0]
        self.assertEqual((host, port, timeout), ("10.0.0.1", 80, 3.0))
        # What the connector does when its timeout expires:
        factory.clientConnectionFailed(memory.connectors[0], Failure(ConnectTimeoutError()))
        self.assertEqual(
            str(self.failureResultOf(reading, MetricReadError).value),
            "cannot connect to 10.0.0.1 port 80: User timeout caused connection failure.",
        )

    def test_host_must_be_an_address(self) -> None:
        error = self.assertRaises(
            MetricSpecError,
            MetricRegistry.discover().build,
            "probe:port=80,host=localhost",
            MetricEnvironment(Clock()),
        )
        self.assertEqual(
            str(error), "metric 'probe': key 'host' must be an IP address, got 'localhost'"
        )
