"""
The seam between the NE protocol and the registry: L{IAgentEvents}, which
the registry declares, and L{GuardedEvents}, through which the protocol
reports to it.
"""

from __future__ import annotations

import textwrap

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from lvsfeedback.agent.protocol import SEFactory
from lvsfeedback.director.config import load_config
from lvsfeedback.director.events import Agent, GuardedEvents, IAgentEvents
from lvsfeedback.director.factory import NEFactory
from lvsfeedback.director.registry import Registry
from lvsfeedback.necp.units import Service
from lvsfeedback.testing.necp_link import Link

CONFIG = """
[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80
forwarding = "nat"
[[service.real]]
address = "10.1.0.1"
"""

AGENT = Agent("10.1.0.1", 40000, 1)
HTTP = Service(forwarding=3, protocol=6, port=80)


class Broken:
    """An events provider whose every call raises."""

    def __getattr__(self, name):
        def raising(*arguments):
            raise RuntimeError(f"{name} bug")

        return raising


class OneHealth:
    def health(self, protocol, port):
        return 75


class RegistryTests(SynchronousTestCase):
    def setUp(self):
        path = self.mktemp()
        with open(path, "w") as file:
            file.write(textwrap.dedent(CONFIG))
        self.clock = Clock()
        self.registry = Registry(load_config(path), self.clock)

    def test_the_registry_provides_the_agent_events(self):
        self.assertTrue(verifyObject(IAgentEvents, self.registry))

    def test_a_new_session_from_a_host_leaves_the_registry_one_session_the_newest(self):
        director = NEFactory(self.registry, clock=self.clock, random=lambda: 0.0)
        agents = SEFactory(OneHealth(), {HTTP}, clock=self.clock, random=lambda: 0.0)
        links = [Link(director, agents, self.clock, host="10.1.0.1", port=40000 + n) for n in range(2)]
        for link in links:
            link.flush()
        self.assertEqual([session.handle for session in self.registry.sessions], [Agent("10.1.0.1", 40001, 2)])
        links[1].agent_side.loseConnection()
        for link in links:
            link.flush()
        self.assertEqual(self.registry.sessions, [])


    def test_an_agent_coming_up_is_logged_once_with_its_session(self):
        director = NEFactory(self.registry, clock=self.clock, random=lambda: 0.0)
        agents = SEFactory(OneHealth(), {HTTP}, clock=self.clock, random=lambda: 0.0)
        with capturedLogs() as events:
            Link(director, agents, self.clock, host="10.1.0.1", port=40000).flush()
        up = [
            formatEvent(event) for event in events
            if event["log_namespace"].startswith("lvsfeedback.director") and " up" in formatEvent(event)
        ]
        self.assertEqual(up, ["agent 10.1.0.1 up (session 10.1.0.1:40000#1)"])

class GuardedEventsTests(SynchronousTestCase):
    def test_guarded_events_provide_the_agent_events(self):
        self.assertTrue(verifyClass(IAgentEvents, GuardedEvents))

    def test_each_event_reaches_the_provider_and_a_starts_answer_comes_back(self):
        calls = []

        class Recording:
            def __getattr__(self, name):
                return lambda *arguments: calls.append((name, *arguments)) or [HTTP]

        events = GuardedEvents(Recording())
        self.assertEqual(events.servicesStarted(AGENT, (HTTP,)), [HTTP])
        events.healthReported(AGENT, HTTP, 75, 1.0)
        events.agentLost(AGENT, "gone")
        self.assertEqual(
            calls,
            [("servicesStarted", AGENT, (HTTP,)), ("healthReported", AGENT, HTTP, 75, 1.0), ("agentLost", AGENT, "gone")],
        )

    def test_a_failing_provider_is_logged_once_per_event_and_raises_nothing(self):
        events = GuardedEvents(Broken())
        with capturedLogs() as logged:
            events.agentUp(AGENT)
            events.capacityReported(AGENT, HTTP, 500, 1.0)
            events.exceptionsReset(AGENT)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.assertEqual(
            [formatEvent(event) for event in logged],
            [f"agent event handler {name} failed" for name in ("agentUp", "capacityReported", "exceptionsReset")],
        )

    def test_a_start_the_provider_fails_on_refuses_every_service_it_carried(self):
        events = GuardedEvents(Broken())
        self.assertEqual(events.servicesStarted(AGENT, (HTTP,)), (HTTP,))
        self.flushLoggedErrors(RuntimeError)
