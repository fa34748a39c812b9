"""
Netlink's framing (lvsfeedback/netlink_framing.py), shared by the IPVS
socket, the agent's sock_diag count and the pair guard's rtnetlink reading:
a dump read to its DONE across datagrams, other requests' messages skipped,
refusals and broken headers as OSError. Each reader's own tests decode what
the messages carry (test_ipvs_batch, test_metrics_sockdiag,
test_pair_guard_addresses).
"""

from __future__ import annotations

import errno
import struct

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.netlink_framing import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    attributes,
    dump,
    errno_name,
    messages,
)

KIND = 20  # SOCK_DIAG_BY_FAMILY, say


def message(kind: int, sequence: int, body: bytes = b"") -> bytes:
    padded = body + b"\0" * (-len(body) % 4)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, 0, sequence, 0) + padded


class FakeSocket:
    """A netlink socket whose kernel answers with these datagrams, one a recv."""

    def __init__(self, *datagrams: bytes):
        self.datagrams = list(datagrams)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.datagrams.pop(0)


class DumpTests(SynchronousTestCase):
    def test_the_request_asks_for_a_dump_with_its_sequence_and_body(self) -> None:
        route = FakeSocket(message(NLMSG_DONE, 7, b"\0" * 4))
        self.assertEqual(list(dump(route, KIND, b"body", 7)), [])
        self.assertEqual(route.sent, [NLMSGHDR.pack(NLMSGHDR.size + 4, KIND, NLM_F_REQUEST | NLM_F_DUMP, 7, 0) + b"body"])

    def test_every_message_counts_across_datagrams_until_done(self) -> None:
        first = b"".join(message(KIND, 7, bytes([n]) * 70) for n in range(3))
        route = FakeSocket(first, message(KIND, 7, b"\3" * 5) + message(NLMSG_DONE, 7, b"\0" * 4), b"never read")
        replies = list(dump(route, KIND, b"", 7))
        self.assertEqual(replies, [(KIND, bytes([n]) * 70) for n in range(3)] + [(KIND, b"\3" * 5)])
        self.assertEqual(route.datagrams, [b"never read"])

    def test_messages_of_another_request_do_not_count_nor_end_the_dump(self) -> None:
        route = FakeSocket(message(KIND, 6, b"\1" * 72) + message(NLMSG_DONE, 6, b"\0" * 4),
                           message(KIND, 7, b"\2" * 4) + message(NLMSG_DONE, 7, b"\0" * 4))
        self.assertEqual(list(dump(route, KIND, b"", 7)), [(KIND, b"\2" * 4)])

    def test_a_refusal_raises_the_kernels_errno(self) -> None:
        route = FakeSocket(message(NLMSG_ERROR, 7, struct.pack("=i", -errno.EINVAL) + b"\0" * 16))
        error = self.assertRaises(OSError, list, dump(route, KIND, b"", 7))
        self.assertEqual(error.errno, errno.EINVAL)
        self.assertIn("EINVAL", str(error))

    def test_a_dump_that_failed_part_way_raises_the_code_its_done_carries(self) -> None:
        route = FakeSocket(message(KIND, 7, b"\1" * 4) + message(NLMSG_DONE, 7, struct.pack("=i", -errno.EINTR)))
        error = self.assertRaises(OSError, list, dump(route, KIND, b"", 7))
        self.assertEqual(error.errno, errno.EINTR)

    def test_a_header_shorter_than_itself_is_refused_not_looped_on(self) -> None:
        route = FakeSocket(NLMSGHDR.pack(4, KIND, 0, 7, 0))
        error = self.assertRaises(OSError, list, dump(route, KIND, b"", 7))
        self.assertEqual(error.errno, errno.EPROTO)

    def test_an_error_message_without_its_code_is_refused(self) -> None:
        route = FakeSocket(message(NLMSG_ERROR, 7, b"\0\0"))
        error = self.assertRaises(OSError, list, dump(route, KIND, b"", 7))
        self.assertEqual(error.errno, errno.EPROTO)


class MessageTests(SynchronousTestCase):
    def test_a_tail_too_short_for_a_header_is_ignored(self) -> None:
        self.assertEqual(list(messages(message(KIND, 3, b"ab") + b"\x24\x00")), [(KIND, 3, b"ab")])

    def test_attributes_by_type_without_the_nested_and_byte_order_flags(self) -> None:
        data = struct.pack("=HH", 6, 0x8001) + b"ab\0\0" + struct.pack("=HH", 8, 0x4002) + b"wxyz"
        self.assertEqual(attributes(data), {1: b"ab", 2: b"wxyz"})

    def test_errno_names(self) -> None:
        self.assertEqual([errno_name(code) for code in (2, 3, 17)], ["ENOENT", "ESRCH", "EEXIST"])
        self.assertEqual(errno_name(99999), "99999")
