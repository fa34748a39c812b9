"""
NECP (draft-cerpa-necp-02) on the wire: messages to bytes and back.

Sans-IO: this module knows bytes, messages and the HMAC-SHA1 credential, and
nothing about transports, reactors or clocks (the one time-dependent value,
the high half of a sequence number, is computed from a time the caller
passes in). See /work/shared/necp.md for the byte layout this implements.

Reading: L{Decoder} takes chunks of any size and returns whole messages.
Everything wrong with the input raises L{NECPError}. Its subclass
L{MessageRefused} means one whole message was read and set aside but the
stream is still in step, so the caller may answer with an error reply and
carry on; any other L{NECPError} means the stream cannot be trusted and the
connection must be closed.

Writing: L{encode} turns a message into bytes; L{Authenticator.encode} does
the same with a sequence number and a credential.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from ipaddress import IPv4Address
from typing import Callable, ClassVar, NamedTuple, Union

PROTOCOL_ID = 0x414A
VERSION = 1
HEADER = struct.Struct(">HHBBHQI")
HEADER_SIZE = HEADER.size
UNIT = struct.Struct(">8I")
UNIT_SIZE = UNIT.size
CREDENTIAL_SIZE = 20  # HMAC-SHA1
MAX_PAYLOAD = 64 * 1024  # project choice: refuse longer payloads from the header alone
MAX_UNITS = MAX_PAYLOAD // UNIT_SIZE
MAX_SEQUENCE = 2**64 - 1
MAX_MESSAGE_SIZE = HEADER_SIZE + MAX_PAYLOAD + CREDENTIAL_SIZE

_U32 = 0xFFFFFFFF


class Flag(IntFlag):
    """Header flag bits."""

    BASIC_PAYLOAD = 0x0001
    CREDENTIAL = 0x0002
    ERROR = 0x0004
    VERSION_MISMATCH = 0x0008
    AUTH_REQUIRED = 0x0010
    BAD_SEQUENCE = 0x0020


# The same bits as plain ints for the decoder: an int & an IntFlag member
# goes through enum's Python-level operator, several times per message.
_CREDENTIAL_BIT = int(Flag.CREDENTIAL)
_BASIC_PAYLOAD_BIT = int(Flag.BASIC_PAYLOAD)
_ERROR_BIT = int(Flag.ERROR)


class Opcode(IntEnum):
    """Message types; every other value in 0..255 is reserved."""

    NOOP = 0x00
    INIT = 0x01
    INIT_ACK = 0x02
    KEEPALIVE = 0x03
    KEEPALIVE_ACK = 0x04
    START = 0x05
    START_ACK = 0x06
    STOP = 0x07
    STOP_ACK = 0x08
    EXCEPTION_ADD = 0x20
    EXCEPTION_ADD_ACK = 0x21
    EXCEPTION_DEL = 0x22
    EXCEPTION_DEL_ACK = 0x23
    EXCEPTION_RESET = 0x24
    EXCEPTION_RESET_ACK = 0x25
    EXCEPTION_QUERY = 0x26
    EXCEPTION_RESP = 0x27


REQUEST_OPCODES = frozenset(
    {
        Opcode.INIT,
        Opcode.KEEPALIVE,
        Opcode.START,
        Opcode.STOP,
        Opcode.EXCEPTION_ADD,
        Opcode.EXCEPTION_DEL,
        Opcode.EXCEPTION_RESET,
        Opcode.EXCEPTION_QUERY,
    }
)
# Every reply's opcode is its request's plus one (EXCEPTION_QUERY -> EXCEPTION_RESP too).
REPLY_OPCODE = {request: Opcode(request + 1) for request in REQUEST_OPCODES}
REPLY_OPCODES = frozenset(REPLY_OPCODE.values())

HEALTH_QUERY = 0x1  # the only query type defined: health index 0..100
MAX_HEALTH = 100
# Project extension, outside the draft's numbers: the capacity of a service,
# in milli-CPUs (0: unknown). Asked only of agents whose INIT announces
# INIT_ANSWERS_CAPACITY, so a draft-only peer never sees it.
CAPACITY_QUERY = 0x100
# More CPUs than any machine Linux runs on (NR_CPUS is at most 8192).
MAX_CAPACITY = 10_000_000

# Forwarding methods in START/STOP units, with the IPVS names (ipvs.model) they map to.
FORWARD_LAYER2 = 1
FORWARD_GRE = 2
FORWARD_LAYER3 = 3
IPVS_FORWARDING = {FORWARD_LAYER2: "dr", FORWARD_GRE: "tun", FORWARD_LAYER3: "nat"}

# Exception scopes.
SCOPE_NE_DECIDES = 0
SCOPE_NOT_TO_ME = 1
SCOPE_NOT_TO_FARM = 2

INIT_AUTHENTICATE = 0x1  # INIT data0 bit: authenticate every message on this connection
INIT_ANSWERS_CAPACITY = 0x2  # INIT data0 bit (project extension): answers CAPACITY_QUERY

ANY_ADDRESS = IPv4Address(0)


class NECPError(Exception):
    """
    Input that is not acceptable NECP, or a value that cannot be encoded.

    The message says what was wrong. Unless it is a L{MessageRefused}, the
    byte stream it came from can no longer be trusted.
    """


class MessageTooLarge(NECPError):
    """A header announcing a payload over the limit: refused before it is read."""


class MessageRefused(NECPError):
    """
    One whole message was read and refused; the stream is still in step.

    Carries what an error reply needs: the refused message's opcode, request
    id and flags, and C{reply_flags} to answer with.
    """

    reply_flags: ClassVar[int] = Flag.ERROR

    def __init__(self, reason: str, opcode: int, request_id: int, flags: int):
        super().__init__(reason)
        self.reason = reason
        self.opcode = opcode
        self.request_id = request_id
        self.flags = flags


class UnsupportedVersion(MessageRefused):
    """A message of a protocol version other than ours."""

    reply_flags = Flag.ERROR | Flag.VERSION_MISMATCH

    def __init__(self, reason: str, opcode: int, request_id: int, flags: int, version: int):
        super().__init__(reason, opcode, request_id, flags)
        self.version = version


class AuthenticationFailed(MessageRefused):
    """A credential that is missing, unexpected or wrong."""

    reply_flags = Flag.ERROR | Flag.AUTH_REQUIRED


class BadSequenceNumber(MessageRefused):
    """A sequence number not above the last valid one: a replay or reordering."""

    reply_flags = Flag.ERROR | Flag.BAD_SEQUENCE


class ReservedOpcode(MessageRefused):
    """An opcode the draft reserves."""


# Units: one 32-byte unit of eight u32 fields each. Decoding keeps only the
# bits the draft defines (e.g. the low 8 bits of a protocol field); encoding
# refuses values that do not fit.


def _check(value: int, maximum: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise NECPError(f"{what} {value!r} outside 0..{maximum}")
    return value


def _address(value: IPv4Address, what: str) -> int:
    if not isinstance(value, IPv4Address):
        raise NECPError(f"{what} {value!r} is not an IPv4 address")
    return int(value)


class Query(NamedTuple):
    """One KEEPALIVE query: data0 type, data1 IP protocol, data2 port."""

    type: int
    protocol: int
    port: int

    @classmethod
    def health(cls, protocol: int, port: int) -> Query:
        return cls(HEALTH_QUERY, protocol, port)

    @classmethod
    def capacity(cls, protocol: int, port: int) -> Query:
        return cls(CAPACITY_QUERY, protocol, port)

    def fields(self) -> tuple[int, ...]:
        return (
            _check(self.type, _U32, "query type"),
            _check(self.protocol, 0xFF, "protocol"),
            _check(self.port, 0xFFFF, "port"),
            0,
            0,
            0,
            0,
            0,
        )

    @classmethod
    def from_fields(cls, data: tuple[int, ...]) -> Query:
        return cls(data[0], data[1] & 0xFF, data[2] & 0xFFFF)


class Answer(NamedTuple):
    """One KEEPALIVE_ACK answer: the query's data0..2 and data3, the answer."""

    type: int
    protocol: int
    port: int
    value: int

    def fields(self) -> tuple[int, ...]:
        maximum = _ANSWER_MAXIMUM.get(self.type, _U32)
        return (
            _check(self.type, _U32, "query type"),
            _check(self.protocol, 0xFF, "protocol"),
            _check(self.port, 0xFFFF, "port"),
            _check(self.value, maximum, "answer"),
            0,
            0,
            0,
            0,
        )

    @classmethod
    def from_fields(cls, data: tuple[int, ...]) -> Answer:
        if data[0] == HEALTH_QUERY and data[3] > MAX_HEALTH:
            raise NECPError(f"health index {data[3]} outside 0..{MAX_HEALTH}")
        if data[0] == CAPACITY_QUERY and data[3] > MAX_CAPACITY:
            raise NECPError(f"capacity {data[3]} milli-CPUs outside 0..{MAX_CAPACITY}")
        return cls(data[0], data[1] & 0xFF, data[2] & 0xFFFF, data[3])


# The greatest answer of each query type; other types take any u32.
_ANSWER_MAXIMUM = {HEALTH_QUERY: MAX_HEALTH, CAPACITY_QUERY: MAX_CAPACITY}


class Service(NamedTuple):
    """One START/STOP unit: data0 forwarding method, data1 IP protocol, data2 port."""

    forwarding: int
    protocol: int
    port: int

    def fields(self) -> tuple[int, ...]:
        return (
            _check(self.forwarding, 0xFF, "forwarding method"),
            _check(self.protocol, 0xFF, "protocol"),
            _check(self.port, 0xFFFF, "port"),
            0,
            0,
            0,
            0,
            0,
        )

    @classmethod
    def from_fields(cls, data: tuple[int, ...]) -> Service:
        return cls(data[0] & 0xFF, data[1] & 0xFF, data[2] & 0xFFFF)


class ExceptionRule(NamedTuple):
    """
    One EXCEPTION_ADD/DEL unit: which flows not to send to the SE (or the farm).
    A zero address, prefix length, protocol or port is a wildcard.
    """

    scope: int = SCOPE_NE_DECIDES
    ttl: int = 0  # seconds; 0 = forever
    source: IPv4Address = ANY_ADDRESS
    source_prefix: int = 0
    destination: IPv4Address = ANY_ADDRESS
    destination_prefix: int = 0
    protocol: int = 0
    port: int = 0

    def fields(self) -> tuple[int, ...]:
        return (
            _check(self.scope, _U32, "scope"),
            _check(self.ttl, _U32, "TTL"),
            _address(self.source, "source"),
            _check(self.source_prefix, _U32, "source prefix length"),
            _address(self.destination, "destination"),
            _check(self.destination_prefix, _U32, "destination prefix length"),
            _check(self.protocol, 0xFF, "protocol"),
            _check(self.port, 0xFFFF, "port"),
        )

    @classmethod
    def from_fields(cls, data: tuple[int, ...]) -> ExceptionRule:
        return cls(
            data[0],
            data[1],
            IPv4Address(data[2]),
            data[3],
            IPv4Address(data[4]),
            data[5],
            data[6] & 0xFF,
            data[7] & 0xFFFF,
        )

    @property
    def key(self) -> ExceptionRule:
        """The rule without its TTL: what identifies it for refresh and delete."""
        return self._replace(ttl=0)


class InstalledException(NamedTuple):
    """
    An EXCEPTION_QUERY filter or an EXCEPTION_RESP entry: the ADD layout with
    data1 holding the installing SE's IPv4 address instead of the TTL.
    """

    scope: int = SCOPE_NE_DECIDES
    installer: IPv4Address = ANY_ADDRESS
    source: IPv4Address = ANY_ADDRESS
    source_prefix: int = 0
    destination: IPv4Address = ANY_ADDRESS
    destination_prefix: int = 0
    protocol: int = 0
    port: int = 0

    def fields(self) -> tuple[int, ...]:
        return (
            _check(self.scope, _U32, "scope"),
            _address(self.installer, "installer"),
            _address(self.source, "source"),
            _check(self.source_prefix, _U32, "source prefix length"),
            _address(self.destination, "destination"),
            _check(self.destination_prefix, _U32, "destination prefix length"),
            _check(self.protocol, 0xFF, "protocol"),
            _check(self.port, 0xFFFF, "port"),
        )

    @classmethod
    def from_fields(cls, data: tuple[int, ...]) -> InstalledException:
        return cls(
            data[0],
            IPv4Address(data[1]),
            IPv4Address(data[2]),
            data[3],
            IPv4Address(data[4]),
            data[5],
            data[6] & 0xFF,
            data[7] & 0xFFFF,
        )


class RawUnit(NamedTuple):
    """A unit whose meaning the opcode does not define (e.g. in an error reply to INIT)."""

    data0: int = 0
    data1: int = 0
    data2: int = 0
    data3: int = 0
    data4: int = 0
    data5: int = 0
    data6: int = 0
    data7: int = 0

    def fields(self) -> tuple[int, ...]:
        return tuple(_check(value, _U32, "unit field") for value in self)

    @classmethod
    def from_fields(cls, data: tuple[int, ...]) -> RawUnit:
        return cls._make(data)


Unit = Union[Query, Answer, Service, ExceptionRule, InstalledException, RawUnit]


def _check_unit_count(count: int) -> None:
    if count > MAX_UNITS:
        raise NECPError(f"{count} units exceed the limit of {MAX_UNITS}")


def pack_unit(unit: Unit) -> bytes:
    """The 32 bytes of one unit."""
    return UNIT.pack(*unit.fields())


def _pack_units(units: tuple[Unit, ...]) -> bytes:
    _check_unit_count(len(units))
    pack = UNIT.pack
    return b"".join([pack(*unit.fields()) for unit in units])


def _unpack_units(payload: bytes, unit_type: Callable[[tuple[int, ...]], Unit]) -> tuple:
    return tuple([unit_type(data) for data in UNIT.iter_unpack(payload)])


def _check_request_id(request_id: int) -> int:
    return _check(request_id, 0xFFFF, "request id")


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
        sequence = _check(self.receive_sequence, MAX_SEQUENCE, "receive sequence number")
        flags = INIT_AUTHENTICATE if self.authenticate else 0
        if self.answers_capacity:
            flags |= INIT_ANSWERS_CAPACITY
        return UNIT.pack(flags, sequence >> 32, sequence & _U32, 0, 0, 0, 0, 0)

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
        sequence = _check(self.receive_sequence, MAX_SEQUENCE, "receive sequence number")
        return UNIT.pack(sequence >> 32, sequence & _U32, 0, 0, 0, 0, 0, 0)

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
    """KEEPALIVE: liveness, and the NE's health queries (one per service)."""

    request_id: int = 0
    queries: tuple[Query, ...] = ()
    opcode: ClassVar[int] = Opcode.KEEPALIVE

    def payload(self) -> bytes:
        return _pack_units(self.queries)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Keepalive:
        return cls(request_id=request_id, queries=_unpack_units(payload, Query.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepaliveAck:
    """KEEPALIVE_ACK: one answer per query, in the queries' order."""

    request_id: int = 0
    answers: tuple[Answer, ...] = ()
    opcode: ClassVar[int] = Opcode.KEEPALIVE_ACK

    def payload(self) -> bytes:
        return _pack_units(self.answers)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> KeepaliveAck:
        return cls(request_id=request_id, answers=_unpack_units(payload, Answer.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """START: the SE is ready for new flows of these services."""

    request_id: int = 0
    services: tuple[Service, ...] = ()
    opcode: ClassVar[int] = Opcode.START

    def payload(self) -> bytes:
        return _pack_units(self.services)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Start:
        return cls(request_id=request_id, services=_unpack_units(payload, Service.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """STOP: send the SE no new flows of these services."""

    request_id: int = 0
    services: tuple[Service, ...] = ()
    opcode: ClassVar[int] = Opcode.STOP

    def payload(self) -> bytes:
        return _pack_units(self.services)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> Stop:
        return cls(request_id=request_id, services=_unpack_units(payload, Service.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionAdd:
    """EXCEPTION_ADD: install (or refresh) these exceptions."""

    request_id: int = 0
    rules: tuple[ExceptionRule, ...] = ()
    opcode: ClassVar[int] = Opcode.EXCEPTION_ADD

    def payload(self) -> bytes:
        return _pack_units(self.rules)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionAdd:
        return cls(request_id=request_id, rules=_unpack_units(payload, ExceptionRule.from_fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionDel:
    """EXCEPTION_DEL: remove these exceptions (the sender's own)."""

    request_id: int = 0
    rules: tuple[ExceptionRule, ...] = ()
    opcode: ClassVar[int] = Opcode.EXCEPTION_DEL

    def payload(self) -> bytes:
        return _pack_units(self.rules)

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionDel:
        return cls(request_id=request_id, rules=_unpack_units(payload, ExceptionRule.from_fields))


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
            return _pack_units(self.entries)
        _check_unit_count(len(self.entries))
        return self.packed

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes) -> ExceptionResp:
        entries = _unpack_units(payload, InstalledException.from_fields)
        return cls(request_id=request_id, entries=entries)


class _EmptyAck:
    """A successful reply that carries no payload."""

    __slots__ = ()
    opcode: ClassVar[int]

    def payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, request_id: int, payload: bytes):
        _no_units(payload, Opcode(cls.opcode).name)
        return cls(request_id=request_id)


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

_ERROR_REASONS = Flag.VERSION_MISMATCH | Flag.AUTH_REQUIRED | Flag.BAD_SEQUENCE


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
        return _pack_units(self.units)

    @classmethod
    def from_header(cls, opcode: int, request_id: int, flags: int, payload: bytes) -> ErrorReply:
        unit_type = _ERROR_UNIT_TYPES.get(opcode, RawUnit.from_fields)
        return cls(
            opcode=opcode,
            request_id=request_id,
            flags=Flag.ERROR | (flags & _ERROR_REASONS),
            units=_unpack_units(payload, unit_type),
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

MESSAGE_TYPES: dict[int, type] = {
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
_READERS = {opcode: kind.from_payload for opcode, kind in MESSAGE_TYPES.items()}


def opcode_name(opcode: int) -> str:
    """A readable name for an opcode, reserved ones included."""
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"reserved opcode 0x{opcode:02x}"


def encode(message: Message, *, sequence: int = 0, secret: bytes | None = None) -> bytes:
    """
    The bytes of one message. With C{secret}, the credential flag is set and
    an HMAC-SHA1 over the header (length including the credential) and the
    payload is appended.
    """
    payload = message.payload()
    flags = Flag.BASIC_PAYLOAD if payload else 0
    if type(message) is ErrorReply:
        flags |= Flag.ERROR | (message.flags & _ERROR_REASONS)
    length = len(payload)
    if secret is not None:
        flags |= Flag.CREDENTIAL
        length += CREDENTIAL_SIZE
    try:
        header = HEADER.pack(
            PROTOCOL_ID,
            flags,
            VERSION,
            message.opcode,
            message.request_id,
            sequence,
            length,
        )
    except struct.error:
        _check_request_id(message.request_id)
        _check(message.opcode, 0xFF, "opcode")
        _check(sequence, MAX_SEQUENCE, "sequence number")
        raise
    if secret is None:
        return header + payload
    signed = header + payload
    return signed + hmac.digest(secret, signed, "sha1")


class Authenticator:
    """
    The credential and sequence numbers of one connection: the shared secret,
    the next number to send, and the lowest number still acceptable.

    Sequence numbers are 64 bits, the high half from the caller's clock and
    the low half counting up, strictly increasing. Sending starts at the
    number the peer asked for (see L{start_sending}); receiving refuses any
    number not above the last valid one (see L{start_receiving}).
    """

    def __init__(self, secret: bytes, *, required: bool = False):
        if not isinstance(secret, bytes) or not secret:
            raise NECPError("the shared secret must be non-empty bytes")
        self.secret = secret
        # When true, a message without a credential is refused.
        self.required = required
        self._send_next: int | None = None
        self._send_exact = False
        self._receive_floor: int | None = None

    @staticmethod
    def initial_sequence(now: float) -> int:
        """A starting sequence number: the clock in the high half, 0 in the low."""
        return (int(now) & _U32) << 32

    def start_sending(self, first: int) -> None:
        """The peer asked for C{first}: the next message carries exactly that."""
        self._send_next = _check(first, MAX_SEQUENCE, "sequence number")
        self._send_exact = True

    def start_receiving(self, first: int) -> None:
        """Accept from now on only credentials, with sequence numbers from C{first} up."""
        self._receive_floor = _check(first, MAX_SEQUENCE, "sequence number")
        self.required = True

    @property
    def receive_floor(self) -> int | None:
        """The lowest sequence number still acceptable; None before L{start_receiving}."""
        return self._receive_floor

    def next_sequence(self, now: float) -> int:
        """The sequence number for the next message sent (0 before L{start_sending})."""
        if self._send_next is None:
            return 0
        if self._send_exact:
            sequence = self._send_next
            self._send_exact = False
        else:
            sequence = max(self._send_next, self.initial_sequence(now))
        if sequence > MAX_SEQUENCE:
            raise NECPError("sequence numbers exhausted on this connection")
        self._send_next = sequence + 1
        return sequence

    def accept_sequence(self, sequence: int) -> str | None:
        """Take C{sequence} if it is acceptable; otherwise say why not."""
        floor = self._receive_floor
        if floor is None:
            return None
        if sequence < floor:
            if sequence == floor - 1:
                return f"sequence number {sequence} repeats the last valid one"
            return f"sequence number {sequence} is below the lowest acceptable {floor}"
        self._receive_floor = sequence + 1
        return None

    def credential(self, signed: bytes) -> bytes:
        return hmac.digest(self.secret, signed, "sha1")

    def encode(self, message: Message, now: float) -> bytes:
        """The bytes of C{message} with the next sequence number and a credential."""
        return encode(message, sequence=self.next_sequence(now), secret=self.secret)


class Decoder:
    """
    Whole messages out of a byte stream fed in chunks of any size.

    Call L{feed} with what arrived, then L{next_message} until it returns
    None. At most one incomplete message is held back, and a payload over
    L{MAX_PAYLOAD} is refused as soon as its header arrives. After an
    L{NECPError} that is not a L{MessageRefused} the decoder drops its buffer
    and refuses all further input.
    """

    def __init__(self, authenticator: Authenticator | None = None):
        self.authenticator = authenticator
        self._buffer = bytearray()
        self._offset = 0
        self._failure: NECPError | None = None

    @property
    def buffered(self) -> int:
        """How many bytes are held waiting for the rest of a message."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        if self._failure is not None:
            raise NECPError(f"no more input accepted after: {self._failure}")
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes arrive."""
        if self._failure is not None:
            raise NECPError(f"no more input accepted after: {self._failure}")
        try:
            return self._next()
        except MessageRefused:
            raise
        except NECPError as failure:
            self._fail(failure)
            raise
        except (struct.error, ValueError) as failure:  # defensive: never leak another type
            error = NECPError(f"undecodable message: {failure}")
            self._fail(error)
            raise error from failure

    def _fail(self, failure: NECPError) -> None:
        self._failure = failure
        self._buffer = bytearray()
        self._offset = 0

    def _next(self) -> Message | None:
        buffer = self._buffer
        start = self._offset
        available = len(buffer) - start
        if available < HEADER_SIZE:
            return None
        protocol_id, flags, version, opcode, request_id, sequence, length = HEADER.unpack_from(
            buffer, start
        )
        if protocol_id != PROTOCOL_ID:
            raise NECPError(f"protocol id 0x{protocol_id:04x} is not NECP's 0x{PROTOCOL_ID:04x}")
        credential = flags & _CREDENTIAL_BIT
        limit = MAX_PAYLOAD + CREDENTIAL_SIZE if credential else MAX_PAYLOAD
        if length > limit:
            raise MessageTooLarge(f"payload length {length} over the limit of {limit}")
        end = start + HEADER_SIZE + length
        if len(buffer) < end:
            return None
        self._offset = end

        if version != VERSION:
            raise UnsupportedVersion(
                f"NECP version {version} (this end speaks {VERSION})",
                opcode,
                request_id,
                flags,
                version,
            )
        authenticator = self.authenticator
        if credential:
            if length < CREDENTIAL_SIZE:
                raise NECPError(f"payload length {length} too short for a credential")
            end -= CREDENTIAL_SIZE
            if authenticator is None:
                raise AuthenticationFailed(
                    "message carries a credential but no shared secret is configured",
                    opcode,
                    request_id,
                    flags,
                )
            signed = bytes(buffer[start:end])
            if not hmac.compare_digest(
                authenticator.credential(signed), bytes(buffer[end : end + CREDENTIAL_SIZE])
            ):
                raise AuthenticationFailed("credential does not match", opcode, request_id, flags)
            refusal = authenticator.accept_sequence(sequence)
            if refusal is not None:
                raise BadSequenceNumber(refusal, opcode, request_id, flags)
            length -= CREDENTIAL_SIZE
        elif authenticator is not None and authenticator.required:
            raise AuthenticationFailed(
                "credential missing where one is required", opcode, request_id, flags
            )

        if length % UNIT_SIZE:
            raise NECPError(f"payload length {length} is not a whole number of 32-byte units")
        if length and not flags & _BASIC_PAYLOAD_BIT:
            raise NECPError(f"{length}-byte payload without the basic-payload flag")
        payload = bytes(buffer[end - length : end])
        if flags & _ERROR_BIT:
            return ErrorReply.from_header(opcode, request_id, flags, payload)
        reader = _READERS.get(opcode)
        if reader is None:
            raise ReservedOpcode(opcode_name(opcode), opcode, request_id, flags)
        return reader(request_id, payload)


def decode(data: bytes, authenticator: Authenticator | None = None) -> Message:
    """Exactly one message from C{data}; anything short or left over is an error."""
    decoder = Decoder(authenticator)
    decoder.feed(data)
    message = decoder.next_message()
    if message is None:
        raise NECPError(f"truncated message: {len(data)} bytes")
    if decoder.buffered:
        raise NECPError(f"{decoder.buffered} bytes after the message")
    return message
