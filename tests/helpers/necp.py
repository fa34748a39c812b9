"""
What the NECP endpoint tests share: both ends connected in memory on a
task.Clock (L{EndpointTestCase}), a director that records what its agents
tell it, and a transport that applies back-pressure as TCP does.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lvsfeedback.agent.interfaces import IHealthSource
from lvsfeedback.agent.protocol import SEFactory
from lvsfeedback.director.events import IAgentEvents
from lvsfeedback.director.factory import NEFactory
from lvsfeedback.necp import session as necp_session
from lvsfeedback.necp.framing import Decoder
from lvsfeedback.necp.units import Service
from lvsfeedback.testing.necp_link import Link

WEB = Service(3, 6, 80)
DNS = Service(1, 17, 53)
SECRET = b"correct horse battery staple"


@implementer(IAgentEvents)
class RecordingEvents:
    """Records every event; refuses the services in C{refuse}."""

    def __init__(self):
        self.calls = []
        self.refuse = set()
        self.health_waiters = []

    def of(self, kind):
        return [call[1:] for call in self.calls if call[0] == kind]

    def agentUp(self, agent):
        self.calls.append(("up", agent))

    def servicesStarted(self, agent, services):
        self.calls.append(("started", agent, services))
        return [service for service in services if service in self.refuse]

    def servicesStopped(self, agent, services):
        self.calls.append(("stopped", agent, services))

    def healthReported(self, agent, service, health, when):
        self.calls.append(("health", agent, service, health, when))
        waiters, self.health_waiters = self.health_waiters, []
        for waiter in waiters:
            waiter.callback((agent, service, health))

    def capacityReported(self, agent, service, milli_cpus, when):
        self.calls.append(("capacity", agent, service, milli_cpus, when))

    def exceptionAdded(self, agent, rule):
        self.calls.append(("added", agent, rule))

    def exceptionRemoved(self, agent, rule):
        self.calls.append(("removed", agent, rule))

    def exceptionsReset(self, agent):
        self.calls.append(("reset", agent))

    def agentLost(self, agent, reason):
        self.calls.append(("lost", agent, reason))


@implementer(IHealthSource)
class TableHealth:
    def __init__(self, table):
        self.table = table

    def health(self, protocol, port):
        return self.table[(protocol, port)]


class EndpointTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = RecordingEvents()
        self.health = TableHealth({(6, 80): 75, (17, 53): 40})
        self.links = []

    def director(self, **settings):
        settings.setdefault("random", lambda: 0.0)
        # These tests follow the keepalive rhythm alone; the early health
        # question after START has its own test.
        settings.setdefault("ask_on_start", False)
        return NEFactory(self.events, clock=self.clock, **settings)

    def agent_factory(self, services=(WEB,), **settings):
        settings.setdefault("random", lambda: 0.0)
        return SEFactory(self.health, set(services), clock=self.clock, **settings)

    def connect(self, director, agent_factory, **where):
        link = Link(director, agent_factory, self.clock, **where)
        self.links.append(link)
        return link

    def elapse(self, seconds, step=0.25):
        """Let C{seconds} pass, delivering data on every link between steps."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for link in self.links:
                link.flush()

    def flush(self):
        for link in self.links:
            link.flush()

    def count_packed_queries(self):
        """The queries packed from now on, one by one."""
        packed = []
        pack_unit = necp_session.pack_unit
        self.patch(necp_session, "pack_unit", lambda unit: packed.append(unit) or pack_unit(unit))
        return packed



class ConsumerTransport(StringTransport):
    """
    A transport that pauses its streaming producer once more than
    C{buffer_size} bytes wait to be sent, as Twisted's TCP transport does,
    and resumes it when the peer L{drain}s them.
    """

    buffer_size = 65536

    def __init__(self, host="10.0.0.2", port=40000):
        super().__init__(peerAddress=IPv4Address("TCP", host, port))
        self.producer_paused = False

    def write(self, data):
        super().write(data)
        if self.producer is not None and not self.producer_paused and len(self.value()) > self.buffer_size:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self):
        """The peer reads everything; the messages it read."""
        messages = decode_all(self.value())
        self.clear()
        if self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return messages


def decode_all(data):
    decoder = Decoder()
    decoder.feed(data)
    found = []
    while (message := decoder.next_message()) is not None:
        found.append(message)
    return found


def gaps(times):
    """The time between each two successive moments of `times`."""
    return [later - earlier for earlier, later in zip(times, times[1:])]
