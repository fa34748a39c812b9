"""
NECP's messages: one frozen dataclass per opcode, each knowing how to build
its payload and read one back, and the error reply any of them may get.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, Self, Union

from lvsfeedback.necp.units import (
    Answer,
    ExceptionRule,
    InstalledException,
    Query,
    RawUnit,
    Service,
    Unit,
    check_unit_count,
    pack_units,
    unpack_units,
)
from lvsfeedback.necp.wire import (
    MAX_SEQUENCE,
    MAX_U32,
    UNIT,
    UNIT_SIZE,
    Flag,
    NECPError,
    Opcode,
    check_range,
)

INIT_AUTHENTICATE = 0x1  # INIT data0 bit: authenticate every message on this connection
INIT_ANSWERS_CAPACITY = 0x2  # INIT data0 bit (project extension): answers CAPACITY_QUERY


# Messages. Each class knows its opcode, how to build its payload, and how to
# read one back. request_id is picked by the requester and echoed in replies.


@dataclass(frozen=True, slots=True, kw_only=True)
class Noop:
    """NOOP: ignored by the receiver."""

    request_id: int = 0
    opcode: ClassVar[int] = Opcode.NOOP

    def payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Noop:
        return cls(request_id=request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Init:
    """
    INIT: the SE opens a session, optionally asking for authentication, and
    says whether it answers capacity queries (project extension). Other
    data0 bits are ignored.
    """

    request_id: int = 0
    authenticate: bool = False
    receive_sequence: int = 0  # when authenticating: the first sequence number the SE accepts
    answers_capacity: bool = False
    opcode: ClassVar[int] = Opcode.INIT

    def payload(self) -> bytes:
        sequence = check_range(self.receive_sequence, MAX_SEQUENCE, "receive sequence number")
        flags = INIT_AUTHENTICATE if self.authenticate else 0
        if self.answers_capacity:
            flags |= INIT_ANSWERS_CAPACITY
        return UNIT.pack(flags, sequence >> 32, sequence & MAX_U32, 0, 0, 0, 0, 0)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Init:
        data = _single_unit(payload, "INIT")
        authenticate = bool(data[0] & INIT_AUTHENTICATE)
        sequence = (data[1] << 32 | data[2]) if authenticate else 0
        return cls(
            request_id=request_id,
            authenticate=authenticate,
            receive_sequence=sequence,
            answers_capacity=bool(data[0] & INIT_ANSWERS_CAPACITY),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InitAck:
    """INIT_ACK: the NE accepts the session; when authenticating, says what it accepts."""

    request_id: int = 0
    receive_sequence: int = 0
    opcode: ClassVar[int] = Opcode.INIT_ACK

    def payload(self) -> bytes:
        sequence = check_range(self.receive_sequence, MAX_SEQUENCE, "receive sequence number")
        return UNIT.pack(sequence >> 32, sequence & MAX_U32, 0, 0, 0, 0, 0, 0)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> InitAck:
        data = _single_unit(payload, "INIT_ACK")
        return cls(request_id=request_id, receive_sequence=data[0] << 32 | data[1])


def _single_unit(payload: bytes, name: str) -> tuple[int, ...]:
    if len(payload) != UNIT_SIZE:
        raise NECPError(f"{name} must carry exactly one unit, not {len(payload) // UNIT_SIZE}")
    return UNIT.unpack(payload)


def _no_units(payload: bytes, name: str) -> None:
    if payload:
        raise NECPError(f"{name} must carry no payload, got {len(payload) // UNIT_SIZE} units")


@dataclass(frozen=True, slots=True, kw_only=True)
class Keepalive:
    """
    KEEPALIVE: liveness, and the NE's health queries (one per service).

    C{packed}, when given, is the queries' bytes (each as L{pack_unit}
    makes it): a sender asking the same questions round after round packs
    them once.
    """

    request_id: int = 0
    queries: tuple[Query, ...] = ()
    packed: bytes | None = field(default=None, compare=False, repr=False)
    opcode: ClassVar[int] = Opcode.KEEPALIVE

    def payload(self) -> bytes:
        if self.packed is None:
            return pack_units(self.queries)
        check_unit_count(len(self.queries))
        return self.packed

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Keepalive:
        return cls(request_id=request_id, queries=unpack_units(payload, Query.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepaliveAck:
    """KEEPALIVE_ACK: one answer per query, in the queries' order."""

    request_id: int = 0
    answers: tuple[Answer, ...] = ()
    opcode: ClassVar[int] = Opcode.KEEPALIVE_ACK

    def payload(self) -> bytes:
        return pack_units(self.answers)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> KeepaliveAck:
        return cls(request_id=request_id, answers=unpack_units(payload, Answer.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """START: the SE is ready for new flows of these services."""

    request_id: int = 0
    services: tuple[Service, ...] = ()
    opcode: ClassVar[int] = Opcode.START

    def payload(self) -> bytes:
        return pack_units(self.services)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Start:
        return cls(request_id=request_id, services=unpack_units(payload, Service.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """STOP: send the SE no new flows of these services."""

    request_id: int = 0
    services: tuple[Service, ...] = ()
    opcode: ClassVar[int] = Opcode.STOP

    def payload(self) -> bytes:
        return pack_units(self.services)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Stop:
        return cls(request_id=request_id, services=unpack_units(payload, Service.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionAdd:
    """EXCEPTION_ADD: install (or refresh) these exceptions."""

    request_id: int = 0
    rules: tuple[ExceptionRule, ...] = ()
    opcode: ClassVar[int] = Opcode.EXCEPTION_ADD

    def payload(self) -> bytes:
        return pack_units(self.rules)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionAdd:
        return cls(request_id=request_id, rules=unpack_units(payload, ExceptionRule.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionDel:
    """EXCEPTION_DEL: remove these exceptions (the sender's own)."""

    request_id: int = 0
    rules: tuple[ExceptionRule, ...] = ()
    opcode: ClassVar[int] = Opcode.EXCEPTION_DEL

    def payload(self) -> bytes:
        return pack_units(self.rules)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionDel:
        return cls(request_id=request_id, rules=unpack_units(payload, ExceptionRule.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionReset:
    """EXCEPTION_RESET: remove all of the sender's exceptions."""

    request_id: int = 0
    opcode: ClassVar[int] = Opcode.EXCEPTION_RESET

    def payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionReset:
        _no_units(payload, "EXCEPTION_RESET")
        return cls(request_id=request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionQuery:
    """EXCEPTION_QUERY: which exceptions match this filter (zero fields match anything)."""

    request_id: int = 0
    filter: InstalledException = InstalledException()
    opcode: ClassVar[int] = Opcode.EXCEPTION_QUERY

    def payload(self) -> bytes:
        return UNIT.pack(*self.filter.fields())

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionQuery:
        data = _single_unit(payload, "EXCEPTION_QUERY")
        return cls(request_id=request_id, filter=InstalledException.from_fields(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionResp:
    """
    EXCEPTION_RESP: the exceptions matching an EXCEPTION_QUERY.

    C{packed}, when given, is the entries' bytes as L{pack_unit} makes
    them: a sender that keeps its entries packed does not pack them again
    for every answer.
    """

    request_id: int = 0
    entries: tuple[InstalledException, ...] = ()
    packed: bytes | None = field(default=None, compare=False, repr=False)
    opcode: ClassVar[int] = Opcode.EXCEPTION_RESP

    def payload(self) -> bytes:
        if self.packed is None:
            return pack_units(self.entries)
        check_unit_count(len(self.entries))
        return self.packed

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionResp:
        entries = unpack_units(payload, InstalledException.from_fields)
        return cls(request_id=request_id, entries=entries)


class _EmptyAck:
    """A successful reply that carries no payload."""

    __slots__ = ()
    opcode: ClassVar[int]

    def payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Self:
        _no_units(payload, Opcode(cls.opcode).name)
        return cls(request_id=request_id)  # type: ignore[call-arg]  # each subclass is a dataclass with it


@dataclass(frozen=True, slots=True, kw_only=True)
class StartAck(_EmptyAck):
    """START_ACK: every service in the START was accepted."""

    request_id: int = 0
    opcode: ClassVar[int] = Opcode.START_ACK


@dataclass(frozen=True, slots=True, kw_only=True)
class StopAck(_EmptyAck):
    """STOP_ACK: every service in the STOP was stopped."""

    request_id: int = 0
    opcode: ClassVar[int] = Opcode.STOP_ACK


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionAddAck(_EmptyAck):
    """EXCEPTION_ADD_ACK: every exception was installed or refreshed."""

    request_id: int = 0
    opcode: ClassVar[int] = Opcode.EXCEPTION_ADD_ACK


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionDelAck(_EmptyAck):
    """EXCEPTION_DEL_ACK: every exception was removed."""

    request_id: int = 0
    opcode: ClassVar[int] = Opcode.EXCEPTION_DEL_ACK


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionResetAck(_EmptyAck):
    """EXCEPTION_RESET_ACK: all of the sender's exceptions are gone."""

    request_id: int = 0
    opcode: ClassVar[int] = Opcode.EXCEPTION_RESET_ACK

# What the units of an error reply mean, by the reply's opcode: copies of the
# request's units that failed.
_ERROR_UNIT_TYPES: dict[int, Callable[[tuple[int, ...]], Unit]] = {
    Opcode.KEEPALIVE_ACK: Query.from_fields,
    Opcode.START_ACK: Service.from_fields,
    Opcode.STOP_ACK: Service.from_fields,
    Opcode.EXCEPTION_ADD_ACK: ExceptionRule.from_fields,
    Opcode.EXCEPTION_DEL_ACK: ExceptionRule.from_fields,
    Opcode.EXCEPTION_RESP: InstalledException.from_fields,
}

ERROR_REASONS = Flag.VERSION_MISMATCH | Flag.AUTH_REQUIRED | Flag.BAD_SEQUENCE


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """
    A reply with the error flag: the request (or its C{units}) failed.

    C{flags} holds the error bit plus any reason bits (version mismatch,
    authentication required, bad sequence number). C{units} are copies of the
    request's units that failed, typed by C{opcode} (e.g. L{Service} for
    START_ACK, L{Query} for KEEPALIVE_ACK).
    """

    opcode: int
    request_id: int = 0
    flags: int = Flag.ERROR
    units: tuple[Unit, ...] = ()

    def payload(self) -> bytes:
        return pack_units(self.units)

    @classmethod
    def from_header(cls, opcode: int, request_id: int, flags: int, payload: bytes) -> ErrorReply:
        unit_type = _ERROR_UNIT_TYPES.get(opcode, RawUnit.from_fields)
        return cls(
            opcode=opcode,
            request_id=request_id,
            flags=Flag.ERROR | (flags & ERROR_REASONS),
            units=unpack_units(payload, unit_type),
        )


Message = Union[
    Noop,
    Init,
    InitAck,
    Keepalive,
    KeepaliveAck,
    Start,
    StartAck,
    Stop,
    StopAck,
    ExceptionAdd,
    ExceptionAddAck,
    ExceptionDel,
    ExceptionDelAck,
    ExceptionReset,
    ExceptionResetAck,
    ExceptionQuery,
    ExceptionResp,
    ErrorReply,
]

class _MessageType(Protocol):
    """A message class that reads itself from a request id and a payload: all but ErrorReply."""

    opcode: ClassVar[int]

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Message: ...


MESSAGE_TYPES: dict[int, type[_MessageType]] = {
    kind.opcode: kind
    for kind in (
        Noop,
        Init,
        InitAck,
        Keepalive,
        KeepaliveAck,
        Start,
        StartAck,
        Stop,
        StopAck,
        ExceptionAdd,
        ExceptionAddAck,
        ExceptionDel,
        ExceptionDelAck,
        ExceptionReset,
        ExceptionResetAck,
        ExceptionQuery,
        ExceptionResp,
    )
}
