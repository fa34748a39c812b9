"""
The NECP session's state (lvsfeedback.necp.session), driven directly: no
transport, no reactor, the time passed by hand.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.necp import session as necp_session
from lvsfeedback.necp.counters import BAD_CREDENTIAL, BAD_SEQUENCE, MALFORMED, UNEXPECTED
from lvsfeedback.necp.framing import encode
from lvsfeedback.necp.messages import ErrorReply, KeepaliveAck, Start, StartAck, StopAck
from lvsfeedback.necp.session import (
    MAX_ATTEMPTS,
    Close,
    Refuse,
    RequestFailed,
    Send,
    SendAgain,
    SessionState,
)
from lvsfeedback.necp.units import Query
from lvsfeedback.necp.wire import (
    AuthenticationFailed,
    BadSequenceNumber,
    Flag,
    NECPError,
    Opcode,
    ReservedOpcode,
    UnsupportedVersion,
)

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
        replies = []
        request = session.request(Start(), now=100.0)
        session.keepalive(HEALTH, replies.append)
        lost = ConnectionLost("gone")
        self.assertTrue(session.end(lost))
        self.assertIs(outcome(request), lost)
        self.assertEqual((session.requests_waiting, replies), (0, []), "the keepalive is given up, unanswered")
        self.assertFalse(session.established)
        self.assertFalse(state().end(lost))


class KeepaliveTests(SynchronousTestCase):
    def setUp(self):
        self.session = state()
        self.session.establish()
        self.replies = []

    def keepalive(self):
        return self.session.keepalive(HEALTH, self.replies.append)

    def answer(self, pending):
        self.session.answered(pending, KeepaliveAck(request_id=pending.message.request_id))

    def test_the_peer_is_dead_after_max_unanswered_keepalives_in_a_row(self):
        for _ in range(3):
            self.assertFalse(self.session.peer_dead)
            self.keepalive()
        self.assertTrue(self.session.peer_dead)
        self.assertEqual(self.session.keepalives_unanswered, 3)

    def test_a_keepalives_unsigned_bytes_are_the_encoders_when_the_questions_change_or_not(self):
        for queries in (HEALTH, HEALTH, (*HEALTH, Query.health(17, 53)), HEALTH, ()):
            pending = self.session.keepalive(queries, self.replies.append)
            self.assertEqual(self.session.unsigned_keepalive(pending), encode(pending.message))

    def test_one_answer_resets_the_count(self):
        first = self.keepalive()
        self.keepalive()
        self.answer(first)
        self.assertEqual(self.session.keepalives_unanswered, 0)
        self.assertEqual(self.replies, [KeepaliveAck(request_id=first.message.request_id)])

    def test_keepalives_sent_before_the_last_one_answered_fail_with_the_next(self):
        skipped, answered_later = self.keepalive(), self.keepalive()
        self.answer(answered_later)
        self.keepalive()
        self.assertIsNone(self.session.waiting(skipped.message.request_id))
        self.assertEqual(self.session.requests_waiting, 1)
        self.assertEqual(self.session.reply(KeepaliveAck(request_id=skipped.message.request_id))[0].reason, UNEXPECTED)
        self.assertEqual(len(self.replies), 1, "only the later one's answer")

    def test_keepalives_sent_after_the_last_one_answered_still_wait_for_their_answer(self):
        # A peer busy for longer than a round answers each question late:
        # the answer to the second arrives after the third is sent.
        first, second = self.keepalive(), self.keepalive()
        self.answer(first)
        self.keepalive()
        self.assertIs(self.session.waiting(second.message.request_id), second, "still waiting")
        self.assertEqual(self.session.reply(KeepaliveAck(request_id=second.message.request_id)), ())
        self.assertEqual(self.replies[-1], KeepaliveAck(request_id=second.message.request_id))

    def test_keepalives_wait_for_their_reply_for_as_long_as_the_session_lasts(self):
        pending = self.keepalive()
        self.assertIsNone(pending.deadline)
        self.session.expire(1e9)
        self.assertIs(self.session.waiting(pending.message.request_id), pending)

    def test_the_same_queries_are_packed_once(self):
        packed = []
        pack_unit = necp_session.pack_unit
        self.patch(necp_session, "pack_unit", lambda unit: packed.append(unit) or pack_unit(unit))
        first, second = self.keepalive(), self.keepalive()
        self.assertEqual(packed, list(HEALTH))
        self.assertEqual(first.message.payload(), second.message.payload())
        self.assertEqual((first.message.queries, second.message.request_id), (HEALTH, 2))

    def test_the_peers_keepalive_is_heard_once(self):
        self.assertFalse(self.session.peer_heard())
        self.session.peer_kept_alive()
        self.assertTrue(self.session.peer_heard())
        self.assertFalse(self.session.peer_heard())


class ReplyTests(SynchronousTestCase):
    """What the session decides about each reply the peer sends."""

    def setUp(self):
        self.session = state()
        self.session.establish()
        self.start = self.session.request(Start(), now=100.0)
        self.request_id = self.start.message.request_id

    def test_a_reply_fires_its_request_and_asks_nothing_more(self):
        reply = StartAck(request_id=self.request_id)
        self.assertEqual(self.session.reply(reply), ())
        self.assertEqual(outcome(self.start), reply)

    def test_an_error_reply_is_the_requests_answer(self):
        reply = ErrorReply(opcode=Opcode.START_ACK, request_id=self.request_id)
        self.assertEqual(self.session.reply(reply), ())
        self.assertEqual(outcome(self.start), reply)

    def test_a_reply_nothing_waits_for_is_refused_and_the_session_goes_on(self):
        actions = self.session.reply(StartAck(request_id=self.request_id + 1))
        self.assertEqual(
            actions, (Refuse(UNEXPECTED, f"ignored START_ACK for request {self.request_id + 1}: nothing waits for it"),)
        )
        self.assertIsNone(outcome(self.start))

    def test_a_reply_of_the_wrong_kind_closes_the_session_as_a_refusal(self):
        actions = self.session.reply(StopAck(request_id=self.request_id))
        self.assertEqual(actions, (Close("STOP_ACK does not answer START", refused=UNEXPECTED),))
        self.assertIs(self.session.waiting(self.request_id), self.start)

    def test_a_version_mismatch_closes_the_session(self):
        reply = ErrorReply(opcode=Opcode.START_ACK, request_id=self.request_id, flags=Flag.ERROR | Flag.VERSION_MISMATCH)
        self.assertEqual(
            self.session.reply(reply), (Close("peer does not speak this NECP version (refused START)"),)
        )

    def test_a_request_refused_for_its_credential_is_sent_again_until_max_attempts(self):
        reply = ErrorReply(opcode=Opcode.START_ACK, request_id=self.request_id, flags=Flag.ERROR | Flag.AUTH_REQUIRED)
        again = SendAgain(self.start, "peer refused it: ERROR|AUTH_REQUIRED")
        for attempt in range(2, MAX_ATTEMPTS + 1):
            self.assertEqual(self.session.reply(reply), (again,))
            self.assertEqual(self.start.attempts, attempt)
        self.assertIsNone(outcome(self.start))
        why = f"gave up on START after {MAX_ATTEMPTS} attempts: peer refused it: ERROR|AUTH_REQUIRED"
        self.assertEqual(self.session.reply(reply), (Close(why),))
        failure = outcome(self.start)
        self.assertIsInstance(failure, RequestFailed)
        self.assertEqual(str(failure), why)
        self.assertEqual(self.session.requests_waiting, 0)

    def test_a_request_that_may_not_be_sent_again_takes_the_refusal_as_its_answer(self):
        once = self.session.request(Start(), now=100.0, retryable=False)
        reply = ErrorReply(opcode=Opcode.START_ACK, request_id=once.message.request_id, flags=Flag.ERROR | Flag.BAD_SEQUENCE)
        self.assertEqual(self.session.reply(reply), ())
        self.assertEqual(outcome(once), reply)


class RefusedTests(SynchronousTestCase):
    """What the session decides about each message the codec refused."""

    def setUp(self):
        self.session = state()
        self.session.establish()

    def test_a_refused_request_is_answered_with_an_error_and_counted(self):
        refusal = AuthenticationFailed("wrong credential", Opcode.START, 7, 0)
        error = ErrorReply(opcode=Opcode.START_ACK, request_id=7, flags=Flag.ERROR | Flag.AUTH_REQUIRED)
        self.assertEqual(
            self.session.refused(refusal), (Send(error), Refuse(BAD_CREDENTIAL, "START: wrong credential"))
        )

    def test_a_refused_request_before_the_handshake_closes_the_session(self):
        refusal = BadSequenceNumber("replayed", Opcode.INIT, 1, 0)
        error = ErrorReply(opcode=Opcode.INIT_ACK, request_id=1, flags=Flag.ERROR | Flag.BAD_SEQUENCE)
        self.assertEqual(
            state().refused(refusal), (Send(error), Close("handshake failed: INIT: replayed", refused=BAD_SEQUENCE))
        )

    def test_a_refused_noop_is_counted_but_not_answered(self):
        refusal = AuthenticationFailed("wrong credential", Opcode.NOOP, 0, 0)
        self.assertEqual(self.session.refused(refusal), (Refuse(BAD_CREDENTIAL, "NOOP: wrong credential"),))

    def test_a_reserved_opcode_is_answered_with_its_own_opcode(self):
        refusal = ReservedOpcode("reserved", 0x7F, 3, 0)
        [send, refuse] = self.session.refused(refusal)
        self.assertEqual(send, Send(ErrorReply(opcode=0x7F, request_id=3)))
        self.assertEqual(refuse.reason, MALFORMED)

    def test_a_peer_refusing_this_version_closes_the_session(self):
        refusal = UnsupportedVersion("version 2", Opcode.START_ACK, 1, Flag.ERROR | Flag.VERSION_MISMATCH, 2)
        self.assertEqual(self.session.refused(refusal), (Close("peer speaks only NECP version 2"),))

    def test_an_unverifiable_reply_is_counted_and_its_request_sent_again(self):
        start = self.session.request(Start(), now=100.0)
        refusal = AuthenticationFailed("wrong credential", Opcode.START_ACK, start.message.request_id, 0)
        reason = "wrong credential (peer flags none)"
        self.assertEqual(
            self.session.refused(refusal),
            (
                Refuse(BAD_CREDENTIAL, f"cannot verify its START_ACK: {reason}"),
                SendAgain(start, f"cannot verify the reply: {reason}"),
            ),
        )
        self.assertEqual(start.attempts, 2)

    def test_an_unverifiable_reply_to_a_request_sent_once_only_closes_the_session(self):
        once = self.session.request(Start(), now=100.0, retryable=False)
        refusal = BadSequenceNumber("replayed", Opcode.START_ACK, once.message.request_id, Flag.ERROR)
        self.assertEqual(
            self.session.refused(refusal),
            (Close("reply to START refused: replayed (peer flags ERROR)", refused=BAD_SEQUENCE),),
        )

    def test_an_unverifiable_reply_nothing_waits_for_is_counted_and_ignored(self):
        refusal = AuthenticationFailed("wrong credential", Opcode.START_ACK, 9, 0)
        self.assertEqual(
            self.session.refused(refusal),
            (Refuse(BAD_CREDENTIAL, "ignored unverifiable START_ACK: wrong credential (peer flags none)"),),
        )
