"""
Operators see attacks (#15): what the director counts of NECP and how it
logs refusals. NECPCounters alone on a task.Clock; then a DirectorService
on a Clock, agents speaking raw NECP to its listener's factory over
StringTransports, every refusal class counted and shown in /metrics and
/status.json; and the log's rule, once per peer and class per minute, with
the table of peers bounded.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.service import DirectorService
from lvsfeedback.director.web.control import ControlAccess
from lvsfeedback.director.web.history import History
from lvsfeedback.director.web.listener import StatusSite
from lvsfeedback.director.web.resources import status_root
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.necp.counters import (
    BAD_CREDENTIAL,
    CONNECTION_REASONS,
    LIMIT,
    LOG_WINDOW,
    MALFORMED,
    MAX_TRACKED,
    MESSAGE_REASONS,
    NECPCounters,
)
from lvsfeedback.necp.framing import encode
from lvsfeedback.necp.messages import ExceptionAdd, Init, Keepalive, KeepaliveAck, Noop, Start
from lvsfeedback.necp.units import ExceptionRule, Service
from lvsfeedback.necp.wire import HEADER, MAX_PAYLOAD, PROTOCOL_ID, VERSION
from tests.helpers.director import accept, director_config, http

SECRET = b"correct horse battery staple"
WEB = Service(forwarding=3, protocol=6, port=80)
ELSEWHERE = Service(forwarding=3, protocol=6, port=8080)  # no real server provides it
RULE = ExceptionRule(scope=1, protocol=6, port=80)


def refusal_lines(events) -> list[str]:
    return [line for line in map(formatEvent, events) if "refus" in line]


class CountersLogTests(SynchronousTestCase):
    """The log's rule on NECPCounters alone."""

    def setUp(self):
        self.clock = Clock()
        self.counters = NECPCounters(self.clock, max_tracked=8)

    def test_ten_thousand_refusals_from_one_peer_cost_one_line_then_one_summary_after_the_minute(self):
        with capturedLogs() as events:
            for _ in range(10_000):
                self.counters.refused(BAD_CREDENTIAL, "127.0.2.1", "from 127.0.2.1:5000: credential does not match")
            self.clock.advance(LOG_WINDOW - 1)
            within = refusal_lines(events)
            self.clock.advance(1)
        lines = refusal_lines(events)
        self.assertLessEqual(len(within), 2)
        self.assertIn("credential does not match", within[0])
        self.assertIn("bad_credential", within[0])
        self.assertEqual(len(lines), len(within) + 1)
        self.assertIn("... and 9,999 more bad_credential refusals from 127.0.2.1 in the last 60 s", lines[-1])
        self.assertEqual(self.counters.refusals[BAD_CREDENTIAL], 10_000)

    def test_two_peers_get_a_line_each(self):
        with capturedLogs() as events:
            for _ in range(100):
                self.counters.refused(MALFORMED, "10.0.0.1", "from 10.0.0.1:1: garbage")
                self.counters.refused(MALFORMED, "10.0.0.2", "from 10.0.0.2:1: garbage")
        lines = refusal_lines(events)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("10.0.0.1", lines[0])
        self.assertIn("10.0.0.2", lines[1])

    def test_each_class_from_one_peer_gets_its_own_line(self):
        with capturedLogs() as events:
            for reason in (MALFORMED, LIMIT, MALFORMED, LIMIT):
                self.counters.refused(reason, "10.0.0.1", "from 10.0.0.1:1: no")
        self.assertEqual(len(refusal_lines(events)), 2)

    def test_a_peer_is_forgotten_after_its_minute_and_its_next_refusal_logged_at_once(self):
        self.counters.refused(MALFORMED, "10.0.0.1", "from 10.0.0.1:1: first")
        self.assertEqual(self.counters.tracked, 1)
        self.clock.advance(LOG_WINDOW)
        self.assertEqual(self.counters.tracked, 0)
        with capturedLogs() as events:
            self.counters.refused(MALFORMED, "10.0.0.1", "from 10.0.0.1:1: again")
        [line] = refusal_lines(events)
        self.assertIn("again", line)

    def test_a_minute_without_more_refusals_ends_without_a_summary(self):
        self.counters.refused(MALFORMED, "10.0.0.1", "from 10.0.0.1:1: once")
        with capturedLogs() as events:
            self.clock.advance(LOG_WINDOW)
        self.assertEqual(refusal_lines(events), [])

    def test_windows_opened_at_different_times_end_each_after_its_own_minute(self):
        self.counters.refused(MALFORMED, "10.0.0.1", "from 10.0.0.1:1: x")
        self.clock.advance(30)
        self.counters.refused(MALFORMED, "10.0.0.2", "from 10.0.0.2:1: x")
        self.counters.refused(MALFORMED, "10.0.0.2", "from 10.0.0.2:1: x")
        self.clock.advance(30)
        self.assertEqual(self.counters.tracked, 1)
        with capturedLogs() as events:
            self.clock.advance(30)
        [summary] = refusal_lines(events)
        self.assertIn("and 1 more malformed refusals from 10.0.0.2", summary)
        self.assertEqual(self.counters.tracked, 0)

    def test_a_flood_of_source_addresses_keeps_the_table_and_the_log_bounded(self):
        with capturedLogs() as events:
            for n in range(100_000):
                host = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
                self.counters.refused(MALFORMED, host, f"from {host}:1: garbage")
            self.assertLessEqual(self.counters.tracked, 8 + len(MESSAGE_REASONS))
            within = refusal_lines(events)
            self.clock.advance(LOG_WINDOW)
        # One line for each tracked peer, one for all the others, and one summary of those.
        self.assertEqual(len(within), 9)
        self.assertIn("more malformed refusals from other peers are counted", within[-1])
        self.assertIn("... and 99,991 more malformed refusals from other peers", refusal_lines(events)[-1])
        self.assertEqual(self.counters.tracked, 0)
        self.assertEqual(self.counters.refusals[MALFORMED], 100_000)

    def test_flush_summarises_what_was_counted_and_forgets_it(self):
        for _ in range(3):
            self.counters.refused(LIMIT, "10.0.0.1", "from 10.0.0.1:1: too big")
        with capturedLogs() as events:
            self.counters.flush()
        [line] = refusal_lines(events)
        self.assertIn("and 2 more limit refusals from 10.0.0.1", line)
        self.assertEqual(self.counters.tracked, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


CONFIG = """
[director]
listen = "tcp:3262"
max_agents = 4
allow = ["10.1.0.0/16"]
{more}

[necp]
max_exceptions_per_agent = 1
max_queued_output = 1024

[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80
[[service.real]]
address = "10.1.0.1"
"""


class DirectorCase(SynchronousTestCase):
    """A director on a Clock; agents speak raw NECP to its listener's factory."""

    secret = False

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        more = 'secret_file = "secret"' if self.secret else ""
        config = director_config(self, CONFIG.format(more=more), {"secret": SECRET} if self.secret else None)
        self.director = DirectorService(config, self.clock, table=MemoryIPVS())
        self.factory = self.director.factory
        access = ControlAccess(lambda: True, lambda: None)
        self.site = StatusSite(status_root(self.director, access, History()), access=access, reactor=self.clock)
        self.port = 40000

    def connect(self, host="10.1.0.1"):
        """A connection from C{host}, as the listener makes it; None if refused."""
        self.port += 1
        return accept(self.factory, host, self.port)

    def send(self, protocol, *data: bytes) -> None:
        protocol.dataReceived(b"".join(data))
        self.clock.advance(0)  # the slices of a backlog

    def session(self, host="10.1.0.1"):
        protocol = self.connect(host)
        self.send(protocol, encode(Init()))
        self.assertTrue(protocol.established)
        return protocol

    def counted(self) -> dict[str, int]:
        return dict(self.factory.counters.refusals)

    def assertRefusedOnce(self, reason: str, before: dict[str, int]) -> None:
        self.assertEqual(self.counted(), {**before, reason: before[reason] + 1})

    def scrape(self) -> dict:
        response = http(self.site, b"GET", b"/metrics")
        samples = {}
        for family in text_string_to_metric_families(response.body.decode()):
            for sample in family.samples:
                samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def status(self) -> dict:
        return http(self.site, b"GET", b"/status.json").json()["necp"]

    def assertShown(self, reason: str, count: int = 1) -> None:
        self.assertEqual(self.status()["refused"][reason], count)
        self.assertEqual(self.scrape()["lvsfeedback_necp_refusals_total", (("reason", reason),)], count)


class DirectorCountsTests(DirectorCase):
    """Without a secret: each refusal class shows in the counters, /status.json and /metrics."""

    def test_messages_are_counted_by_type(self):
        protocol = self.session()
        self.send(protocol, encode(Keepalive(request_id=1)), encode(Keepalive(request_id=2)), encode(Noop()))
        necp = self.status()
        self.assertEqual(necp["messages"], {"total": 4, "by_type": {"NOOP": 1, "INIT": 1, "KEEPALIVE": 2}})
        samples = self.scrape()
        self.assertEqual(samples["lvsfeedback_necp_messages_total", (("type", "KEEPALIVE"),)], 2)
        self.assertEqual(samples["lvsfeedback_necp_messages_total", (("type", "INIT"),)], 1)

    def test_every_class_is_shown_at_zero_before_any_refusal(self):
        necp = self.status()
        self.assertEqual(necp["refused"], dict.fromkeys(MESSAGE_REASONS, 0))
        self.assertEqual(necp["connections_refused"], dict.fromkeys(CONNECTION_REASONS, 0))
        samples = self.scrape()
        for reason in MESSAGE_REASONS:
            self.assertEqual(samples["lvsfeedback_necp_refusals_total", (("reason", reason),)], 0)
        for reason in CONNECTION_REASONS:
            self.assertEqual(samples["lvsfeedback_agent_connections_refused_total", (("reason", reason),)], 0)

    def test_a_credential_where_none_is_configured_is_a_bad_credential(self):
        protocol = self.session()
        before = self.counted()
        self.send(protocol, encode(Keepalive(request_id=7), secret=b"guess"))
        self.assertRefusedOnce("bad_credential", before)
        self.assertFalse(protocol.transport.disconnecting, "the session goes on")
        self.assertShown("bad_credential")

    def test_garbage_is_malformed(self):
        protocol = self.connect()
        self.send(protocol, b"GET / HTTP/1.1\r\nHost: director\r\n\r\n")
        self.assertRefusedOnce("malformed", dict.fromkeys(MESSAGE_REASONS, 0))
        self.assertTrue(protocol.transport.disconnecting)
        self.assertShown("malformed")

    def test_a_header_announcing_too_big_a_payload_is_over_a_limit(self):
        protocol = self.connect()
        self.send(protocol, HEADER.pack(PROTOCOL_ID, 0, VERSION, 3, 1, 0, MAX_PAYLOAD + 32))
        self.assertRefusedOnce("limit", dict.fromkeys(MESSAGE_REASONS, 0))
        self.assertTrue(protocol.transport.disconnecting)
        self.assertShown("limit")

    def test_exceptions_over_the_limit_per_agent_are_over_a_limit(self):
        protocol = self.session()
        self.send(protocol, encode(ExceptionAdd(request_id=1, rules=(RULE, RULE._replace(port=81)))))
        self.assertRefusedOnce("limit", dict.fromkeys(MESSAGE_REASONS, 0))
        self.assertShown("limit")

    def test_output_past_the_queued_output_cap_is_over_a_limit(self):
        protocol = self.session()
        protocol.pauseProducing()  # the transport's buffer is full: the agent stopped reading
        for _ in range(100):  # 1,600 bytes of answers
            protocol.send_message(KeepaliveAck())
        self.assertTrue(protocol.transport.disconnecting)
        self.assertShown("limit")

    def test_a_start_of_services_the_agent_may_not_offer_is_not_allowed(self):
        protocol = self.session()
        self.send(protocol, encode(Start(request_id=1, services=(WEB, ELSEWHERE))))
        self.assertRefusedOnce("not_allowed", dict.fromkeys(MESSAGE_REASONS, 0))
        self.assertShown("not_allowed")

    def test_a_service_ipvs_cannot_balance_is_malformed(self):
        protocol = self.session()
        self.send(protocol, encode(Start(request_id=1, services=(Service(3, 47, 80),))))
        self.assertRefusedOnce("malformed", dict.fromkeys(MESSAGE_REASONS, 0))

    def test_a_request_before_init_is_unexpected(self):
        protocol = self.connect()
        self.send(protocol, encode(Keepalive(request_id=1)))
        self.assertRefusedOnce("unexpected", dict.fromkeys(MESSAGE_REASONS, 0))
        self.assertTrue(protocol.transport.disconnecting)
        self.assertShown("unexpected")

    def test_a_connection_that_never_says_init_is_over_a_limit(self):
        protocol = self.connect()
        self.clock.advance(self.factory.handshake_timeout)
        self.assertTrue(protocol.transport.disconnecting)
        self.assertShown("limit")

    def test_connections_from_outside_allow_and_beyond_max_agents_are_counted_by_reason(self):
        self.assertIsNone(self.connect("192.0.2.7"))
        for n in range(4):
            self.assertIsNotNone(self.connect(f"10.1.0.{n + 1}"))
        self.assertIsNone(self.connect("10.1.0.9"))
        self.assertIsNone(self.connect("10.1.0.10"))
        self.assertEqual(self.status()["connections_refused"], {"allow": 1, "max_agents": 2})
        samples = self.scrape()
        self.assertEqual(samples["lvsfeedback_agent_connections_refused_total", (("reason", "allow"),)], 1)
        self.assertEqual(samples["lvsfeedback_agent_connections_refused_total", (("reason", "max_agents"),)], 2)

    def test_a_flood_from_outside_allow_is_logged_once_a_minute(self):
        with capturedLogs() as events:
            for _ in range(1000):
                self.connect("192.0.2.7")
        [line] = refusal_lines(events)
        self.assertIn("192.0.2.7", line)
        self.assertIn("not in [director] allow", line)

    def test_a_flood_of_source_addresses_outside_allow_keeps_the_log_and_the_table_bounded(self):
        with capturedLogs() as events:
            for n in range(10_000):
                self.connect(f"192.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        counters = self.factory.counters
        self.assertEqual(counters.connections_refused["allow"], 10_000)
        self.assertLessEqual(counters.tracked, MAX_TRACKED + len(CONNECTION_REASONS) + len(MESSAGE_REASONS))
        self.assertEqual(len(refusal_lines(events)), MAX_TRACKED + 1)

    def test_ten_thousand_refused_messages_on_one_session_cost_at_most_two_lines_a_minute(self):
        protocol = self.session()
        garbage = encode(Keepalive(request_id=7), secret=b"guess")
        with capturedLogs() as events:
            self.send(protocol, garbage * 10_000)  # handled in slices, all in this instant
            within = refusal_lines(events)
            self.clock.advance(LOG_WINDOW)
        self.assertEqual(self.counted()["bad_credential"], 10_000)
        self.assertLessEqual(len(within), 2)
        self.assertEqual(len(refusal_lines(events)), len(within) + 1)
        self.assertIn("and 9,999 more bad_credential refusals from 10.1.0.1", refusal_lines(events)[-1])


class AuthenticatedDirectorCountsTests(DirectorCase):
    """The same with a secret: replays and wrong credentials have their own classes."""

    secret = True

    def session(self, host="10.1.0.1"):
        protocol = self.connect(host)
        self.send(protocol, encode(Init(authenticate=True, receive_sequence=1), secret=SECRET))
        self.assertTrue(protocol.established)
        self.next_sequence = protocol.authenticator.receive_floor
        return protocol

    def signed(self, message) -> bytes:
        sequence, self.next_sequence = self.next_sequence, self.next_sequence + 1
        return encode(message, sequence=sequence, secret=SECRET)

    def test_a_replayed_message_is_a_bad_sequence(self):
        protocol = self.session()
        keepalive = self.signed(Keepalive(request_id=1))
        self.send(protocol, keepalive)
        before = self.counted()
        self.send(protocol, keepalive)
        self.assertRefusedOnce("bad_sequence", before)
        self.assertShown("bad_sequence")

    def test_an_init_without_a_credential_is_a_bad_credential(self):
        protocol = self.connect()
        self.send(protocol, encode(Init()))
        self.assertRefusedOnce("bad_credential", dict.fromkeys(MESSAGE_REASONS, 0))
        self.assertTrue(protocol.transport.disconnecting)
