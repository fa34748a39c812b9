"""
The weight updater against the in-memory IPVS table: what it writes, what it
leaves alone, and how it survives failures. Time is a task.Clock.
"""

import dataclasses

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.config import load_config
from lvsfeedback.director.events import Agent
from lvsfeedback.director.pass_log import OBSERVED_LINES
from lvsfeedback.director.policy import DRAINED, AgentState, HealthReport, Pinned, Reason
from lvsfeedback.director.registry import START_GRACE, Registry
from lvsfeedback.director.service import DirectorService
from lvsfeedback.director.updater import WeightUpdater
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.ipvs.model import (
    AddDest,
    AddService,
    DeleteDest,
    DeleteMarkRule,
    DeleteService,
    DestCounters,
    DestKey,
    EditDest,
    RealServer,
    ServiceKey,
    SetMarkRule,
    VirtualService,
)
from lvsfeedback.necp.units import Service
from tests.helpers.director import (
    HTTP,
    RS,
    WEB,
    agent_up,
    director_config,
    write_director_config,
)

CONFIG = """
[director]
update_interval = 2.0
{director}

[policy]
mode = "health"  # these tests assert base x health weights
smoothing_half_life = 0
hysteresis = 0
slow_start = 0
panic_threshold = 0.3

[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80
scheduler = "wlc"
forwarding = "nat"
{reals}
{extra}
"""
REAL = """
[[service.real]]
address = "{address}"
weight = 100
"""


def write_config(case, director="", reals=("10.1.0.1", "10.1.0.2", "10.1.0.3"), extra=""):
    """The updater tests' config (L{CONFIG}): service web with C{reals}."""
    text = CONFIG.format(director=director, reals="".join(REAL.format(address=a) for a in reals), extra=extra)
    return director_config(case, text)


class FailingTable:
    """A table whose reads fail until told otherwise, like a kernel without ip_vs loaded yet."""

    def __init__(self, table):
        self.table = table
        self.failing = True

    def snapshot(self):
        if self.failing:
            return defer.fail(OSError("netlink: no such family"))
        return self.table.snapshot()

    def apply(self, changes):
        return self.table.apply(changes)


class UpdaterTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.table = MemoryIPVS()

    def start(self, config, table=None, **kwargs):
        self.config = config
        self.registry = Registry(config, self.clock)
        self.updater = WeightUpdater(config, self.registry, table or self.table, self.clock, **kwargs)
        self.updater.startService()
        self.addCleanup(self.updater.stopService)
        return self.updater

    def weights(self):
        return {dest: d.server.weight for dest, d in self.table.table()[WEB].dests.items()}

    def connect(self, n, health=None, port=40000):
        return agent_up(self.registry, n, health, now=self.clock.seconds(), port=port)

    def tick(self, seconds=2.0):
        self.clock.advance(seconds)


class ReconcileTests(UpdaterTestCase):
    def test_first_pass_creates_the_configured_service_with_base_weights(self):
        self.start(write_config(self))
        self.assertEqual(self.table.table()[WEB].service, VirtualService(WEB, "wlc", 0))
        self.assertEqual(self.weights(), {dest: 100 for dest in RS})

    def test_a_pass_with_nothing_new_writes_nothing(self):
        self.start(write_config(self))
        written = len(self.table.applied)
        self.tick()
        self.tick()
        self.assertEqual(len(self.table.applied), written)

    def test_restart_adopts_kernel_weights_until_agents_speak(self):
        self.table.apply([AddService(VirtualService(WEB, "wlc"))] + [AddDest(WEB, RealServer(d, 37, "nat")) for d in RS])
        self.start(write_config(self, director="adoption_grace = 15"))
        self.tick()
        self.assertEqual(self.weights(), {dest: 37 for dest in RS}, "a restart must not reset weights")
        self.connect(1, health=50)
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 50)
        self.assertEqual(self.weights()[RS[1]], 37)

    def test_the_pass_result_names_the_servers_held_in_adoption_whatever_their_weight(self):
        weights = {RS[0]: 37, RS[1]: 100, RS[2]: 100}  # 100: what the static decision would give anyway
        servers = [AddDest(WEB, RealServer(dest, weight, "nat")) for dest, weight in weights.items()]
        self.table.apply([AddService(VirtualService(WEB, "wlc")), *servers])
        updater = self.start(write_config(self, director="adoption_grace = 15"))
        self.assertEqual(updater.last.services[WEB].held, frozenset(RS))
        self.connect(1, health=50)
        self.tick()
        self.assertEqual(updater.last.services[WEB].held, frozenset(RS[1:]))
        self.tick(16)
        self.assertEqual(updater.last.services[WEB].held, frozenset())

    def test_real_servers_and_services_leave_the_kernel_when_they_leave_the_config(self):
        updater = self.start(write_config(self))
        updater.reconfigure(write_config(self, reals=("10.1.0.1", "10.1.0.2")))
        self.tick()
        self.assertEqual(set(self.weights()), {RS[0], RS[1]})
        self.assertIn(DeleteDest(WEB, RS[2]), self.table.applied)
        dns = '[[service]]\nname = "dns"\nprotocol = "udp"\naddress = "10.0.0.2"\nport = 53\n'
        updater.reconfigure(director_config(self, dns))
        self.tick()
        self.assertIn(DeleteService(WEB), self.table.applied)

    def test_services_the_config_never_declared_are_left_alone(self):
        foreign = VirtualService(ServiceKey.for_address("tcp", "10.9.9.9", 443))
        self.table.apply([AddService(foreign)])
        self.start(write_config(self))
        self.tick()
        self.assertIn(foreign.key, self.table.table())

    def test_fwmark_service_gets_its_mark_rule_and_loses_it_with_the_service(self):
        fwmark = """
[[service]]
name = "marked"
protocol = "fwmark"
fwmark = 5
scheduler = "rr"
[service.mark]
destination = "10.0.0.5"
protocol = "tcp"
ports = [80, 443]
"""
        updater = self.start(write_config(self, extra=fwmark))
        mark_key = ServiceKey.for_fwmark(5)
        self.assertIn(mark_key, self.table.table())
        self.assertEqual(self.table.marks[5], SetMarkRule(5, "10.0.0.5/32", "tcp", (80, 443)))
        updater.reconfigure(write_config(self))
        self.tick()
        self.assertNotIn(mark_key, self.table.table())
        self.assertNotIn(5, self.table.marks)
        self.assertIn(DeleteMarkRule(5), self.table.applied)


class FeedbackTests(UpdaterTestCase):
    def test_weight_follows_health(self):
        self.start(write_config(self))
        agent = self.connect(1, health=40)
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 40)
        self.registry.healthReported(agent, HTTP, 90, self.clock.seconds())
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 90)

    def test_health_zero_quiesces_but_never_removes(self):
        self.start(write_config(self))
        self.connect(2, health=0)
        self.tick()
        self.assertEqual(self.weights()[RS[1]], 0)
        self.assertIn(RS[1], self.weights())

    def test_lost_agent_is_quiesced_by_default(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        self.assertEqual(self.weights()[RS[2]], 80)
        self.registry.agentLost(agent, "3 keepalives unanswered")
        self.tick()
        self.assertEqual(self.weights()[RS[2]], 0)
        decision = self.updater.last.services[WEB].decision.servers[RS[2]]
        self.assertEqual(decision.reason, Reason.LOST_AGENT)

    def test_stopped_service_gets_no_new_connections(self):
        self.start(write_config(self))
        agent = self.connect(1, health=80)
        self.tick()
        self.registry.servicesStopped(agent, [HTTP])
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 0)

    def test_operator_drain_wins_over_feedback(self):
        self.start(write_config(self))
        self.connect(1, health=100)
        self.updater.set_override(WEB, RS[0], DRAINED)
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 0)

    def test_agent_may_not_start_a_service_for_a_server_it_is_not(self):
        self.start(write_config(self))
        stranger = Agent("10.1.0.99", 40000, 9)
        self.registry.agentUp(stranger)
        self.assertEqual(list(self.registry.servicesStarted(stranger, [HTTP])), [HTTP])

    def test_a_start_looks_up_its_own_address_not_every_configured_server(self):
        # With 10,000 agents starting, a scan of every configured real server
        # per START was 10^8 comparisons: the agents timed out in the handshake.
        class WatchedReals(tuple):
            scans = 0

            def __iter__(self):
                WatchedReals.scans += 1
                return super().__iter__()

        config = write_config(self, reals=[f"10.1.{n // 250}.{1 + n % 250}" for n in range(1000)])
        web = dataclasses.replace(config.services[0], reals=WatchedReals(config.services[0].reals))
        self.start(dataclasses.replace(config, services=(web,)))
        WatchedReals.scans = 0
        agent = Agent("10.1.3.250", 40000, 1)
        self.registry.agentUp(agent)
        self.assertEqual(list(self.registry.servicesStarted(agent, [HTTP])), [])
        self.assertEqual(WatchedReals.scans, 0)

    def test_only_changed_weights_are_written(self):
        self.start(write_config(self))
        self.connect(1, health=50)
        before = len(self.table.applied)
        self.tick()
        self.assertEqual(self.table.applied[before:], [EditDest(WEB, RealServer(RS[0], 50, "nat"))])


class GatedTable:
    """A table whose reads wait until the test lets them through, like a busy netlink socket."""

    def __init__(self, table):
        self.table = table
        self.reads = []

    def snapshot(self):
        read = defer.Deferred()
        self.reads.append(read)
        return read

    def let_through(self):
        """Finish the oldest waiting read with the table as it is now."""
        self.table.snapshot().chainDeferred(self.reads.pop(0))

    def apply(self, changes):
        return self.table.apply(changes)


class LostAgentTests(UpdaterTestCase):
    def test_losing_an_agent_quiesces_its_server_before_the_next_regular_pass(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        self.assertEqual(self.weights()[RS[2]], 80)
        passes = self.updater.passes
        self.clock.advance(0.5)
        self.registry.agentLost(agent, "connection lost")
        self.clock.advance(0)
        self.assertEqual(self.weights()[RS[2]], 0)
        self.assertEqual(self.updater.passes, passes + 1)
        self.clock.advance(1.5)
        self.assertEqual(self.updater.passes, passes + 2, "the regular rhythm goes on")

    def test_agents_lost_together_make_one_pass(self):
        self.start(write_config(self))
        agents = [self.connect(n, health=80) for n in (1, 2, 3)]
        self.tick()
        passes = self.updater.passes
        for agent in agents:
            self.registry.agentLost(agent, "director's network down")
        self.clock.advance(0)
        self.assertEqual(self.updater.passes, passes + 1)

    def test_a_loss_during_a_pass_brings_one_more_pass_right_after_it(self):
        table = GatedTable(self.table)
        self.start(write_config(self), table=table)
        table.let_through()
        agent = self.connect(3, health=80)
        self.tick()
        table.let_through()
        self.assertEqual(self.weights()[RS[2]], 80)
        self.tick()  # a regular pass starts and waits for its read
        self.registry.agentLost(agent, "connection lost")
        self.clock.advance(0)
        self.assertEqual(len(table.reads), 1, "no second pass while one runs")
        table.let_through()
        self.assertEqual(len(table.reads), 1, "the next pass began as soon as the first ended")
        table.let_through()
        self.assertEqual(self.weights()[RS[2]], 0)

    def test_a_loss_right_after_a_long_pass_waits_as_long_as_that_pass_lasted(self):
        # Thousands of agents lost one after another must not leave the
        # reactor nothing but passes (0.5 s each at 10,000 servers).
        table = GatedTable(self.table)
        self.start(write_config(self), table=table)
        table.let_through()
        agent = self.connect(3, health=80)
        self.tick()
        self.clock.advance(0.4)  # the pass waits 0.4 s for its read
        table.let_through()
        passes = self.updater.passes
        self.registry.agentLost(agent, "connection lost")
        self.clock.advance(0.39)
        self.assertEqual((self.updater.passes, len(table.reads)), (passes, 0), "no pass yet")
        self.clock.advance(0.01)
        table.let_through()
        self.assertEqual(self.updater.passes, passes + 1)
        self.assertEqual(self.weights()[RS[2]], 0)

    def test_a_loss_while_stopped_runs_no_pass(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        self.updater.stopService()
        passes = self.updater.passes
        self.registry.agentLost(agent, "connection lost")
        self.clock.advance(0)
        self.assertEqual(self.updater.passes, passes)


class EarlyPassTests(UpdaterTestCase):
    """A significant change of health brings the next pass forward, bounded."""

    def report(self, agent, health):
        self.registry.healthReported(agent, HTTP, health, self.clock.seconds())

    def test_a_significant_change_between_passes_is_acted_on_at_once(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        passes = self.updater.passes
        self.clock.advance(1.0)
        self.report(agent, 30)
        self.clock.advance(0)
        self.assertEqual(self.updater.passes, passes + 1)
        self.assertEqual(self.weights()[RS[2]], 30)

    def test_a_change_smaller_than_the_setting_waits_for_the_regular_pass(self):
        self.start(write_config(self, director="early_pass_change = 20"))
        agent = self.connect(3, health=80)
        self.tick()
        passes = self.updater.passes
        self.clock.advance(1.0)
        self.report(agent, 61)
        self.clock.advance(0.9)
        self.assertEqual(self.updater.passes, passes)
        self.assertEqual(self.weights()[RS[2]], 80)

    def test_zero_turns_early_passes_off(self):
        self.start(write_config(self, director="early_pass_change = 0"))
        agent = self.connect(3, health=80)
        self.tick()
        passes = self.updater.passes
        self.clock.advance(1.0)
        self.report(agent, 5)
        self.clock.advance(0.9)
        self.assertEqual(self.updater.passes, passes)

    def test_a_change_right_after_a_pass_waits_half_an_interval_from_its_start(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        passes = self.updater.passes
        self.clock.advance(0.2)
        self.report(agent, 30)
        self.clock.advance(0.7)
        self.assertEqual(self.updater.passes, passes, "not before half an interval")
        self.clock.advance(0.1)
        self.assertEqual(self.updater.passes, passes + 1)

    def test_a_noisy_signal_never_makes_more_than_two_passes_per_interval(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        passes = self.updater.passes
        for step in range(200):  # 20 s of reports every 0.1 s, each swinging 60 points
            self.report(agent, 20 if step % 2 else 80)
            self.clock.advance(0.1)
        self.assertLessEqual(self.updater.passes - passes, 2 * 10)
        self.assertGreater(self.updater.passes - passes, 10, "yet passes did come early")

    def test_reports_read_while_the_regular_pass_is_overdue_bring_no_other_pass(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        passes = self.updater.passes
        # Read by a busy reactor after the pass was due, before its tick fired (Clock runs calls at the new time).
        self.clock.callLater(1.9, self.report, agent, 30)
        self.clock.advance(2.05)
        self.assertEqual((self.updater.passes, self.weights()[RS[2]]), (passes + 1, 30))
        self.clock.advance(1.9)
        self.assertEqual(self.updater.passes, passes + 1)

    def test_no_early_pass_when_the_regular_one_is_due_first(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        passes = self.updater.passes
        self.clock.advance(1.5)
        self.report(agent, 30)
        self.clock.advance(0.49)
        self.assertEqual(self.updater.passes, passes)
        self.clock.advance(0.01)
        self.assertEqual(self.updater.passes, passes + 1, "the regular pass, once")
        self.clock.advance(1.0)
        self.assertEqual(self.updater.passes, passes + 1)


class AnswerWaitTests(UpdaterTestCase):
    """A regular pass whose round of questions is being answered waits for it, bounded."""

    def test_no_pass_is_brought_forward_while_a_regular_one_waits_for_answers(self):
        updater = self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        passes = updater.passes
        updater.answers_pending = lambda: True
        self.tick()
        self.registry.healthReported(agent, HTTP, 30, self.clock.seconds())
        self.clock.advance(0.2)
        self.assertEqual(updater.passes, passes, "the waiting pass is the next one")
        updater.answered()
        self.assertEqual((updater.passes, self.weights()[RS[2]]), (passes + 1, 30))
        self.clock.advance(1.7)
        self.assertEqual(updater.passes, passes + 1, "and it was the only one")

    def test_stopping_cancels_a_pass_waiting_for_answers(self):
        updater = self.start(write_config(self))
        updater.answers_pending = lambda: True
        self.tick()
        passes = updater.passes
        updater.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        updater.answered()
        self.assertEqual(updater.passes, passes)


class StartGraceTests(UpdaterTestCase):
    """Between an agent's INIT and its START, what was known of its server stands."""

    def up_without_start(self, n):
        agent = Agent(f"10.1.0.{n}", 40001, n)
        self.registry.agentUp(agent)
        return agent

    def test_a_pass_between_init_and_start_leaves_the_weight_alone(self):
        self.start(write_config(self))
        self.tick()
        before = self.weights()[RS[1]]
        agent = self.up_without_start(2)
        self.tick()
        self.assertEqual(self.weights()[RS[1]], before)
        self.registry.servicesStarted(agent, [HTTP])
        self.registry.healthReported(agent, HTTP, 40, self.clock.seconds())
        self.tick()
        self.assertEqual(self.updater.last.services[WEB].decision.servers[RS[1]].reason, Reason.HEALTH)
        self.assertEqual(self.weights()[RS[1]], 40)

    def test_a_service_not_started_within_the_grace_is_stopped(self):
        self.start(write_config(self))
        self.up_without_start(2)
        self.tick(START_GRACE)
        self.assertEqual(self.weights()[RS[1]], 0)
        self.assertEqual(self.updater.last.services[WEB].decision.servers[RS[1]].reason, Reason.STOPPED)

    def test_a_stop_takes_effect_at_once_even_within_the_grace(self):
        self.start(write_config(self))
        agent = self.connect(2, health=80)
        self.registry.servicesStopped(agent, [HTTP])
        self.tick()
        self.assertEqual(self.weights()[RS[1]], 0)
        self.assertEqual(self.updater.last.services[WEB].decision.servers[RS[1]].reason, Reason.STOPPED)

    def test_a_reconnecting_agent_leaves_its_server_quiesced_until_it_starts(self):
        self.start(write_config(self))
        agent = self.connect(3, health=80)
        self.tick()
        self.registry.agentLost(agent, "connection lost")
        self.tick()
        self.assertEqual(self.weights()[RS[2]], 0)
        self.up_without_start(3)
        self.tick()
        self.assertEqual(self.weights()[RS[2]], 0)
        self.assertEqual(self.updater.last.services[WEB].decision.servers[RS[2]].reason, Reason.LOST_AGENT)


class ModeTests(UpdaterTestCase):
    def test_observe_computes_weights_and_writes_nothing(self):
        self.start(write_config(self, director="observe = true"))
        self.connect(1, health=30)
        self.tick()
        self.assertEqual(self.table.table(), {})
        self.assertEqual(self.updater.last.services[WEB].decision.servers[RS[0]].weight, 30)

    def test_observe_logs_a_bounded_number_of_desired_weights_per_pass_and_counts_the_rest(self):
        reals = [f"10.1.0.{n}" for n in range(1, OBSERVED_LINES + 6)]
        self.start(write_config(self, reals=reals), observe=True)
        for n in range(1, len(reals) + 1):
            self.connect(n, health=30)
        with capturedLogs() as events:
            self.tick()
        lines = [formatEvent(event) for event in events if event.get("log_namespace", "").endswith("WeightUpdater")]
        moved = [line for line in lines if "desired weight" in line and "->" in line]
        self.assertEqual(len(moved), OBSERVED_LINES)
        self.assertIn("observe: 5 more desired weights moved in this pass", lines[-1])
        # Every desired weight is in the pass's result.
        decided = self.updater.last.services[WEB].decision.servers
        self.assertEqual({decision.weight for decision in decided.values()}, {30})
        self.assertEqual(len(decided), len(reals))
        self.registry.healthReported(Agent("10.1.0.1", 40000, 1), HTTP, 60, self.clock.seconds())
        with capturedLogs() as events:
            self.tick()
        lines = [formatEvent(event) for event in events if "observe" in formatEvent(event)]
        self.assertEqual(len(lines), 1)
        self.assertIn("10.1.0.1:80: desired weight 30 -> 60", lines[0])

    def test_observe_plans_no_change_per_real_server_on_an_empty_table_or_a_full_one(self):
        self.start(write_config(self), observe=True)
        self.connect(1, health=30)
        self.tick()
        self.assertEqual([change for change in self.updater.last.changes if isinstance(change, (AddDest, EditDest))], [])
        self.table.apply([AddService(VirtualService(WEB, "wlc"))] + [AddDest(WEB, RealServer(d, 37, "nat")) for d in RS])
        self.tick()
        last = self.updater.last
        self.assertEqual([change for change in last.changes if isinstance(change, (AddDest, EditDest))], [])
        # What it would have written is still there to see: desired weights beside the kernel's.
        self.assertEqual((last.services[WEB].decision.servers[RS[0]].weight, last.services[WEB].written[RS[0]]), (30, 37))

    def test_weights_only_weights_kernel_servers_and_adds_or_removes_nothing(self):
        stranger = DestKey.of("10.1.0.77", 80)
        self.table.apply([AddService(VirtualService(WEB, "wlc")), AddDest(WEB, RealServer(RS[0], 10, "dr")),
                          AddDest(WEB, RealServer(stranger, 20, "dr"))])
        setup = len(self.table.applied)
        self.start(write_config(self, director="weights_only = true\nadoption_grace = 0"))
        self.connect(1, health=50)
        self.tick()
        self.assertEqual(self.weights(), {RS[0]: 5, stranger: 20})
        self.assertTrue(all(isinstance(change, EditDest) for change in self.table.applied[setup:]))


    def test_weights_only_follows_agents_of_servers_only_the_kernel_knows(self):
        stranger = DestKey.of("10.1.0.77", 80)
        self.table.apply([AddService(VirtualService(WEB, "wlc")), AddDest(WEB, RealServer(stranger, 20, "dr"))])
        self.start(write_config(self, director="weights_only = true\nadoption_grace = 0"))
        agent = Agent("10.1.0.77", 40000, 7)
        self.registry.agentUp(agent)
        self.assertEqual(list(self.registry.servicesStarted(agent, [HTTP])), [], "START accepted")
        self.registry.healthReported(agent, HTTP, 50, self.clock.seconds())
        self.tick()
        self.assertEqual(self.weights(), {stranger: 10})


class FailureTests(UpdaterTestCase):
    def test_a_failed_pass_is_logged_and_the_next_one_retries(self):
        table = FailingTable(self.table)
        self.start(write_config(self), table=table)
        self.assertEqual(self.updater.failed_passes, 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        table.failing = False
        self.tick()
        self.assertEqual(self.weights(), {dest: 100 for dest in RS})

    def test_a_failing_pass_listener_is_logged_and_the_pass_stands(self):
        self.start(write_config(self))
        seen = []

        def broken(result):
            raise RuntimeError("listener bug")

        self.updater.pass_listeners += [broken, seen.append]
        self.connect(1, health=40)
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 40)
        self.assertEqual(seen, [self.updater.last], "the other listeners still hear of it")
        self.assertEqual(self.updater.failed_passes, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_refused_change_is_retried_on_the_next_pass(self):
        self.start(write_config(self))
        self.table.apply([DeleteDest(WEB, RS[0])])  # someone removed it behind our back
        self.tick()
        self.assertIn(RS[0], self.weights())


class MeddledTable:
    """A table someone changes between a pass's read and its writes."""

    def __init__(self, table):
        self.table = table
        self.meddle = None

    def snapshot(self):
        return self.table.snapshot()

    def apply(self, changes):
        if self.meddle is not None:
            self.meddle(self.table)
        return self.table.apply(changes)


class PassResultTests(UpdaterTestCase):
    """A pass's result holds what it weighed, the facts it was given, what it decided and what it wrote."""

    def test_each_member_has_the_facts_the_policy_was_given_its_decision_and_its_kernel_weight(self):
        self.start(write_config(self))
        self.connect(1, health=40)
        self.table.set_counters(WEB, RS[0], DestCounters(7, 3, 120, 5, 61))
        self.tick()
        web = self.updater.last.services[WEB]
        self.assertEqual(list(web.members), RS)
        facts = web.inputs[RS[0]]
        self.assertEqual((facts.base_weight, facts.agent.state), (100, AgentState.CONNECTED))
        self.assertEqual(facts.report, HealthReport(40, 1000.0))
        self.assertEqual(facts.counters, DestCounters(7, 3, 120, 5, 61))
        self.assertEqual((facts.current_weight, web.decision.servers[RS[0]].weight, web.written[RS[0]]), (100, 40, 40))
        self.assertTrue(web.in_kernel)

    def test_the_first_pass_writes_the_service_it_read_without(self):
        self.start(write_config(self))
        web = self.updater.last.services[WEB]
        self.assertEqual(self.updater.last.kernel, {})
        self.assertTrue(web.in_kernel)
        self.assertEqual(dict(web.written), {dest: 100 for dest in RS})

    def test_a_refused_write_leaves_the_weight_the_pass_read(self):
        table = MeddledTable(self.table)
        self.start(write_config(self), table=table)
        self.connect(1, health=40)
        table.meddle = lambda kernel: kernel.apply([DeleteDest(WEB, RS[0])])
        self.tick()
        self.flushLoggedErrors()
        last = self.updater.last
        self.assertEqual(len(last.refused), 1)
        web = last.services[WEB]
        self.assertEqual((web.decision.servers[RS[0]].weight, web.written[RS[0]]), (40, 100))

    def test_observe_mode_writes_nothing_so_the_kernel_weights_are_as_read(self):
        self.start(write_config(self), observe=True)
        self.connect(1, health=40)
        self.tick()
        web = self.updater.last.services[WEB]
        self.assertEqual((web.decision.servers[RS[0]].weight, dict(web.written), web.in_kernel), (40, {}, False))

    def test_a_result_cannot_be_changed_after_the_pass(self):
        self.start(write_config(self))
        with self.assertRaises(dataclasses.FrozenInstanceError):
            self.updater.last.services = {}
        with self.assertRaises(dataclasses.FrozenInstanceError):
            self.updater.last.services[WEB].written = {}


class OverrideTests(UpdaterTestCase):
    def test_set_override_says_what_it_replaced_and_applies_on_the_next_pass(self):
        self.start(write_config(self))
        self.connect(1, health=90)
        self.assertIsNone(self.updater.set_override(WEB, RS[0], DRAINED))
        self.assertEqual(self.weights()[RS[0]], 100, "not before the next pass")
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 0)
        self.assertIs(self.updater.set_override(WEB, RS[0], Pinned(7)), DRAINED)
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 7)

    def test_clear_override_returns_the_server_to_feedback(self):
        self.start(write_config(self))
        self.connect(1, health=90)
        self.updater.set_override(WEB, RS[0], DRAINED)
        self.assertIs(self.updater.clear_override(WEB, RS[0]), DRAINED)
        self.assertIsNone(self.updater.clear_override(WEB, RS[0]))
        self.tick()
        self.assertEqual(self.weights()[RS[0]], 90)

    def test_overrides_are_read_only_outside_the_updater(self):
        self.start(write_config(self))
        self.updater.set_override(WEB, RS[0], DRAINED)
        self.assertEqual(dict(self.updater.overrides), {(WEB, RS[0]): DRAINED})
        with self.assertRaises(TypeError):
            self.updater.overrides[WEB, RS[1]] = DRAINED


class HeldWritesTable:
    """A table whose writes wait until the test releases them, like a kernel slow to answer."""

    def __init__(self, table):
        self.table = table
        self.writes = []

    def snapshot(self):
        return self.table.snapshot()

    def apply(self, changes):
        write = defer.Deferred()
        self.writes.append(write)
        write.addCallback(lambda _: self.table.apply(changes))
        return write

    def release(self):
        """Let the oldest waiting write through."""
        self.writes.pop(0).callback(None)


class RhythmTests(UpdaterTestCase):
    """One pass per interval, whatever reloads and stops happen while a pass runs."""

    def start_held(self):
        """Started, with its first pass (the one that creates the service) waiting on its write."""
        table = HeldWritesTable(self.table)
        path = write_director_config(self, CONFIG.format(director="", reals=REAL.format(address="10.1.0.1"), extra=""))
        director = DirectorService(load_config(path), self.clock, table=table)
        self.updater = director.updater
        self.updater.startService()
        self.addCleanup(self.updater.stopService)
        self.assertEqual((self.updater.passes, len(table.writes)), (1, 1), "the first pass waits on its write")
        return director, path, table

    def count_passes(self, interval, intervals):
        """The passes in each of the next `intervals` intervals."""
        counts = []
        for _ in range(intervals):
            before = self.updater.passes
            self.clock.advance(interval)
            counts.append(self.updater.passes - before)
        return counts

    def test_a_reload_with_a_new_interval_during_a_pass_keeps_one_pass_per_interval(self):
        director, path, table = self.start_held()
        with open(path) as file:
            text = file.read()
        with open(path, "w") as file:
            file.write(text.replace("update_interval = 2.0", "update_interval = 3.0"))
        self.clock.advance(0.5)
        self.assertTrue(director.reload())
        table.release()
        self.assertEqual(self.updater.next_pass, self.clock.seconds() + 3.0)
        self.assertEqual(self.count_passes(3.0, 5), [1] * 5)
        self.updater.stopService()
        self.assertEqual(self.count_passes(3.0, 3), [0] * 3, "no pass after the stop")

    def test_stopping_during_a_pass_waits_for_it_and_runs_no_more(self):
        director, path, table = self.start_held()
        self.updater.pass_soon()
        self.clock.advance(0)  # a pass asked for while one runs follows it, unless stopped
        stopped = self.updater.stopService()
        self.assertNoResult(stopped)
        table.release()
        self.successResultOf(stopped)
        self.assertIn(WEB, self.table.table(), "the pass it waited for finished its write")
        self.assertEqual(self.count_passes(2.0, 3), [0] * 3)
        self.assertEqual(self.updater.passes, 1)

    def test_stopping_between_passes_is_at_once(self):
        director, path, table = self.start_held()
        table.release()
        self.assertIsNone(self.updater.stopService())


AUTO_JOIN = """
[[service]]
name = "shop"
protocol = "tcp"
address = "10.0.0.2"
port = 80
auto_join = ["10.2.0.0/16"]
on_leave = "remove"

[[service]]
name = "shop-tls"
protocol = "tcp"
address = "10.0.0.2"
port = 443
auto_join = ["10.2.0.0/16"]
on_leave = "remove"

[[service]]
name = "shop-marked"
protocol = "fwmark"
fwmark = 7
auto_join = ["10.2.0.0/16"]
on_leave = "remove"
[service.mark]
destination = "10.0.0.3"
protocol = "tcp"
ports = [80, 443]
"""
SHOP = ServiceKey.for_address("tcp", "10.0.0.2", 80)
SHOP_TLS = ServiceKey.for_address("tcp", "10.0.0.2", 443)
SHOP_MARKED = ServiceKey.for_fwmark(7)
HTTPS = Service(forwarding=3, protocol=6, port=443)


class AutoJoinTests(UpdaterTestCase):
    """Agents from an auto_join network join a service by STARTing it, and leave by STOPping it."""

    def setUp(self):
        super().setUp()
        self.start(write_config(self, extra=AUTO_JOIN))
        self.agent = Agent("10.2.0.5", 40000, 5)
        self.registry.agentUp(self.agent)

    def members(self, key):
        return set(self.table.table()[key].dests)

    def test_an_agent_starting_an_auto_join_service_joins_it_in_the_kernel(self):
        self.assertEqual(self.registry.servicesStarted(self.agent, [HTTP]), [])
        self.tick()
        self.assertEqual(self.members(SHOP), {DestKey.of("10.2.0.5", 80)})
        self.assertEqual(self.members(SHOP_MARKED), {DestKey.of("10.2.0.5", 0)})
        self.assertEqual(self.members(SHOP_TLS), set(), "it did not start port 443")

    def test_a_stop_of_one_service_leaves_the_agent_in_the_other(self):
        self.registry.servicesStarted(self.agent, [HTTP, HTTPS])
        self.tick()
        self.assertEqual(self.members(SHOP), {DestKey.of("10.2.0.5", 80)})
        self.assertEqual(self.members(SHOP_TLS), {DestKey.of("10.2.0.5", 443)})
        self.registry.servicesStopped(self.agent, [HTTP])
        self.tick()
        self.assertEqual(self.members(SHOP), set())
        self.assertEqual(self.members(SHOP_TLS), {DestKey.of("10.2.0.5", 443)})
        self.assertEqual(self.members(SHOP_MARKED), {DestKey.of("10.2.0.5", 0)}, "443 still carries the mark")
        self.registry.servicesStopped(self.agent, [HTTPS])
        self.tick()
        self.assertEqual((self.members(SHOP_TLS), self.members(SHOP_MARKED)), (set(), set()))

    def test_a_lost_agent_leaves_every_service_it_joined(self):
        self.registry.servicesStarted(self.agent, [HTTP, HTTPS])
        self.tick()
        self.registry.agentLost(self.agent, "connection lost")
        self.tick()
        self.assertEqual([self.members(key) for key in (SHOP, SHOP_TLS, SHOP_MARKED)], [set()] * 3)

    def test_on_leave_quiesce_keeps_a_stopped_member_at_weight_zero(self):
        self.updater.reconfigure(write_config(self, extra=AUTO_JOIN.replace('on_leave = "remove"', 'on_leave = "quiesce"')))
        self.registry.reconfigure(self.updater.config)
        self.registry.servicesStarted(self.agent, [HTTP, HTTPS])
        self.tick()
        self.registry.servicesStopped(self.agent, [HTTP])
        self.tick()
        self.assertEqual(self.table.table()[SHOP].dests[DestKey.of("10.2.0.5", 80)].server.weight, 0)
