"""
What both NECP endpoints share: framing, requests and replies, keepalives.

L{NECPProtocol} reads messages through the codec's L{Decoder}, answers
requests, carries out what its L{SessionState} decides about replies and
refused messages (each request gets a L{Deferred}, each keepalive's answer
goes to L{keepalive_answered}), sends a KEEPALIVE
every interval plus a random jitter once the session is up (unless the
peer's own keepalives or questions arrive meanwhile), and closes the
connection when the peer leaves too many keepalives in a row unanswered,
when the handshake does not finish in time, or when the input is
malformed. A refused message (bad credential, replay, other version,
reserved opcode) is answered with an error reply and the session goes on.
Every message handled and every refusal is counted in the factory's
L{NECPCounters}, which logs each refusal class once per peer per minute.

A peer gets bounded work and bounded output: at most C{messages_per_turn}
messages are handled per reactor turn (the rest on the next turns, reading
paused meanwhile, so that other connections are served in between); the
protocol is a streaming producer on its transport, so while the peer does
not read what it is sent, nothing more is read from it or handled for it;
the kernel's send buffer for the connection holds at most
C{max_queued_output} bytes (Linux would grow it to 4 MB); and a connection
that queues more than that again past Twisted's own buffer is aborted. The
session's state (its handshake, requests, retries and keepalives) is a
L{SessionState} without I/O, which the protocol drives and keeps the timers
of.

L{NECPFactory} holds the settings every connection of one endpoint shares,
including the clock and the random source, so tests drive all timers with
a L{twisted.internet.task.Clock}. The NE and SE sides subclass both.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Protocol as Structural
from typing import cast

from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lvsfeedback.addresses import describe_address
from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.counters import LIMIT, UNEXPECTED, refusal_reason
from lvsfeedback.necp.factory import NECPFactory
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
from lvsfeedback.necp.session import Action, Refuse, RequestFailed, Send, SendAgain, SessionState
from lvsfeedback.necp.units import Query, Unit
from lvsfeedback.necp.wire import (
    REPLY_OPCODE,
    REPLY_OPCODES,
    MessageRefused,
    NECPError,
    Opcode,
    opcode_name,
)


def cap_send_buffer(transport: object, size: int) -> None:
    """
    Hold the kernel's send buffer of C{transport}'s socket, if it has one,
    to C{size} bytes: a peer that does not read leaves no more queued there.
    Half is asked, for Linux doubles it for its own bookkeeping.
    """
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size // 2)


def plain_tcp_socket(transport: object) -> socket.socket | None:
    """C{transport}'s socket if it is Twisted's own TCP connection without TLS: bytes sent there go out as they are."""
    if isinstance(transport, tcp.Connection) and not transport.TLS:
        return transport.getHandle()
    return None


class _Link(Structural):
    """What the protocol uses of its transport: a TCP connection that is also a consumer and a producer."""

    def getPeer(self) -> object: ...
    def write(self, data: bytes) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...


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

    @ivar state: the session's L{SessionState}: its handshake, requests
        and keepalives, which this drives.
    @ivar authenticator: the connection's credential state, or None.
    @ivar signing: outgoing messages carry a credential.
    """

    log = Logger()
    factory: NECPFactory

    authenticator: Authenticator | None = None
    signing = False

    def connectionMade(self) -> None:
        self._link = cast(_Link, self.transport)
        address = self._link.getPeer()
        self.peer = describe_address(address)
        # Refusals are logged per host: a peer's connections share its minute.
        self.peer_host = str(getattr(address, "host", self.peer))
        self.authenticator = self.make_authenticator()
        self._decoder = Decoder(self.authenticator)
        factory = self.factory
        self.state = SessionState(
            now=factory.clock.seconds(),
            handshake_timeout=factory.handshake_timeout,
            request_timeout=factory.request_timeout,
            max_unanswered=factory.max_unanswered,
        )
        self._keepalive_call: IDelayedCall | None = None
        self._closing: str | None = None
        self._deadline_call: IDelayedCall | None = None  # the state's next deadline...
        self._deadline: float | None = None  # ...which is this
        self._watch_deadline()
        self._backlog_call: IDelayedCall | None = None  # the next slice of buffered messages
        self._output_paused = False  # the peer is not reading what we send
        self._queued_while_paused = 0
        self._reading = True
        self._link.registerProducer(self, True)
        cap_send_buffer(self.transport, self.factory.max_queued_output)
        # Written to directly until the kernel's buffer is once full (see _write).
        self._socket = plain_tcp_socket(self.transport)

    @property
    def established(self) -> bool:
        """The handshake is done; keepalives are running."""
        return self.state.established

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

    def keepalive_timer_needed(self) -> bool:
        """
        Whether this end needs a timer for its next keepalive; not when
        something else sends them in time (the director's rounds of
        questions): thousands of sessions then make and cancel no timer
        each round. An end that says no calls L{resume_keepalives} when
        that changes.
        """
        return True

    def keepalive_needed(self) -> bool:
        """
        Whether the regular keepalive now due must go out: not when the peer
        sent a KEEPALIVE since the last one was due, for that shows it alive
        and the connection working (project choice: NECP has both ends send
        them regardless). An end whose keepalives carry questions says so.
        """
        return not self.state.peer_heard()

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
        units: tuple[Unit, ...]
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
        if self.signing and self.authenticator is not None:
            data = self.authenticator.encode(message, self.factory.clock.seconds())
        else:
            data = encode(message)
        self._send_bytes(data)

    def _send_bytes(self, data: bytes) -> None:
        """One encoded message, unless the peer has stopped reading too long."""
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
        self._write(data)

    def _write(self, data: bytes) -> None:
        """
        C{data} straight to the socket while the kernel takes all of it:
        Twisted's write costs a reactor turn and two epoll_ctl calls per
        message (with 1,000 connections, about 10 us a message more than a
        send). What the kernel does not take, and everything after it, goes
        through the transport, in order, under its flow control; so does an
        error.
        """
        if self._socket is not None:
            try:
                sent = self._socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            self._socket = None
            data = data[sent:]
        self._link.write(data)

    def send_request(self, message: Message, *, retryable: bool = True, timed: bool = True) -> Deferred[Message]:
        """
        Send C{message} with a fresh request id. The L{Deferred} fires with
        the reply (which may be an L{ErrorReply}), or fails with
        L{RequestFailed} or the reason the connection was lost. Unless
        C{timed}, it waits for its reply as long as the connection lasts.
        """
        if self._closing is not None:
            return fail(ConnectionDone(f"connection closing: {self._closing}"))
        now = self.factory.clock.seconds()
        pending = self.state.request(message, now=now, retryable=retryable, timed=timed)
        if timed:
            self._watch_deadline()
        self.send_message(pending.message)
        return pending.deferred

    def establish(self) -> None:
        """The handshake is done: start keepalives and tell the subclass."""
        self.state.establish()
        self._watch_deadline()
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
        self._link.unregisterProducer()
        if abort:
            self._link.abortConnection()
        else:
            self._link.loseConnection()

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
                self._act(self.state.refused(refusal))
                continue
            except NECPError as error:
                self.close(f"malformed NECP input: {error}", abort=True, refused=refusal_reason(error))
                return
            if message is None:
                if not self._reading:  # paused while a backlog was handled
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
            self._link.resumeProducing()
        else:
            self._link.pauseProducing()

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
            actions = self.state.reply(message)
            if actions:
                self._act(actions)
            return
        if not self.established and kind is not Init:
            self.close(
                f"{opcode_name(message.opcode)} before the session was initialised", refused=UNEXPECTED
            )
            return
        if kind is Keepalive:
            self.state.peer_kept_alive()
        reply = getattr(self, _HANDLERS[kind])(message)
        if reply is not None:
            self.send_message(dataclasses.replace(reply, request_id=message.request_id))

    def _act(self, actions: tuple[Action, ...]) -> None:
        """Carry out, in order, what the session state decided about a reply or a refused message."""
        for action in actions:
            if isinstance(action, Refuse):
                self.refuse(action.reason, action.detail)
            elif isinstance(action, Send):
                self.send_message(action.message)
            elif isinstance(action, SendAgain):
                request = action.pending
                self.log.info("sending {request} to {peer} again: {reason}", request=request.name, peer=self.peer,
                              reason=action.reason)
                self.send_message(request.message)
            else:
                self.close(action.reason, refused=action.refused)

    # Timers.

    def send_keepalive(self, queries: tuple[Query, ...] = ()) -> None:
        """
        A KEEPALIVE now, carrying C{queries}. It is this end's keepalive: it
        counts toward declaring a silent peer dead, and the next regular
        one is due a whole interval later.
        """
        if self._closing is not None:
            return
        state = self.state
        if state.peer_dead:
            self.close(f"peer dead: {state.keepalives_unanswered} keepalives in a row unanswered", abort=True)
            return
        pending = state.keepalive(queries, self._keepalive_replied)
        if self.signing and self.authenticator is not None:
            self.send_message(pending.message)
        else:
            # Thousands a round on the director, the same but for the request id.
            self._send_bytes(state.unsigned_keepalive(pending))
        self._schedule_keepalive()

    def _keepalive_replied(self, reply: Message) -> None:
        # What the subclass raises is logged; the session goes on.
        try:
            self.keepalive_answered(cast("KeepaliveAck | ErrorReply", reply))
        except Exception:
            self.log.failure("handling {peer}'s answer to a keepalive failed", peer=self.peer)

    def resume_keepalives(self) -> None:
        """Keepalives on this end's own timer again, if the session has none."""
        if self.established and self._closing is None and self._keepalive_call is None:
            self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        if not self.keepalive_timer_needed():
            if self._keepalive_call is not None:  # on the director, round after round, there is none
                self._cancel(self._keepalive_call)
                self._keepalive_call = None
            return
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

    def request_abandoned(self, failure: Failure) -> None:
        """Errback for internal requests: a lost connection or timeout is already logged."""
        if not isinstance(failure.value, _EXPECTED_LOSS):
            self.log.failure("NECP request to {peer} failed", failure, peer=self.peer)

    def _watch_deadline(self) -> None:
        """A timer for the state's next deadline, if it has one and none is set for it."""
        deadline = self.state.next_deadline()
        if deadline == self._deadline:
            return
        self._cancel(self._deadline_call)
        self._deadline, self._deadline_call = deadline, None
        if deadline is not None:
            delay = max(0.0, deadline - self.factory.clock.seconds())
            self._deadline_call = self.factory.clock.callLater(delay, self._deadline_passed, deadline)

    def _deadline_passed(self, deadline: float) -> None:
        # What was due by the deadline this timer was set for is due now.
        self._deadline_call = self._deadline = None
        if self.state.handshake_overdue(deadline):
            self.close(f"no session within {self.factory.handshake_timeout} s of connecting", refused=LIMIT)
            return
        self.state.expire(deadline)
        if self._closing is None:
            self._watch_deadline()

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _stop_timers(self) -> None:
        self._cancel(self._deadline_call)
        self._cancel(self._keepalive_call)
        self._cancel(self._backlog_call)
        self._deadline_call = self._keepalive_call = self._backlog_call = None
        self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timers()
        if self._closing is None:
            self._closing = f"connection lost: {reason.getErrorMessage()}"
        was_established = self.state.end(reason)
        self.session_ended(self._closing, was_established)
