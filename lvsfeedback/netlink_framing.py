"""
Netlink's framing, as include/uapi/linux/netlink.h lays it out: the message
header, the attributes, and a dump read to its end. Shared by the three
readers of netlink that need no library: the IPVS socket
(ipvs/batch.py, generic netlink), the agent's connection count
(agent/metrics/sockdiag.py, sock_diag) and the pair guard's reading of this
host's addresses (director/host_addresses.py, rtnetlink). Everything but
`dump` is bytes in, values out.
"""

from __future__ import annotations

import errno
import struct
from typing import Iterator, Protocol

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NLA = struct.Struct("=HH")  # length, type
_ERROR_CODE = struct.Struct("=i")

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

# A datagram of a dump holds a few pages of messages; this takes any of them whole.
RECEIVE_SIZE = 65536


def aligned(length: int) -> int:
    """Netlink pads messages and attributes to 4 bytes."""
    return (length + 3) & ~3


def request(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    """One request: the header, then the body."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, sequence, 0) + body


def messages(datagram: bytes) -> Iterator[tuple[int, int, bytes]]:
    """
    (type, sequence, body) of each message in a datagram; a tail too short
    for a header is ignored, a header claiming less than itself raises
    OSError (EPROTO) rather than being looped on.
    """
    offset = 0
    while offset + NLMSGHDR.size <= len(datagram):
        length, kind, _, sequence, _ = NLMSGHDR.unpack_from(datagram, offset)
        if length < NLMSGHDR.size:
            raise OSError(errno.EPROTO, "a netlink message shorter than its header")
        yield kind, sequence, datagram[offset + NLMSGHDR.size : offset + length]
        offset += aligned(length)


def error_code(body: bytes) -> int:
    """The errno an NLMSG_ERROR (or NLMSG_DONE) body carries, positive; 0 for success."""
    if len(body) < _ERROR_CODE.size:
        raise OSError(errno.EPROTO, "a netlink error message without its code")
    return -_ERROR_CODE.unpack_from(body)[0]


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def attributes(data: bytes) -> dict[int, bytes]:
    """The netlink attributes laid end to end in `data`, by type: {type: payload}."""
    found = {}
    offset = 0
    while offset + NLA.size <= len(data):
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + NLA.size : offset + length]
        offset += aligned(length)
    return found


class NetlinkSocket(Protocol):
    def send(self, data: bytes) -> int: ...
    def recv(self, size: int) -> bytes: ...


def dump(route: NetlinkSocket, kind: int, body: bytes, sequence: int) -> Iterator[tuple[int, bytes]]:
    """
    Ask for a dump on a netlink socket and yield (type, body) of each
    message the kernel answers it with, up to its NLMSG_DONE; messages of
    other requests are skipped. A refusal raises OSError with the kernel's
    errno.
    """
    route.send(request(kind, NLM_F_REQUEST | NLM_F_DUMP, sequence, body))
    while True:
        for reply, reply_sequence, reply_body in messages(route.recv(RECEIVE_SIZE)):
            if reply_sequence != sequence:
                continue
            if reply in (NLMSG_DONE, NLMSG_ERROR):
                # A dump's DONE carries a code too, 0 unless the dump failed part way.
                code = error_code(reply_body) if reply == NLMSG_ERROR or reply_body else 0
                if code:
                    raise OSError(code, f"the kernel refused the dump: {errno_name(code)}")
                return
            yield reply, reply_body
