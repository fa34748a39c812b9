"""
The IPVS table as plain values.

These are what every IPVS backend (the kernel through netlink, or the
in-memory table used by unit tests) reads and writes. They hold no I/O.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from lvsfeedback.addresses import host_port
from lvsfeedback.necp.units import FORWARD_GRE, FORWARD_LAYER2, FORWARD_LAYER3

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}

# IPVS connection flags (IP_VS_CONN_F_FWD_MASK values), as ipvsadm names them.
FORWARDING = {"nat": 0, "tun": 2, "dr": 3}
FORWARDING_NAMES = {number: name for name, number in FORWARDING.items()}
IPVSADM_FORWARDING = {"nat": "Masq", "tun": "Tunnel", "dr": "Route"}
# The forwarding method each NECP forwarding code (in START/STOP units) names.
IPVS_FORWARDING = {FORWARD_LAYER2: "dr", FORWARD_GRE: "tun", FORWARD_LAYER3: "nat"}

MAX_WEIGHT = 65535


def address_family(address: str) -> int:
    """AF_INET or AF_INET6 for an address literal; ValueError otherwise."""
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


@dataclass(frozen=True, order=True)
class ServiceKey:
    """
    What identifies a virtual service in the kernel: protocol, address and
    port, or a firewall mark (with its address family).
    """

    protocol: str  # "tcp", "udp", "sctp", or "fwmark"
    address: str = ""
    port: int = 0
    fwmark: int = 0
    family: int = socket.AF_INET

    @classmethod
    def for_address(cls, protocol: str, address: str, port: int) -> ServiceKey:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        normalised = str(ipaddress.ip_address(address))
        return cls(protocol, normalised, port, 0, address_family(normalised))

    @classmethod
    def for_fwmark(cls, fwmark: int, family: int = socket.AF_INET) -> ServiceKey:
        if not 0 < fwmark <= 0xFFFFFFFF:
            raise ValueError(f"firewall mark {fwmark} out of range")
        return cls("fwmark", "", 0, fwmark, family)

    @property
    def is_fwmark(self) -> bool:
        return self.protocol == "fwmark"

    def __str__(self) -> str:
        if self.is_fwmark:
            suffix = " IPv6" if self.family == socket.AF_INET6 else ""
            return f"FWM {self.fwmark}{suffix}"
        return f"{self.protocol.upper()} {host_port(self.address, self.port)}"


class DestKey(NamedTuple):
    """
    What identifies a real server within a virtual service.

    A named tuple: a pass looks every real server up some twenty times by
    this key (the policy's and the updater's dicts), and a tuple's hash, of a
    string whose hash is cached and an int, costs no Python call.
    """

    address: str
    port: int

    @classmethod
    def of(cls, address: str, port: int) -> DestKey:
        return cls(str(ipaddress.ip_address(address)), port)

    @property
    def family(self) -> int:
        return address_family(self.address)

    def __str__(self) -> str:
        return host_port(self.address, self.port)


@dataclass(frozen=True)
class VirtualService:
    key: ServiceKey
    scheduler: str = "wlc"
    persistence: int = 0  # seconds; 0 means not persistent


@dataclass(frozen=True)
class RealServer:
    key: DestKey
    weight: int = 1
    forwarding: str = "nat"


@dataclass(frozen=True)
class DestCounters:
    """Counters the kernel keeps per real server."""

    active_connections: int = 0
    inactive_connections: int = 0
    connections: int = 0  # total since creation
    connection_rate: int = 0  # connections per second, kernel's estimator
    packet_rate: int = 0  # incoming packets per second, kernel's estimator
    packets: int = 0  # incoming packets since creation


@dataclass(frozen=True)
class Dest:
    """A real server as read back from a table: configuration and counters."""

    server: RealServer
    counters: DestCounters = DestCounters()


@dataclass(frozen=True)
class ServiceEntry:
    service: VirtualService
    dests: Mapping[DestKey, Dest] = field(default_factory=dict)


Table = Mapping[ServiceKey, ServiceEntry]


# Changes: the vocabulary of writes. A backend applies a list of them in order.


@dataclass(frozen=True)
class AddService:
    service: VirtualService


@dataclass(frozen=True)
class EditService:
    service: VirtualService


@dataclass(frozen=True)
class DeleteService:
    key: ServiceKey


@dataclass(frozen=True)
class AddDest:
    service: ServiceKey
    server: RealServer


@dataclass(frozen=True)
class EditDest:
    service: ServiceKey
    server: RealServer


@dataclass(frozen=True)
class DeleteDest:
    service: ServiceKey
    key: DestKey


@dataclass(frozen=True)
class SetMarkRule:
    """Mark packets to `destination` (a network), `protocol`, `ports` with `fwmark`."""

    fwmark: int
    destination: str
    protocol: str
    ports: tuple[int, ...] = ()  # empty: every port


@dataclass(frozen=True)
class DeleteMarkRule:
    fwmark: int
    family: int = socket.AF_INET


Change = AddService | EditService | DeleteService | AddDest | EditDest | DeleteDest | SetMarkRule | DeleteMarkRule


class IPVSError(Exception):
    """A change the table refused, with the change and the reason."""

    def __init__(self, change: object, reason: str):
        super().__init__(f"{reason}: {change}")
        self.change = change
        self.reason = reason
