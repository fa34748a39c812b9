"""
What both NECP endpoints share: framing, requests and replies, keepalives.

L{NECPProtocol} reads messages through the codec's L{Decoder}, matches
replies to requests by request id (each request gets a L{Deferred}), sends a
KEEPALIVE every interval plus a random jitter once the session is up (unless
the peer's own keepalives or questions arrive meanwhile), and
closes the connection when the peer leaves too many keepalives in a row
unanswered, when the handshake does not finish in time, or when the input
is malformed. A refused message (bad credential, replay, other version,
reserved opcode) is answered with an error reply and the session goes on.
Every message handled and every refusal is counted in the factory's
L{NECPCounters}, which logs each refusal class once per peer per minute.

A peer gets bounded work and bounded output: at most C{messages_per_turn}
messages are handled per reactor turn (the rest on the next turns, reading
paused meanwhile, so that other connections are served in between); the
protocol is a streaming producer on its transport, so while the peer does
not read what it is sent, nothing more is read from it or handled for it;
and a connection that queues more than C{max_queued_output} bytes past that
point is aborted.

L{NECPFactory} holds the settings every connection of one endpoint shares,
including the clock and the random source, so tests drive all timers with
a L{twisted.internet.task.Clock}. The NE and SE sides subclass both.
"""

from __future__ import annotations

import dataclasses
import random as _random
from typing import Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.counters import (
    BAD_CREDENTIAL,
    BAD_SEQUENCE,
    LIMIT,
    MALFORMED,
    UNEXPECTED,
    NECPCounters,
)
from lvsfeedback.necp.framing import Decoder, encode
from lvsfeedback.necp.messages import (
    ErrorReply,
    ExceptionAdd,
    ExceptionDel,
    ExceptionQuery,
    ExceptionReset,
    Init,
    Keepalive,
    KeepaliveAck,
    Message,
    Noop,
    Start,
    Stop,
)
from lvsfeedback.necp.units import Query
from lvsfeedback.necp.wire import (
    REPLY_OPCODE,
    REPLY_OPCODES,
    AuthenticationFailed,
    BadSequenceNumber,
    Flag,
    MessageRefused,
    MessageTooLarge,
    NECPError,
    Opcode,
    UnsupportedVersion,
    opcode_name,
)

KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_JITTER = 1.0
MAX_UNANSWERED_KEEPALIVES = 3
HANDSHAKE_TIMEOUT = 10.0
MESSAGES_PER_TURN = 64
MAX_QUEUED_OUTPUT = 256 * 1024
MAX_ATTEMPTS = 3  # a request whose reply cannot be verified is sent at most this often


class RequestFailed(Exception):
    """A request got no usable reply: none in time, or none that could be verified."""


def describe_flags(flags: int) -> str:
    """Header flags as readable names, e.g. C{'ERROR|AUTH_REQUIRED'}."""
    names = [flag.name for flag in Flag if flags & flag]
    return "|".join(names) if names else "none"


def refusal_reason(error: NECPError) -> str:
    """The counted reason for refusing what the codec refused with C{error}."""
    if isinstance(error, AuthenticationFailed):
        return BAD_CREDENTIAL
    if isinstance(error, BadSequenceNumber):
        return BAD_SEQUENCE
    if isinstance(error, MessageTooLarge):
        return LIMIT
    return MALFORMED


def describe_address(address: object) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NECPFactory(Factory):
    """
    Settings shared by every connection of one NECP endpoint.

    @param clock: runs every timer (keepalives, timeouts).
    @param secret: the shared secret for HMAC-SHA1 credentials, or None.
    @param random: returns a float in [0, 1); jitters keepalives.
    @param keepalive_interval: seconds between keepalives, before jitter.
    @param keepalive_jitter: at most this many seconds are added to each interval.
    @param max_unanswered: keepalives in a row left unanswered before the
        peer is declared dead.
    @param handshake_timeout: seconds from connection to INIT_ACK.
    @param request_timeout: seconds a request other than a keepalive waits
        for its reply; by default as long as it takes to declare a silent
        peer dead.
    @param messages_per_turn: messages of one connection handled before
        the reactor serves the others.
    @param max_queued_output: bytes a connection may write after its
        transport's buffer filled up (the peer stopped reading) before it
        is aborted.
    @ivar counters: the L{NECPCounters} of every connection of this endpoint.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        secret: bytes | None = None,
        random: Callable[[], float] = _random.random,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_jitter: float = KEEPALIVE_JITTER,
        max_unanswered: int = MAX_UNANSWERED_KEEPALIVES,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        request_timeout: float | None = None,
        messages_per_turn: int = MESSAGES_PER_TURN,
        max_queued_output: int = MAX_QUEUED_OUTPUT,
    ):
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise ValueError("the shared secret must be non-empty bytes")
        if keepalive_interval <= 0 or keepalive_jitter < 0 or handshake_timeout <= 0:
            raise ValueError("keepalive interval and handshake timeout must be positive")
        if max_unanswered < 1:
            raise ValueError("max_unanswered must be at least 1")
        if messages_per_turn < 1 or max_queued_output < 1:
            raise ValueError("messages_per_turn and max_queued_output must be at least 1")
        self.clock = clock
        self.secret = secret
        self.random = random
        self.keepalive_interval = keepalive_interval
        self.keepalive_jitter = keepalive_jitter
        self.max_unanswered = max_unanswered
        self.handshake_timeout = handshake_timeout
        if request_timeout is None:
            request_timeout = max_unanswered * (keepalive_interval + keepalive_jitter)
        self.request_timeout = request_timeout
        self.messages_per_turn = messages_per_turn
        self.max_queued_output = max_queued_output
        self.counters = NECPCounters(clock)

    def stopFactory(self) -> None:
        self.counters.flush()


class _Pending:
    """A request waiting for its reply."""

    __slots__ = ("message", "deferred", "attempts", "retryable", "timeout")

    def __init__(self, message: Message, retryable: bool, timeout: IDelayedCall | None):
        self.message = message
        self.deferred: Deferred = Deferred()
        self.attempts = 1
        self.retryable = retryable
        self.timeout = timeout

    @property
    def name(self) -> str:
        return opcode_name(self.message.opcode)


_EXPECTED_LOSS = (ConnectionDone, ConnectionLost, RequestFailed)

# Which method answers each request.
_HANDLERS = {
    Init: "init_received",
    Keepalive: "keepalive_received",
    Start: "start_received",
    Stop: "stop_received",
    ExceptionAdd: "exception_add_received",
    ExceptionDel: "exception_del_received",
    ExceptionReset: "exception_reset_received",
    ExceptionQuery: "exception_query_received",
}


@implementer(IPushProducer)
class NECPProtocol(Protocol):
    """
    One NECP connection, either end. Subclasses decide what the handshake
    is and answer requests by overriding the C{*_received} methods, each of
    which returns the reply to send (its request id is filled in) or None.

    @ivar established: the handshake is done; keepalives are running.
    @ivar authenticator: the connection's credential state, or None.
    @ivar signing: outgoing messages carry a credential.
    """

    log = Logger()
    factory: NECPFactory

    established = False
    authenticator: Authenticator | None = None
    signing = False

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = describe_address(address)
        # Refusals are logged per host: a peer's connections share its minute.
        self.peer_host = str(getattr(address, "host", self.peer))
        self.authenticator = self.make_authenticator()
        self._decoder = Decoder(self.authenticator)
        self._pending: dict[int, _Pending] = {}
        self._last_request_id = 0
        self._unanswered = 0
        self._peer_kept_alive = False
        self._keepalive_call: IDelayedCall | None = None
        self._closing: str | None = None
        self._handshake_call: IDelayedCall | None = self.factory.clock.callLater(
            self.factory.handshake_timeout, self._handshake_timed_out
        )
        self._backlog_call: IDelayedCall | None = None  # the next slice of buffered messages
        self._output_paused = False  # the peer is not reading what we send
        self._queued_while_paused = 0
        self._reading = True
        self.transport.registerProducer(self, True)

    # Hooks for the two ends.

    def make_authenticator(self) -> Authenticator | None:
        """The connection's credential state; None for no authentication."""
        return None

    def session_established(self) -> None:
        """The handshake finished."""

    def session_ended(self, reason: str, was_established: bool) -> None:
        """The connection is gone, for C{reason}."""

    def message_received(self, message: Message) -> None:
        """
        C{message} was read whole and accepted (verified, on an
        authenticated connection); it is acted on next, unless this closes
        the connection.
        """

    def keepalive_queries(self) -> tuple[Query, ...]:
        """What to ask in the next keepalive."""
        return ()

    def keepalive_answered(self, reply: KeepaliveAck | ErrorReply) -> None:
        """The peer answered one of our keepalives."""

    def keepalive_needed(self) -> bool:
        """
        Whether the regular keepalive now due must go out: not when the peer
        sent a KEEPALIVE since the last one was due, for that shows it alive
        and the connection working (project choice: NECP has both ends send
        them regardless). An end whose keepalives carry questions says so.
        """
        heard, self._peer_kept_alive = self._peer_kept_alive, False
        return not heard

    def init_received(self, request: Init) -> Message | None:
        self.close("unexpected INIT: this end does not accept sessions", refused=UNEXPECTED)
        return None

    def keepalive_received(self, request: Keepalive) -> Message | None:
        if request.queries:
            # This end has nothing to report: every query is one it cannot answer.
            return ErrorReply(opcode=Opcode.KEEPALIVE_ACK, units=request.queries)
        return KeepaliveAck()

    def start_received(self, request: Start) -> Message | None:
        return self.not_accepted(request)

    def stop_received(self, request: Stop) -> Message | None:
        return self.not_accepted(request)

    def exception_add_received(self, request: ExceptionAdd) -> Message | None:
        return self.not_accepted(request)

    def exception_del_received(self, request: ExceptionDel) -> Message | None:
        return self.not_accepted(request)

    def exception_reset_received(self, request: ExceptionReset) -> Message | None:
        return self.not_accepted(request)

    def exception_query_received(self, request: ExceptionQuery) -> Message | None:
        return self.not_accepted(request)

    def not_accepted(self, request: Message) -> ErrorReply:
        """An error reply for a request this end does not take, copying its units."""
        self.refuse(UNEXPECTED, f"{opcode_name(request.opcode)}, which this end does not accept")
        if isinstance(request, (Start, Stop)):
            units = request.services
        elif isinstance(request, (ExceptionAdd, ExceptionDel)):
            units = request.rules
        else:
            units = ()
        return ErrorReply(opcode=REPLY_OPCODE[request.opcode], units=units)

    # Sending.

    def send_message(self, message: Message) -> None:
        """Write one message, signed when the connection is authenticated."""
        if self._closing is not None:
            return
        if self.signing:
            data = self.authenticator.encode(message, self.factory.clock.seconds())
        else:
            data = encode(message)
        if self._output_paused:
            self._queued_while_paused += len(data)
            if self._queued_while_paused > self.factory.max_queued_output:
                self.close(
                    f"peer is not reading: over {self.factory.max_queued_output} bytes "
                    "queued beyond the transport's buffer",
                    abort=True,
                    refused=LIMIT,
                )
                return
        self.transport.write(data)

    def send_request(self, message: Message, *, retryable: bool = True, timed: bool = True) -> Deferred:
        """
        Send C{message} with a fresh request id. The L{Deferred} fires with
        the reply (which may be an L{ErrorReply}), or fails with
        L{RequestFailed} or the reason the connection was lost. Unless
        C{timed}, it waits for its reply as long as the connection lasts.
        """
        if self._closing is not None:
            return fail(ConnectionDone(f"connection closing: {self._closing}"))
        request_id = self._allocate_request_id()
        message = dataclasses.replace(message, request_id=request_id)
        timeout = (
            self.factory.clock.callLater(self.factory.request_timeout, self._request_timed_out, request_id)
            if timed
            else None
        )
        pending = self._pending[request_id] = _Pending(message, retryable, timeout)
        self.send_message(message)
        return pending.deferred

    def _allocate_request_id(self) -> int:
        candidate = self._last_request_id
        for _ in range(0xFFFF):
            candidate = candidate % 0xFFFF + 1
            if candidate not in self._pending:
                self._last_request_id = candidate
                return candidate
        raise NECPError("every request id is waiting for a reply")

    def establish(self) -> None:
        """The handshake is done: start keepalives and tell the subclass."""
        self.established = True
        self._cancel(self._handshake_call)
        self._handshake_call = None
        self._schedule_keepalive()
        self.session_established()

    def refuse(self, reason: str, detail: str) -> None:
        """Count a refusal of what the peer sent, for C{reason}; logged once per peer per minute."""
        self.factory.counters.refused(reason, self.peer_host, f"from {self.peer}: {detail}")

    def close(self, reason: str, *, abort: bool = False, refused: str | None = None) -> None:
        """
        Close the connection, logging C{reason}; C{abort} drops unsent data.
        A close that C{refused} the peer for that reason is counted and
        logged as a refusal (once per peer per minute) instead.
        """
        if self._closing is not None:
            return
        self._closing = reason
        if refused is None:
            self.log.warn("closing NECP connection with {peer}: {reason}", peer=self.peer, reason=reason)
        else:
            self.refuse(refused, f"closing the connection: {reason}")
        self._stop_timers()
        # A transport with a producer registered waits for it before closing.
        self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        if self._closing is not None:
            return
        try:
            self._decoder.feed(data)
        except NECPError as error:
            self.close(f"malformed NECP input: {error}", abort=True, refused=refusal_reason(error))
            return
        if self._backlog_call is None and not self._output_paused:
            self._handle_messages()

    def _handle_messages(self) -> None:
        """Handle buffered messages, at most C{messages_per_turn} of them this turn."""
        self._backlog_call = None
        counted = self.factory.counters.messages
        for _ in range(self.factory.messages_per_turn):
            if self._closing is not None or self._output_paused:
                return  # resumeProducing picks up the rest
            try:
                message = self._decoder.next_message()
            except MessageRefused as refusal:
                self._refused(refusal)
                continue
            except NECPError as error:
                self.close(f"malformed NECP input: {error}", abort=True, refused=refusal_reason(error))
                return
            if message is None:
                self._read(True)
                return
            counted[message.opcode] += 1
            self.message_received(message)
            if self._closing is None:
                self._dispatch(message)
        if self._closing is None and not self._output_paused:
            # More may be buffered: read no more until it is handled, and
            # let the reactor serve other connections first.
            self._read(False)
            self._backlog_call = self.factory.clock.callLater(0, self._handle_messages)

    def _read(self, wanted: bool) -> None:
        """Start or stop reading from the peer."""
        if wanted == self._reading or self._closing is not None:
            return
        self._reading = wanted
        if wanted:
            self.transport.resumeProducing()
        else:
            self.transport.pauseProducing()

    # IPushProducer: the transport pauses us while the peer does not read.

    def pauseProducing(self) -> None:
        self._output_paused = True
        self._cancel(self._backlog_call)
        self._backlog_call = None
        self._read(False)

    def resumeProducing(self) -> None:
        if not self._output_paused or self._closing is not None:
            return
        self._output_paused = False
        self._queued_while_paused = 0
        self._cancel(self._backlog_call)
        self._backlog_call = self.factory.clock.callLater(0, self._handle_messages)

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost follows."""

    def _dispatch(self, message: Message) -> None:
        kind = type(message)
        if kind is Noop:
            return
        if kind is ErrorReply or message.opcode in REPLY_OPCODES:
            self._reply_received(message)
            return
        if not self.established and kind is not Init:
            self.close(
                f"{opcode_name(message.opcode)} before the session was initialised", refused=UNEXPECTED
            )
            return
        if kind is Keepalive:
            self._peer_kept_alive = True
        reply = getattr(self, _HANDLERS[kind])(message)
        if reply is not None:
            self.send_message(dataclasses.replace(reply, request_id=message.request_id))

    def _reply_received(self, reply: Message) -> None:
        pending = self._pending.get(reply.request_id)
        if pending is None:
            self.refuse(
                UNEXPECTED,
                f"ignored {opcode_name(reply.opcode)} for request {reply.request_id}: nothing waits for it",
            )
            return
        if reply.opcode != REPLY_OPCODE[pending.message.opcode]:
            self.close(f"{opcode_name(reply.opcode)} does not answer {pending.name}", refused=UNEXPECTED)
            return
        if type(reply) is ErrorReply:
            if reply.flags & Flag.VERSION_MISMATCH:
                self.close(f"peer does not speak this NECP version (refused {pending.name})")
                return
            if reply.flags & (Flag.AUTH_REQUIRED | Flag.BAD_SEQUENCE) and pending.retryable:
                self._retry(pending, f"peer refused it: {describe_flags(reply.flags)}")
                return
        self._finish(pending).callback(reply)

    def _refused(self, refusal: MessageRefused) -> None:
        if isinstance(refusal, UnsupportedVersion) and refusal.flags & Flag.VERSION_MISMATCH:
            self.close(f"peer speaks only NECP version {refusal.version}")
            return
        if refusal.flags & Flag.ERROR or refusal.opcode in REPLY_OPCODES:
            self._reply_refused(refusal)
            return
        reason = refusal_reason(refusal)
        if refusal.opcode != Opcode.NOOP:
            self.send_message(
                ErrorReply(
                    opcode=REPLY_OPCODE.get(refusal.opcode, refusal.opcode),
                    request_id=refusal.request_id,
                    flags=refusal.reply_flags,
                )
            )
            if not self.established:
                why = f"handshake failed: {opcode_name(refusal.opcode)}: {refusal.reason}"
                self.close(why, refused=reason)
                return
        self.refuse(reason, f"{opcode_name(refusal.opcode)}: {refusal.reason}")

    def _reply_refused(self, refusal: MessageRefused) -> None:
        """A reply we cannot accept: ask again, up to L{MAX_ATTEMPTS} times in all."""
        pending = self._pending.get(refusal.request_id)
        reason = f"{refusal.reason} (peer flags {describe_flags(refusal.flags)})"
        counted = refusal_reason(refusal)
        if pending is None or REPLY_OPCODE[pending.message.opcode] != refusal.opcode:
            self.refuse(counted, f"ignored unverifiable {opcode_name(refusal.opcode)}: {reason}")
        elif not pending.retryable:
            self.close(f"reply to {pending.name} refused: {reason}", refused=counted)
        else:
            self.refuse(counted, f"cannot verify its {opcode_name(refusal.opcode)}: {reason}")
            self._retry(pending, f"cannot verify the reply: {reason}")

    def _retry(self, pending: _Pending, reason: str) -> None:
        if pending.attempts >= MAX_ATTEMPTS:
            why = f"gave up on {pending.name} after {pending.attempts} attempts: {reason}"
            self._finish(pending).errback(RequestFailed(why))
            self.close(why)
            return
        pending.attempts += 1
        self.log.info(
            "sending {request} to {peer} again: {reason}",
            request=pending.name,
            peer=self.peer,
            reason=reason,
        )
        self.send_message(pending.message)

    def _finish(self, pending: _Pending) -> Deferred:
        del self._pending[pending.message.request_id]
        self._cancel(pending.timeout)
        return pending.deferred

    # Timers.

    def send_keepalive(self, queries: tuple[Query, ...] = ()) -> None:
        """
        A KEEPALIVE now, carrying C{queries}. It is this end's keepalive: it
        counts toward declaring a silent peer dead, and the next regular
        one is due a whole interval later.
        """
        if self._closing is not None:
            return
        if self._unanswered >= self.factory.max_unanswered:
            self.close(f"peer dead: {self._unanswered} keepalives in a row unanswered", abort=True)
            return
        # Those sent before the last one answered were skipped: a peer reads
        # and answers in order, so no answer to them is coming.
        waiting = [pending for pending in self._pending.values() if type(pending.message) is Keepalive]
        for skipped in waiting[: len(waiting) - self._unanswered]:
            self._finish(skipped).errback(RequestFailed(f"peer answered a later {skipped.name}"))
        self._unanswered += 1
        # Untimed: unanswered keepalives end the session, which fails them all.
        sent = self.send_request(Keepalive(queries=queries), timed=False)
        sent.addCallbacks(self._keepalive_replied, self.request_abandoned)
        self._schedule_keepalive()

    @property
    def keepalives_unanswered(self) -> int:
        """This end's keepalives sent since the peer last answered one."""
        return self._unanswered

    def _schedule_keepalive(self) -> None:
        factory = self.factory
        delay = factory.keepalive_interval + factory.random() * factory.keepalive_jitter
        # A new call rather than reset(): a postponed call still wakes the
        # reactor at its first time; a cancelled one is soon purged unseen.
        self._cancel(self._keepalive_call)
        self._keepalive_call = factory.clock.callLater(delay, self._keepalive_due)

    def _keepalive_due(self) -> None:
        self._keepalive_call = None
        if self.keepalive_needed():
            self.send_keepalive(self.keepalive_queries())
        else:
            self._schedule_keepalive()

    def _keepalive_replied(self, reply: KeepaliveAck | ErrorReply) -> None:
        self._unanswered = 0
        self.keepalive_answered(reply)

    def request_abandoned(self, failure: Failure) -> None:
        """Errback for internal requests: a lost connection or timeout is already logged."""
        if not failure.check(*_EXPECTED_LOSS):
            self.log.failure("NECP request to {peer} failed", failure, peer=self.peer)

    def _request_timed_out(self, request_id: int) -> None:
        pending = self._pending.pop(request_id)
        pending.deferred.errback(
            RequestFailed(f"no reply to {pending.name} within {self.factory.request_timeout} s")
        )

    def _handshake_timed_out(self) -> None:
        self._handshake_call = None
        self.close(f"no session within {self.factory.handshake_timeout} s of connecting", refused=LIMIT)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _stop_timers(self) -> None:
        self._cancel(self._handshake_call)
        self._cancel(self._keepalive_call)
        self._cancel(self._backlog_call)
        self._handshake_call = self._keepalive_call = self._backlog_call = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timers()
        if self._closing is None:
            self._closing = f"connection lost: {reason.getErrorMessage()}"
        pending, self._pending = self._pending, {}
        for request in pending.values():
            self._cancel(request.timeout)
            request.deferred.errback(reason)
        was_established, self.established = self.established, False
        self.session_ended(self._closing, was_established)
