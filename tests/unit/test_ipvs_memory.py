"""The in-memory IPVS table keeps the same contract as the kernel."""

from twisted.trial.unittest import TestCase

from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.ipvs.model import AddDest, AddService, RealServer
from lvsfeedback.testing.ipvs_contract import REALS, WEB, IPVSTableContract


class MemoryTableContractTests(IPVSTableContract, TestCase):
    def makeTable(self):
        return MemoryIPVS()

    def test_weight_out_of_range_is_refused(self):
        table = self.makeTable()
        failures = self.successResultOf(
            table.apply([AddService(WEB), AddDest(WEB.key, RealServer(REALS[0].key, 70000, "nat"))])
        )
        self.assertEqual([f.reason for f in failures], ["EINVAL"])
