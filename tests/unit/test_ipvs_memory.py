"""The in-memory IPVS table keeps the same contract as the kernel."""

import pickle

from twisted.trial.unittest import TestCase

from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.ipvs.model import AddDest, AddService, DestKey, RealServer
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


class DestKeyTests(TestCase):
    def test_a_dest_key_hashes_as_its_fields_and_survives_pickling(self):
        key = DestKey.of("10.1.0.1", 80)
        self.assertEqual(hash(key), hash(DestKey("10.1.0.1", 80)))
        self.assertEqual(hash(key), hash(("10.1.0.1", 80)))
        self.assertEqual({key: 1}[DestKey("10.1.0.1", 80)], 1)
        copied = pickle.loads(pickle.dumps(key))
        self.assertEqual(copied, key)
        # Rebuilt, not restored: another process hashes strings differently.
        self.assertNotIn(b"_hash", pickle.dumps(key))
