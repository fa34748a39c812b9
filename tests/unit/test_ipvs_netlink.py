"""The netlink table keeps the declared IPVS table interface; built without touching the kernel."""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from lvsfeedback.ipvs.interfaces import IIPVSTable
from lvsfeedback.ipvs.netlink import KernelIPVS, NetlinkIPVS


class NetlinkTableInterfaceTests(TestCase):
    def test_the_netlink_table_provides_the_declared_interface(self):
        self.assertTrue(verifyObject(IIPVSTable, NetlinkIPVS(MemoryReactorClock())))

    def test_building_it_opens_no_socket_and_starts_no_thread(self):
        # Why verifyObject above is safe on a host without ip_vs.
        kernel = KernelIPVS()
        table = NetlinkIPVS(MemoryReactorClock(), kernel)
        self.assertIsNone(kernel._socket)
        self.assertIsNone(table._pool)
