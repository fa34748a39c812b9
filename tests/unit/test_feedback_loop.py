"""
The whole loop in memory, on one task.Clock: agents (the real SE protocol and
the agent's drain) answer a real director (NE protocol, registry, policy,
updater) that writes an in-memory IPVS table. Nothing is stubbed but the
wire and the kernel.
"""

import textwrap

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.config import AgentSettings, ServiceSettings
from lvsfeedback.agent.protocol import SEFactory
from lvsfeedback.agent.service import AgentService
from lvsfeedback.director.config import load_config
from lvsfeedback.director.service import DirectorService
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.ipvs.model import DestKey, ServiceKey
from lvsfeedback.necp.units import Service
from lvsfeedback.testing.necp_link import Link
from tests.helpers.director import director_config, write_director_config

WEB = ServiceKey.for_address("tcp", "10.0.0.1", 80)
SERVERS = ("10.1.0.1", "10.1.0.2", "10.1.0.3")


class SettableHealth:
    """The agent's health source, set by the test: the metrics are tested elsewhere."""

    def __init__(self, value):
        self.value, self.drained = value, False

    def health(self, protocol, port):
        return 0 if self.drained else self.value

    def setServiceParent(self, parent):
        pass

    def when_sampled(self):
        return succeed(None)


def agent_link(director: DirectorService, health: SettableHealth, clock: Clock, host: str) -> tuple[AgentService, Link]:
    """
    A real agent (tcp/80, nat) with C{health} as its sampler, linked to
    C{director} in memory from C{host} instead of through an endpoint.
    """
    settings = AgentSettings(directors=("unused",), services=(ServiceSettings("tcp", 80, "nat", "worst", ("x",)),),
                             drain_timeout=5.0)
    agent = AgentService(settings, clock, sampler=health, endpoints=[])
    factory = SEFactory(health, agent.links.announced, clock=clock, random=lambda: 0.0)
    agent.links.factories.append(factory)
    return agent, Link(director.factory, factory, clock, host=host)


class FeedbackLoopTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        reals = "".join(f'[[service.real]]\naddress = "{a}"\n' for a in SERVERS)
        path = self.config_path = write_director_config(self, textwrap.dedent("""
                [director]
                listen = "tcp:0:interface=127.0.0.1"
                update_interval = 2.0
                [policy]
                mode = "health"  # these tests assert base x health weights
                smoothing_half_life = 0
                slow_start = 0
                [[service]]
                name = "web"
                protocol = "tcp"
                address = "10.0.0.1"
                port = 80
                forwarding = "nat"
                """) + reals)
        self.table = MemoryIPVS()
        self.director = DirectorService(load_config(path), self.clock, table=self.table)
        self.director.updater.startService()
        self.links = []
        self.agents = {}
        for host in SERVERS:
            health = SettableHealth(100)
            agent, link = agent_link(self.director, health, self.clock, host)
            self.agents[host] = (agent, health)
            self.links.append(link)

    def elapse(self, seconds, step=0.5):
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for link in self.links:
                link.flush()

    def weights(self):
        return {dest.address: d.server.weight for dest, d in self.table.table()[WEB].dests.items()}

    def test_weights_follow_each_agents_health(self):
        self.agents["10.1.0.2"][1].value = 30
        self.elapse(8)
        self.assertEqual(self.weights(), {"10.1.0.1": 100, "10.1.0.2": 30, "10.1.0.3": 100})
        self.agents["10.1.0.2"][1].value = 80
        self.elapse(8)
        self.assertEqual(self.weights()["10.1.0.2"], 80)

    def test_a_refused_start_of_two_thousand_services_costs_one_log_line(self):
        self.elapse(2)
        agent = self.links[0].agent
        services = [Service(3, 6, port) for port in range(1000, 3000)]
        refused = []
        with capturedLogs() as events:
            agent.start(services).addCallback(refused.append)
            self.elapse(0.5)
        self.assertEqual(refused, [tuple(services)])
        [line] = [formatEvent(event) for event in events]
        self.assertIn("2000 services", line)
        self.assertLess(len(line), 300)
        self.assertEqual(self.weights()[SERVERS[0]], 100)

    def test_an_agent_resetting_its_exceptions_is_answered_with_no_failure_logged(self):
        self.elapse(2)
        with capturedLogs() as events:
            reset = self.links[0].agent.reset_exceptions()
            self.elapse(0.5)
        self.assertEqual(self.successResultOf(reset), ())
        self.assertEqual([formatEvent(event) for event in events if "log_failure" in event], [])

    def test_a_draining_agent_is_quiesced_once_the_director_acknowledges(self):
        self.elapse(8)
        agent, health = self.agents["10.1.0.3"]
        drained = agent.drain()
        self.assertEqual(health.health(6, 80), 0, "a draining agent answers health 0 at once")
        self.elapse(1)
        self.assertEqual(self.successResultOf(drained), [()], "one STOP_ACK, nothing refused")
        self.elapse(2)
        self.assertEqual(self.weights()["10.1.0.3"], 0)
        self.assertIn(DestKey.of("10.1.0.3", 80), self.table.table()[WEB].dests, "quiesced, not removed")

    def test_an_agent_that_goes_silent_is_quiesced_within_three_keepalives(self):
        self.elapse(8)
        self.links[0].cut = True
        self.elapse(3 * 6 + 2 * 2)
        self.assertEqual(self.weights()["10.1.0.1"], 0)
        self.assertEqual(self.weights()["10.1.0.2"], 100)

    def test_questions_go_out_just_ahead_of_each_pass_so_it_acts_on_fresh_answers(self):
        self.director.ask_ahead_of_passes()
        self.elapse(4)
        self.assertEqual({session.health[(6, 80)].time for session in self.director.registry.sessions}, {3.5})
        # Asked at 5.5 s and acted on at 6 s: half a second, not a keepalive away.
        self.agents["10.1.0.2"][1].value = 30
        self.elapse(2)
        self.assertEqual(self.weights()["10.1.0.2"], 30)

    def test_a_pass_waits_for_its_rounds_late_answers_and_acts_on_them_at_once(self):
        self.director.ask_ahead_of_passes()
        self.elapse(4)
        late = self.links[1]
        self.agents["10.1.0.2"][1].value = 30
        passes = self.director.updater.passes
        for moment in (1.5, 0.5):  # the round at 5.5 s, the pass due at 6 s; 10.1.0.2 not answered yet
            self.clock.advance(moment)
            for link in self.links:
                if link is not late:
                    link.flush()
        self.assertEqual((self.director.updater.passes, self.weights()["10.1.0.2"]), (passes, 100), "the pass waits")
        self.clock.advance(0.25)
        late.flush()
        self.assertEqual((self.director.updater.passes, self.weights()["10.1.0.2"]), (passes + 1, 30))
        self.elapse(1.5)
        self.assertEqual(self.director.updater.passes, passes + 1, "no other pass before the next regular one")

    def test_a_pass_waits_for_late_answers_half_a_second_at_most(self):
        self.director.ask_ahead_of_passes()
        self.elapse(4)
        passes = self.director.updater.passes
        self.links[1].cut = True
        self.clock.advance(1.5)
        self.elapse(0.5)
        self.assertEqual(self.director.updater.passes, passes, "the pass due at 6 s waits")
        self.clock.advance(0.49)
        self.assertEqual(self.director.updater.passes, passes)
        self.clock.advance(0.01)
        self.assertEqual(self.director.updater.passes, passes + 1)

    def test_a_reload_with_a_new_health_interval_asks_at_the_new_rhythm(self):
        self.director.ask_ahead_of_passes()
        self.elapse(4)
        asked = []
        report = self.director.registry.healthReported
        self.director.registry.healthReported = lambda *event: asked.append(self.clock.seconds()) or report(*event)
        with open(self.config_path) as file:
            text = file.read()
        with open(self.config_path, "w") as file:
            file.write(text.replace("update_interval = 2.0", "update_interval = 2.0\nhealth_interval = 1.0"))
        self.assertTrue(self.director.reload())
        self.elapse(4)
        # Each of the three agents at 5.5, 6.5, 7.5 s: still half a second ahead of the passes at 6 and 8 s.
        self.assertEqual(asked, [5.5] * 3 + [6.5] * 3 + [7.5] * 3)


class DualStackListenerTests(SynchronousTestCase):
    """
    Behind a dual-stack listener (`tcp6:3262`) an IPv4 agent arrives as
    ::ffff:a.b.c.d; it is the IPv4 agent all the same.
    """

    def director(self, allow: str) -> DirectorService:
        config = director_config(self, f"""
                [director]
                listen = "tcp:0:interface=127.0.0.1"
                {allow}
                [policy]
                mode = "health"
                smoothing_half_life = 0
                slow_start = 0
                [[service]]
                name = "web"
                protocol = "tcp"
                address = "192.0.2.1"
                port = 80
                [[service.real]]
                address = "10.0.0.2"
                """)
        self.clock = Clock()
        self.table = MemoryIPVS()
        director = DirectorService(config, self.clock, table=self.table)
        director.updater.startService()
        return director

    def connect(self, director: DirectorService, health: int) -> Link:
        _, link = agent_link(director, SettableHealth(health), self.clock, "::ffff:10.0.0.2")
        return link

    def weights(self) -> dict[str, int]:
        key = ServiceKey.for_address("tcp", "192.0.2.1", 80)
        return {dest.address: d.server.weight for dest, d in self.table.table()[key].dests.items()}

    def elapse(self, link: Link, seconds: float) -> None:
        for _ in range(round(seconds / 0.5)):
            self.clock.advance(0.5)
            link.flush()

    def test_a_mapped_agent_passes_an_allow_list_of_its_ipv4_network(self):
        director = self.director('allow = ["10.0.0.0/24"]')
        link = self.connect(director, 60)
        self.elapse(link, 4)
        self.assertFalse(link.closed)
        self.assertEqual([str(agent) for agent in director.factory.agents()], ["10.0.0.2:40000#1"])

    def test_a_mapped_agents_health_reaches_its_ipv4_real_server(self):
        director = self.director("")
        link = self.connect(director, 60)
        self.elapse(link, 8)
        self.assertEqual(self.weights(), {"10.0.0.2": 60})
        self.assertEqual([session.address for session in director.registry.sessions], ["10.0.0.2"])
