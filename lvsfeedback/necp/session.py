"""
The state of one NECP session, either end, apart from the connection that
carries it: whether the handshake is done and by when it must be, request
ids and the requests waiting for their replies (with their deadlines and
retries), and the keepalives the peer has left unanswered.

L{SessionState} does no I/O and holds no timer: the caller passes the time, sends
what it is handed, and asks when the next deadline is. Each request's
L{Deferred} fires from here, with its reply or its failure; a keepalive's
reply goes to the callable it was sent with. What to do about
a reply (match it to its request, refuse it, send the request again, give
up on it) is decided here too, and handed back as actions (L{Refuse},
L{SendAgain}, L{Close}) for the caller to carry out in order.
L{lvsfeedback.necp.protocol.NECPProtocol} drives one per connection; a test
or a simulator can drive one with no transport.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from lvsfeedback.necp.counters import UNEXPECTED, refusal_reason
from lvsfeedback.necp.framing import RequestTemplate
from lvsfeedback.necp.messages import ErrorReply, Keepalive, Message
from lvsfeedback.necp.units import Query, pack_unit
from lvsfeedback.necp.wire import (
    REPLY_OPCODE,
    REPLY_OPCODES,
    Flag,
    MessageRefused,
    NECPError,
    Opcode,
    UnsupportedVersion,
    describe_flags,
    opcode_name,
)

MAX_ATTEMPTS = 3  # a request whose reply cannot be verified is sent at most this often


class RequestFailed(Exception):
    """A request got no usable reply: none in time, or none that could be verified."""


class Waiting:
    """
    A request waiting for its reply: its request id and opcode, its
    attempts and its deadline (None: it waits as long as the session
    lasts). Subclasses hold the message and say who learns the outcome.
    """

    __slots__ = ("request_id", "opcode", "attempts", "retryable", "deadline")

    message: Message

    def __init__(self, request_id: int, opcode: int, retryable: bool, deadline: float | None):
        self.request_id = request_id
        self.opcode = opcode
        self.attempts = 1
        self.retryable = retryable
        self.deadline = deadline

    @property
    def name(self) -> str:
        return opcode_name(self.opcode)

    def succeed(self, reply: Message) -> None:
        raise NotImplementedError

    def fail(self, reason: Failure | BaseException) -> None:
        raise NotImplementedError


class Pending(Waiting):
    """
    A request waiting for its reply.

    @ivar deferred: fires with the reply (which may be an L{ErrorReply}), or
        fails with L{RequestFailed} or the reason the session ended.
    """

    __slots__ = ("message", "deferred")

    def __init__(self, message: Message, retryable: bool, deadline: float | None):
        super().__init__(message.request_id, message.opcode, retryable, deadline)
        self.message = message
        self.deferred: Deferred[Message] = Deferred()

    def succeed(self, reply: Message) -> None:
        self.deferred.callback(reply)

    def fail(self, reason: Failure | BaseException) -> None:
        self.deferred.errback(reason)


class KeepalivePending(Waiting):
    """
    A KEEPALIVE waiting for its reply, which goes to C{on_reply}; its
    failure (skipped by a later answer, or the session's end) to no one:
    silence counts as keepalives unanswered (L{SessionState.peer_dead}).
    No Deferred, and its message made only when it is needed (to be signed,
    or sent again): one per session per round, thousands a round on the
    director, each cost as much as the rest of asking.

    @ivar number: 1 for the session's first keepalive, and so on.
    """

    __slots__ = ("queries", "packed", "number", "on_reply")

    def __init__(
        self, request_id: int, queries: tuple[Query, ...], packed: bytes, number: int,
        on_reply: Callable[[Message], object],
    ):
        super().__init__(request_id, Opcode.KEEPALIVE, True, None)
        self.queries = queries
        self.packed = packed  # the queries' bytes
        self.number = number
        self.on_reply = on_reply

    @property
    def message(self) -> Keepalive:  # type: ignore[override]
        return Keepalive(request_id=self.request_id, queries=self.queries, packed=self.packed)

    def succeed(self, reply: Message) -> None:
        self.on_reply(reply)

    def fail(self, reason: Failure | BaseException) -> None:
        pass


@dataclasses.dataclass(frozen=True, slots=True)
class Refuse:
    """Count a refusal of what the peer sent, for C{reason} (a class of L{counters}); the session goes on."""

    reason: str
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send C{message}."""

    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class SendAgain:
    """Send C{pending}'s request again (its attempts already counted), for C{reason}."""

    pending: Waiting
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """Close the connection for C{reason}; if C{refused}, as a refusal of the peer for that reason."""

    reason: str
    refused: str | None = None


Action = Refuse | Send | SendAgain | Close


class SessionState:
    """
    One NECP session's state, either end.

    @param now: when the connection was made: the handshake is due
        C{handshake_timeout} seconds later.
    @param request_timeout: seconds a timed request waits for its reply.
    @param max_unanswered: keepalives in a row left unanswered before the
        peer is dead.
    @ivar established: the handshake is done.
    """

    def __init__(self, *, now: float, handshake_timeout: float, request_timeout: float, max_unanswered: int):
        self.established = False
        self.handshake_deadline = now + handshake_timeout
        self.request_timeout = request_timeout
        self.max_unanswered = max_unanswered
        self._pending: dict[int, Waiting] = {}
        self._last_request_id = 0
        self._unanswered = 0
        self._keepalives_sent = 0
        self._last_keepalive_answered = 0  # its number
        self._peer_kept_alive = False
        self._asked: tuple[Query, ...] = ()  # the queries of the last keepalive sent...
        self._asked_packed = b""  # ...their bytes...
        self._asked_unsigned: RequestTemplate | None = None  # ...and the whole message's, unsigned, made when first asked

    # The handshake.

    def establish(self) -> None:
        self.established = True

    def handshake_overdue(self, now: float) -> bool:
        return not self.established and now >= self.handshake_deadline

    # Requests.

    def request(self, message: Message, *, now: float, retryable: bool = True, timed: bool = True) -> Pending:
        """
        C{message} with a fresh request id, to be sent, waiting for its reply;
        unless C{timed}, for as long as the session lasts.
        """
        message = dataclasses.replace(message, request_id=self._allocate_request_id())
        pending = self._pending[message.request_id] = Pending(
            message, retryable, now + self.request_timeout if timed else None
        )
        return pending

    def _allocate_request_id(self) -> int:
        candidate = self._last_request_id
        for _ in range(0xFFFF):
            candidate = candidate % 0xFFFF + 1
            if candidate not in self._pending:
                self._last_request_id = candidate
                return candidate
        raise NECPError("every request id is waiting for a reply")

    def waiting(self, request_id: int) -> Waiting | None:
        """The request C{request_id} answers, if one waits."""
        return self._pending.get(request_id)

    @property
    def requests_waiting(self) -> int:
        return len(self._pending)

    def answered(self, pending: Waiting, reply: Message) -> None:
        if type(pending) is KeepalivePending:
            self._unanswered = 0
            self._last_keepalive_answered = max(self._last_keepalive_answered, pending.number)
        del self._pending[pending.request_id]
        pending.succeed(reply)

    def failed(self, pending: Waiting, reason: str) -> None:
        del self._pending[pending.request_id]
        pending.fail(RequestFailed(reason))

    def retry(self, pending: Waiting) -> bool:
        """Whether C{pending} may be sent again (counted), up to L{MAX_ATTEMPTS} times in all."""
        if pending.attempts >= MAX_ATTEMPTS:
            return False
        pending.attempts += 1
        return True

    def reply(self, reply: Message) -> tuple[Action, ...]:
        """
        What to do about C{reply}, which the peer sent: the request it
        answers fires with it (an error reply too), unless the peer refused
        that request for its credential or sequence number, and it may be
        sent again (see L{retry}).
        """
        pending = self._pending.get(reply.request_id)
        if pending is None:
            detail = f"ignored {opcode_name(reply.opcode)} for request {reply.request_id}: nothing waits for it"
            return (Refuse(UNEXPECTED, detail),)
        if reply.opcode != REPLY_OPCODE[pending.opcode]:
            return (Close(f"{opcode_name(reply.opcode)} does not answer {pending.name}", refused=UNEXPECTED),)
        if type(reply) is ErrorReply:
            if reply.flags & Flag.VERSION_MISMATCH:
                return (Close(f"peer does not speak this NECP version (refused {pending.name})"),)
            if reply.flags & (Flag.AUTH_REQUIRED | Flag.BAD_SEQUENCE) and pending.retryable:
                return (self._again(pending, f"peer refused it: {describe_flags(reply.flags)}"),)
        self.answered(pending, reply)
        return ()

    def refused(self, refusal: MessageRefused) -> tuple[Action, ...]:
        """
        What to do about a message the codec refused: a request is answered
        with an error reply, and the session goes on unless it was still to
        be established; a reply is asked for again (see L{reply_refused}).
        """
        if isinstance(refusal, UnsupportedVersion) and refusal.flags & Flag.VERSION_MISMATCH:
            return (Close(f"peer speaks only NECP version {refusal.version}"),)
        if refusal.flags & Flag.ERROR or refusal.opcode in REPLY_OPCODES:
            return self.reply_refused(refusal)
        reason = refusal_reason(refusal)
        if refusal.opcode == Opcode.NOOP:
            return (Refuse(reason, f"{opcode_name(refusal.opcode)}: {refusal.reason}"),)
        error = ErrorReply(
            opcode=REPLY_OPCODE.get(refusal.opcode, refusal.opcode),
            request_id=refusal.request_id,
            flags=refusal.reply_flags,
        )
        if not self.established:
            return (Send(error), Close(f"handshake failed: {opcode_name(refusal.opcode)}: {refusal.reason}", refused=reason))
        return (Send(error), Refuse(reason, f"{opcode_name(refusal.opcode)}: {refusal.reason}"))

    def reply_refused(self, refusal: MessageRefused) -> tuple[Action, ...]:
        """What to do about a reply that cannot be accepted: ask again, as often as L{retry} allows."""
        pending = self.waiting(refusal.request_id)
        reason = f"{refusal.reason} (peer flags {describe_flags(refusal.flags)})"
        counted = refusal_reason(refusal)
        if pending is None or REPLY_OPCODE[pending.opcode] != refusal.opcode:
            return (Refuse(counted, f"ignored unverifiable {opcode_name(refusal.opcode)}: {reason}"),)
        if not pending.retryable:
            return (Close(f"reply to {pending.name} refused: {reason}", refused=counted),)
        return (
            Refuse(counted, f"cannot verify its {opcode_name(refusal.opcode)}: {reason}"),
            self._again(pending, f"cannot verify the reply: {reason}"),
        )

    def _again(self, pending: Waiting, reason: str) -> SendAgain | Close:
        """C{pending} sent again for C{reason}, if L{retry} allows; otherwise it fails, and so does the session."""
        if not self.retry(pending):
            why = f"gave up on {pending.name} after {pending.attempts} attempts: {reason}"
            self.failed(pending, why)
            return Close(why)
        return SendAgain(pending, reason)

    def next_deadline(self) -> float | None:
        """When something is next due: the handshake, or a timed request's reply."""
        deadlines = [pending.deadline for pending in self._pending.values() if pending.deadline is not None]
        if not self.established:
            deadlines.append(self.handshake_deadline)
        return min(deadlines, default=None)

    def expire(self, now: float) -> None:
        """Fail every timed request whose reply is overdue at C{now}."""
        for pending in [p for p in self._pending.values() if p.deadline is not None and p.deadline <= now]:
            self.failed(pending, f"no reply to {pending.name} within {self.request_timeout} s")

    def end(self, reason: Failure | BaseException) -> bool:
        """The session is over: every request fails with C{reason}. Whether it had been established."""
        pending, self._pending = self._pending, {}
        for request in pending.values():
            request.fail(reason)
        was_established, self.established = self.established, False
        return was_established

    # Keepalives.

    @property
    def keepalives_unanswered(self) -> int:
        """This end's keepalives sent since the peer last answered one."""
        return self._unanswered

    @property
    def peer_dead(self) -> bool:
        """The peer left too many keepalives in a row unanswered."""
        return self._unanswered >= self.max_unanswered

    def peer_kept_alive(self) -> None:
        """The peer sent a KEEPALIVE."""
        self._peer_kept_alive = True

    def peer_heard(self) -> bool:
        """Whether the peer sent a KEEPALIVE since this was last asked."""
        heard, self._peer_kept_alive = self._peer_kept_alive, False
        return heard

    def unsigned_keepalive(self, pending: KeepalivePending) -> bytes:
        """
        The unsigned bytes of C{pending}'s message, the last keepalive
        L{keepalive} made: the same as L{encode}'s, from a template of its queries.
        """
        if self._asked_unsigned is None:
            self._asked_unsigned = RequestTemplate(pending.message)
        return self._asked_unsigned.encode(pending.request_id)

    def keepalive(self, queries: tuple[Query, ...], on_reply: Callable[[Message], object]) -> KeepalivePending:
        """
        A KEEPALIVE carrying C{queries}, to be sent, waiting for its reply as
        long as the session lasts, which goes to C{on_reply}: unanswered
        keepalives end it (see L{peer_dead}). Those sent before the last one
        answered were skipped (a peer reads and answers in order): they are
        given up now. Those sent after it still wait: a busy peer may answer
        a round late.
        """
        if self._pending:  # usually nothing waits: the last one was answered
            last_answered = self._last_keepalive_answered
            skipped = [
                pending for pending in self._pending.values()
                if type(pending) is KeepalivePending and pending.number < last_answered
            ]
            for pending in skipped:
                self.failed(pending, f"peer answered a later {pending.name}")
        self._unanswered += 1
        self._keepalives_sent += 1
        if queries is not self._asked:
            # Most ends ask the same tuple every time: pack it once.
            self._asked, self._asked_packed = queries, b"".join([pack_unit(query) for query in queries])
            self._asked_unsigned = None
        request_id = self._allocate_request_id()
        pending = self._pending[request_id] = KeepalivePending(
            request_id, queries, self._asked_packed, self._keepalives_sent, on_reply
        )
        return pending
