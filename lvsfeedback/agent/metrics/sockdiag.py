"""
Established TCP connections to a local port, counted by the kernel through
netlink sock_diag (what `ss` uses).

Reading C{/proc/net/tcp} makes the kernel walk its whole connection hash
table and format every socket as text: 6 to 9 ms a read on a host with
little traffic, more with much. Here the kernel filters by state and port
itself (a two-instruction inet_diag bytecode, laid out as
include/uapi/linux/inet_diag.h says and inet_diag_bc_run reads it) and
returns one short message per matching socket, which is only counted.
"""

from __future__ import annotations

import socket
import struct

from lvsfeedback.netlink_framing import NLA, dump

# linux/netlink.h
NETLINK_SOCK_DIAG = 4

# linux/sock_diag.h, linux/inet_diag.h
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3
TCP_ESTABLISHED = 1
# family, protocol, extensions wanted, pad, states; then inet_diag_sockid:
# source and destination ports and addresses, interface, cookie (all zero).
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
BC_OP = struct.Struct("=BBH")  # code, bytes to skip when true, when false

def port_filter(port: int) -> bytes:
    """
    Bytecode accepting sockets whose local port is C{port}: C{sport >= port}
    then C{sport <= port}. Each comparison is followed by an operation whose
    C{no} field holds the port; a false comparison jumps 4 bytes past the
    end, which rejects the socket, and reaching the end exactly accepts it.
    """
    length = 4 * BC_OP.size
    return b"".join([
        BC_OP.pack(INET_DIAG_BC_S_GE, 2 * BC_OP.size, length + 4), BC_OP.pack(0, 0, port),
        BC_OP.pack(INET_DIAG_BC_S_LE, 2 * BC_OP.size, length - 2 * BC_OP.size + 4), BC_OP.pack(0, 0, port),
    ])


def dump_request(family: int, port: int) -> bytes:
    """The body of a C{SOCK_DIAG_BY_FAMILY} dump request: established TCP sockets of C{family} on local C{port}."""
    bytecode = port_filter(port)
    body = INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_ESTABLISHED)
    return body + NLA.pack(NLA.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode


class EstablishedCounter:
    """
    Counts established TCP connections on a local port, IPv4 and IPv6 (an
    IPv4 client of a dual-stack listener shows once, as IPv6), in the
    network namespace the counter was created in.

    @raise OSError: from L{count} when the kernel offers no TCP sock_diag
        (C{tcp_diag} module missing) or refuses the request.
    """

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self._sequence = 0

    def count(self, port: int) -> int:
        try:
            ipv6 = self._dump(socket.AF_INET6, port)
        except FileNotFoundError:
            ipv6 = 0  # no IPv6 sock_diag handler: IPv6 is off
        return self._dump(socket.AF_INET, port) + ipv6

    def _dump(self, family: int, port: int) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        replies = dump(self._socket, SOCK_DIAG_BY_FAMILY, dump_request(family, port), self._sequence)
        return sum(1 for kind, _ in replies if kind == SOCK_DIAG_BY_FAMILY)

    def close(self) -> None:
        self._socket.close()
