"""The kernel's IPVS table through the project's netlink backend."""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from lvsfeedback.ipvs.model import AddDest, AddService, EditDest, RealServer
from lvsfeedback.ipvs.netlink import NetlinkIPVS
from lvsfeedback.testing import ipvsadm
from lvsfeedback.testing.ipvs_contract import REALS, WEB, IPVSTableContract
from tests.integration import require_ipvs


class KernelTableTestCase(TestCase):
    def makeTable(self):
        require_ipvs()
        ipvsadm.clear()
        self.addCleanup(ipvsadm.clear)
        table = NetlinkIPVS(reactor)
        self.addCleanup(table.close)
        return table


class KernelTableContractTests(IPVSTableContract, KernelTableTestCase):
    pass


class IpvsadmAgreementTests(KernelTableTestCase):
    def setUp(self):
        self.table = self.makeTable()

    @defer.inlineCallbacks
    def assertViewsAgree(self):
        ours = yield self.table.snapshot()
        as_netlink_sees_it = {
            key: {dest: (d.server.weight, d.server.forwarding) for dest, d in entry.dests.items()}
            for key, entry in ours.items()
        }
        self.assertEqual(ipvsadm.read_table(), as_netlink_sees_it)
        return as_netlink_sees_it

    @defer.inlineCallbacks
    def test_pyroute2_and_ipvsadm_agree_before_and_after_a_weight_change(self):
        failures = yield self.table.apply([AddService(WEB)] + [AddDest(WEB.key, real) for real in REALS])
        self.assertEqual(failures, [])
        before = yield self.assertViewsAgree()
        self.assertEqual(before[WEB.key], {real.key: (real.weight, "nat") for real in REALS})

        yield self.table.apply([EditDest(WEB.key, RealServer(REALS[2].key, 3, "nat"))])
        after = yield self.assertViewsAgree()
        self.assertEqual(after[WEB.key][REALS[2].key], (3, "nat"))
        self.assertEqual(after[WEB.key][REALS[0].key], (10, "nat"))
