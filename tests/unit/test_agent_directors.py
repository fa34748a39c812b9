"""
An agent reporting to a pair of directors (#17): the whole path from its
settings' endpoint strings to each director's sessions, over iosim on a
task.Clock. Each director holds its own session and gets its own health
reports; a drain and a STOP reach both; one director down, refusing or
never answering costs the other nothing, and the agent redials it with
backoff.
"""

from __future__ import annotations

import signal

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionRefusedError, TCPTimedOutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.config import FORWARDING_CODES, AgentSettings, ServiceSettings
from lvsfeedback.agent.service import AgentService
from lvsfeedback.agent.tap import Options, makeService
from lvsfeedback.director.events import Agent
from lvsfeedback.director.factory import NEFactory
from lvsfeedback.necp.units import Service as ServiceUnit
from lvsfeedback.testing.necp_link import Link
from tests.helpers.necp import RecordingEvents, gaps
from tests.helpers.reactor import CallingFromThreadReactor

FIRST, SECOND = "10.0.0.1", "10.0.0.9"
AGENT_HOST = "10.0.0.2"
WEB = ServiceUnit(FORWARDING_CODES["dr"], 6, 80)  # tcp:80 by direct routing, as the settings say
SETTINGS = AgentSettings(
    directors=(f"tcp:{FIRST}:3262", f"tcp:{SECOND}:3262"),
    services=(ServiceSettings("tcp", 80, "dr", "worst", ("cpu",)),),
    drain_timeout=10.0,
)
# Every director asks for health on its keepalive, every 5 s (no jitter here).
RHYTHM = 5.0


class FixedSampler(Service):
    """Health 75 for tcp:80 (0 once drained), sampled from the start."""

    def __init__(self):
        self.drained = False

    def when_sampled(self):
        return succeed(None)

    def health(self, protocol, port):
        if (protocol, port) != (6, 80):
            raise LookupError(port)
        return 0 if self.drained else 75

    def failing(self, protocol, port):
        return []


class Network:
    """
    The wire between the agent's reactor and the directors: each connection
    the agent dials is accepted by that host's director, refused (its
    process is down), or never answered (a black hole: it fails after the
    connect timeout, as TCP would).
    """

    def __init__(self, reactor, directors):
        self.reactor = reactor
        self.directors = directors
        self.state = {host: "up" for host in directors}
        self.attempts = {host: [] for host in directors}
        self.links = {host: [] for host in directors}
        self._seen = 0
        self._port = 40000

    def deliver(self):
        """Answer new connection attempts, then move the bytes in flight."""
        while self._seen < len(self.reactor.tcpClients):
            host, port, factory, timeout, _ = self.reactor.tcpClients[self._seen]
            connector = self.reactor.connectors[self._seen]
            self._seen += 1
            self.attempts[host].append(self.reactor.seconds())
            state = self.state[host]
            if state == "up":
                self._port += 1
                protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
                self.links[host].append(
                    Link(self.directors[host], None, self.reactor, host=AGENT_HOST, port=self._port, agent=protocol)
                )
            elif state == "refusing":
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            else:
                self.reactor.callLater(
                    timeout, factory.clientConnectionFailed, connector, Failure(TCPTimedOutError())
                )
        for links in self.links.values():
            for link in links:
                link.flush()

    def freeze(self, host):
        """C{host}'s director stops (SIGSTOP): it reads and writes nothing more; TCP stays up."""
        link = self.link(host)
        link.director.dataReceived = lambda data: None
        link.director_side.write = lambda data: None

    def link(self, host):
        """The latest connection to C{host}."""
        return self.links[host][-1]


class TwoDirectorsTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = CallingFromThreadReactor()
        self.events = {FIRST: RecordingEvents(), SECOND: RecordingEvents()}
        directors = {
            host: NEFactory(events, clock=self.reactor, random=lambda: 0.0, ask_on_start=False)
            for host, events in self.events.items()
        }
        self.network = Network(self.reactor, directors)

    def start(self, agent):
        agent.startService()
        self.network.deliver()

        def stop():
            if agent.running:
                agent.stopService()
                self.elapse(1)

        self.addCleanup(stop)
        return agent

    def start_agent(self, settings=SETTINGS):
        # random 1.0: every backoff delay is the whole step, 1, 2, 4, ... s.
        return self.start(AgentService(settings, self.reactor, sampler=FixedSampler(), random=lambda: 1.0))

    def elapse(self, seconds, step=0.25):
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.network.deliver()

    def reports(self, host, since=0.0):
        """When C{host}'s director got health reports, and what they said."""
        return [(when, health) for _, _, health, when in self.events[host].of("health") if when > since]


class SessionWithEachDirectorTests(TwoDirectorsTestCase):
    def test_the_agent_holds_one_session_with_each_director_and_each_gets_its_health_reports(self):
        agent = self.start_agent()
        self.elapse(20)
        self.assertEqual(len(agent.links.sessions()), 2)
        for host in (FIRST, SECOND):
            self.assertEqual(self.events[host].of("up"), [(Agent(AGENT_HOST, 40001 if host == FIRST else 40002, 1),)])
            self.assertEqual([services for _, services in self.events[host].of("started")], [(WEB,)])
            self.assertEqual(self.reports(host), [(5.0, 75), (10.0, 75), (15.0, 75), (20.0, 75)])


class DrainTests(TwoDirectorsTestCase):
    def test_a_drain_stops_the_services_on_both_directors_and_fires_once_both_acknowledged(self):
        agent = self.start_agent()
        self.elapse(1)
        drained = []
        agent.drain().addCallback(drained.append)
        self.assertEqual(drained, [], "nothing acknowledged yet")
        self.network.deliver()
        self.assertEqual(drained, [[(), ()]])
        for host in (FIRST, SECOND):
            self.assertEqual([services for _, services in self.events[host].of("stopped")], [(WEB,)])
        self.elapse(20)
        self.assertEqual(self.reports(FIRST, since=1) + self.reports(SECOND, since=1), [],
                         "a stopped service is asked no more")

    def test_sigusr2_drains_on_both_directors(self):
        options = Options()
        options.parseOptions(["--director", f"tcp:{FIRST}:3262", "--director", f"tcp:{SECOND}:3262",
                              "--service", "tcp:80", "--metric", "cpu"])
        options.sampler = FixedSampler()
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        agent = self.start(makeService(options, reactor=self.reactor))
        for hook, args, kwargs in self.reactor.whenRunningHooks:
            hook(*args, **kwargs)
        self.elapse(1)
        signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)
        self.network.deliver()
        self.assertTrue(agent.drained)
        for host in (FIRST, SECOND):
            self.assertEqual([services for _, services in self.events[host].of("stopped")], [(WEB,)])

    def test_stopping_the_agent_stops_its_services_on_both_directors_before_it_goes(self):
        agent = self.start_agent()
        self.elapse(1)
        stopped = []
        agent.stopService().addCallback(stopped.append)
        self.network.deliver()
        self.network.deliver()  # the connections close once the STOP_ACKs are in
        self.assertEqual(len(stopped), 1)
        for host in (FIRST, SECOND):
            self.assertEqual([services for _, services in self.events[host].of("stopped")], [(WEB,)])
            self.assertTrue(self.network.link(host).closed)

    def test_a_drain_waits_for_the_director_that_answers_when_the_other_is_lost_meanwhile(self):
        agent = self.start_agent()
        self.elapse(1)
        drained = []
        agent.drain().addBoth(drained.append)
        self.network.link(SECOND).director_side.loseConnection()
        self.network.link(SECOND).flush()
        self.assertEqual(drained, [], "the first director has not acknowledged yet")
        self.network.deliver()
        self.assertEqual(len(drained), 1)
        self.assertEqual([services for _, services in self.events[FIRST].of("stopped")], [(WEB,)])

    def test_a_director_that_never_acknowledges_costs_the_drain_its_timeout_and_nothing_else(self):
        agent = self.start_agent()
        self.elapse(1)
        self.network.freeze(SECOND)
        drained = []
        agent.drain().addBoth(drained.append)
        self.elapse(9.75)
        self.assertEqual(drained, [])
        self.elapse(0.25)
        self.assertEqual(len(drained), 1, "fired at the drain timeout")
        self.assertEqual([services for _, services in self.events[FIRST].of("stopped")], [(WEB,)])
        # Past the abandoned STOP's own request timeout: nothing is raised
        # into the clock nor logged as an error (trial fails on either).
        self.elapse(30)

    def test_a_director_down_during_the_drain_gets_no_start_when_it_comes_back(self):
        self.network.state[SECOND] = "refusing"
        agent = self.start_agent()
        self.elapse(1)
        agent.drain()
        self.network.deliver()
        self.network.state[SECOND] = "up"
        self.elapse(20)
        self.assertEqual(len(self.events[SECOND].of("up")), 1, "the agent came back to it")
        self.assertEqual(self.events[SECOND].of("started"), [], "but announced nothing: it is drained")
        self.assertEqual(self.reports(SECOND), [])


class OneDirectorDownTests(TwoDirectorsTestCase):
    def assertRhythmKept(self, since, until):
        times = [when for when, _ in self.reports(FIRST, since=since)]
        self.assertEqual(times, [since + RHYTHM * n for n in range(1, round((until - since) / RHYTHM) + 1)])

    def test_a_lost_director_is_redialled_with_backoff_while_the_other_keeps_its_rhythm(self):
        agent = self.start_agent()
        self.elapse(10)
        self.network.state[SECOND] = "refusing"
        self.network.link(SECOND).director_side.loseConnection()
        self.network.deliver()
        self.elapse(60)
        self.assertRhythmKept(since=10, until=70)
        self.assertEqual(self.network.attempts[SECOND][1], 11, "redialled 1 s after the loss")
        self.assertEqual(gaps(self.network.attempts[SECOND][1:]), [2, 4, 8, 16])
        self.assertEqual(len(self.events[FIRST].of("lost")), 0)
        self.assertEqual(len(agent.links.sessions()), 1)
        self.network.state[SECOND] = "up"
        self.elapse(40)
        self.assertEqual(len(agent.links.sessions()), 2)
        self.assertEqual(len(self.events[SECOND].of("started")), 2, "STARTed again on its return")

    def test_a_director_that_never_accepts_costs_the_other_nothing(self):
        self.network.state[SECOND] = "black hole"
        agent = self.start_agent()
        self.elapse(120)
        self.assertRhythmKept(since=0, until=120)
        self.assertEqual(len(agent.links.sessions()), 1)
        attempts = self.network.attempts[SECOND]
        self.assertEqual(gaps(attempts), [30 + 1, 30 + 2, 30 + 4], "connect timeout, then backoff")

    def test_a_director_that_stops_answering_is_declared_dead_and_the_other_keeps_its_rhythm(self):
        agent = self.start_agent()
        self.elapse(10)
        self.network.freeze(SECOND)
        self.network.state[SECOND] = "refusing"
        self.elapse(60)
        self.assertRhythmKept(since=10, until=70)
        self.assertEqual(len(agent.links.sessions()), 1, "the silent director's session ended")
        self.assertGreater(len(self.network.attempts[SECOND]), 1, "and is redialled")
