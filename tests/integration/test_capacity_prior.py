"""
What an idle server can say about itself (#14): real agents report their
cgroup's CPU quota over NECP's capacity extension, and a real director in
capacity mode starts each server's weight from it, before any traffic.
No load is generated in these tests: every weight is a prior, or the
controller's step from it at idle.
"""

from __future__ import annotations

import re
import time

from tests.integration.test_director_kernel import (
    SERVICE,
    STARTUP,
    UPDATE,
    VIP,
    DirectorInTheLab,
    reals,
)

# Each status read enters the director's namespace: about a second in the VM.
STATUS_READS = 20


class CapacityPriorTests(DirectorInTheLab):
    servers = 3
    mode = "capacity"

    def start(self) -> None:
        self.write_config(SERVICE.format(vip=VIP, reals=reals(self.lab.servers)), policy="slow_start = 0")
        director = self.start_director()
        for server in self.lab.servers:
            self.start_agent(server)
        # The registry logs each agent's first capacity report.
        for server in self.lab.servers:
            director.wait_for(rf"agent {re.escape(server.address)} 6/8080: capacity [\d.]+ CPUs", STARTUP)

    def weighed(self, settled=lambda servers: True) -> dict[str, dict]:
        """
        The servers as /status.json shows them once a pass has weighed every
        one in capacity mode (its health and capacity in) and `settled`
        holds of them: read until then, a bounded number of times.
        """
        deadline = time.monotonic() + 3 * UPDATE + 30
        for _ in range(STATUS_READS):
            servers = {s["server"].split(":")[0]: s for s in self.status()["services"][0]["servers"]}
            weighed = all(s["reason"] == "capacity" and s["capacity"] is not None for s in servers.values())
            if weighed and settled(servers):
                return servers
            if time.monotonic() > deadline:
                break
        self.fail(f"not every server weighed in capacity mode, or not as expected: {servers}")

    def test_an_idle_but_hogged_server_starts_below_its_idle_peers(self):
        hogged, *idle = self.lab.servers
        self.lab.start_backends(work_ms=5)
        # The hog runs before its agent's first sample: the server is idle
        # (no client), but its CPU is taken.
        self.lab.start_hog(hogged)
        self.start()

        def hogged_below_idle(servers) -> bool:
            desired = {address: s["desired_weight"] for address, s in servers.items()}
            return desired[hogged.address] < min(desired[peer.address] for peer in idle)

        # When the hogged server's agent reports alone, its prior has nothing
        # to be compared with and is its base weight; its peers' priors then
        # start level with that weight, and the controller's next pass steps
        # it down. Either way it is below its peers before any traffic.
        servers = self.weighed(settled=hogged_below_idle)
        self.assertEqual({s["capacity"] for s in servers.values()}, {0.25}, servers)
        self.assertLess(servers[hogged.address]["health"]["value"], 50, servers)
        weights = self.weights()
        self.assertLess(weights[hogged.address], min(weights[peer.address] for peer in idle), weights)
        self.assertDirectorAgreesWithIpvsadm()

    def test_a_one_two_four_cluster_starts_at_one_two_four(self):
        quotas = (0.1, 0.2, 0.4)
        for server, cpus in zip(self.lab.servers, quotas):
            self.lab.set_cpus(server, cpus)
        self.lab.start_backends(work_ms=5)
        self.start()
        servers = self.weighed()
        addresses = [server.address for server in self.lab.servers]
        self.assertEqual([servers[address]["capacity"] for address in addresses], list(quotas), servers)

        def one_two_four(weights) -> bool:
            small, middle, large = (weights[address] for address in addresses)
            return 1.7 * small <= middle <= 2.3 * small and 3.4 * small <= large <= 4.6 * small

        # Without the capacities, idle servers all count as balanced and keep 100 each.
        self.assertTrue(one_two_four({address: s["desired_weight"] for address, s in servers.items()}), servers)
        self.assertTrue(one_two_four(self.weights()), self.weights())
        self.assertDirectorAgreesWithIpvsadm()
