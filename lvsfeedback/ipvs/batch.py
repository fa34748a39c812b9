"""
The kernel's IPVS table over a raw generic netlink socket: writes batched
many to a system call, and dumps read with `struct`.

pyroute2 sends one request and waits for its answer before the next; in the
kernel VM that costs ~10 ms a change, fifteen times what `ipvsadm -R` takes.
Here each change is encoded once with `struct` (nlmsghdr, genlmsghdr, nested
attributes, laid out as include/uapi/linux/ip_vs.h says and as the kernel's
ip_vs_genl_parse_service / ip_vs_genl_parse_dest read them), a chunk of
messages goes to the kernel in one `send`, and the kernel, which handles a
netlink send synchronously, queues one acknowledgement per message before
`send` returns. Each acknowledgement carries its request's sequence number,
which maps a refusal back to its change; a refused message does not stop the
kernel from handling the ones after it.

Dumps (the table's services, then each service's real servers) are parsed
here too: pyroute2's generic attribute objects took ~2.2 s to read 1,000 real
servers in the kernel VM, longer than the updater's 2 s between passes.

Only IPVS changes are encoded here; mark rules go through iptables.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
from typing import Any, Iterator, Sequence

from lvsfeedback.ipvs.model import (
    FORWARDING,
    FORWARDING_NAMES,
    PROTOCOL_NAMES,
    PROTOCOLS,
    AddDest,
    AddService,
    Change,
    DeleteDest,
    DeleteService,
    Dest,
    DestCounters,
    DestKey,
    EditDest,
    EditService,
    IPVSError,
    RealServer,
    ServiceKey,
    VirtualService,
)
from lvsfeedback.netlink_framing import (
    NLA,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    RECEIVE_SIZE,
    attributes,
    dump,
    errno_name,
    error_code,
    messages,
    request,
)

# linux/netlink.h
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # refusals echo only the request's header, not its body
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module does not name it

# linux/genetlink.h
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# linux/ip_vs.h
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1
IPVS_CMD_NEW_SERVICE = 1
IPVS_CMD_SET_SERVICE = 2
IPVS_CMD_DEL_SERVICE = 3
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_NEW_DEST = 5
IPVS_CMD_SET_DEST = 6
IPVS_CMD_DEL_DEST = 7
IPVS_CMD_GET_DEST = 8
IPVS_CMD_ATTR_SERVICE = 1
IPVS_CMD_ATTR_DEST = 2
IPVS_SVC_ATTR_AF = 1
IPVS_SVC_ATTR_PROTOCOL = 2
IPVS_SVC_ATTR_ADDR = 3
IPVS_SVC_ATTR_PORT = 4
IPVS_SVC_ATTR_FWMARK = 5
IPVS_SVC_ATTR_SCHED_NAME = 6
IPVS_SVC_ATTR_FLAGS = 7
IPVS_SVC_ATTR_TIMEOUT = 8
IPVS_SVC_ATTR_NETMASK = 9
IPVS_DEST_ATTR_ADDR = 1
IPVS_DEST_ATTR_PORT = 2
IPVS_DEST_ATTR_FWD_METHOD = 3
IPVS_DEST_ATTR_WEIGHT = 4
IPVS_DEST_ATTR_U_THRESH = 5
IPVS_DEST_ATTR_L_THRESH = 6
IPVS_DEST_ATTR_ACTIVE_CONNS = 7
IPVS_DEST_ATTR_INACT_CONNS = 8
IPVS_DEST_ATTR_STATS = 10
IPVS_DEST_ATTR_ADDR_FAMILY = 11
IPVS_DEST_ATTR_STATS64 = 12
IPVS_DEST_ATTR_TUN_TYPE = 13
IPVS_DEST_ATTR_TUN_PORT = 14
IPVS_DEST_ATTR_TUN_FLAGS = 15
IPVS_STATS_ATTR_CONNS = 1
IPVS_STATS_ATTR_INPKTS = 2
IPVS_STATS_ATTR_CPS = 6
IPVS_STATS_ATTR_INPPS = 7
IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_CONN_F_FWD_MASK = 0x7

# The kernel reads the netmask as a raw u32 in host order: a dotted IPv4 mask
# for IPv4, a prefix length for IPv6.
_FULL_NETMASK: dict[int, int] = {socket.AF_INET: 0xFFFFFFFF, socket.AF_INET6: 128}

_GENLMSGHDR = struct.Struct("=BBH")  # command, version, reserved
_NLA_U8 = struct.Struct("=HHB3x")
_NLA_U16 = struct.Struct("=HHH2x")
_NLA_U32 = struct.Struct("=HHI")
_FLAGS = struct.Struct("=II")  # struct ip_vs_flags: flags, mask
_NLA_FLAGS = struct.Struct("=HHII")
_U16 = struct.Struct("=H")
_BE16 = struct.Struct("!H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_ADDRESS_SIZE: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}

# Sends are kept well under the socket's send buffer (the kernel refuses a
# datagram larger than it with EMSGSIZE).
CHUNK_BYTES = 64 * 1024
# An upper bound on what one queued acknowledgement costs the receive buffer
# (its skb's truesize: a 36-byte message in a ~0.3 KiB buffer plus ~0.6 KiB of
# skb bookkeeping). A chunk never asks for more acknowledgements than the
# buffer holds at this cost, so the kernel never drops one.
ACK_COST = 2048
# Asked for with SO_RCVBUFFORCE (the director runs with CAP_NET_ADMIN, which
# IPVS needs anyway); without it the kernel's default is used, in smaller chunks.
RECEIVE_BUFFER = 4 * 1024 * 1024

# Why a change has no answer: the acknowledgement was lost, so whether the
# kernel applied it is unknown. The updater's next pass rereads the table.
LOST = "ENOBUFS"
TIMED_OUT = "ETIMEDOUT"


def _attr(kind: int, payload: bytes) -> bytes:
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def _u8(kind: int, value: int) -> bytes:
    return _NLA_U8.pack(5, kind, value)


def _u16(kind: int, value: int) -> bytes:
    return _NLA_U16.pack(6, kind, value)


def _be16(kind: int, value: int) -> bytes:
    return _NLA_U16.pack(6, kind, socket.htons(value))


def _u32(kind: int, value: int) -> bytes:
    return _NLA_U32.pack(8, kind, value)


def _nest(kind: int, *attrs: bytes) -> bytes:
    body = b"".join(attrs)
    return NLA.pack(NLA.size + len(body), kind) + body


@functools.lru_cache(maxsize=4096)
def _service_key(key: ServiceKey) -> bytes:
    """The attributes that name a service; a pass names the same few services often."""
    if key.is_fwmark:
        return _u16(IPVS_SVC_ATTR_AF, key.family) + _u32(IPVS_SVC_ATTR_FWMARK, key.fwmark)
    return (
        _u16(IPVS_SVC_ATTR_AF, key.family)
        + _u16(IPVS_SVC_ATTR_PROTOCOL, PROTOCOLS[key.protocol])
        + _attr(IPVS_SVC_ATTR_ADDR, socket.inet_pton(key.family, key.address))
        + _be16(IPVS_SVC_ATTR_PORT, key.port)
    )


def _service(service: VirtualService) -> bytes:
    persistent = IP_VS_SVC_F_PERSISTENT if service.persistence > 0 else 0
    return _nest(
        IPVS_CMD_ATTR_SERVICE,
        _service_key(service.key),
        _attr(IPVS_SVC_ATTR_SCHED_NAME, service.scheduler.encode("ascii") + b"\0"),
        _NLA_FLAGS.pack(12, IPVS_SVC_ATTR_FLAGS, persistent, 0xFFFF),
        _u32(IPVS_SVC_ATTR_TIMEOUT, service.persistence),
        _u32(IPVS_SVC_ATTR_NETMASK, _FULL_NETMASK[service.key.family]),
    )


def _dest_key(key: DestKey) -> bytes:
    family = key.family
    return (
        _attr(IPVS_DEST_ATTR_ADDR, socket.inet_pton(family, key.address))
        + _be16(IPVS_DEST_ATTR_PORT, key.port)
        + _u16(IPVS_DEST_ATTR_ADDR_FAMILY, family)
    )


def _dest(server: RealServer) -> bytes:
    # Thresholds and tunnel settings are sent as their defaults, as ipvsadm and
    # pyroute2 do: the kernel replaces them all on every edit.
    return _nest(
        IPVS_CMD_ATTR_DEST,
        _dest_key(server.key),
        _u32(IPVS_DEST_ATTR_FWD_METHOD, FORWARDING[server.forwarding]),
        _u32(IPVS_DEST_ATTR_WEIGHT, server.weight),
        _u32(IPVS_DEST_ATTR_U_THRESH, 0),
        _u32(IPVS_DEST_ATTR_L_THRESH, 0),
        _u8(IPVS_DEST_ATTR_TUN_TYPE, 0),
        _be16(IPVS_DEST_ATTR_TUN_PORT, 0),
        _u16(IPVS_DEST_ATTR_TUN_FLAGS, 0),
    )


def _command_and_attrs(change: Change) -> tuple[int, bytes]:
    match change:
        case AddService(service):
            return IPVS_CMD_NEW_SERVICE, _service(service)
        case EditService(service):
            return IPVS_CMD_SET_SERVICE, _service(service)
        case DeleteService(key):
            return IPVS_CMD_DEL_SERVICE, _nest(IPVS_CMD_ATTR_SERVICE, _service_key(key))
        case AddDest(key, server):
            return IPVS_CMD_NEW_DEST, _nest(IPVS_CMD_ATTR_SERVICE, _service_key(key)) + _dest(server)
        case EditDest(key, server):
            return IPVS_CMD_SET_DEST, _nest(IPVS_CMD_ATTR_SERVICE, _service_key(key)) + _dest(server)
        case DeleteDest(key, dest):
            return IPVS_CMD_DEL_DEST, (
                _nest(IPVS_CMD_ATTR_SERVICE, _service_key(key)) + _nest(IPVS_CMD_ATTR_DEST, _dest_key(dest))
            )
    raise TypeError(f"not an IPVS table change: {change!r}")


def encode(change: Change, family_id: int, sequence: int) -> bytes:
    """One IPVS generic netlink request for `change`, asking for an acknowledgement."""
    command, attrs = _command_and_attrs(change)
    body = _GENLMSGHDR.pack(command, IPVS_GENL_VERSION, 0) + attrs
    return request(family_id, NLM_F_REQUEST | NLM_F_ACK, sequence, body)


def acknowledgements(datagram: bytes) -> Iterator[tuple[int, int]]:
    """(sequence, errno) for each NLMSG_ERROR message in a datagram; errno 0 is success."""
    for kind, sequence, body in messages(datagram):
        if kind == NLMSG_ERROR:
            yield sequence, error_code(body)


# Reading dumps.


def _address(family: int, payload: bytes) -> str:
    # The kernel sends a whole union nf_inet_addr (16 bytes) whatever the family.
    return socket.inet_ntop(family, payload[: _ADDRESS_SIZE[family]])


def read_service(nest: bytes) -> VirtualService:
    """A service from the IPVS_CMD_ATTR_SERVICE attribute of a GET_SERVICE dump."""
    attrs = attributes(nest)
    family = _U16.unpack_from(attrs[IPVS_SVC_ATTR_AF])[0]
    fwmark = _U32.unpack_from(attrs[IPVS_SVC_ATTR_FWMARK])[0] if IPVS_SVC_ATTR_FWMARK in attrs else 0
    if fwmark:
        key = ServiceKey.for_fwmark(fwmark, family)
    else:
        protocol = _U16.unpack_from(attrs[IPVS_SVC_ATTR_PROTOCOL])[0]
        key = ServiceKey.for_address(
            PROTOCOL_NAMES.get(protocol, str(protocol)),
            _address(family, attrs[IPVS_SVC_ATTR_ADDR]),
            _BE16.unpack_from(attrs[IPVS_SVC_ATTR_PORT])[0],
        )
    flags, _ = _FLAGS.unpack_from(attrs[IPVS_SVC_ATTR_FLAGS])
    persistent = flags & IP_VS_SVC_F_PERSISTENT
    return VirtualService(
        key,
        scheduler=attrs[IPVS_SVC_ATTR_SCHED_NAME].split(b"\0", 1)[0].decode("ascii"),
        persistence=_U32.unpack_from(attrs[IPVS_SVC_ATTR_TIMEOUT])[0] if persistent else 0,
    )


def _statistics(attrs: dict[int, bytes]) -> tuple[int, int, int, int]:
    """(connections, connections per second, incoming packets, incoming
    packets per second) from the 64-bit statistics, or the older 32-bit ones."""
    if IPVS_DEST_ATTR_STATS64 in attrs:
        stats, number = attributes(attrs[IPVS_DEST_ATTR_STATS64]), _U64
    elif IPVS_DEST_ATTR_STATS in attrs:
        stats, number = attributes(attrs[IPVS_DEST_ATTR_STATS]), _U32
    else:
        return 0, 0, 0, 0
    def read(kind: int) -> int:
        return int(number.unpack_from(stats[kind])[0]) if kind in stats else 0

    return read(IPVS_STATS_ATTR_CONNS), read(IPVS_STATS_ATTR_CPS), read(IPVS_STATS_ATTR_INPKTS), read(IPVS_STATS_ATTR_INPPS)


def read_dest(nest: bytes, service_family: int) -> Dest:
    """A real server from the IPVS_CMD_ATTR_DEST attribute of a GET_DEST dump."""
    attrs = attributes(nest)
    family = _U16.unpack_from(attrs[IPVS_DEST_ATTR_ADDR_FAMILY])[0] if IPVS_DEST_ATTR_ADDR_FAMILY in attrs else service_family
    address = _address(family, attrs[IPVS_DEST_ATTR_ADDR])
    port = _BE16.unpack_from(attrs[IPVS_DEST_ATTR_PORT])[0]
    # inet_ntop's IPv4 form is already the canonical one; IPv6 goes through ipaddress.
    key = DestKey(address, port) if family == socket.AF_INET else DestKey.of(address, port)
    def u32(kind: int) -> int:
        return int(_U32.unpack_from(attrs[kind])[0]) if kind in attrs else 0

    connections, connection_rate, packets, packet_rate = _statistics(attrs)
    server = RealServer(
        key,
        weight=u32(IPVS_DEST_ATTR_WEIGHT),
        forwarding=FORWARDING_NAMES.get(u32(IPVS_DEST_ATTR_FWD_METHOD) & IP_VS_CONN_F_FWD_MASK, "nat"),
    )
    counters = DestCounters(
        active_connections=u32(IPVS_DEST_ATTR_ACTIVE_CONNS),
        inactive_connections=u32(IPVS_DEST_ATTR_INACT_CONNS),
        connections=connections,
        connection_rate=connection_rate,
        packet_rate=packet_rate,
        packets=packets,
    )
    return Dest(server, counters)


class IPVSSocket:
    """
    A raw generic netlink socket to the kernel's IPVS: changes applied in
    batches, the table read by dumps. Synchronous; use it from one thread.
    """

    def __init__(self, timeout: float = 10.0, receive_buffer: int = RECEIVE_BUFFER):
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self._socket.bind((0, 0))
            self._socket.settimeout(timeout)
            self._socket.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            try:
                self._socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
            except PermissionError:
                pass  # the default buffer works, with more, smaller chunks
            receive_buffer = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self.messages_per_chunk = max(1, receive_buffer // ACK_COST)
            self._sequence = 0
            self.family_id = self._resolve_family(IPVS_GENL_NAME)
        except BaseException:
            self._socket.close()
            raise

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        return self._sequence

    def _resolve_family(self, name: str) -> int:
        """The id the kernel gave a generic netlink family (CTRL_CMD_GETFAMILY)."""
        sequence = self._next_sequence()
        body = _GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
        self._socket.send(request(GENL_ID_CTRL, NLM_F_REQUEST, sequence, body))
        while True:
            for kind, reply_sequence, reply in messages(self._socket.recv(RECEIVE_SIZE)):
                if reply_sequence != sequence:
                    continue
                if kind == NLMSG_ERROR:
                    raise IPVSError(
                        "open",
                        f"the kernel has no IPVS (generic netlink family {name}: {errno_name(error_code(reply))}):"
                        " modprobe ip_vs",
                    )
                family_id = attributes(reply[_GENLMSGHDR.size :]).get(CTRL_ATTR_FAMILY_ID)
                if family_id is None:
                    raise IPVSError("open", f"the kernel's answer for generic netlink family {name} has no id")
                return int(_U16.unpack_from(family_id)[0])

    def services(self) -> list[VirtualService]:
        return [read_service(attrs[IPVS_CMD_ATTR_SERVICE]) for attrs in self._dump(IPVS_CMD_GET_SERVICE)]

    def dests(self, key: ServiceKey) -> list[Dest]:
        """The real servers of a service; none when there is no such service."""
        service = _nest(IPVS_CMD_ATTR_SERVICE, _service_key(key))
        return [read_dest(attrs[IPVS_CMD_ATTR_DEST], key.family) for attrs in self._dump(IPVS_CMD_GET_DEST, service)]

    def _dump(self, command: int, selector: bytes = b"") -> list[dict[int, bytes]]:
        """The top-level attributes of every message of a dump, in order."""
        body = _GENLMSGHDR.pack(command, IPVS_GENL_VERSION, 0) + selector
        try:
            return [attributes(reply[_GENLMSGHDR.size :])
                    for _, reply in dump(self._socket, self.family_id, body, self._next_sequence())]
        except OSError as error:
            if error.errno is None or isinstance(error, TimeoutError):
                raise
            raise IPVSError("dump", errno_name(error.errno)) from None

    def apply(self, changes: Sequence[Change]) -> list[str | None]:
        """
        Send every change, in order; for each, None if the kernel accepted
        it, or the errno name it refused it with (LOST or TIMED_OUT when its
        acknowledgement never came, so its outcome is unknown).
        """
        results: list[str | None] = []
        chunk: list[bytes] = []
        size = 0
        first = 0
        for change in changes:
            sequence = self._next_sequence()
            message = encode(change, self.family_id, sequence)
            if chunk and (size + len(message) > CHUNK_BYTES or len(chunk) == self.messages_per_chunk):
                results += self._exchange(chunk, first)
                chunk, size = [], 0
            if not chunk:
                first = sequence
            chunk.append(message)
            size += len(message)
        if chunk:
            results += self._exchange(chunk, first)
        return results

    def _exchange(self, messages: list[bytes], first: int) -> list[str | None]:
        """Send one chunk of requests, sequence numbers `first` onward, and read their acknowledgements."""
        self._socket.send(b"".join(messages))
        count = len(messages)
        pending = object()
        results: list[Any] = [pending] * count  # str | None once acknowledged
        missing = count
        timeout = self._socket.gettimeout()
        try:
            while missing:
                try:
                    datagram = self._socket.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                except TimeoutError:
                    return [TIMED_OUT if result is pending else result for result in results]
                except OSError as error:
                    if error.errno != errno.ENOBUFS:
                        raise
                    # The kernel dropped acknowledgements for good (it queues
                    # them all before send returns): read what is left, without waiting.
                    self._socket.settimeout(0)
                    continue
                for sequence, code in acknowledgements(datagram):
                    index = (sequence - first) & 0xFFFFFFFF
                    if index < count and results[index] is pending:
                        results[index] = errno_name(code) if code else None
                        missing -= 1
        finally:
            self._socket.settimeout(timeout)
        return [LOST if result is pending else result for result in results]

    def close(self) -> None:
        self._socket.close()
