"""
Batched IPVS writes against the kernel, checked through ipvsadm: many
requests to a system call, in chunks, with each refusal mapped back to its
change and a lost acknowledgement never mistaken for success; and the
counters the dumps read, against ipvsadm's, with real connections.
"""

import socket
import subprocess
import time

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from lvsfeedback.ipvs.batch import LOST, IPVSSocket
from lvsfeedback.ipvs.model import (
    AddDest,
    AddService,
    DeleteDest,
    DestKey,
    EditDest,
    RealServer,
    ServiceKey,
    VirtualService,
)
from lvsfeedback.ipvs.netlink import NetlinkIPVS
from lvsfeedback.testing import ipvsadm
from tests.integration import require_ipvs

SERVICES = [VirtualService(ServiceKey.for_address("tcp", "10.91.0.1", 8000 + n), scheduler="wrr") for n in range(10)]
DESTS = [DestKey.of(f"10.91.{1 + n // 250}.{1 + n % 250}", 80) for n in range(100)]


def weight_for(service: int, dest: int, generation: int) -> int:
    return (service * 100 + dest) * 7 % 65000 + generation


class BatchTestCase(TestCase):
    def setUp(self):
        require_ipvs()
        ipvsadm.clear()
        self.addCleanup(ipvsadm.clear)

    def ipvs(self, **options) -> IPVSSocket:
        ipvs = IPVSSocket(**options)
        self.addCleanup(ipvs.close)
        return ipvs

    def populate(self, ipvs: IPVSSocket, generation: int = 0) -> None:
        changes = []
        for s, service in enumerate(SERVICES):
            changes.append(AddService(service))
            changes += [AddDest(service.key, RealServer(dest, weight_for(s, d, generation), "dr"))
                        for d, dest in enumerate(DESTS)]
        self.assertEqual(ipvs.apply(changes), [None] * len(changes))

    def expected(self, generation: int) -> dict:
        return {
            service.key: {dest: (weight_for(s, d, generation), "dr") for d, dest in enumerate(DESTS)}
            for s, service in enumerate(SERVICES)
        }

    def edits(self, generation: int) -> list:
        return [
            EditDest(service.key, RealServer(dest, weight_for(s, d, generation), "dr"))
            for s, service in enumerate(SERVICES)
            for d, dest in enumerate(DESTS)
        ]


class ThousandEditsTests(BatchTestCase):
    @defer.inlineCallbacks
    def test_thousand_weight_edits_through_apply_read_back_through_ipvsadm(self):
        self.populate(self.ipvs())
        self.assertEqual(ipvsadm.read_table(), self.expected(0))
        table = NetlinkIPVS(reactor)
        self.addCleanup(table.close)
        failures = yield table.apply(self.edits(1))
        self.assertEqual(failures, [])
        self.assertEqual(ipvsadm.read_table(), self.expected(1))
        snapshot = yield table.snapshot()
        as_read = {
            key: {dest: (d.server.weight, d.server.forwarding) for dest, d in entry.dests.items()}
            for key, entry in snapshot.items()
        }
        self.assertEqual(as_read, self.expected(1))

    def test_small_chunks_keep_order_and_map_refusals_to_their_changes(self):
        ipvs = self.ipvs()
        ipvs.messages_per_chunk = 7
        self.populate(ipvs)
        service = SERVICES[0].key
        absent = ServiceKey.for_address("tcp", "10.91.0.2", 80)
        changes = self.edits(2)[:40]
        # Refusals at chunk boundaries and inside chunks, each with its own reason.
        changes[6] = AddDest(service, RealServer(DESTS[6], 1, "dr"))  # already there
        changes[7] = EditDest(absent, RealServer(DESTS[7], 1, "dr"))  # no such service
        changes[20] = DeleteDest(service, DestKey.of("10.91.9.9", 80))  # no such real server
        changes[39] = AddService(SERVICES[3])  # already there
        results = ipvs.apply(changes)
        refused = {index: reason for index, reason in enumerate(results) if reason is not None}
        self.assertEqual(refused, {6: "EEXIST", 7: "ESRCH", 20: "ENOENT", 39: "EEXIST"})
        expected = self.expected(0)
        for change in changes:
            if isinstance(change, EditDest) and change.service in expected:
                expected[change.service][change.server.key] = (change.server.weight, "dr")
        self.assertEqual(ipvsadm.read_table(), expected)

    def test_lost_acknowledgements_are_reported_never_taken_for_success(self):
        self.populate(self.ipvs())
        # A receive buffer far too small for one chunk of a thousand
        # acknowledgements: the kernel drops most of them.
        starved = self.ipvs(receive_buffer=4096)
        starved.messages_per_chunk = 1000
        changes = self.edits(3)
        results = starved.apply(changes)
        self.assertEqual(len(results), len(changes))
        self.assertEqual(set(results) - {None, LOST}, set())
        self.assertIn(LOST, results)
        table = ipvsadm.read_table()
        for change, result in zip(changes, results):
            if result is None:
                self.assertEqual(table[change.service][change.server.key], (change.server.weight, "dr"))
        # The socket still works afterwards, in chunks that fit.
        starved.messages_per_chunk = 1
        self.assertEqual(starved.apply(self.edits(4)[:50]), [None] * 50)


class CounterTests(BatchTestCase):
    @staticmethod
    def ipvsadm_row(port: int, *options: str) -> list[str]:
        listing = subprocess.run(["ipvsadm", "-Ln", *options], check=True, capture_output=True, text=True).stdout
        return next(line.split() for line in listing.splitlines() if line.split()[:2] == ["->", f"127.0.0.1:{port}"])

    def test_connection_and_packet_counters_read_back_as_ipvsadm_shows_them(self):
        # A virtual address on lo and a local real server: IPVS schedules
        # connections made on this machine too (its LOCAL_OUT hook).
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "address", "add", "10.91.200.1/32", "dev", "lo"], check=True)
        self.addCleanup(subprocess.run, ["ip", "address", "del", "10.91.200.1/32", "dev", "lo"], check=True)
        listener = socket.create_server(("0.0.0.0", 0))
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        service = ServiceKey.for_address("tcp", "10.91.200.1", port)
        ipvs = self.ipvs()
        changes = [AddService(VirtualService(service)), AddDest(service, RealServer(DestKey.of("127.0.0.1", port)))]
        self.assertEqual(ipvs.apply(changes), [None, None])
        connections = []
        for _ in range(3):
            connections.append(socket.create_connection(("10.91.200.1", port), timeout=10))
            connections.append(listener.accept()[0])
        for connection in connections[:2]:
            connection.close()  # one connection closed: inactive
        self.addCleanup(lambda: [connection.close() for connection in connections])

        # The kernel's estimator folds per-CPU counts into the totals every 2 s.
        deadline = time.monotonic() + 10
        while ipvs.dests(service)[0].counters.connections < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        (dest,) = ipvs.dests(service)
        self.assertEqual(dest.counters.connections, int(self.ipvsadm_row(port, "--stats")[2]))
        self.assertEqual(dest.counters.connections, 3)
        row = self.ipvsadm_row(port)
        self.assertEqual((dest.counters.active_connections, dest.counters.inactive_connections), (int(row[4]), int(row[5])))
        self.assertEqual(dest.counters.active_connections, 2)

        # Rates and totals change at each of the estimator's 2 s ticks: ipvsadm's
        # InPPS and InPkts must be those read just before or just after it.
        for _ in range(10):
            before = ipvs.dests(service)[0].counters
            rates = self.ipvsadm_row(port, "--rate", "--exact")
            stats = self.ipvsadm_row(port, "--stats", "--exact")
            after = ipvs.dests(service)[0].counters
            if (int(rates[3]), int(stats[3])) in ((before.packet_rate, before.packets), (after.packet_rate, after.packets)):
                break
        else:
            self.fail(f"ipvsadm shows InPPS {rates[3]} and InPkts {stats[3]}, the dump {before} then {after}")
        self.assertGreater(after.packets, 0)
