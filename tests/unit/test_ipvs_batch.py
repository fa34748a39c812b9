"""
Tests for lvsfeedback.ipvs.batch: the IPVS generic netlink requests it
encodes, read back with pyroute2's own parser and compared with the requests
pyroute2 builds for the same change, and the acknowledgements it reads.
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
from lvsfeedback.ipvs.batch import NLM_F_ACK, NLM_F_REQUEST, IPVSWriter, acknowledgements, encode
from lvsfeedback.ipvs.model import (
    FORWARDING,
    PROTOCOLS,
    AddDest,
    AddService,
    DeleteDest,
    DeleteMarkRule,
    DeleteService,
    DestKey,
    EditDest,
    EditService,
    IPVSError,
    RealServer,
    ServiceKey,
    VirtualService,
)

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
            for nest, attributes in ours.items():
                self.assertEqual(attributes, {name: theirs[nest][name] for name in attributes}, change)
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
    return struct.pack("=IHHII", 36, batch.NLMSG_ERROR, 0x100, sequence, 4242) + struct.pack("=i", code) + request_header


class AcknowledgementTests(SynchronousTestCase):
    def test_success_and_refusal_with_their_sequence_numbers(self):
        datagram = nlmsgerr(7, 0) + nlmsgerr(8, -17)
        self.assertEqual(list(acknowledgements(datagram)), [(7, 0), (8, 17)])

    def test_other_messages_and_a_truncated_tail_are_skipped(self):
        done = struct.pack("=IHHII", 20, 3, 0, 9, 0) + b"\0" * 4
        datagram = done + nlmsgerr(10, -2) + b"\x24\x00"
        self.assertEqual(list(acknowledgements(datagram)), [(10, 2)])

    def test_errno_names(self):
        self.assertEqual([batch.errno_name(code) for code in (2, 3, 17)], ["ENOENT", "ESRCH", "EEXIST"])
        self.assertEqual(batch.errno_name(99999), "99999")


class WriterOpenTests(SynchronousTestCase):
    def test_a_kernel_without_ipvs_is_named_with_the_fix(self):
        if os.path.exists("/proc/net/ip_vs"):
            raise SkipTest("this kernel has IPVS; tests/integration/test_ipvs_batch.py covers the writer here")
        with self.assertRaises(IPVSError) as caught:
            IPVSWriter()
        self.assertIn("modprobe ip_vs", caught.exception.reason)
        self.assertIn("ENOENT", caught.exception.reason)
