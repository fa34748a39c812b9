"""
The NECP session's state (lvsfeedback.necp.session), driven directly: no
transport, no reactor, the time passed by hand.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.necp import session as necp_session
from lvsfeedback.necp.messages import KeepaliveAck, Start, StartAck
from lvsfeedback.necp.session import MAX_ATTEMPTS, RequestFailed, SessionState
from lvsfeedback.necp.units import Query
from lvsfeedback.necp.wire import NECPError

HEALTH = (Query.health(6, 80),)


def state(now=100.0, **settings):
    settings.setdefault("handshake_timeout", 10.0)
    settings.setdefault("request_timeout", 18.0)
    settings.setdefault("max_unanswered", 3)
    return SessionState(now=now, **settings)


def outcome(pending):
    """What C{pending}'s Deferred fired with so far: a reply, a failure's exception, or None."""
    deferred = pending.deferred
    if not deferred.called:
        return None
    deferred.addErrback(lambda failure: failure.value)  # handled: the exception is the result
    return deferred.result


class HandshakeTests(SynchronousTestCase):
    def test_the_handshake_is_due_its_timeout_after_the_connection(self):
        session = state(now=100.0)
        self.assertEqual(session.next_deadline(), 110.0)
        self.assertFalse(session.handshake_overdue(109.9))
        self.assertTrue(session.handshake_overdue(110.0))

    def test_an_established_session_has_no_handshake_deadline(self):
        session = state()
        session.establish()
        self.assertTrue(session.established)
        self.assertIsNone(session.next_deadline())
        self.assertFalse(session.handshake_overdue(1e9))


class RequestTests(SynchronousTestCase):
    def test_requests_get_fresh_ids_in_turn_skipping_those_still_waiting(self):
        session = state()
        first = session.request(Start(), now=100.0)
        second = session.request(Start(), now=100.0)
        self.assertEqual((first.message.request_id, second.message.request_id), (1, 2))
        self.assertIs(session.waiting(2), second)
        session.answered(first, StartAck(request_id=1))
        self.assertIsNone(session.waiting(1))

    def test_request_ids_wrap_around_past_those_in_use(self):
        session = state()
        session._last_request_id = 0xFFFE
        waiting = session.request(Start(), now=0.0)
        self.assertEqual(waiting.message.request_id, 0xFFFF)
        self.assertEqual(session.request(Start(), now=0.0).message.request_id, 1)

    def test_no_request_when_every_id_is_waiting(self):
        session = state()
        for _ in range(0xFFFF):
            session.request(Start(), now=0.0, timed=False)
        self.assertRaises(NECPError, session.request, Start(), now=0.0)

    def test_an_answer_fires_the_request_with_its_reply(self):
        session = state()
        pending = session.request(Start(), now=100.0)
        reply = StartAck(request_id=pending.message.request_id)
        session.answered(pending, reply)
        self.assertEqual(outcome(pending), reply)
        self.assertEqual(session.requests_waiting, 0)

    def test_a_timed_request_fails_at_its_deadline_and_not_before(self):
        session = state()
        session.establish()
        pending = session.request(Start(), now=100.0)
        self.assertEqual(session.next_deadline(), 118.0)
        session.expire(117.5)
        self.assertIsNone(outcome(pending))
        session.expire(118.0)
        failure = outcome(pending)
        self.assertIsInstance(failure, RequestFailed)
        self.assertEqual(str(failure), "no reply to START within 18.0 s")
        self.assertIsNone(session.next_deadline())

    def test_an_untimed_request_has_no_deadline(self):
        session = state()
        session.establish()
        pending = session.request(Start(), now=100.0, timed=False)
        self.assertIsNone(session.next_deadline())
        session.expire(1e9)
        self.assertIsNone(outcome(pending))

    def test_the_next_deadline_is_the_earliest(self):
        session = state(now=100.0)
        session.request(Start(), now=80.0)  # due at 98
        self.assertEqual(session.next_deadline(), 98.0)

    def test_a_request_is_sent_at_most_max_attempts_times(self):
        session = state()
        pending = session.request(Start(), now=100.0)
        retries = [session.retry(pending) for _ in range(MAX_ATTEMPTS)]
        self.assertEqual(retries, [True] * (MAX_ATTEMPTS - 1) + [False])
        self.assertEqual(pending.attempts, MAX_ATTEMPTS)

    def test_a_failed_request_fails_with_its_reason(self):
        session = state()
        pending = session.request(Start(), now=100.0)
        session.failed(pending, "gave up")
        self.assertEqual(str(outcome(pending)), "gave up")
        self.assertIsNone(session.waiting(pending.message.request_id))

    def test_the_end_fails_every_request_and_says_whether_it_was_established(self):
        session = state()
        session.establish()
        requests = [session.request(Start(), now=100.0), session.keepalive(HEALTH)]
        lost = ConnectionLost("gone")
        self.assertTrue(session.end(lost))
        self.assertEqual([outcome(pending) for pending in requests], [lost, lost])
        self.assertFalse(session.established)
        self.assertFalse(state().end(lost))


class KeepaliveTests(SynchronousTestCase):
    def setUp(self):
        self.session = state()
        self.session.establish()

    def answer(self, pending):
        self.session.answered(pending, KeepaliveAck(request_id=pending.message.request_id))

    def test_the_peer_is_dead_after_max_unanswered_keepalives_in_a_row(self):
        for _ in range(3):
            self.assertFalse(self.session.peer_dead)
            self.session.keepalive(HEALTH)
        self.assertTrue(self.session.peer_dead)
        self.assertEqual(self.session.keepalives_unanswered, 3)

    def test_one_answer_resets_the_count(self):
        first = self.session.keepalive(HEALTH)
        self.session.keepalive(HEALTH)
        self.answer(first)
        self.assertEqual(self.session.keepalives_unanswered, 0)
        self.assertEqual(outcome(first), KeepaliveAck(request_id=first.message.request_id))

    def test_keepalives_sent_before_the_last_one_answered_fail_with_the_next(self):
        skipped, answered_later = self.session.keepalive(HEALTH), self.session.keepalive(HEALTH)
        self.answer(answered_later)
        self.session.keepalive(HEALTH)
        self.assertEqual(str(outcome(skipped)), "peer answered a later KEEPALIVE")
        self.assertEqual(self.session.requests_waiting, 1)

    def test_keepalives_wait_for_their_reply_for_as_long_as_the_session_lasts(self):
        pending = self.session.keepalive(HEALTH)
        self.assertIsNone(pending.deadline)
        self.session.expire(1e9)
        self.assertIsNone(outcome(pending))

    def test_the_same_queries_are_packed_once(self):
        packed = []
        pack_unit = necp_session.pack_unit
        self.patch(necp_session, "pack_unit", lambda unit: packed.append(unit) or pack_unit(unit))
        first, second = self.session.keepalive(HEALTH), self.session.keepalive(HEALTH)
        self.assertEqual(packed, list(HEALTH))
        self.assertEqual(first.message.payload(), second.message.payload())
        self.assertEqual((first.message.queries, second.message.request_id), (HEALTH, 2))

    def test_the_peers_keepalive_is_heard_once(self):
        self.assertFalse(self.session.peer_heard())
        self.session.peer_kept_alive()
        self.assertTrue(self.session.peer_heard())
        self.assertFalse(self.session.peer_heard())
