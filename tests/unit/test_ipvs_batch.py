"""
Tests for lvsfeedback.ipvs.batch: the IPVS generic netlink requests it
encodes, read back with pyroute2's own parser and compared with the requests
pyroute2 builds for the same change; the acknowledgements it reads; and the
dump replies it parses, built with pyroute2's encoder and as the kernel lays
them out.
"""

from __future__ import annotations

import os
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPVSDest, IPVSService
from pyroute2.netlink.generic.ipvs import ipvsmsg
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lvsfeedback.ipvs import batch
from lvsfeedback.ipvs.batch import (
    IPVSSocket,
    acknowledgements,
    encode,
    read_dest,
    read_service,
)
from lvsfeedback.ipvs.model import (
    FORWARDING,
    PROTOCOLS,
    AddDest,
    AddService,
    DeleteDest,
    DeleteMarkRule,
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
from lvsfeedback.netlink_framing import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, attributes

FAMILY_ID = 0x2A

WEB = VirtualService(ServiceKey.for_address("tcp", "10.90.0.1", 80), scheduler="wlc")
STICKY = VirtualService(ServiceKey.for_address("udp", "10.90.0.2", 53), scheduler="wrr", persistence=300)
WEB6 = VirtualService(ServiceKey.for_address("sctp", "fd00:90::1", 443), scheduler="sh")
MARKED = VirtualService(ServiceKey.for_fwmark(7), scheduler="rr", persistence=60)
MARKED6 = VirtualService(ServiceKey.for_fwmark(0xFFFFFFFF, socket.AF_INET6), scheduler="rr")
SERVICES = [WEB, STICKY, WEB6, MARKED, MARKED6]
REAL = RealServer(DestKey.of("10.90.1.2", 8080), weight=65535, forwarding="nat")
REAL6 = RealServer(DestKey.of("fd00:90::2", 443), weight=0, forwarding="tun")
ROUTED = RealServer(DestKey.of("10.90.1.3", 0), weight=3, forwarding="dr")
REALS = [REAL, REAL6, ROUTED]


# pyroute2's requests for the same changes, built as lvsfeedback did before
# it encoded them itself (a fresh IPVSService / IPVSDest per request).


def pyroute2_service(key: ServiceKey, service: VirtualService | None = None) -> IPVSService:
    fields = {"af": key.family, "netmask": {socket.AF_INET: "255.255.255.255", socket.AF_INET6: "128.0.0.0"}[key.family]}
    if key.is_fwmark:
        fields["fwmark"] = key.fwmark
    else:
        fields.update(protocol=PROTOCOLS[key.protocol], addr=key.address, port=key.port)
    if service is not None:
        fields.update(
            sched_name=service.scheduler,
            timeout=service.persistence,
            flags={"flags": 1 if service.persistence else 0, "mask": 0xFFFF},
        )
    return IPVSService(**fields)


def pyroute2_dest(server: RealServer) -> IPVSDest:
    return IPVSDest(
        addr=server.key.address, port=server.key.port, weight=server.weight, fwd_method=FORWARDING[server.forwarding]
    )


def pyroute2_request(change) -> bytes:
    message = ipvsmsg()
    message["version"] = 1
    match change:
        case AddService(service) | EditService(service):
            message["cmd"] = 1 if isinstance(change, AddService) else 2
            message["attrs"] = [("IPVS_CMD_ATTR_SERVICE", pyroute2_service(service.key, service).dump_nla())]
        case DeleteService(key):
            message["cmd"] = 3
            message["attrs"] = [("IPVS_CMD_ATTR_SERVICE", pyroute2_service(key).dump_nla())]
        case AddDest(key, server) | EditDest(key, server):
            message["cmd"] = 5 if isinstance(change, AddDest) else 6
            message["attrs"] = [
                ("IPVS_CMD_ATTR_SERVICE", pyroute2_service(key).dump_key()),
                ("IPVS_CMD_ATTR_DEST", pyroute2_dest(server).dump_nla()),
            ]
        case DeleteDest(key, dest):
            message["cmd"] = 7
            message["attrs"] = [
                ("IPVS_CMD_ATTR_SERVICE", pyroute2_service(key).dump_key()),
                ("IPVS_CMD_ATTR_DEST", IPVSDest(addr=dest.address, port=dest.port).dump_nla()),
            ]
    message["header"]["type"] = FAMILY_ID
    message.encode()
    return bytes(message.data)


def decoded(data: bytes):
    """(header, command, version, {nest: {attribute: value}}) as pyroute2 reads the bytes."""
    message = ipvsmsg(data)
    message.decode()
    nests = {name: dict(value["attrs"]) for name, value in message["attrs"]}
    return message["header"], message["cmd"], message["version"], nests


ALL_CHANGES = (
    [AddService(service) for service in SERVICES]
    + [EditService(service) for service in SERVICES]
    + [DeleteService(service.key) for service in SERVICES]
    + [AddDest(service.key, real) for service in SERVICES for real in REALS]
    + [EditDest(service.key, real) for service in SERVICES for real in REALS]
    + [DeleteDest(service.key, real.key) for service in SERVICES for real in REALS]
)


class EncodeTests(SynchronousTestCase):
    def test_header_names_family_sequence_and_asks_for_an_acknowledgement(self):
        data = encode(EditDest(WEB.key, REAL), FAMILY_ID, 0xFFFFFFFF)
        header, command, version, _ = decoded(data)
        self.assertEqual(header["length"], len(data))
        self.assertEqual(header["type"], FAMILY_ID)
        self.assertEqual(header["flags"], NLM_F_REQUEST | NLM_F_ACK)
        self.assertEqual(header["sequence_number"], 0xFFFFFFFF)
        self.assertEqual((command, version), (6, 1))

    def test_every_message_is_padded_to_four_bytes(self):
        for change in ALL_CHANGES:
            self.assertEqual(len(encode(change, FAMILY_ID, 1)) % 4, 0, change)

    def test_adds_and_edits_carry_what_pyroute2_sends(self):
        for change in ALL_CHANGES:
            if isinstance(change, (DeleteService, DeleteDest)):
                continue
            ours = decoded(encode(change, FAMILY_ID, 0))
            theirs = decoded(pyroute2_request(change))
            self.assertEqual(ours[1:], theirs[1:], change)

    def test_deletes_carry_only_the_key_attributes_pyroute2_sends(self):
        # pyroute2 sends a whole service or real server with its defaults;
        # the kernel reads only the identifying attributes of a delete.
        service_key = {"IPVS_SVC_ATTR_AF", "IPVS_SVC_ATTR_PROTOCOL", "IPVS_SVC_ATTR_ADDR", "IPVS_SVC_ATTR_PORT"}
        dest_key = {"IPVS_DEST_ATTR_ADDR", "IPVS_DEST_ATTR_PORT", "IPVS_DEST_ATTR_ADDR_FAMILY"}
        for change in ALL_CHANGES:
            if not isinstance(change, (DeleteService, DeleteDest)):
                continue
            _, command, _, ours = decoded(encode(change, FAMILY_ID, 0))
            _, their_command, _, theirs = decoded(pyroute2_request(change))
            self.assertEqual(command, their_command)
            for nest, sent in ours.items():
                self.assertEqual(sent, {name: theirs[nest][name] for name in sent}, change)
            service = ours["IPVS_CMD_ATTR_SERVICE"]
            fwmark_key = {"IPVS_SVC_ATTR_AF", "IPVS_SVC_ATTR_FWMARK"}
            self.assertEqual(set(service), fwmark_key if "IPVS_SVC_ATTR_FWMARK" in service else service_key)
            if isinstance(change, DeleteDest):
                self.assertEqual(set(ours["IPVS_CMD_ATTR_DEST"]), dest_key)

    def test_netmask_is_the_raw_u32_the_kernel_reads(self):
        # An all-ones mask for IPv4, the prefix length 128 for IPv6, in host order.
        for service, mask in [(WEB, 0xFFFFFFFF), (WEB6, 128), (MARKED6, 128)]:
            data = encode(AddService(service), FAMILY_ID, 0)
            marker = struct.pack("=HH", 8, batch.IPVS_SVC_ATTR_NETMASK)
            at = data.index(marker)
            self.assertEqual(struct.unpack_from("=I", data, at + 4)[0], mask)

    def test_persistence_sets_the_persistent_flag(self):
        _, _, _, attrs = decoded(encode(EditService(STICKY), FAMILY_ID, 0))
        service = attrs["IPVS_CMD_ATTR_SERVICE"]
        self.assertEqual(service["IPVS_SVC_ATTR_FLAGS"], {"flags": 1, "mask": 0xFFFF})
        self.assertEqual(service["IPVS_SVC_ATTR_TIMEOUT"], 300)
        self.assertEqual(service["IPVS_SVC_ATTR_SCHED_NAME"], "wrr")

    @given(
        weight=st.integers(0, 65535),
        port=st.integers(0, 65535),
        host=st.integers(1, 2**32 - 2),
        forwarding=st.sampled_from(sorted(FORWARDING)),
    )
    def test_any_weight_edit_reads_back(self, weight, port, host, forwarding):
        server = RealServer(DestKey.of(socket.inet_ntoa(struct.pack("!I", host)), port), weight, forwarding)
        _, command, _, attrs = decoded(encode(EditDest(WEB.key, server), FAMILY_ID, 0))
        dest = attrs["IPVS_CMD_ATTR_DEST"]
        self.assertEqual(command, batch.IPVS_CMD_SET_DEST)
        self.assertEqual(
            (dest["IPVS_DEST_ATTR_ADDR"], dest["IPVS_DEST_ATTR_PORT"], dest["IPVS_DEST_ATTR_WEIGHT"]),
            (server.key.address, port, weight),
        )
        self.assertEqual(dest["IPVS_DEST_ATTR_FWD_METHOD"], FORWARDING[forwarding])

    def test_a_mark_rule_is_not_an_ipvs_request(self):
        self.assertRaises(TypeError, encode, DeleteMarkRule(7), FAMILY_ID, 0)


def nlmsgerr(sequence: int, code: int) -> bytes:
    """An acknowledgement as the kernel sends it with NETLINK_CAP_ACK: error, then the request's header."""
    request_header = struct.pack("=IHHII", 140, FAMILY_ID, NLM_F_REQUEST | NLM_F_ACK, sequence, 0)
    return struct.pack("=IHHII", 36, NLMSG_ERROR, 0x100, sequence, 4242) + struct.pack("=i", code) + request_header


class AcknowledgementTests(SynchronousTestCase):
    def test_success_and_refusal_with_their_sequence_numbers(self):
        datagram = nlmsgerr(7, 0) + nlmsgerr(8, -17)
        self.assertEqual(list(acknowledgements(datagram)), [(7, 0), (8, 17)])

    def test_other_messages_and_a_truncated_tail_are_skipped(self):
        done = struct.pack("=IHHII", 20, 3, 0, 9, 0) + b"\0" * 4
        datagram = done + nlmsgerr(10, -2) + b"\x24\x00"
        self.assertEqual(list(acknowledgements(datagram)), [(10, 2)])


class WriterOpenTests(SynchronousTestCase):
    def test_a_kernel_without_ipvs_is_named_with_the_fix(self):
        if os.path.exists("/proc/net/ip_vs"):
            raise SkipTest("this kernel has IPVS; tests/integration/test_ipvs_batch.py covers the socket there")
        with self.assertRaises(IPVSError) as caught:
            IPVSSocket()
        self.assertIn("modprobe ip_vs", caught.exception.reason)
        self.assertIn("ENOENT", caught.exception.reason)


def dump_reply(nest: str, attrs: list) -> dict[int, bytes]:
    """One dump reply as pyroute2 encodes it, split into its top-level attributes as IPVSSocket does."""
    message = ipvsmsg()
    message["cmd"] = 1
    message["version"] = 1
    message["attrs"] = [(nest, {"attrs": attrs})]
    message["header"]["type"] = FAMILY_ID
    message["header"]["flags"] = 2  # NLM_F_MULTI
    message.encode()
    return attributes(bytes(message.data)[20:])


def service_attrs(service: VirtualService) -> list:
    key = service.key
    attrs = [("IPVS_SVC_ATTR_AF", key.family)]
    if key.is_fwmark:
        attrs += [("IPVS_SVC_ATTR_PROTOCOL", 6), ("IPVS_SVC_ATTR_FWMARK", key.fwmark)]
    else:
        attrs += [
            ("IPVS_SVC_ATTR_PROTOCOL", PROTOCOLS[key.protocol]),
            ("IPVS_SVC_ATTR_ADDR", key.address),
            ("IPVS_SVC_ATTR_PORT", key.port),
            ("IPVS_SVC_ATTR_FWMARK", 0),
        ]
    # The kernel reports the timeout even when the service is not persistent.
    return attrs + [
        ("IPVS_SVC_ATTR_SCHED_NAME", service.scheduler),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": 0x2 | (1 if service.persistence else 0), "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", service.persistence or 360),
        ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255"),
        ("IPVS_SVC_ATTR_STATS", {"attrs": [("IPVS_STATS_ATTR_CONNS", 5)]}),
    ]


def dest_attrs(server: RealServer, family: bool = True, stats: str | None = "IPVS_DEST_ATTR_STATS64") -> list:
    attrs = [
        ("IPVS_DEST_ATTR_ADDR", server.key.address),
        ("IPVS_DEST_ATTR_PORT", server.key.port),
        ("IPVS_DEST_ATTR_FWD_METHOD", FORWARDING[server.forwarding]),
        ("IPVS_DEST_ATTR_WEIGHT", server.weight),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
        ("IPVS_DEST_ATTR_ACTIVE_CONNS", 12),
        ("IPVS_DEST_ATTR_INACT_CONNS", 34),
        ("IPVS_DEST_ATTR_PERSIST_CONNS", 0),
    ]
    if family:
        attrs.append(("IPVS_DEST_ATTR_ADDR_FAMILY", server.key.family))
    if stats is not None:
        attrs.append((stats, {"attrs": [("IPVS_STATS_ATTR_CONNS", 5678), ("IPVS_STATS_ATTR_INPKTS", 9),
                                        ("IPVS_STATS_ATTR_CPS", 42), ("IPVS_STATS_ATTR_INPPS", 310)]}))
    return attrs


class DumpParsingTests(SynchronousTestCase):
    def test_services_read_back(self):
        for service in SERVICES:
            reply = dump_reply("IPVS_CMD_ATTR_SERVICE", service_attrs(service))
            self.assertEqual(read_service(reply[batch.IPVS_CMD_ATTR_SERVICE]), service)

    def test_real_servers_read_back_with_their_counters(self):
        for real in REALS:
            reply = dump_reply("IPVS_CMD_ATTR_DEST", dest_attrs(real))
            self.assertEqual(
                read_dest(reply[batch.IPVS_CMD_ATTR_DEST], socket.AF_INET),
                Dest(real, DestCounters(active_connections=12, inactive_connections=34, connections=5678, connection_rate=42,
                                        packet_rate=310, packets=9)),
            )

    def test_32_bit_statistics_when_there_are_no_64_bit_ones(self):
        reply = dump_reply("IPVS_CMD_ATTR_DEST", dest_attrs(REAL, stats="IPVS_DEST_ATTR_STATS"))
        counters = read_dest(reply[batch.IPVS_CMD_ATTR_DEST], socket.AF_INET).counters
        self.assertEqual((counters.connections, counters.connection_rate, counters.packets, counters.packet_rate),
                         (5678, 42, 9, 310))
        reply = dump_reply("IPVS_CMD_ATTR_DEST", dest_attrs(REAL, stats=None))
        counters = read_dest(reply[batch.IPVS_CMD_ATTR_DEST], socket.AF_INET).counters
        self.assertEqual((counters.connections, counters.connection_rate, counters.packets, counters.packet_rate),
                         (0, 0, 0, 0))

    def test_a_real_server_without_a_family_has_its_services(self):
        # Kernels before 4.x send no IPVS_DEST_ATTR_ADDR_FAMILY.
        dest = (
            struct.pack("=HH", 20, batch.IPVS_DEST_ATTR_ADDR) + socket.inet_pton(socket.AF_INET6, "fd00:90::2")
            + struct.pack("=HHH2x", 6, batch.IPVS_DEST_ATTR_PORT, socket.htons(443))
            + struct.pack("=HHI", 8, batch.IPVS_DEST_ATTR_WEIGHT, 0)
            + struct.pack("=HHI", 8, batch.IPVS_DEST_ATTR_FWD_METHOD, 2)
        )
        self.assertEqual(read_dest(dest, socket.AF_INET6).server, REAL6)

    def test_addresses_as_the_kernel_sends_them_sixteen_bytes_whatever_the_family(self):
        def padded(kind: int, family: int, address: str) -> bytes:
            raw = socket.inet_pton(family, address)
            return struct.pack("=HH", 20, kind) + raw + b"\0" * (16 - len(raw))

        dest = padded(batch.IPVS_DEST_ATTR_ADDR, socket.AF_INET, "10.90.1.2") + b"".join(
            struct.pack("=HHI", 8, kind, value)
            for kind, value in [(batch.IPVS_DEST_ATTR_WEIGHT, 9), (batch.IPVS_DEST_ATTR_FWD_METHOD, 3)]
        ) + struct.pack("=HHH2x", 6, batch.IPVS_DEST_ATTR_PORT, socket.htons(8080))
        self.assertEqual(read_dest(dest, socket.AF_INET).server, RealServer(DestKey.of("10.90.1.2", 8080), 9, "dr"))
        service = (
            struct.pack("=HHH2x", 6, batch.IPVS_SVC_ATTR_AF, socket.AF_INET6)
            + struct.pack("=HHH2x", 6, batch.IPVS_SVC_ATTR_PROTOCOL, 6)
            + padded(batch.IPVS_SVC_ATTR_ADDR, socket.AF_INET6, "fd00:90:0:0:0:0:0:1")
            + struct.pack("=HHH2x", 6, batch.IPVS_SVC_ATTR_PORT, socket.htons(443))
            + struct.pack("=HH", 8, batch.IPVS_SVC_ATTR_SCHED_NAME) + b"wlc\0"
            + struct.pack("=HHII", 12, batch.IPVS_SVC_ATTR_FLAGS, 2, 0xFFFFFFFF)
            + struct.pack("=HHI", 8, batch.IPVS_SVC_ATTR_TIMEOUT, 360)
        )
        self.assertEqual(read_service(service), VirtualService(ServiceKey.for_address("tcp", "fd00:90::1", 443), "wlc", 0))

    def test_ipv6_real_servers_are_named_canonically(self):
        spelled = RealServer(DestKey("fd00:90:0:0:0:0:0:2", 443), 5, "tun")
        reply = dump_reply("IPVS_CMD_ATTR_DEST", dest_attrs(spelled))
        self.assertEqual(read_dest(reply[batch.IPVS_CMD_ATTR_DEST], socket.AF_INET6).server.key, DestKey.of("fd00:90::2", 443))

    def test_attribute_flags_are_not_part_of_the_type(self):
        nested = struct.pack("=HH", 12, 0x8000 | batch.IPVS_CMD_ATTR_DEST) + struct.pack("=HHI", 8, 4, 1)
        self.assertEqual(set(attributes(nested)), {batch.IPVS_CMD_ATTR_DEST})
