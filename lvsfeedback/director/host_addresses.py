"""
This host's addresses for the split-brain guard (#17, director/pair_guard.py),
read in-process over rtnetlink, and re-read only when the kernel announces a
change.

The guard used to fork `ip -json address show` every round (twice a second):
~1.5 ms of child CPU natively plus the fork of a large Python process, ~35 ms
in the emulated test VM, where two directors doing it starved the lab's real
servers (docs/experiment.md, run M). Here a dump (RTM_GETLINK, then
RTM_GETADDR, on a raw NETLINK_ROUTE socket, framed by
lvsfeedback/netlink_framing.py as the IPVS socket is) is taken once at the start, and a
second socket, bound to the link and address multicast groups and watched by
the reactor, marks the reading stale when anything changes; the guard's next
round reads again, so a storm of announcements costs one dump a round. A lost
announcement (ENOBUFS when the socket overflowed) marks it stale too, and a
dump every `SAFETY_REREAD` seconds covers any other loss. pyroute2 is only a
test dependency, and the project reads netlink with `struct` anyway.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Callable, Protocol

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from lvsfeedback.netlink_framing import attributes, dump

# linux/rtnetlink.h, linux/if_addr.h, linux/if.h
NETLINK_ROUTE = 0
RTM_GETLINK = 18
RTM_GETADDR = 22
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_LOWER_UP = 0x10000

# A dump every this many seconds even with no announcement: a notification
# lost some other way than an overflow is noticed within this.
SAFETY_REREAD = 30.0
# A dump is the kernel's answer to our own request, not a wait on the network.
DUMP_TIMEOUT = 2.0
# Announcements read in one go; more wait for the reactor's next turn.
MAX_DRAINED = 256

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_ADDRESS_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}


def links_up(bodies: list[bytes]) -> set[int]:
    """The indexes of the links (RTM_NEWLINK bodies) that are UP and LOWER_UP, loopback aside."""
    up = set()
    for body in bodies:
        _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
        if flags & IFF_UP and flags & IFF_LOWER_UP and not flags & IFF_LOOPBACK:
            up.add(index)
    return up


def addresses_on(bodies: list[bytes], links: set[int]) -> frozenset[str]:
    """The addresses (RTM_NEWADDR bodies) on these links, as `ip address` shows them (IFA_LOCAL, else IFA_ADDRESS)."""
    held = set()
    for body in bodies:
        family, _, _, _, index = _IFADDRMSG.unpack_from(body)
        if index not in links or family not in _ADDRESS_SIZE:
            continue
        attrs = attributes(body[_IFADDRMSG.size :])
        payload = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
        if payload is not None and len(payload) >= _ADDRESS_SIZE[family]:
            held.add(socket.inet_ntop(family, payload[: _ADDRESS_SIZE[family]]))
    return frozenset(held)


def read_addresses(route) -> frozenset[str]:
    """
    The addresses configured on the interfaces that are up and have a
    carrier, loopback aside, as the kernel answers on `route` (a NETLINK_ROUTE
    socket); OSError saying why not (a message cut short is one too).
    """
    try:
        links = links_up([body for _, body in dump(route, RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), 1)])
        addresses = [body for _, body in dump(route, RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), 2)]
        return addresses_on(addresses, links)
    except struct.error as error:
        raise OSError(f"an rtnetlink message cut short: {error}") from None


def dump_host_addresses() -> frozenset[str]:
    """This host's addresses (`read_addresses`), on a socket opened for the one dump."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as route:
        route.settimeout(DUMP_TIMEOUT)
        route.bind((0, 0))
        return read_addresses(route)


def subscribe_to_changes() -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket that receives the kernel's link and address announcements."""
    watching = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE)
    try:
        watching.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except BaseException:
        watching.close()
        raise
    return watching


class Announcements(Protocol):
    """What `HostAddresses` needs of the subscribed socket (a fake one in the tests)."""

    def fileno(self) -> int: ...
    def recv(self, size: int) -> bytes: ...
    def close(self) -> None: ...


@implementer(IReadDescriptor)
class HostAddresses:
    """
    This host's addresses (`dump_host_addresses`) for the guard, at most
    one dump a round: `current()` dumps only when an announcement, an
    overflow or `SAFETY_REREAD` made the last reading stale, or when the
    changes are not watched (before `start`, or when the kernel would not
    let the socket subscribe: then every round dumps, logged once). A dump
    that fails is logged once per different reason and retried next round.
    """

    log = Logger()

    def __init__(self, reactor, dump: Callable[[], frozenset[str]] = dump_host_addresses,
                 subscribe: Callable[[], Announcements] = subscribe_to_changes):
        self.reactor = reactor
        self.dump = dump
        self.subscribe = subscribe
        self.held: frozenset[str] | None = None
        self.stale = True
        self.problem: str | None = None  # why the last dump failed
        self._read_at = 0.0
        self._watching: Announcements | None = None

    def start(self) -> None:
        """Watch for changes (again a no-op); the next `current()` dumps."""
        self.stale = True
        if self._watching is not None:
            return
        try:
            self._watching = self.subscribe()
        except OSError as error:
            self.log.warn("cannot watch this host's addresses for changes ({error}): reading them every round",
                          error=error.strerror or error)
            return
        self.reactor.addReader(self)

    def stop(self) -> None:
        if self._watching is None:
            return
        self.reactor.removeReader(self)
        self._watching.close()
        self._watching = None

    def current(self) -> frozenset[str]:
        """The addresses, dumped again if stale; OSError when they cannot be read."""
        if (self.stale or self._watching is None or self.held is None
                or self.reactor.seconds() - self._read_at >= SAFETY_REREAD):
            # Cleared before the dump: an announcement read after it marks the reading stale again.
            self.stale = False
            try:
                held = self.dump()
            except OSError as error:
                self.stale = True
                problem = f"{error.strerror or error}"
                if problem != self.problem:
                    self.log.error("cannot read this host's addresses: {problem}", problem=problem)
                self.problem = problem
                raise OSError(problem) from None
            if self.problem is not None:
                self.log.info("this host's addresses read again")
            self.held, self.problem, self._read_at = held, None, self.reactor.seconds()
        assert self.held is not None
        return self.held

    # IReadDescriptor: the subscribed socket, watched by the reactor.

    def fileno(self) -> int:
        return self._watching.fileno() if self._watching is not None else -1

    def doRead(self) -> OSError | None:
        """
        Drain the announcements: any one, or an overflow that lost some, makes
        the reading stale. Any other error is returned: the reactor then stops
        watching and calls `connectionLost`, with no traceback.
        """
        if self._watching is None:
            return None
        for _ in range(MAX_DRAINED):
            try:
                self._watching.recv(65536)
            except BlockingIOError:
                return None
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    self.stale = True
                    return error
            self.stale = True
        return None

    def connectionLost(self, reason) -> None:
        self.log.warn("stopped watching this host's addresses ({reason}): reading them every round",
                      reason=reason.getErrorMessage())
        if self._watching is not None:
            self._watching.close()
            self._watching = None
        self.stale = True

    def logPrefix(self) -> str:
        return "HostAddresses"
