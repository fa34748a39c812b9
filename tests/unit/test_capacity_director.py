"""
The director's side of the capacity extension: whom it asks and how often
(NE protocol over iosim on a task.Clock), and where the answers go (registry,
updater's ServerInput, status.json).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.capacity import FixedCapacity
from lvsfeedback.agent.protocol import HEALTH_ONLY
from lvsfeedback.director.events import Agent
from lvsfeedback.director.registry import Registry
from lvsfeedback.director.service import DirectorService
from lvsfeedback.director.updater import WeightUpdater
from lvsfeedback.director.web.status import build_status
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.ipvs.model import DestKey, ServiceKey
from lvsfeedback.necp.units import CAPACITY_QUERY, HEALTH_QUERY, Query, Service
from lvsfeedback.necp.wire import MAX_UNITS
from tests.helpers.director import HTTP, agent_up, director_config
from tests.helpers.necp import DNS, WEB, EndpointTestCase


class AskingTests(EndpointTestCase):
    def connect_agent(self, capacity, services=(WEB,), **director_settings):
        """A director asking every 2 s, and an agent; the query types the agent was asked, with their times."""
        director = self.director(health_interval=2.0, **director_settings)
        link = self.connect(director, self.agent_factory(services=services, capacity=capacity))
        asked = []
        answer = link.agent.keepalive_received

        def recording(request):
            asked.extend((self.clock.seconds(), query.type) for query in request.queries)
            return answer(request)

        link.agent.keepalive_received = recording
        director.start_asking(2.0)
        self.addCleanup(director.stop_asking)
        return director, link, asked

    def capacity_times(self, asked):
        return [when for when, kind in asked if kind == CAPACITY_QUERY]

    def test_an_announcing_agent_is_asked_its_capacity_in_every_health_round(self):
        _, _, asked = self.connect_agent(FixedCapacity(0.5))
        self.elapse(7)
        self.assertEqual(self.capacity_times(asked), [2.0, 4.0, 6.0])
        self.assertEqual([when for when, kind in asked if kind == HEALTH_QUERY], [2.0, 4.0, 6.0])
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual(self.events.of("capacity"), [(agent, WEB, 500, 2.0), (agent, WEB, 500, 4.0),
                                                      (agent, WEB, 500, 6.0)])

    def test_a_quota_changed_on_the_server_reaches_the_director_in_the_next_round(self):
        capacity = FixedCapacity(0.3)
        self.connect_agent(capacity)
        self.elapse(3)
        capacity.cpus = 0.15  # as an operator halving the cgroup's cpu.max
        self.elapse(2)
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual(self.events.of("capacity"), [(agent, WEB, 300, 2.0), (agent, WEB, 150, 4.0)])

    def test_with_ask_on_start_the_capacity_comes_with_the_first_health_answer(self):
        self.connect_agent(FixedCapacity(2.0), ask_on_start=True)
        self.elapse(0.25)
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual(self.events.of("health"), [(agent, WEB, 75, 0.0)])
        self.assertEqual(self.events.of("capacity"), [(agent, WEB, 2000, 0.0)])

    def test_a_service_started_later_is_asked_in_the_next_round(self):
        _, link, asked = self.connect_agent(FixedCapacity(1.0))
        self.elapse(10)
        link.agent.start([DNS])
        self.elapse(4)
        asked_for = [(call[1], call[3]) for call in self.events.of("capacity") if call[3] >= 10.0]
        self.assertEqual(asked_for, [(WEB, 10.0), (WEB, 12.0), (DNS, 12.0), (WEB, 14.0), (DNS, 14.0)],
                         "DNS from the round after its START")

    def test_the_questions_are_packed_once_not_every_round(self):
        packed = self.count_packed_queries()
        self.connect_agent(FixedCapacity(1.0))
        self.elapse(40)
        self.assertEqual(len(self.events.of("health")), 20)
        self.assertEqual(len(self.events.of("capacity")), 20)
        self.assertEqual(packed, [Query.health(6, 80), Query.capacity(6, 80)])

    def test_capacity_questions_fill_what_one_keepalive_holds_after_the_health_ones(self):
        ports = [Service(3, 6, port) for port in range(1, MAX_UNITS - 4)]
        _, link, asked = self.connect_agent(FixedCapacity(1.0), services=ports)
        self.elapse(5)
        self.assertEqual(len([kind for _, kind in asked if kind == HEALTH_QUERY]), 2 * (MAX_UNITS - 5))
        asked_capacity = [call[1] for call in self.events.of("capacity")]
        self.assertEqual(len(asked_capacity), 2 * 5, "five a round")
        self.assertLessEqual(set(asked_capacity), set(ports))
        self.assertFalse(link.closed)

    def test_a_draft_only_agent_is_never_asked(self):
        _, link, asked = self.connect_agent(None)
        self.elapse(61)
        self.assertEqual(self.capacity_times(asked), [])
        self.assertFalse(link.director.answers_capacity)
        self.assertEqual(self.events.of("capacity"), [])

    def test_an_agent_that_refuses_a_capacity_query_loses_only_that_answer(self):
        _, link, asked = self.connect_agent(FixedCapacity(1.0))
        # It announced the extension, then answers as a draft-only agent would.
        link.agent._answered_types = HEALTH_ONLY
        with capturedLogs() as events:
            self.elapse(61)
        agent = Agent("10.0.0.2", 40000, 1)
        health_times = [call[3] for call in self.events.of("health")]
        # The refused round's health is asked again at once: every round has its health.
        self.assertEqual(health_times, [2.0 * n for n in range(1, 31)])
        self.assertEqual(self.capacity_times(asked), [2.0], "asked once, never again")
        self.assertEqual(self.events.of("capacity"), [])
        self.assertFalse(link.closed)
        self.assertEqual(self.events.of("lost"), [])
        lines = [formatEvent(event) for event in events if "capacity" in formatEvent(event)]
        self.assertEqual(lines, [f"agent {agent} announced capacity answers but refused a capacity query; asking it no more"])


WEB_SERVICE = ServiceKey.for_address("tcp", "10.0.0.1", 80)
CONFIG = """
[director]
update_interval = 2.0
[status]
listen = "tcp:0:interface=127.0.0.1"
[policy]
mode = "capacity"
smoothing_half_life = 0
hysteresis = 0
slow_start = 0
[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80
forwarding = "nat"
[[service.real]]
address = "10.1.0.1"
[[service.real]]
address = "10.1.0.2"
"""


class RegistryTests(SynchronousTestCase):
    def setUp(self):
        self.config = director_config(self, CONFIG)
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = Registry(self.config, self.clock)
        self.service = self.config.services[0]

    def up(self, n):
        return agent_up(self.registry, n)

    def facts(self, n):
        return self.registry.facts(self.service, DestKey.of(f"10.1.0.{n}", 80))

    def test_the_latest_capacity_is_kept_in_cpus_per_server(self):
        agent = self.up(1)
        self.assertIsNone(self.facts(1).capacity)
        self.registry.capacityReported(agent, HTTP, 250, self.clock.seconds())
        self.assertEqual(self.facts(1).capacity, 0.25)
        self.registry.capacityReported(agent, HTTP, 1500, self.clock.seconds())
        self.assertEqual(self.facts(1).capacity, 1.5)

    def test_zero_means_unknown(self):
        agent = self.up(1)
        self.registry.capacityReported(agent, HTTP, 250, self.clock.seconds())
        self.registry.capacityReported(agent, HTTP, 0, self.clock.seconds())
        self.assertIsNone(self.facts(1).capacity)

    def test_a_stop_or_a_new_session_forgets_it(self):
        agent = self.up(1)
        self.registry.capacityReported(agent, HTTP, 250, self.clock.seconds())
        self.registry.servicesStopped(agent, [HTTP])
        self.registry.servicesStarted(agent, [HTTP])
        self.assertIsNone(self.facts(1).capacity)
        self.registry.capacityReported(agent, HTTP, 250, self.clock.seconds())
        self.up(1)
        self.assertIsNone(self.facts(1).capacity)

    def test_a_capacity_change_brings_a_pass_forward_but_a_first_report_does_not(self):
        changes = []
        self.registry.change_listeners.append(lambda: changes.append(True))
        agent = self.up(1)
        self.registry.capacityReported(agent, HTTP, 250, self.clock.seconds())
        self.registry.capacityReported(agent, HTTP, 250, self.clock.seconds())
        self.assertEqual(changes, [])
        self.registry.capacityReported(agent, HTTP, 500, self.clock.seconds())
        self.assertEqual(changes, [True])

    def test_a_first_capacity_and_each_change_are_logged_once(self):
        agent = self.up(1)
        with capturedLogs() as events:
            for milli in (250, 250, 500, 500):
                self.registry.capacityReported(agent, HTTP, milli, self.clock.seconds())
        lines = [formatEvent(event) for event in events]
        self.assertEqual(lines, ["agent 10.1.0.1 6/80: capacity 0.25 CPUs", "agent 10.1.0.1 6/80: capacity 0.25 -> 0.5 CPUs"])

    def test_the_updater_passes_it_to_the_policy(self):
        updater = WeightUpdater(self.config, self.registry, MemoryIPVS(), self.clock)
        agent = self.up(1)
        self.up(2)
        self.registry.capacityReported(agent, HTTP, 250, self.clock.seconds())
        inputs = {}
        import lvsfeedback.director.updater as module

        real_decide = module.decide

        def recording(services, state, now):
            inputs.update(services)
            return real_decide(services, state, now)

        self.patch(module, "decide", recording)
        updater.plan({}, self.clock.seconds())
        servers = inputs[WEB_SERVICE].servers
        self.assertEqual(servers[DestKey.of("10.1.0.1", 80)].capacity, 0.25)
        self.assertIsNone(servers[DestKey.of("10.1.0.2", 80)].capacity)


class StatusTests(SynchronousTestCase):
    def test_status_shows_each_servers_capacity(self):
        clock = Clock()
        director = DirectorService(director_config(self, CONFIG), clock, table=MemoryIPVS())
        agent = agent_up(director.registry, 1)
        director.registry.capacityReported(agent, HTTP, 400, clock.seconds())
        director.updater.run_pass()
        status = build_status(director, clock.seconds())
        servers = {entry["server"]: entry["capacity"] for entry in status["services"][0]["servers"]}
        self.assertEqual(servers, {"10.1.0.1:80": 0.4, "10.1.0.2:80": None})
