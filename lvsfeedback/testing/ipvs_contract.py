"""
What every IPVS backend must do, as a test mixin.

The same tests run against the in-memory table (tests/unit) and against the
kernel through netlink (tests/integration, in the VM), which is how the
in-memory table earns the right to stand in for the kernel in unit tests.
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from zope.interface.verify import verifyObject

from lvsfeedback.ipvs.interfaces import IIPVSTable
from lvsfeedback.ipvs.model import (
    AddDest,
    AddService,
    DeleteDest,
    DeleteService,
    DestKey,
    EditDest,
    EditService,
    RealServer,
    ServiceKey,
    VirtualService,
)

WEB = VirtualService(ServiceKey.for_address("tcp", "10.90.0.1", 80), scheduler="wlc")
REALS = [RealServer(DestKey.of(f"10.90.1.{n}", 8080), weight=10 * n, forwarding="nat") for n in (1, 2, 3)]


class IPVSTableContract:
    """Mix into a trial TestCase whose `makeTable()` returns an empty backend."""

    def setUp(self):
        self.table = self.makeTable()

    @defer.inlineCallbacks
    def applyAll(self, changes):
        failures = yield self.table.apply(changes)
        self.assertEqual(failures, [])

    @defer.inlineCallbacks
    def weights(self, key):
        table = yield self.table.snapshot()
        return {dest: entry.server.weight for dest, entry in table[key].dests.items()}

    def test_the_table_provides_the_declared_interface(self):
        self.assertTrue(verifyObject(IIPVSTable, self.table))

    @defer.inlineCallbacks
    def test_added_service_and_real_servers_read_back(self):
        yield self.applyAll([AddService(WEB)] + [AddDest(WEB.key, real) for real in REALS])
        table = yield self.table.snapshot()
        self.assertEqual(table[WEB.key].service, WEB)
        self.assertEqual({dest.server for dest in table[WEB.key].dests.values()}, set(REALS))

    @defer.inlineCallbacks
    def test_weight_edit_changes_only_that_real_server(self):
        yield self.applyAll([AddService(WEB)] + [AddDest(WEB.key, real) for real in REALS])
        yield self.applyAll([EditDest(WEB.key, RealServer(REALS[1].key, 77, "nat"))])
        weights = yield self.weights(WEB.key)
        self.assertEqual(weights, {REALS[0].key: 10, REALS[1].key: 77, REALS[2].key: 30})

    @defer.inlineCallbacks
    def test_weight_zero_is_kept_not_removed(self):
        yield self.applyAll([AddService(WEB), AddDest(WEB.key, REALS[0])])
        yield self.applyAll([EditDest(WEB.key, RealServer(REALS[0].key, 0, "nat"))])
        weights = yield self.weights(WEB.key)
        self.assertEqual(weights, {REALS[0].key: 0})

    @defer.inlineCallbacks
    def test_refused_change_does_not_stop_the_rest_of_the_batch(self):
        yield self.applyAll([AddService(WEB)])
        failures = yield self.table.apply([AddService(WEB), AddDest(WEB.key, REALS[0])])
        self.assertEqual([(f.change, f.reason) for f in failures], [(AddService(WEB), "EEXIST")])
        weights = yield self.weights(WEB.key)
        self.assertEqual(weights, {REALS[0].key: 10})

    @defer.inlineCallbacks
    def test_missing_service_and_missing_real_server_are_refused_by_name(self):
        yield self.applyAll([AddService(WEB)])
        absent = ServiceKey.for_address("tcp", "10.90.0.2", 80)
        failures = yield self.table.apply(
            [AddDest(absent, REALS[0]), EditDest(WEB.key, REALS[1]), DeleteDest(WEB.key, REALS[2].key)]
        )
        self.assertEqual([f.reason for f in failures], ["ESRCH", "ENOENT", "ENOENT"])

    @defer.inlineCallbacks
    def test_deleting_a_service_removes_its_real_servers(self):
        yield self.applyAll([AddService(WEB)] + [AddDest(WEB.key, real) for real in REALS])
        yield self.applyAll([DeleteService(WEB.key)])
        table = yield self.table.snapshot()
        self.assertNotIn(WEB.key, table)

    @defer.inlineCallbacks
    def test_scheduler_and_persistence_edit_keeps_real_servers(self):
        yield self.applyAll([AddService(WEB), AddDest(WEB.key, REALS[0])])
        sticky = VirtualService(WEB.key, scheduler="wrr", persistence=300)
        yield self.applyAll([EditService(sticky)])
        table = yield self.table.snapshot()
        self.assertEqual(table[WEB.key].service, sticky)
        self.assertEqual(list(table[WEB.key].dests), [REALS[0].key])

    @defer.inlineCallbacks
    def test_fwmark_and_ipv6_services_round_trip(self):
        marked = VirtualService(ServiceKey.for_fwmark(7), scheduler="rr", persistence=60)
        marked6 = VirtualService(ServiceKey.for_fwmark(8, socket.AF_INET6), scheduler="rr")
        web6 = VirtualService(ServiceKey.for_address("tcp", "fd00:90::1", 443), scheduler="wlc")
        real6 = RealServer(DestKey.of("fd00:90::2", 443), weight=5, forwarding="tun")
        routed = RealServer(DestKey.of("10.90.1.1", 0), weight=3, forwarding="dr")
        yield self.applyAll(
            [AddService(marked), AddService(marked6), AddService(web6), AddDest(web6.key, real6), AddDest(marked.key, routed)]
        )
        table = yield self.table.snapshot()
        self.assertEqual(table[marked.key].service, marked)
        self.assertEqual(table[marked6.key].service, marked6)
        self.assertEqual(table[web6.key].service, web6)
        self.assertEqual([d.server for d in table[web6.key].dests.values()], [real6])
        self.assertEqual([d.server for d in table[marked.key].dests.values()], [routed])
