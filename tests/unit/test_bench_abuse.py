"""
The pure parts of bench/director_abuse.py: the verdict from recorded polls,
RSS samples and log counts, and the forged messages the attacker sends.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.director_abuse import (
    SECRET,
    STALE_AFTER,
    Observation,
    Outcome,
    Poll,
    ServerView,
    agent_init,
    captured_agent_init,
    director_send_queue,
    legitimate_servers,
    verdict,
    with_version,
)
from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.framing import decode
from lvsfeedback.necp.messages import Init
from lvsfeedback.necp.wire import UnsupportedVersion

EXPECTED = {"127.0.1.1:80": 30, "127.0.1.2:80": 80}
SESSIONS = {"127.0.1.1:80": 100.0, "127.0.1.2:80": 101.0}


def steady(at: float, changes: dict[str, ServerView] | None = None) -> Poll:
    """A poll of both legitimate servers as expected, but for `changes`."""
    servers = {
        "127.0.1.1:80": ServerView(30, "health", 0.4, 100.0),
        "127.0.1.2:80": ServerView(80, "health", 0.7, 101.0),
    }
    return Poll(at, {**servers, **(changes or {})})


def observed(polls=None, rss=(40_000, 45_000, 41_000), errors=0, alive=True) -> Observation:
    return Observation([steady(0.0), steady(0.5), steady(1.0)] if polls is None else polls, rss, errors, alive)


class VerdictTests(SynchronousTestCase):
    def judge(self, observation: Observation, outcome: Outcome | None = None) -> tuple[bool, str]:
        return verdict(outcome or Outcome("closed after 0.01 s", closed_in=0.01), observation, EXPECTED, SESSIONS)

    def test_steady_weights_bounded_memory_and_a_quick_close_pass(self):
        self.assertEqual(self.judge(observed()), (True, "pass"))

    def test_a_changed_weight_fails_naming_the_server_reason_and_moment(self):
        polls = [steady(0.0), steady(0.5, {"127.0.1.1:80": ServerView(100, "lost-agent", None, None)})]
        passed, text = self.judge(observed(polls))
        self.assertFalse(passed)
        self.assertIn("127.0.1.1:80 weight 100 (lost-agent) at +0.5 s, not 30", text)

    def test_a_replaced_session_fails_even_with_the_same_weight(self):
        polls = [steady(0.0), steady(0.5, {"127.0.1.2:80": ServerView(80, "health", 0.2, 107.5)})]
        passed, text = self.judge(observed(polls))
        self.assertFalse(passed)
        self.assertIn("127.0.1.2:80 session replaced or lost at +0.5 s", text)

    def test_a_report_older_than_stale_after_fails(self):
        old = ServerView(30, "health", STALE_AFTER + 0.5, 100.0)
        passed, text = self.judge(observed([steady(0.0), steady(0.5, {"127.0.1.1:80": old})]))
        self.assertFalse(passed)
        self.assertIn(f"127.0.1.1:80 report {STALE_AFTER + 0.5:.1f} s old at +0.5 s", text)

    def test_an_unanswered_status_poll_fails(self):
        passed, text = self.judge(observed([steady(0.0), Poll(0.5, None), steady(1.0)]))
        self.assertFalse(passed)
        self.assertIn("/status.json unanswered 1 of 3 polls (first at +0.5 s)", text)

    def test_no_poll_at_all_fails(self):
        passed, text = self.judge(observed([]))
        self.assertFalse(passed)
        self.assertIn("no /status.json poll", text)

    def test_rss_peak_above_twice_the_value_before_fails_and_twice_passes(self):
        self.assertTrue(self.judge(observed(rss=(40_000, 80_000, 40_000)))[0])
        passed, text = self.judge(observed(rss=(40_000, 80_001, 40_000)))
        self.assertFalse(passed)
        self.assertIn("RSS peak 78 MB > 2 x 39 MB", text)

    def test_errors_in_the_log_fail(self):
        passed, text = self.judge(observed(errors=2))
        self.assertFalse(passed)
        self.assertIn("2 Unhandled Error/Traceback lines", text)

    def test_a_close_later_than_one_second_after_the_offence_fails(self):
        passed, text = self.judge(observed(), Outcome("closed after 11.5 s", closed_in=1.5))
        self.assertFalse(passed)
        self.assertIn("closed or refused 1.5 s after the offence", text)

    def test_no_close_time_is_not_judged(self):
        self.assertTrue(self.judge(observed(), Outcome("30,000 answered"))[0])

    def test_a_dead_director_and_the_attacks_own_finding_both_fail(self):
        passed, text = self.judge(observed(alive=False), Outcome("50,000 accepted", failure="no limit"))
        self.assertFalse(passed)
        self.assertIn("director died", text)
        self.assertIn("no limit", text)

    def test_the_legitimate_weights_are_base_weight_times_health(self):
        self.assertEqual(legitimate_servers(), EXPECTED)


class ForgedMessageTests(SynchronousTestCase):
    def test_another_version_keeps_a_valid_credential_so_the_version_is_what_is_refused(self):
        forged = with_version(agent_init(), 2, SECRET)
        with self.assertRaises(UnsupportedVersion) as refused:
            decode(forged, Authenticator(SECRET))
        self.assertEqual(refused.exception.version, 2)

    def test_the_captured_init_is_an_agents_authenticated_init(self):
        init = decode(captured_agent_init(), Authenticator(SECRET))
        self.assertIsInstance(init, Init)
        self.assertTrue(init.authenticate)


class SendQueueTests(SynchronousTestCase):
    TABLE = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:0CBE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1567 1\n"
        "   1: 0100007F:0CBE 0201007F:9C40 01 00030D40:00000000 01:00000014 00000000     0        0 0 4\n"
        "   2: 0201007F:9C40 0100007F:0CBE 01 00000000:0001F400 00:00000000 00000000     0        0 0 2\n"
    )

    def test_the_directors_send_queue_is_read_from_its_socket_to_the_peer(self):
        # 127.0.0.1:3262 -> 127.0.1.2:40000, 0x30D40 bytes unacknowledged; the peer's own line is not it.
        self.assertEqual(director_send_queue(self.TABLE, 3262, ("127.0.1.2", 40000)), 200_000)

    def test_no_socket_to_that_peer_is_none(self):
        self.assertIsNone(director_send_queue(self.TABLE, 3262, ("127.0.1.2", 40001)))
