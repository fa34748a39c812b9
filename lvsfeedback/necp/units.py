"""
NECP's 32-byte units: the queries, answers, services and exceptions that
messages carry, and the values their fields take.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Callable, NamedTuple, TypeVar, Union

from lvsfeedback.necp.wire import MAX_U32, MAX_UNITS, UNIT, NECPError, check_range

HEALTH_QUERY = 0x1  # the only query type defined: health index 0..100
MAX_HEALTH = 100
# Project extension, outside the draft's numbers: the capacity of a service,
# in milli-CPUs (0: unknown). Asked only of agents whose INIT announces
# INIT_ANSWERS_CAPACITY, so a draft-only peer never sees it.
CAPACITY_QUERY = 0x100
# More CPUs than any machine Linux runs on (NR_CPUS is at most 8192).
MAX_CAPACITY = 10_000_000

# Forwarding methods in START/STOP units (their IPVS names: ipvs.model.IPVS_FORWARDING).
FORWARD_LAYER2 = 1
FORWARD_GRE = 2
FORWARD_LAYER3 = 3

# Exception scopes.
SCOPE_NE_DECIDES = 0
SCOPE_NOT_TO_ME = 1
SCOPE_NOT_TO_FARM = 2

ANY_ADDRESS = IPv4Address(0)


# Units: one 32-byte unit of eight u32 fields each. Decoding keeps only the
# bits the draft defines (e.g. the low 8 bits of a protocol field); encoding
# refuses values that do not fit.


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
            check_range(self.type, MAX_U32, "query type"),
            check_range(self.protocol, 0xFF, "protocol"),
            check_range(self.port, 0xFFFF, "port"),
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
        maximum = _ANSWER_MAXIMUM.get(self.type, MAX_U32)
        return (
            check_range(self.type, MAX_U32, "query type"),
            check_range(self.protocol, 0xFF, "protocol"),
            check_range(self.port, 0xFFFF, "port"),
            check_range(self.value, maximum, "answer"),
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
            check_range(self.forwarding, 0xFF, "forwarding method"),
            check_range(self.protocol, 0xFF, "protocol"),
            check_range(self.port, 0xFFFF, "port"),
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
            check_range(self.scope, MAX_U32, "scope"),
            check_range(self.ttl, MAX_U32, "TTL"),
            _address(self.source, "source"),
            check_range(self.source_prefix, MAX_U32, "source prefix length"),
            _address(self.destination, "destination"),
            check_range(self.destination_prefix, MAX_U32, "destination prefix length"),
            check_range(self.protocol, 0xFF, "protocol"),
            check_range(self.port, 0xFFFF, "port"),
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
            check_range(self.scope, MAX_U32, "scope"),
            _address(self.installer, "installer"),
            _address(self.source, "source"),
            check_range(self.source_prefix, MAX_U32, "source prefix length"),
            _address(self.destination, "destination"),
            check_range(self.destination_prefix, MAX_U32, "destination prefix length"),
            check_range(self.protocol, 0xFF, "protocol"),
            check_range(self.port, 0xFFFF, "port"),
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
        return tuple(check_range(value, MAX_U32, "unit field") for value in self)

    @classmethod
    def from_fields(cls, data: tuple[int, ...]) -> RawUnit:
        return cls._make(data)


Unit = Union[Query, Answer, Service, ExceptionRule, InstalledException, RawUnit]
_U = TypeVar("_U", bound=Unit)


def check_unit_count(count: int) -> None:
    if count > MAX_UNITS:
        raise NECPError(f"{count} units exceed the limit of {MAX_UNITS}")


def pack_unit(unit: Unit) -> bytes:
    """The 32 bytes of one unit."""
    return UNIT.pack(*unit.fields())


def pack_units(units: tuple[Unit, ...]) -> bytes:
    check_unit_count(len(units))
    pack = UNIT.pack
    return b"".join([pack(*unit.fields()) for unit in units])


def unpack_units(payload: bytes, unit_type: Callable[[tuple[int, ...]], _U]) -> tuple[_U, ...]:
    # map rather than a comprehension: no function frame of its own, per message.
    return tuple(map(unit_type, UNIT.iter_unpack(payload)))
