"""
Tests for the NECP endpoints: lvsfeedback.necp.protocol, the director's
NEProtocol/NEFactory and the agent's SEProtocol/SEFactory/DirectorLinks,
connected in memory on a task.Clock, and once over loopback TCP.
"""

from __future__ import annotations

from ipaddress import IPv4Address as IP

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from lvsfeedback.agent.interfaces import IHealthSource
from lvsfeedback.agent.protocol import (
    DirectorLinks,
    JitteredBackoff,
    SEFactory,
)
from lvsfeedback.director.events import Agent, IAgentEvents
from lvsfeedback.director.factory import NEFactory
from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.factory import MESSAGES_PER_TURN
from lvsfeedback.necp.framing import decode, encode
from lvsfeedback.necp.messages import (
    ErrorReply,
    ExceptionAdd,
    ExceptionQuery,
    Init,
    Keepalive,
    KeepaliveAck,
    Start,
    StartAck,
)
from lvsfeedback.necp.session import RequestFailed
from lvsfeedback.necp.units import ExceptionRule, InstalledException, Query, Service
from lvsfeedback.necp.wire import HEADER, MAX_UNITS, Flag, Opcode
from lvsfeedback.testing.necp_link import DIRECTOR, Link
from tests.helpers.necp import (
    DNS,
    SECRET,
    WEB,
    ConsumerTransport,
    EndpointTestCase,
    RecordingEvents,
    TableHealth,
    decode_all,
    gaps,
)


class SessionTests(EndpointTestCase):
    def test_init_brings_the_agent_up_with_its_services_started(self):
        director = self.director()
        link = self.connect(director, self.agent_factory(services=(WEB, DNS)))
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual(self.events.of("up"), [(agent,)])
        self.assertEqual(self.events.of("started"), [(agent, (WEB, DNS))])
        self.assertEqual(director.agents(), {agent: (WEB, DNS)})
        self.assertTrue(link.agent.established)

    def test_director_asks_health_of_each_started_service_on_each_keepalive(self):
        director = self.director()
        self.connect(director, self.agent_factory(services=(WEB, DNS)))
        self.elapse(5)
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual(
            self.events.of("health"), [(agent, WEB, 75, 5.0), (agent, DNS, 40, 5.0)]
        )
        self.health.table[(6, 80)] = 10
        self.elapse(5)
        self.assertEqual(self.events.of("health")[-2][2:], (10, 10.0))

    def test_director_asks_health_right_after_start_without_waiting_for_a_keepalive(self):
        director = self.director(ask_on_start=True)
        self.connect(director, self.agent_factory(services=(WEB, DNS)))
        self.elapse(0.25)
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual(self.events.of("health"), [(agent, WEB, 75, 0.0), (agent, DNS, 40, 0.0)])

    def test_a_burst_of_starts_is_not_taken_for_a_dead_agent(self):
        director = self.director(ask_on_start=True)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        self.elapse(0.25)
        for _ in range(4):
            link.agent.stop([DNS])
            link.agent.start([DNS])
        self.elapse(0.25)
        self.assertFalse(link.closed, link.director._closing)
        self.elapse(6)
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual([call[:3] for call in self.events.of("health")[-2:]], [(agent, WEB, 75), (agent, DNS, 40)])

    def test_director_with_a_health_interval_asks_every_agent_in_one_round_that_often(self):
        director = self.director(health_interval=2.0)
        first = self.connect(director, self.agent_factory(services=(WEB,)))
        second = self.connect(director, self.agent_factory(services=(WEB,)), host="10.0.0.3")
        director.start_asking(1.5)
        self.elapse(4)
        asked = [(call[0].host, call[3]) for call in self.events.of("health")]
        self.assertEqual(asked, [("10.0.0.2", 1.5), ("10.0.0.3", 1.5), ("10.0.0.2", 3.5), ("10.0.0.3", 3.5)])
        director.stop_asking()
        for link in (first, second):
            link.director.transport.loseConnection()
        self.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timer outlives the sessions and the rounds")

    def test_a_round_is_pending_until_every_session_it_asked_answers_or_goes(self):
        director = self.director(health_interval=2.0)
        first = self.connect(director, self.agent_factory(services=(WEB,)))
        second = self.connect(director, self.agent_factory(services=(WEB,)), host="10.0.0.3")
        answered = []
        director.answered_listeners.append(lambda: answered.append(self.clock.seconds()))
        self.assertFalse(director.answers_pending(), "no round yet")
        director.ask_everyone()
        self.assertTrue(director.answers_pending())
        first.flush()
        self.assertEqual((director.answers_pending(), answered), (True, []))
        second.director.transport.loseConnection()
        second.flush()
        self.assertEqual((director.answers_pending(), answered), (False, [0.0]), "answered or gone: once")

    def test_a_health_question_stands_for_the_directors_next_keepalive(self):
        director = self.director(health_interval=2.0)
        self.connect(director, self.agent_factory(services=(WEB,)))
        director.start_asking(2.0)
        self.elapse(20)
        # Only the rounds at 2, 4, ..., 20 s: no keepalive of its own at 5, 10, 15 s.
        self.assertEqual([call[3] for call in self.events.of("health")], [2.0 * n for n in range(1, 11)])

    def keepalive_calls(self, session):
        return [call for call in self.clock.getDelayedCalls() if call.func == session._keepalive_due]

    def test_while_rounds_ask_a_session_it_holds_no_keepalive_timer_of_its_own(self):
        director = self.director(health_interval=2.0)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        self.assertEqual(len(self.keepalive_calls(link.director)), 1)
        director.start_asking(2.0)
        self.elapse(2)
        self.assertEqual(self.keepalive_calls(link.director), [])
        self.elapse(10)
        self.assertEqual([call[3] for call in self.events.of("health")], [2.0, 4.0, 6.0, 8.0, 10.0, 12.0])

    def test_rounds_slower_than_the_keepalive_leave_the_sessions_timers(self):
        director = self.director(health_interval=10.0)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        director.start_asking(10.0)
        self.elapse(12)
        self.assertEqual(len(self.keepalive_calls(link.director)), 1)
        self.assertEqual([call[3] for call in self.events.of("health")], [5.0, 10.0])

    def test_when_the_rounds_stop_each_session_keeps_itself_alive_again(self):
        director = self.director(health_interval=2.0)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        director.start_asking(2.0)
        self.elapse(4)
        director.stop_asking()
        self.elapse(6)
        self.assertEqual([call[3] for call in self.events.of("health")], [2.0, 4.0, 9.0])
        link.cut = True
        self.elapse(15.25)  # keepalives at 14, 19 and 24 s unanswered: dead at the next one, 29 s
        self.assertFalse(link.director_side.disconnecting)
        self.elapse(5)
        self.assertTrue(link.director_side.disconnecting)

    def test_a_session_whose_services_all_stop_keeps_itself_alive_again(self):
        director = self.director(health_interval=2.0)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        director.start_asking(2.0)
        self.elapse(2)
        link.agent.stop([WEB])
        self.flush()
        self.assertEqual(len(self.keepalive_calls(link.director)), 1)

    def test_a_question_with_less_jitter_brings_the_next_keepalive_forward(self):
        jitters = iter([1.0, 0.0, 0.0])
        director = self.director(random=lambda: next(jitters))
        link = self.connect(director, self.agent_factory())  # the keepalive due at 5 + 1 s
        self.elapse(0.5)
        link.director.ask_health()  # ... now at 0.5 + 5 + 0 s
        self.flush()
        self.elapse(5.25)
        self.assertEqual([call[3] for call in self.events.of("health")], [0.5, 5.5])

    def test_a_sessions_questions_are_packed_once_until_its_services_change(self):
        packed = self.count_packed_queries()
        director = self.director(health_interval=2.0)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        director.start_asking(2.0)
        self.elapse(10)
        self.assertEqual(len(self.events.of("health")), 5)
        self.assertEqual(packed, [Query.health(6, 80)])
        link.agent.start([DNS])
        self.elapse(4)
        self.assertEqual(self.events.of("health")[-1][1:3], (DNS, 40))
        self.assertEqual(packed, [Query.health(6, 80), Query.health(6, 80), Query.health(17, 53)])

    def test_an_agent_leaving_health_questions_unanswered_is_declared_dead(self):
        director = self.director(health_interval=2.0)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        director.start_asking(2.0)
        link.cut = True
        # Questions at 2, 4 and 6 s go unanswered; the round at 8 s finds the agent dead.
        self.elapse(7.75)
        self.assertFalse(link.director_side.disconnecting)
        self.elapse(0.25)
        self.assertTrue(link.director_side.disconnecting)

    def test_a_round_goes_on_past_a_session_that_cannot_be_asked(self):
        director = self.director(health_interval=2.0)
        broken = self.connect(director, self.agent_factory(services=(WEB,)))
        self.connect(director, self.agent_factory(services=(WEB,)), host="10.0.0.3")

        def fails(services=None):
            raise RuntimeError("bug")

        broken.director.ask_health = fails
        director.start_asking(2.0)
        self.elapse(4)
        self.assertEqual([call[0].host for call in self.events.of("health")], ["10.0.0.3", "10.0.0.3"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_agent_sends_no_keepalive_of_its_own_while_the_directors_arrive(self):
        director = self.director(health_interval=2.0, keepalive_interval=60.0)
        link = self.connect(director, self.agent_factory(services=(WEB,)))
        received = []
        answer = link.director.keepalive_received
        link.director.keepalive_received = lambda request: received.append(self.clock.seconds()) or answer(request)
        director.start_asking(2.0)
        self.elapse(30)
        self.assertEqual(received, [])
        # Once the questions stop (the last at 30 s, after the agent's keepalive
        # due then), the next one due after a quiet interval goes out.
        director.stop_asking()
        self.elapse(11)
        self.assertEqual(received, [40.0])

    def test_one_query_per_protocol_and_port_reports_every_forwarding_method(self):
        also_web = Service(1, 6, 80)
        link = self.connect(self.director(), self.agent_factory(services=(WEB, also_web)))
        self.assertEqual(link.director.keepalive_queries(), (Query.health(6, 80),))
        self.elapse(5)
        self.assertEqual([call[1] for call in self.events.of("health")], [WEB, also_web])

    def test_keepalive_comes_after_interval_plus_jitter(self):
        director = self.director(random=lambda: 0.5)
        self.connect(director, self.agent_factory())
        self.elapse(5.25)
        self.assertEqual(self.events.of("health"), [])
        self.elapse(0.25)
        self.assertEqual(len(self.events.of("health")), 1)

    def test_agent_with_no_services_is_still_kept_alive(self):
        director = self.director()
        link = self.connect(director, self.agent_factory(services=()))
        self.elapse(60)
        self.assertFalse(link.closed)
        self.assertEqual(self.events.of("health"), [])

    def test_refused_services_come_back_in_an_error_start_ack(self):
        self.events.refuse = {DNS}
        bogus = Service(9, 6, 81)
        director = self.director()
        link = self.connect(director, self.agent_factory(services=()))
        rejected = []
        link.agent.start([WEB, DNS, bogus]).addCallback(rejected.append)
        self.flush()
        self.assertEqual(rejected, [(bogus, DNS)])
        self.assertEqual(director.agents()[link.director.agent], (WEB,))

    def test_services_on_ports_beyond_what_one_keepalive_asks_are_refused_and_the_rounds_go_on(self):
        # One health question per port, and a KEEPALIVE holds MAX_UNITS units.
        ports = [Service(3, 6, port) for port in range(1, MAX_UNITS + 11)]
        director = self.director(health_interval=2.0)
        link = self.connect(director, self.agent_factory(services=ports[: MAX_UNITS - 10]))
        rejected = []
        link.agent.start(ports[MAX_UNITS - 10:]).addCallback(rejected.append)
        self.elapse(5)
        self.assertEqual(rejected, [tuple(ports[MAX_UNITS:])])
        self.assertEqual(len(director.agents()[link.director.agent]), MAX_UNITS)
        self.assertEqual({call[1] for call in self.events.of("health")}, set(ports[:MAX_UNITS]))
        self.assertFalse(link.closed)

    def test_starting_a_started_service_again_reports_nothing_new(self):
        link = self.connect(self.director(), self.agent_factory())
        rejected = []
        link.agent.start([WEB]).addCallback(rejected.append)
        self.flush()
        self.assertEqual(rejected, [()])
        self.assertEqual(len(self.events.of("started")), 1)

    def test_stop_fires_on_stop_ack_and_health_is_no_longer_asked(self):
        director = self.director()
        link = self.connect(director, self.agent_factory(services=(WEB, DNS)))
        stopped = []
        link.agent.stop([DNS]).addCallback(stopped.append)
        self.assertEqual(stopped, [], "fired before the director answered")
        self.flush()
        self.assertEqual(stopped, [()])
        self.assertEqual(self.events.of("stopped"), [(link.director.agent, (DNS,))])
        self.elapse(5)
        self.assertEqual([call[1] for call in self.events.of("health")], [WEB])

    def test_stopping_a_service_not_started_is_acknowledged_without_an_event(self):
        link = self.connect(self.director(), self.agent_factory())
        stopped = []
        link.agent.stop([WEB, DNS]).addCallback(stopped.append)
        self.flush()
        self.assertEqual(stopped, [()])
        self.assertEqual(self.events.of("stopped"), [(link.director.agent, (WEB,))])

    def test_stopping_an_invalid_service_fails_for_that_service_only(self):
        bogus = Service(0, 6, 80)
        link = self.connect(self.director(), self.agent_factory())
        stopped = []
        link.agent.stop([bogus, WEB]).addCallback(stopped.append)
        self.flush()
        self.assertEqual(stopped, [(bogus,)])
        self.assertEqual(self.events.of("stopped"), [(link.director.agent, (WEB,))])

    def test_agent_answers_zero_for_a_service_its_health_source_does_not_know(self):
        link = self.connect(self.director(), self.agent_factory())
        reply = link.agent.keepalive_received(Keepalive(queries=(Query.health(6, 8080),)))
        self.assertEqual(reply.answers[0].value, 0)

    def test_agent_answers_zero_when_the_health_source_misbehaves(self):
        self.health.table[(6, 80)] = 250
        self.connect(self.director(), self.agent_factory())
        self.elapse(5)
        self.assertEqual(self.events.of("health")[0][2], 0)

    def test_unknown_query_types_come_back_as_an_error_with_copies(self):
        link = self.connect(self.director(), self.agent_factory())
        unknown = Query(7, 6, 80)
        reply = link.agent.keepalive_received(Keepalive(queries=(Query.health(6, 80), unknown)))
        self.assertEqual(reply, ErrorReply(opcode=Opcode.KEEPALIVE_ACK, units=(unknown,)))

    def test_agent_close_is_reported_as_agent_lost_with_nothing_left(self):
        director = self.director()
        link = self.connect(director, self.agent_factory())
        link.agent.add_exceptions([ExceptionRule(ttl=0, port=22)])
        self.flush()
        link.agent_side.loseConnection()
        self.flush()
        [(agent, reason)] = self.events.of("lost")
        self.assertEqual(agent, Agent("10.0.0.2", 40000, 1))
        self.assertIn("closed", reason)
        self.assertEqual(director.agents(), {})
        self.assertEqual(director.exceptions.query(InstalledException()), ())

    def test_new_init_from_the_same_host_replaces_the_old_session(self):
        director = self.director()
        old = self.connect(director, self.agent_factory(), port=40000)
        self.connect(director, self.agent_factory(), port=40001)
        self.flush()
        first, second = Agent("10.0.0.2", 40000, 1), Agent("10.0.0.2", 40001, 2)
        self.assertEqual([call[0] for call in self.events.calls][-3:], ["lost", "up", "started"])
        self.assertEqual(self.events.of("lost")[0][0], first)
        self.assertEqual(list(director.agents()), [second])
        self.assertTrue(old.closed)

    def test_each_new_session_from_a_host_replaces_the_last_and_leaves_with_it(self):
        director = self.director()
        links = [self.connect(director, self.agent_factory(), port=40000 + n) for n in range(3)]
        self.flush()
        self.assertEqual(list(director.agents()), [Agent("10.0.0.2", 40002, 3)])
        self.assertEqual([link.closed for link in links], [True, True, False])
        links[2].agent_side.loseConnection()
        self.flush()
        self.assertEqual(director.agents(), {})
        self.connect(director, self.agent_factory(), port=40003)
        self.flush()
        self.assertEqual(list(director.agents()), [Agent("10.0.0.2", 40003, 4)])
        self.assertEqual(len(self.events.of("lost")), 3)

    def test_agents_on_different_hosts_coexist(self):
        director = self.director()
        self.connect(director, self.agent_factory(), host="10.0.0.2")
        self.connect(director, self.agent_factory(), host="10.0.0.3")
        self.assertEqual(len(director.agents()), 2)

    def test_director_without_init_closes_after_the_handshake_timeout(self):
        director = self.director(handshake_timeout=10.0)
        protocol = director.buildProtocol(None)
        transport = iosim.FakeTransport(protocol, True, DIRECTOR, IPv4Address("TCP", "10.0.0.9", 1))
        protocol.makeConnection(transport)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_agent_without_init_ack_closes_after_the_handshake_timeout(self):
        protocol = self.agent_factory(handshake_timeout=10.0).buildProtocol(None)
        transport = iosim.FakeTransport(protocol, False, DIRECTOR, DIRECTOR)
        protocol.makeConnection(transport)
        self.assertEqual(type(decode(transport.stream[0])), Init)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(protocol.established)

    def test_request_before_init_closes_the_connection(self):
        director = self.director()
        protocol = director.buildProtocol(None)
        transport = iosim.FakeTransport(protocol, True, DIRECTOR, IPv4Address("TCP", "10.0.0.9", 1))
        protocol.makeConnection(transport)
        protocol.dataReceived(encode(Start(services=(WEB,))))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.events.calls, [])

    def test_events_provider_is_an_iagentevents(self):
        self.assertTrue(verifyObject(IAgentEvents, self.events))
        self.assertTrue(verifyObject(IHealthSource, self.health))


class KeepaliveLossTests(EndpointTestCase):
    def test_both_sides_declare_the_peer_dead_after_three_unanswered_keepalives(self):
        link = self.connect(self.director(), self.agent_factory())
        link.cut = True
        # Keepalives go out at 5, 10 and 15 s; the fourth is due at 20 s.
        self.elapse(19.75)
        self.assertFalse(link.director_side.disconnecting or link.agent_side.disconnecting)
        self.elapse(0.25)
        self.assertTrue(link.director_side.disconnecting and link.agent_side.disconnecting)
        link.cut = False
        self.flush()
        [(agent, reason)] = self.events.of("lost")
        self.assertIn("3 keepalives in a row unanswered", reason)

    def test_answered_keepalives_keep_the_session_for_good(self):
        link = self.connect(self.director(), self.agent_factory())
        self.elapse(120)
        self.assertFalse(link.closed)
        self.assertEqual(len(self.events.of("health")), 24)

    def test_a_keepalive_answered_after_the_request_timeout_still_counts(self):
        director = self.director(request_timeout=1.0)
        self.connect(director, self.agent_factory())
        self.elapse(4.75)
        self.clock.advance(0.25)  # the keepalive goes out at 5 s...
        self.clock.advance(2)  # ...and waits, undelivered, past the request timeout
        self.flush()
        agent = Agent("10.0.0.2", 40000, 1)
        self.assertEqual(self.events.of("health"), [(agent, WEB, 75, 7.0)])

    def test_one_answer_resets_the_count_of_unanswered_keepalives(self):
        link = self.connect(self.director(), self.agent_factory())
        link.cut = True
        self.elapse(12)  # keepalives at 5 and 10 s lost
        link.cut = False
        self.elapse(5)  # the one at 15 s answered
        link.cut = True
        self.elapse(12)  # at 20 and 25 s lost: two in a row, not three
        self.assertFalse(link.director_side.disconnecting or link.agent_side.disconnecting)


class ExceptionTests(EndpointTestCase):
    rule = ExceptionRule(
        scope=1,
        ttl=30,
        source=IP("198.51.100.0"),
        source_prefix=24,
        protocol=6,
        port=80,
    )

    def setUp(self):
        super().setUp()
        self.director_factory = self.director()
        self.link = self.connect(self.director_factory, self.agent_factory())
        self.agent = self.link.director.agent

    def call(self, deferred):
        results = []
        deferred.addCallback(results.append)
        self.flush()
        [result] = results
        return result

    def installed(self):
        return self.call(self.link.agent.query_exceptions())

    def test_added_exception_is_reported_and_found_with_the_installer_address(self):
        self.assertEqual(self.call(self.link.agent.add_exceptions([self.rule])), ())
        self.assertEqual(self.events.of("added"), [(self.agent, self.rule)])
        [entry] = self.installed()
        self.assertEqual(entry.installer, IP("10.0.0.2"))
        self.assertEqual((entry.source, entry.source_prefix, entry.port), (self.rule.source, 24, 80))

    def test_exception_expires_after_its_ttl(self):
        self.call(self.link.agent.add_exceptions([self.rule]))
        self.elapse(29.75)
        self.assertEqual(self.events.of("removed"), [])
        self.elapse(0.25)
        self.assertEqual(self.events.of("removed"), [(self.agent, self.rule)])
        self.assertEqual(self.installed(), ())

    def test_adding_again_restarts_the_ttl(self):
        self.call(self.link.agent.add_exceptions([self.rule]))
        self.elapse(20)
        self.call(self.link.agent.add_exceptions([self.rule]))
        self.elapse(20)
        self.assertEqual(len(self.installed()), 1)
        self.elapse(10)
        self.assertEqual(self.installed(), ())

    def test_ttl_zero_lasts_until_deleted(self):
        forever = self.rule._replace(ttl=0)
        self.call(self.link.agent.add_exceptions([forever]))
        self.elapse(600, step=5)
        self.assertEqual(len(self.installed()), 1)
        self.assertEqual(self.call(self.link.agent.delete_exceptions([forever])), ())
        self.assertEqual(self.events.of("removed"), [(self.agent, forever)])
        self.assertEqual(self.installed(), ())

    def test_deleting_an_unknown_exception_fails_for_that_rule(self):
        other = self.rule._replace(port=443)
        self.call(self.link.agent.add_exceptions([self.rule]))
        self.assertEqual(self.call(self.link.agent.delete_exceptions([other, self.rule])), (other,))

    def test_an_agent_cannot_delete_another_agents_exception(self):
        other = self.connect(self.director_factory, self.agent_factory(), host="10.0.0.3")
        self.call(self.link.agent.add_exceptions([self.rule]))
        self.assertEqual(self.call(other.agent.delete_exceptions([self.rule])), (self.rule,))
        self.assertEqual(len(self.installed()), 1)

    def test_reset_drops_all_of_the_senders_exceptions_only(self):
        other = self.connect(self.director_factory, self.agent_factory(), host="10.0.0.3")
        self.call(self.link.agent.add_exceptions([self.rule, self.rule._replace(port=443)]))
        self.call(other.agent.add_exceptions([self.rule]))
        self.assertEqual(self.call(self.link.agent.reset_exceptions()), ())
        self.assertEqual(self.events.of("reset"), [(self.agent,)])
        self.assertEqual([entry.installer for entry in self.installed()], [IP("10.0.0.3")])

    def test_query_filters_on_every_non_zero_field(self):
        other = self.connect(self.director_factory, self.agent_factory(), host="10.0.0.3")
        self.call(self.link.agent.add_exceptions([self.rule]))
        self.call(other.agent.add_exceptions([self.rule._replace(port=443)]))
        by_port = self.call(self.link.agent.query_exceptions(InstalledException(port=443)))
        self.assertEqual([entry.installer for entry in by_port], [IP("10.0.0.3")])
        by_installer = InstalledException(installer=IP("10.0.0.2"))
        self.assertEqual(len(self.call(self.link.agent.query_exceptions(by_installer))), 1)

    def test_rules_over_the_limit_per_agent_are_refused_with_one_log_line(self):
        director = self.director(max_exceptions_per_agent=3)
        link = self.connect(director, self.agent_factory(), host="10.0.0.9")
        rules = [self.rule._replace(port=port) for port in range(1, 6)]
        with capturedLogs() as events:
            refused = self.call(link.agent.add_exceptions(rules))
        self.assertEqual(refused, tuple(rules[3:]))
        self.assertEqual([rule for _, rule in self.events.of("added")], rules[:3])
        [line] = [formatEvent(event) for event in events if "exception" in formatEvent(event)]
        self.assertIn("2 exception rules over the limit of 3 per agent", line)
        # At the limit, an installed rule may still be refreshed.
        self.assertEqual(self.call(link.agent.add_exceptions(rules[:1])), ())
        self.assertFalse(link.closed)

    def test_a_query_matching_more_than_one_answer_holds_is_refused_cleanly(self):
        links = [self.link] + [
            self.connect(self.director_factory, self.agent_factory(), host=f"10.0.0.{n}") for n in (3, 4, 5)
        ]
        for link in links:
            rules = [self.rule._replace(port=port) for port in range(1, 601)]
            self.assertEqual(self.call(link.agent.add_exceptions(rules)), ())
        replies = []
        self.link.agent.send_request(ExceptionQuery(filter=InstalledException())).addCallback(replies.append)
        self.flush()
        self.assertEqual(
            replies, [ErrorReply(opcode=Opcode.EXCEPTION_RESP, request_id=replies[0].request_id,
                                 units=(InstalledException(),))]
        )
        self.assertFalse(self.link.closed)
        mine = self.call(self.link.agent.query_exceptions(InstalledException(installer=IP("10.0.0.2"))))
        self.assertEqual(len(mine), 600)

    def test_invalid_rules_are_refused(self):
        bad = self.rule._replace(scope=3)
        self.assertEqual(self.call(self.link.agent.add_exceptions([bad, self.rule])), (bad,))
        self.assertEqual(self.events.of("added"), [(self.agent, self.rule)])


class AuthenticationTests(EndpointTestCase):
    def test_agent_and_director_sharing_the_secret_sign_every_message(self):
        link = Link(
            self.director(secret=SECRET), self.agent_factory(secret=SECRET), self.clock
        )
        self.links.append(link)
        self.assertTrue(link.agent.established)
        link.agent.stop([WEB])
        [stop] = link.agent_side.stream
        link.pump.pump()
        [stop_ack] = link.director_side.stream
        for data in (stop, stop_ack):
            self.assertTrue(HEADER.unpack_from(data)[1] & Flag.CREDENTIAL)
        self.flush()
        self.assertEqual(len(self.events.of("stopped")), 1)

    def test_authenticated_session_reports_health(self):
        self.connect(self.director(secret=SECRET), self.agent_factory(secret=SECRET))
        self.elapse(5)
        self.assertEqual(self.events.of("health")[0][2:], (75, 5.0))

    def test_init_ack_carries_the_sequence_number_the_agent_asked_for(self):
        self.clock.advance(1000)
        director = self.director(secret=SECRET)
        protocol = director.buildProtocol(None)
        transport = iosim.FakeTransport(protocol, True, DIRECTOR, IPv4Address("TCP", "10.0.0.2", 1))
        protocol.makeConnection(transport)
        asked = (77 << 32) + 5
        init = Init(authenticate=True, receive_sequence=asked)
        protocol.dataReceived(Authenticator(SECRET).encode(init, 0))
        [written] = transport.stream
        self.assertEqual(HEADER.unpack_from(written)[5], asked)
        receiver = Authenticator(SECRET)
        receiver.start_receiving(asked)
        # The clock's second, in its upper half: no other session counts up to it.
        self.assertEqual(decode(written, receiver).receive_sequence, 1000 << 32 | 1 << 31)

    def test_wrong_secret_brings_no_agent_up_and_closes_both_sides(self):
        link = self.connect(self.director(secret=SECRET), self.agent_factory(secret=b"guess"))
        self.assertTrue(link.closed)
        self.assertEqual(self.events.calls, [])
        self.assertFalse(link.agent.established)

    def test_unauthenticated_agent_is_told_authentication_is_required(self):
        director = self.director(secret=SECRET)
        protocol = director.buildProtocol(None)
        transport = iosim.FakeTransport(protocol, True, DIRECTOR, IPv4Address("TCP", "10.0.0.2", 1))
        protocol.makeConnection(transport)
        protocol.dataReceived(encode(Init(request_id=4)))
        [reply] = [decode(data) for data in transport.stream]
        self.assertEqual(
            reply,
            ErrorReply(opcode=Opcode.INIT_ACK, request_id=4, flags=Flag.ERROR | Flag.AUTH_REQUIRED),
        )
        self.assertTrue(transport.disconnecting)

    def test_unauthenticated_agent_gives_up_on_a_secret_holding_director(self):
        link = self.connect(self.director(secret=SECRET), self.agent_factory())
        self.assertTrue(link.closed)
        self.assertEqual(self.events.calls, [])

    def test_authenticating_agent_is_refused_by_a_director_without_secret(self):
        link = self.connect(self.director(), self.agent_factory(secret=SECRET))
        self.assertTrue(link.closed)
        self.assertEqual(self.events.calls, [])

    def test_replayed_message_is_refused_and_not_acted_on(self):
        link = self.connect(self.director(secret=SECRET), self.agent_factory(secret=SECRET))
        link.agent.start([DNS])
        start_bytes = b"".join(link.agent_side.stream)
        self.flush()
        link.agent.stop([DNS])
        self.flush()
        self.assertEqual(link.director.services, {WEB: None})
        link.director.dataReceived(start_bytes)
        [written] = link.director_side.stream
        self.assertEqual(
            HEADER.unpack_from(written)[1:4:2],
            (Flag.CREDENTIAL | Flag.ERROR | Flag.BAD_SEQUENCE, Opcode.START_ACK),
        )
        self.flush()
        self.assertEqual(len(self.events.of("started")), 2)
        self.assertEqual(link.director.services, {WEB: None})
        self.assertFalse(link.closed)

    def captured_session(self, director):
        """A real agent's session from 10.0.0.2 and the bytes of its INIT and its START."""
        link = Link(director, self.agent_factory(secret=SECRET), self.clock, greet=False)
        self.links.append(link)
        init = b"".join(link.agent_side.stream)
        link.pump.pump()  # the INIT arrives; the INIT_ACK is written
        link.pump.pump()  # the INIT_ACK arrives; the agent writes its START
        start = b"".join(link.agent_side.stream)
        self.flush()
        return link, init, start

    def replay(self, director, data, port=40001, host="10.0.0.2"):
        protocol = director.buildProtocol(IPv4Address("TCP", host, port))
        transport = iosim.FakeTransport(protocol, True, DIRECTOR, IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        return transport

    def test_replayed_init_and_start_from_the_same_host_take_nothing_over(self):
        director = self.director(secret=SECRET)
        legit, init, start = self.captured_session(director)
        self.elapse(5)
        before = list(self.events.calls)
        # Within the same second as the capture: the clock alone would not
        # make the INIT_ACK's sequence number fresh.
        replayed = self.replay(director, init + start)
        self.assertEqual(self.events.calls, before)
        self.assertEqual(director.agents(), {legit.director.agent: (WEB,)})
        self.assertFalse(legit.closed)
        self.elapse(10)
        self.assertTrue(replayed.disconnecting, "the newcomer never proved itself")
        self.assertEqual(self.events.of("lost"), [])
        self.assertEqual(len(self.events.of("up")), 1)
        self.assertEqual(self.events.of("health")[-1][:3], (legit.director.agent, WEB, 75))
        self.assertEqual(director.agents(), {legit.director.agent: (WEB,)})

    def test_a_session_replayed_from_another_host_brings_no_agent_up(self):
        director = self.director(secret=SECRET)
        legit, init, start = self.captured_session(director)
        before = list(self.events.calls)
        # In the same second: the clock alone gives 10.0.0.3 the number 10.0.0.2 got.
        replayed = self.replay(director, init + start, host="10.0.0.3")
        self.elapse(10)
        self.assertEqual(self.events.calls[: len(before)], before)
        self.assertEqual([call for call in self.events.calls if call[1].host == "10.0.0.3"], [])
        self.assertTrue(replayed.disconnecting)
        self.assertEqual(director.agents(), {legit.director.agent: (WEB,)})

    def test_a_message_captured_after_the_replayed_init_does_not_prove_it(self):
        director = self.director(secret=SECRET)
        legit, init, _ = self.captured_session(director)
        for host in ("10.0.0.2", "10.0.0.3"):
            replayed = self.replay(director, init, host=host, port=40001)
            legit.agent.stop([WEB])
            stop = b"".join(legit.agent_side.stream)  # sent after the replay's INIT_ACK
            self.flush()
            replayed.protocol.dataReceived(stop)
            self.elapse(10)
            self.assertTrue(replayed.disconnecting, host)
            self.assertEqual(list(director.agents()), [legit.director.agent], host)
            self.assertEqual(self.events.of("lost"), [], host)
            self.assertEqual([call[0].host for call in self.events.of("up")], ["10.0.0.2"], host)
            legit.agent.start([WEB])
            self.flush()

    def test_replayed_init_long_after_the_capture_takes_nothing_over(self):
        director = self.director(secret=SECRET)
        legit, init, start = self.captured_session(director)
        self.elapse(60)
        replayed = self.replay(director, init + start)
        self.elapse(10)
        self.assertTrue(replayed.disconnecting)
        self.assertEqual(self.events.of("lost"), [])
        self.assertEqual(director.agents(), {legit.director.agent: (WEB,)})

    def test_init_ack_asks_for_more_than_any_number_accepted_from_that_host(self):
        director = self.director(secret=SECRET)
        # An agent whose clock runs an hour ahead of the director's.
        ahead = Clock()
        ahead.advance(3600)
        agent_factory = self.agent_factory(secret=SECRET)
        agent_factory.clock = ahead
        legit = self.connect(director, agent_factory)
        self.elapse(5)
        accepted = legit.director.authenticator.receive_floor - 1
        self.assertGreaterEqual(accepted, 3600 << 32)
        replayed = self.replay(director, encode(Init(authenticate=True), secret=SECRET))
        [init_ack] = [decode(data, Authenticator(SECRET)) for data in replayed.stream]
        self.assertGreater(init_ack.receive_sequence, accepted)

    def test_reconnecting_agent_with_the_secret_replaces_the_old_session(self):
        director = self.director(secret=SECRET)
        old = self.connect(director, self.agent_factory(secret=SECRET), port=40000)
        self.elapse(5)
        new = self.connect(director, self.agent_factory(secret=SECRET), port=40001)
        self.flush()
        self.assertEqual([call[0] for call in self.events.calls][-3:], ["lost", "up", "started"])
        self.assertEqual(self.events.of("lost")[0][0], old.director.agent)
        self.assertEqual(list(director.agents()), [new.director.agent])
        self.assertTrue(old.closed)
        self.elapse(5)
        self.assertEqual(self.events.of("health")[-1][0], new.director.agent)

    def test_reconnecting_agent_without_services_proves_itself_by_answering(self):
        director = self.director(secret=SECRET)
        old = self.connect(director, self.agent_factory((), secret=SECRET), port=40000)
        new = self.connect(director, self.agent_factory((), secret=SECRET), port=40001)
        self.flush()
        self.assertEqual(list(director.agents()), [new.director.agent])
        self.assertTrue(old.closed)
        self.assertFalse(new.closed)

    def test_unverifiable_reply_makes_the_agent_ask_again(self):
        link = self.connect(self.director(secret=SECRET), self.agent_factory(secret=SECRET))
        stopped = []
        link.agent.stop([WEB]).addCallback(stopped.append)
        link.director.authenticator.secret = b"not the shared secret"
        link.pump.pump()  # the STOP arrives; its STOP_ACK is signed with the wrong key
        link.director.authenticator.secret = SECRET
        self.flush()
        self.assertEqual(stopped, [()])
        self.assertEqual(len(self.events.of("stopped")), 1, "STOP again is no second stop")
        self.assertFalse(link.closed)

    def test_agent_gives_up_after_three_unverifiable_replies(self):
        link = self.connect(self.director(secret=SECRET), self.agent_factory(secret=SECRET))
        failures = []
        link.agent.stop([WEB]).addErrback(failures.append)
        link.director.authenticator.secret = b"not the shared secret"
        self.flush()
        [failure] = failures
        failure.trap(RequestFailed)
        self.assertIn("after 3 attempts", failure.getErrorMessage())
        self.assertTrue(link.closed)


class RobustnessTests(EndpointTestCase):
    def test_malformed_message_closes_only_that_connection(self):
        director = self.director()
        bad = self.connect(director, self.agent_factory(), host="10.0.0.2")
        good = self.connect(director, self.agent_factory(), host="10.0.0.3")
        bad.director.dataReceived(b"GET / HTTP/1.0\r\n\r\n\x00\x00")
        self.flush()
        self.assertTrue(bad.closed)
        [(agent, reason)] = self.events.of("lost")
        self.assertEqual(agent.host, "10.0.0.2")
        self.assertIn("malformed NECP input", reason)
        self.elapse(5)
        self.assertEqual([call[0].host for call in self.events.of("health")], ["10.0.0.3"])
        self.assertFalse(good.closed)

    def test_oversized_length_closes_the_connection_at_once(self):
        link = self.connect(self.director(), self.agent_factory())
        link.director.dataReceived(HEADER.pack(0x414A, 1, 1, 5, 1, 0, 1 << 20))
        self.assertTrue(link.director_side.disconnecting)

    def test_reserved_opcode_gets_an_error_reply_and_the_session_goes_on(self):
        link = self.connect(self.director(), self.agent_factory())
        link.director.dataReceived(HEADER.pack(0x414A, 0, 1, 0x10, 9, 0, 0))
        self.assertEqual(
            link.sent_by_director(), [ErrorReply(opcode=0x10, request_id=9)]
        )
        self.flush()
        self.elapse(5)
        self.assertFalse(link.closed)
        self.assertEqual(len(self.events.of("health")), 1)

    def test_other_version_gets_a_version_mismatch_reply_with_our_version(self):
        link = self.connect(self.director(), self.agent_factory())
        link.director.dataReceived(HEADER.pack(0x414A, 0, 2, Opcode.KEEPALIVE, 9, 0, 0))
        [written] = link.director_side.stream
        self.assertEqual(
            HEADER.unpack(written),
            (0x414A, Flag.ERROR | Flag.VERSION_MISMATCH, 1, Opcode.KEEPALIVE_ACK, 9, 0, 0),
        )
        self.assertFalse(link.director_side.disconnecting)

    def test_failing_events_provider_does_not_end_the_session(self):
        def broken(agent, service, health, when):
            raise RuntimeError("registry bug")

        self.events.healthReported = broken
        link = self.connect(self.director(), self.agent_factory())
        self.elapse(5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(link.closed)

    def test_a_failing_keepalive_answer_handler_is_logged_and_the_session_goes_on(self):
        link = self.connect(self.director(), self.agent_factory())

        def broken(reply):
            raise RuntimeError("handler bug")

        link.director.keepalive_answered = broken
        self.elapse(5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(link.director.state.keepalives_unanswered, 0, "the answer still counts")
        self.elapse(6)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1, "and the next one's")
        self.assertFalse(link.closed)

    def test_request_without_reply_fails_after_the_request_timeout(self):
        link = self.connect(self.director(), self.agent_factory())
        failures = []
        link.agent.stop([WEB]).addErrback(failures.append)
        link.cut = True
        self.elapse(17.75)
        self.assertEqual(failures, [])
        self.elapse(0.25)  # 3 x (5 s + 1 s jitter)
        [failure] = failures
        failure.trap(RequestFailed)
        self.assertIn("no reply to STOP within 18.0 s", failure.getErrorMessage())

    def test_agent_refuses_a_start_from_the_director_with_copies(self):
        link = self.connect(self.director(), self.agent_factory())
        reply = link.agent.start_received(Start(services=(WEB,)))
        self.assertEqual(reply, ErrorReply(opcode=Opcode.START_ACK, units=(WEB,)))

    def test_director_cannot_answer_health_queries(self):
        link = self.connect(self.director(), self.agent_factory())
        query = Query.health(6, 80)
        reply = link.director.keepalive_received(Keepalive(queries=(query,)))
        self.assertEqual(reply, ErrorReply(opcode=Opcode.KEEPALIVE_ACK, units=(query,)))
        self.assertEqual(link.director.keepalive_received(Keepalive()), KeepaliveAck())

    def test_late_reply_is_ignored(self):
        link = self.connect(self.director(), self.agent_factory())
        link.agent.dataReceived(encode(KeepaliveAck(request_id=999)))
        self.assertFalse(link.agent_side.disconnecting)


class FlowControlTests(EndpointTestCase):
    """One peer gets bounded work per reactor turn and bounded queued output."""

    def session(self, director, **where):
        transport = ConsumerTransport(**where)
        protocol = director.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(encode(Init(request_id=1)))
        self.assertTrue(protocol.established)
        transport.drain()
        return protocol, transport

    def reactor_turn(self):
        """
        Run the calls due now, as one reactor iteration does, and not those
        they schedule (Clock.advance would run those too).
        """
        due = [call for call in self.clock.getDelayedCalls() if call.getTime() <= self.clock.seconds()]
        for call in due:
            func, args, kw = call.func, call.args, call.kw
            call.cancel()
            func(*args, **kw)

    def queries(self, count, first_id=10):
        return b"".join(encode(ExceptionQuery(request_id=first_id + n)) for n in range(count))

    def test_a_flood_of_queries_in_one_write_is_handled_in_slices_one_per_reactor_turn(self):
        director = self.director()
        protocol, transport = self.session(director)
        protocol.dataReceived(self.queries(3 * MESSAGES_PER_TURN + 5))
        slices = [len(transport.drain())]
        self.assertEqual(transport.producerState, "paused", "no reading while a backlog waits")
        while transport.producerState == "paused":
            self.reactor_turn()
            slices.append(len(transport.drain()))
        self.assertEqual(slices, [MESSAGES_PER_TURN] * 3 + [5])
        self.assertEqual(transport.producerState, "producing")

    def test_other_connections_are_served_between_the_slices_of_a_flood(self):
        director = self.director()
        flooder, flooder_transport = self.session(director, host="10.0.0.2")
        other, other_transport = self.session(director, host="10.0.0.3")
        flooder.dataReceived(self.queries(10 * MESSAGES_PER_TURN))
        other.dataReceived(encode(Start(request_id=2, services=(WEB,))))
        self.assertEqual(other_transport.drain(), [StartAck(request_id=2)])
        self.assertEqual(len(flooder_transport.drain()), MESSAGES_PER_TURN, "the flood waits its turns")
        self.clock.advance(0)
        self.assertEqual(len(flooder_transport.drain()), 9 * MESSAGES_PER_TURN)

    def test_a_peer_that_does_not_read_pauses_the_director_and_its_output_stays_under_the_cap(self):
        director = self.director()
        protocol, transport = self.session(director)
        rules = [ExceptionRule(port=port) for port in range(1, 1001)]
        protocol.dataReceived(encode(ExceptionAdd(request_id=2, rules=tuple(rules))))
        transport.drain()
        # 1,000 queries, each answered with 32 KB: 32 MB if all were answered.
        protocol.dataReceived(self.queries(1000))
        for _ in range(20):
            self.clock.advance(0)
        self.assertTrue(transport.producer_paused)
        self.assertEqual(transport.producerState, "paused", "the director stopped reading")
        self.assertLessEqual(len(transport.value()), transport.buffer_size + director.max_queued_output)
        answered = len(decode_all(transport.value()))
        self.assertLess(answered, 5)
        # Once the peer reads, the director goes on where it stopped.
        answered += len(transport.drain())
        self.clock.advance(0)
        self.assertGreater(answered + len(decode_all(transport.value())), answered)
        self.assertFalse(transport.disconnecting)

    def test_keepalives_a_peer_skips_are_not_kept_waiting_for_ever(self):
        director = self.director()
        protocol, transport = self.session(director)
        protocol.dataReceived(encode(Start(request_id=2, services=(WEB,))))
        transport.drain()
        for _ in range(30):
            self.clock.advance(5)
            self.clock.advance(5)
            # The peer answers only the latest of the keepalives it was sent.
            latest = [m for m in transport.drain() if isinstance(m, Keepalive)][-1]
            protocol.dataReceived(encode(KeepaliveAck(request_id=latest.request_id)))
        self.assertFalse(transport.disconnecting)
        self.assertLessEqual(protocol.state.requests_waiting, director.max_unanswered)


        director = self.director(max_queued_output=100)
        protocol, transport = self.session(director)
        protocol.dataReceived(encode(Start(request_id=2, services=(WEB,))))
        transport.drain()
        protocol.pauseProducing()  # the peer stopped reading
        with capturedLogs() as events:
            self.clock.advance(5)  # a keepalive with a health query: 52 bytes
            self.assertFalse(transport.disconnecting)
            self.clock.advance(5)  # another: over the cap
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.disconnected, "aborted: what was queued is dropped")
        [reason] = [formatEvent(event) for event in events if "closing" in formatEvent(event)]
        self.assertIn("peer is not reading: over 100 bytes queued", reason)


class ScriptedEndpoint:
    """A client endpoint that refuses while C{refusals} last, then connects in memory."""

    def __init__(self, test, director, host="10.0.0.2"):
        self.test = test
        self.director = director
        self.host = host
        self.refusals = 0
        self.attempts = []
        self.port = 50000

    def connect(self, factory):
        self.attempts.append(self.test.clock.seconds())
        if self.refusals:
            self.refusals -= 1
            return fail(ConnectionRefusedError())
        self.port += 1
        protocol = factory.buildProtocol(None)
        self.test.links.append(
            Link(
                self.director,
                None,
                self.test.clock,
                host=self.host,
                port=self.port,
                agent=protocol,
                greet=False,  # as a real endpoint: connected now, data flows later
            )
        )
        return succeed(protocol)


class ReconnectTests(EndpointTestCase):
    def links_to(self, endpoints, **settings):
        links = DirectorLinks(
            endpoints,
            self.health,
            [WEB],
            clock=self.clock,
            random=lambda: 1.0,
            **settings,
        )
        links.startService()
        self.flush()

        def stop():
            links.stopService()
            self.flush()

        self.addCleanup(stop)
        return links

    def test_refused_connections_are_retried_with_doubling_delays(self):
        endpoint = ScriptedEndpoint(self, self.director())
        endpoint.refusals = 5
        links = self.links_to([endpoint])
        self.elapse(40)
        self.assertEqual(gaps(endpoint.attempts), [1, 2, 4, 8, 16])
        self.assertEqual(len(links.sessions()), 1)

    def test_failed_handshakes_also_make_the_delay_grow(self):
        endpoint = ScriptedEndpoint(self, self.director(secret=SECRET))
        self.links_to([endpoint])
        self.elapse(30)
        self.assertEqual(gaps(endpoint.attempts)[:3], [2, 4, 8])
        self.assertEqual(self.events.calls, [])

    def test_lost_session_is_retried_after_one_second_and_starts_from_init(self):
        endpoint = ScriptedEndpoint(self, self.director())
        links = self.links_to([endpoint])
        self.flush()
        self.assertEqual(len(self.events.of("up")), 1)
        self.links[0].cut = True
        self.elapse(20)
        self.links[0].cut = False
        self.flush()
        self.assertEqual(len(self.events.of("lost")), 1)
        self.elapse(1.25)
        self.assertEqual(endpoint.attempts, [0, 21])
        self.assertEqual(len(self.events.of("up")), 2)
        self.assertEqual(self.events.of("started")[-1][1], (WEB,))
        self.assertEqual(len(links.sessions()), 1)

    def test_one_agent_keeps_sessions_with_several_directors(self):
        first, second = RecordingEvents(), RecordingEvents()
        endpoints = [
            ScriptedEndpoint(self, NEFactory(first, clock=self.clock)),
            ScriptedEndpoint(self, NEFactory(second, clock=self.clock)),
        ]
        links = self.links_to(endpoints)
        self.flush()
        self.assertEqual(len(links.sessions()), 2)
        stopped = []
        links.stop_services([WEB]).addCallback(stopped.append)
        self.flush()
        self.assertEqual(stopped, [[(), ()]])
        self.assertEqual(len(first.of("stopped")) + len(second.of("stopped")), 2)
        self.assertEqual(links.announced, set())

    def test_stopped_services_are_not_started_again_on_reconnect(self):
        endpoint = ScriptedEndpoint(self, self.director())
        links = self.links_to([endpoint])
        self.flush()
        links.stop_services([WEB])
        self.flush()
        self.links[0].agent_side.loseConnection()
        self.flush()
        self.elapse(2)
        self.assertEqual(len(self.events.of("up")), 2)
        self.assertEqual(len(self.events.of("started")), 1)


class BackoffPolicyTests(SynchronousTestCase):
    def test_delays_double_from_one_second_and_stop_at_256(self):
        policy = JitteredBackoff(lambda: 1.0)
        self.assertEqual(
            [policy(attempt) for attempt in range(1, 12)],
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256],
        )

    def test_jitter_draws_from_the_upper_half_of_each_step_never_under_one_second(self):
        policy = JitteredBackoff(lambda: 0.0)
        self.assertEqual([policy(attempt) for attempt in (1, 2, 3, 10)], [1, 1, 2, 128])

    def test_failed_handshakes_count_until_one_succeeds(self):
        policy = JitteredBackoff(lambda: 1.0)
        policy.handshake_failed()
        policy.handshake_failed()
        self.assertEqual(policy(1), 4)
        policy.handshake_succeeded()
        self.assertEqual(policy(1), 1)


class LoopbackTests(TestCase):
    """Director and agent in one real reactor, over TCP on 127.0.0.1."""

    def test_director_and_agent_exchange_health_over_tcp(self):
        events = RecordingEvents()
        reported = Deferred()
        events.health_waiters.append(reported)
        lost = Deferred()
        events.agentLost = lambda agent, reason: lost.callback(reason)
        director = NEFactory(events, clock=reactor, keepalive_interval=0.05, keepalive_jitter=0.0)
        port = reactor.listenTCP(0, director, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        agents = SEFactory(TableHealth({(6, 80): 42}), {WEB}, clock=reactor, secret=None)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        def connected(protocol):
            def close(result):
                protocol.transport.loseConnection()
                return lost.addCallback(lambda _: result)

            return reported.addBoth(close)

        def check(report):
            agent, service, health = report
            self.assertEqual((agent.host, service, health), ("127.0.0.1", WEB, 42))

        done = endpoint.connect(agents).addCallback(connected).addCallback(check)
        return done
