"""
The agent's side of the capacity extension: what it announces in its INIT,
what it answers to a capacity query (from a cgroup quota, its CPU affinity,
or a configured number), and the `capacity` setting.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lvsfeedback.agent.capacity import (
    AUTO,
    OFF,
    FixedCapacity,
    MeasuredCapacity,
    allowed_cpus,
    capacity_source,
    parse_capacity,
)
from lvsfeedback.agent.config import AgentConfigError, AgentSettings, ServiceSettings, load_agent_config
from lvsfeedback.agent.interfaces import ICapacitySource, IHealthSource
from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.spec import MetricRegistry
from lvsfeedback.agent.protocol import SEFactory
from lvsfeedback.agent.sampler import Sampler, ServiceMetrics
from lvsfeedback.agent.service import AgentService
from lvsfeedback.agent.tap import Options
from lvsfeedback.necp.framing import Decoder, encode
from lvsfeedback.necp.messages import ErrorReply, Init, InitAck, Keepalive, KeepaliveAck
from lvsfeedback.necp.units import CAPACITY_QUERY, Answer, Query

FIXTURE = Path(__file__).parent / "fixtures" / "metrics" / "cgroup"


class FixedHealth:
    def health(self, protocol, port):
        return 80


def messages(transport: StringTransport) -> list:
    decoder = Decoder()
    decoder.feed(transport.value())
    transport.clear()
    found = []
    while (message := decoder.next_message()) is not None:
        found.append(message)
    return found


class AgentSessionTestCase(SynchronousTestCase):
    def session(self, capacity):
        """An agent session whose INIT the director accepted; its INIT, and the session."""
        factory = SEFactory(FixedHealth(), clock=Clock(), random=lambda: 0.0, capacity=capacity)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        [init] = messages(transport)
        protocol.dataReceived(encode(InitAck(request_id=init.request_id)))
        self.assertTrue(protocol.established)
        messages(transport)  # its START
        self.transport = transport
        return init, protocol

    def ask(self, protocol, *queries) -> object:
        protocol.dataReceived(encode(Keepalive(request_id=77, queries=queries)))
        [reply] = messages(self.transport)
        return reply


class AnnouncementTests(AgentSessionTestCase):
    def test_an_agent_with_a_capacity_source_announces_it_in_its_init(self):
        init, _ = self.session(FixedCapacity(2.0))
        self.assertEqual(init, Init(request_id=init.request_id, answers_capacity=True))

    def test_an_agent_without_one_sends_the_drafts_init(self):
        init, _ = self.session(None)
        self.assertEqual(init, Init(request_id=init.request_id))
        self.assertEqual(encode(init), encode(Init(request_id=init.request_id)), "byte for byte")


class AnswerTests(AgentSessionTestCase):
    def test_capacity_is_answered_in_milli_cpus_beside_health(self):
        _, protocol = self.session(FixedCapacity(1.5))
        reply = self.ask(protocol, Query.health(6, 80), Query.capacity(6, 80))
        self.assertEqual(reply, KeepaliveAck(request_id=77, answers=(Answer(1, 6, 80, 80), Answer(CAPACITY_QUERY, 6, 80, 1500))))

    def test_an_agent_that_does_not_announce_capacity_refuses_the_query_as_unknown(self):
        _, protocol = self.session(None)
        reply = self.ask(protocol, Query.health(6, 80), Query.capacity(6, 80))
        self.assertEqual(reply, ErrorReply(opcode=reply.opcode, request_id=77, units=(Query.capacity(6, 80),)))

    def test_a_capacity_that_cannot_be_read_is_answered_unknown_and_logged_once(self):
        class Broken:
            def capacity(self, protocol, port):
                raise OSError("cpu.max: permission denied")

        _, protocol = self.session(Broken())
        with capturedLogs() as events:
            first = self.ask(protocol, Query.capacity(6, 80))
            second = self.ask(protocol, Query.capacity(6, 80))
        self.assertEqual([first.answers, second.answers], [(Answer(CAPACITY_QUERY, 6, 80, 0),)] * 2)
        self.assertEqual(len([e for e in events if "capacity 0" in e["log_format"].format(**e)]), 1)

    def test_a_tiny_capacity_is_one_milli_cpu_not_unknown_and_a_huge_one_the_maximum(self):
        _, protocol = self.session(FixedCapacity(0.0001))
        self.assertEqual(self.ask(protocol, Query.capacity(6, 80)).answers[0].value, 1)
        _, protocol = self.session(FixedCapacity(1e9))
        self.assertEqual(self.ask(protocol, Query.capacity(6, 80)).answers[0].value, 10_000_000)


class MeasuredCapacityTests(SynchronousTestCase):
    def setUp(self):
        self.root = Path(self.mktemp()).absolute()
        shutil.copytree(FIXTURE, self.root)
        self.environment = MetricEnvironment(Clock(), cgroup_root=self.root, cpu_count=4)
        self.registry = MetricRegistry.discover()

    def sampler(self, *specs: str) -> Sampler:
        metrics = tuple(self.registry.build(spec, self.environment) for spec in specs)
        return Sampler([ServiceMetrics("tcp", 80, metrics)], Clock())

    def test_a_cgroup_metric_with_a_quota_gives_the_quota(self):
        # lab/rs1's cpu.max is "50000 100000": half a CPU.
        capacity = MeasuredCapacity(self.sampler("loadavg", "cgroup:path=lab/rs1"), cpus=lambda: 8)
        self.assertEqual(capacity.capacity(6, 80), 0.5)

    def test_the_quota_is_read_when_asked(self):
        capacity = MeasuredCapacity(self.sampler("cgroup:path=lab/rs1"), cpus=lambda: 8)
        (self.root / "lab/rs1/cpu.max").write_text("150000 100000\n")
        self.assertEqual(capacity.capacity(6, 80), 1.5)

    def test_a_cgroup_without_a_quota_gives_the_cpus_the_agent_may_run_on(self):
        capacity = MeasuredCapacity(self.sampler("cgroup:path=lab/rs2"), cpus=lambda: 3)
        self.assertEqual(capacity.capacity(6, 80), 3.0)

    def test_no_cgroup_metric_gives_the_cpus_the_agent_may_run_on(self):
        capacity = MeasuredCapacity(self.sampler("loadavg"), cpus=lambda: 3)
        self.assertEqual(capacity.capacity(6, 80), 3.0)

    def test_by_default_the_cpus_are_this_process_affinity(self):
        capacity = MeasuredCapacity(self.sampler("loadavg"))
        self.assertEqual(capacity.capacity(6, 80), float(allowed_cpus()))
        self.assertGreaterEqual(allowed_cpus(), 1)

    def test_an_unknown_service_raises_so_it_is_answered_unknown(self):
        capacity = MeasuredCapacity(self.sampler("loadavg"), cpus=lambda: 3)
        self.assertRaises(LookupError, capacity.capacity, 6, 81)

    def test_the_sources_provide_the_interface(self):
        verifyObject(ICapacitySource, FixedCapacity(1.0))
        verifyObject(ICapacitySource, MeasuredCapacity(self.sampler("loadavg")))

    def test_the_sampler_is_the_health_source(self):
        verifyObject(IHealthSource, self.sampler("loadavg"))


class SettingTests(SynchronousTestCase):
    def test_auto_off_and_numbers(self):
        self.assertEqual([parse_capacity(v) for v in ("auto", "off", 2, 0.25, "1.5")], [AUTO, OFF, 2.0, 0.25, 1.5])

    def test_nonsense_is_refused_with_a_reason(self):
        for value in (0, -1, "many", True, float("inf"), float("nan"), [1]):
            error = self.assertRaises(ValueError, parse_capacity, value)
            self.assertIn('"auto", "off" or a number of CPUs above 0', str(error))

    def test_the_source_for_each_setting(self):
        sampler = object()
        self.assertIsNone(capacity_source(OFF, sampler))
        self.assertIsInstance(capacity_source(AUTO, sampler), MeasuredCapacity)
        fixed = capacity_source(2.5, sampler)
        self.assertEqual(fixed.capacity(6, 80), 2.5)

    def test_the_config_file_key_is_checked_with_file_and_key(self):
        path = self.mktemp()
        with open(path, "w") as file:
            file.write('[agent]\ncapacity = "lots"\n')
        error = self.assertRaises(AgentConfigError, load_agent_config, path)
        self.assertIn(f'{path}: agent.capacity: must be "auto", "off" or a number of CPUs above 0', str(error))
        with open(path, "w") as file:
            file.write("[agent]\ncapacity = 0.5\n")
        self.assertEqual(load_agent_config(path).capacity, 0.5)
        with open(path, "w") as file:
            file.write("[agent]\n")
        self.assertEqual(load_agent_config(path).capacity, AUTO)

    def test_the_flag_overrides_the_file(self):
        options = Options()
        options.parseOptions(["-d", "tcp:h:3262", "-s", "tcp:80", "-m", "loadavg", "--capacity", "off"])
        self.assertEqual(options.settings.capacity, OFF)
        options = Options()
        self.assertRaisesRegex(Exception, "--capacity: must be", options.parseOptions,
                               ["-d", "tcp:h:3262", "-s", "tcp:80", "-m", "loadavg", "--capacity", "none"])

    def test_the_agent_service_gives_its_links_the_configured_source(self):
        loadavg = MetricRegistry.discover().build("loadavg", MetricEnvironment(Clock()))
        sampler = Sampler([ServiceMetrics("tcp", 80, (loadavg,))], Clock())

        def links(capacity):
            settings = AgentSettings(directors=("unused",), services=(ServiceSettings("tcp", 80, "nat", "worst", ("loadavg",)),),
                                     capacity=capacity)
            agent = AgentService(settings, Clock(), sampler=sampler, endpoints=[object()])
            return agent.links.factories[0].capacity

        self.assertIsNone(links(OFF))
        self.assertEqual(links(4.0).capacity(6, 80), 4.0)
        self.assertIsInstance(links(AUTO), MeasuredCapacity)
