"""Counting established connections through netlink sock_diag, against the host's kernel."""

from __future__ import annotations

import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.metrics.sockdiag import EstablishedCounter, port_filter


class RequestTests(SynchronousTestCase):
    def test_port_filter_compares_the_local_port_from_both_sides(self) -> None:
        # S_GE (2), then S_LE (3), each followed by the port in its "no" field.
        self.assertEqual(struct.unpack("=" + "BBH" * 4, port_filter(8080)),
                         (2, 8, 20, 0, 0, 8080, 3, 8, 12, 0, 0, 8080))


class KernelCountTests(SynchronousTestCase):
    """Real connections on loopback, counted by the host's kernel."""

    def setUp(self) -> None:
        self.counter = EstablishedCounter()
        self.addCleanup(self.counter.close)

    def listener(self, family: int, address: str) -> socket.socket:
        server = socket.socket(family)
        self.addCleanup(server.close)
        server.bind((address, 0))
        server.listen(16)
        return server

    def connect(self, server: socket.socket, address: str, count: int) -> None:
        for _ in range(count):
            client = socket.create_connection((address, server.getsockname()[1]))
            accepted, _ = server.accept()
            self.addCleanup(client.close)
            self.addCleanup(accepted.close)

    def test_counts_server_ends_on_the_port_over_ipv4_and_ipv6(self) -> None:
        if not socket.has_ipv6:
            raise self.skipTest("this host has no IPv6")
        dual = self.listener(socket.AF_INET6, "::")
        self.connect(dual, "127.0.0.1", 3)  # IPv4-mapped, on the IPv6 listener
        self.connect(dual, "::1", 2)
        self.assertEqual(self.counter.count(dual.getsockname()[1]), 5)

    def test_other_ports_and_listeners_do_not_count(self) -> None:
        busy = self.listener(socket.AF_INET, "127.0.0.1")
        idle = self.listener(socket.AF_INET, "127.0.0.1")
        self.connect(busy, "127.0.0.1", 4)
        self.assertEqual(self.counter.count(busy.getsockname()[1]), 4)
        self.assertEqual(self.counter.count(idle.getsockname()[1]), 0)

    def test_a_closed_connection_stops_counting(self) -> None:
        server = self.listener(socket.AF_INET, "127.0.0.1")
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        self.assertEqual(self.counter.count(port), 1)
        client.close()
        accepted.close()
        self.assertEqual(self.counter.count(port), 0)
