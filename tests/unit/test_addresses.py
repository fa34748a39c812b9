"""The one way the project writes a host and port."""

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.addresses import describe_address, host_port


class HostPortTests(SynchronousTestCase):
    def test_an_ipv4_address_is_written_bare(self):
        self.assertEqual(host_port("10.0.0.1", 80), "10.0.0.1:80")

    def test_an_ipv6_literal_is_bracketed(self):
        self.assertEqual(host_port("2001:db8::1", 80), "[2001:db8::1]:80")

    def test_a_tcp_peer_is_described_by_host_and_port(self):
        self.assertEqual(describe_address(IPv4Address("TCP", "10.1.0.1", 40001)), "10.1.0.1:40001")
        self.assertEqual(describe_address(IPv6Address("TCP", "::1", 40001)), "[::1]:40001")

    def test_an_address_without_a_host_is_described_as_it_prints(self):
        address = UNIXAddress(b"/run/lvs.sock")
        self.assertEqual(describe_address(address), str(address))
