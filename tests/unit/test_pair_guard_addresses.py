"""
This host's addresses for the split-brain guard (#17,
director/host_addresses.py): the rtnetlink dump parsed as the kernel lays it
out (messages encoded by pyroute2, the tests' reference), and the reading kept
until the kernel announces a change, an overflow loses announcements or the
safety re-read falls due. The guard's rounds with it: test_pair_guard.py.
"""

from __future__ import annotations

import errno
import struct

from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director import host_addresses
from lvsfeedback.director.host_addresses import (
    RTM_GETADDR,
    RTM_GETLINK,
    SAFETY_REREAD,
    HostAddresses,
    read_addresses,
)
from tests.helpers.pair import FakeAnnouncements

VIP = "192.0.2.10"
UP, LOWER_UP, LOOPBACK = 0x1, 0x10000, 0x8


def link(index: int, name: str, flags: int, sequence: int = 0) -> bytes:
    message = ifinfmsg()
    message["header"]["type"] = RTM_NEWLINK
    message["header"]["sequence_number"] = sequence
    message["index"], message["flags"] = index, flags
    message["attrs"] = [("IFLA_IFNAME", name)]
    message.encode()
    return bytes(message.data)


def address(index: int, family: int, *attrs: tuple[str, str], sequence: int = 0) -> bytes:
    message = ifaddrmsg()
    message["header"]["type"] = RTM_NEWADDR
    message["header"]["sequence_number"] = sequence
    message["family"], message["index"], message["prefixlen"] = family, index, 24 if family == 2 else 64
    message["attrs"] = list(attrs)
    message.encode()
    return bytes(message.data)


def done(sequence: int, code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, sequence, 0, code)


class FakeRoute:
    """A NETLINK_ROUTE socket whose kernel answers each dump with `links` or `addresses`, then DONE (or `refuse`)."""

    def __init__(self, links: list, addresses: list, refuse: int = 0):
        self.answers = {RTM_GETLINK: links, RTM_GETADDR: addresses}
        self.refuse = refuse
        self.datagrams: list[bytes] = []
        self.requests: list[int] = []

    def send(self, request: bytes) -> int:
        _, kind, _, sequence, _ = struct.unpack_from("=IHHII", request)
        self.requests.append(kind)
        # An announcement of another sequence number first: it is not the dump's.
        self.datagrams.append(link(9, "other", UP | LOWER_UP, sequence=sequence + 100))
        self.datagrams.append(b"".join(make(sequence) for make in self.answers[kind]) + done(sequence, -self.refuse))
        return len(request)

    def recv(self, size: int) -> bytes:
        return self.datagrams.pop(0)


class DumpTests(SynchronousTestCase):
    def test_only_addresses_of_interfaces_up_with_a_carrier_count_loopback_aside(self):
        route = FakeRoute(
            [lambda s: link(1, "lo", LOOPBACK | UP | LOWER_UP, s), lambda s: link(2, "eth0", UP | LOWER_UP, s),
             lambda s: link(3, "eth1", UP, s), lambda s: link(4, "eth2", 0, s)],
            [lambda s: address(1, 2, ("IFA_LOCAL", "127.0.0.1"), sequence=s),
             lambda s: address(2, 2, ("IFA_ADDRESS", "10.0.0.2"), ("IFA_LOCAL", "10.0.0.2"), sequence=s),
             lambda s: address(2, 2, ("IFA_ADDRESS", VIP), ("IFA_LOCAL", VIP), sequence=s),
             # IPv6 addresses come with IFA_ADDRESS alone, as `ip address` shows them.
             lambda s: address(2, 10, ("IFA_ADDRESS", "fe80::1"), sequence=s),
             lambda s: address(3, 2, ("IFA_LOCAL", "10.9.0.1"), sequence=s),  # no carrier
             lambda s: address(4, 2, ("IFA_LOCAL", "10.8.0.1"), sequence=s)])  # down
        self.assertEqual(read_addresses(route), frozenset({"10.0.0.2", VIP, "fe80::1"}))
        self.assertEqual(route.requests, [RTM_GETLINK, RTM_GETADDR])

    def test_a_point_to_point_address_is_the_local_one(self):
        route = FakeRoute([lambda s: link(2, "tun0", UP | LOWER_UP, s)],
                          [lambda s: address(2, 2, ("IFA_ADDRESS", "10.0.0.9"), ("IFA_LOCAL", VIP), sequence=s)])
        self.assertEqual(read_addresses(route), frozenset({VIP}))

    def test_a_refused_dump_is_an_os_error_naming_it(self):
        error = self.assertRaises(OSError, read_addresses, FakeRoute([], [], refuse=errno.EPERM))
        self.assertIn("EPERM", str(error))

    def test_a_message_cut_short_is_an_os_error(self):
        # A link message whose header counts 8 bytes of body: an ifinfomsg is 16.
        route = FakeRoute([lambda s: struct.pack("=IHHII", 24, RTM_NEWLINK, 2, s, 0) + bytes(8)], [])
        error = self.assertRaises(OSError, read_addresses, route)
        self.assertIn("cut short", str(error))

    def test_the_subscription_is_to_link_and_both_families_address_announcements(self):
        bound = []

        class Socket:
            def __init__(self, family, kind, protocol):
                self.opened = (family, kind, protocol)

            def bind(self, where):
                bound.append((self.opened[2], where))

        self.patch(host_addresses.socket, "socket", Socket)
        host_addresses.subscribe_to_changes()
        self.assertEqual(bound, [(0, (0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))])


class HostAddressesTests(SynchronousTestCase):
    """The reading kept between announcements, on a MemoryReactorClock with a fake subscribed socket."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.announcements = FakeAnnouncements()
        self.held: frozenset[str] | OSError = frozenset({VIP})
        self.dumps = 0
        self.addresses = HostAddresses(self.reactor, dump=self.dump, subscribe=lambda: self.announcements)

    def dump(self) -> frozenset[str]:
        self.dumps += 1
        if isinstance(self.held, OSError):
            raise self.held
        return self.held

    def announce(self, *messages: bytes | OSError) -> None:
        """The kernel's announcements arrive and the reactor finds the socket readable."""
        self.announcements.pending.extend(messages)
        for reader in list(self.reactor.readers):
            reader.doRead()

    def rounds(self, count: int) -> None:
        for _ in range(count):
            self.addresses.current()
            self.reactor.advance(0.5)

    def test_read_once_at_start_and_not_again_while_nothing_is_announced(self):
        self.addresses.start()
        self.assertEqual(self.reactor.readers, {self.addresses})
        self.rounds(20)
        self.assertEqual(self.dumps, 1)

    def test_an_announcement_makes_the_next_round_read_them(self):
        self.addresses.start()
        self.rounds(2)
        self.held = frozenset({"10.0.0.2"})
        self.announce(address(2, 2, ("IFA_LOCAL", VIP)))  # RTM_NEWADDR, as the kernel sends it
        self.assertEqual(self.addresses.current(), frozenset({"10.0.0.2"}))
        self.assertEqual(self.dumps, 2)

    def test_a_storm_of_announcements_is_one_read(self):
        self.addresses.start()
        self.rounds(1)
        for index in range(50):
            self.announce(link(index, f"veth{index}", UP | LOWER_UP), address(index, 2, ("IFA_LOCAL", VIP)))
        self.rounds(3)
        self.assertEqual(self.dumps, 2)

    def test_an_overflow_that_lost_announcements_makes_the_next_round_read_them(self):
        self.addresses.start()
        self.rounds(1)
        self.announce(OSError(errno.ENOBUFS, "No buffer space available"))
        self.rounds(1)
        self.assertEqual(self.dumps, 2)
        self.assertEqual(self.reactor.readers, {self.addresses})  # still watching

    def test_the_safety_re_read_falls_due_without_an_announcement(self):
        self.addresses.start()
        self.rounds(int(SAFETY_REREAD / 0.5))
        self.assertEqual(self.dumps, 1)
        self.rounds(1)
        self.assertEqual(self.dumps, 2)

    def test_a_failed_read_is_logged_once_and_retried_each_round_until_it_succeeds(self):
        self.addresses.start()
        self.held = OSError(errno.EPERM, "Operation not permitted")
        with capturedLogs() as events:
            for _ in range(3):
                self.assertRaises(OSError, self.addresses.current)
            self.held = frozenset({VIP})
            self.rounds(3)
        self.assertEqual([(event["log_level"].name, event["log_format"]) for event in events],
                         [("error", "cannot read this host's addresses: {problem}"),
                          ("info", "this host's addresses read again")])
        self.assertEqual(self.dumps, 4)

    def test_stopped_the_socket_is_no_longer_watched_and_closed(self):
        self.addresses.start()
        self.addresses.stop()
        self.assertEqual((self.reactor.readers, self.announcements.closed), (set(), True))
        self.addresses.stop()  # already stopped: nothing to do

    def test_a_kernel_that_refuses_the_subscription_is_logged_once_and_read_every_round(self):
        def refuse():
            raise PermissionError(errno.EPERM, "Operation not permitted")

        self.addresses.subscribe = refuse
        with capturedLogs() as events:
            self.addresses.start()
            self.rounds(3)
        self.assertEqual([event["log_level"].name for event in events], ["warn"])
        self.assertIn("Operation not permitted", events[0]["log_format"].format(**events[0]))
        self.assertEqual((self.dumps, self.reactor.readers), (3, set()))

    def test_a_socket_that_breaks_is_given_up_and_the_addresses_read_every_round(self):
        self.addresses.start()
        self.rounds(1)
        self.announcements.pending.append(OSError(errno.EBADF, "Bad file descriptor"))
        why = self.addresses.doRead()
        self.assertEqual(why.errno, errno.EBADF)
        # What the reactor does with a reader whose doRead returns why it is lost.
        with capturedLogs() as events:
            self.reactor.removeReader(self.addresses)
            self.addresses.connectionLost(Failure(why))
            self.rounds(2)
        self.assertEqual([event["log_level"].name for event in events], ["warn"])
        self.assertEqual((self.dumps, self.announcements.closed), (3, True))
        self.addresses.stop()  # nothing left to stop
