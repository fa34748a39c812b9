"""
What the kernel tests of the director share: a lab (real servers in network
namespaces with CPU-bound backends in cgroups), real `twistd lvs-agent` and
`twistd lvs-director` processes in it, and readers of what the kernel and the
director's status say. Every wait is for a line a daemon logs, bounded.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.ipvs.model import ServiceKey
from lvsfeedback.lab.topology import VIP, Topology, namespace_command
from lvsfeedback.testing import ipvsadm
from lvsfeedback.testing.daemon import Daemon
from tests.integration import require_ipvs

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
WEB = ServiceKey.for_address("tcp", VIP, 80)
UPDATE = 2.0  # the director's update_interval in these tests
# Python starts slowly in the emulated VM; a daemon's first words take long.
STARTUP = 240.0
# Traffic through each test's steps, stopped when they are done: a bound, not a length.
UNTIL_STOPPED = 900.0

SERVICE = """
[[service]]
name = "web"
protocol = "tcp"
address = "{vip}"
port = 80
scheduler = "wlc"
forwarding = "nat"
{reals}
"""
REAL = """
[[service.real]]
address = "{address}"
port = 8080
"""


def reals(servers) -> str:
    return "".join(REAL.format(address=server.address) for server in servers)


def change_line(dest: str, reason: str = r"[a-z-]+") -> str:
    """The pattern of the director's log line for a weight change of dest."""
    return rf"TCP {re.escape(VIP)}:80 {re.escape(dest)}:8080: weight (\S+) -> (\d+) \(({reason})"


class DirectorInTheLab(SynchronousTestCase):
    servers = 3
    # Health mode (weight = base x health) is the mapping most of these tests
    # assert on; CapacityModeTests covers capacity mode, the default.
    mode = "health"

    def setUp(self):
        require_ipvs()
        self.lab = Topology(servers=self.servers, cpus_per_server=0.25).build()
        self.addCleanup(self.lab.teardown)
        self.folder = tempfile.mkdtemp(prefix="lvsf-director-")
        self.config = os.path.join(self.folder, "director.toml")
        self.agents: dict[str, Daemon] = {}

    def write_config(self, services: str, director: str = "", policy: str = "") -> None:
        with open(self.config, "w") as file:
            file.write(textwrap.dedent(f"""
                [director]
                listen = "tcp:3262:interface=10.201.0.1"
                update_interval = {UPDATE}
                {director}
                [policy]
                mode = "{self.mode}"
                # Every move is written, so each shows as a log line to wait for.
                hysteresis = 0
                {policy}
                """) + services)

    def daemon(self, namespace: str, argv: list[str], cgroup=None) -> Daemon:
        process = Daemon(namespace_command(namespace, argv, cgroup.procs_file if cgroup else None))
        self.addCleanup(process.stop)
        return process

    def start_director(self) -> Daemon:
        director = self.daemon(self.lab.director, [TWISTD, "-n", "--pidfile=", "lvs-director", "--config", self.config])
        director.wait_for(r"GuardedNEFactory starting on 3262", STARTUP)
        return director

    def start_agent(self, server, metric: str | None = None) -> Daemon:
        agent = self.daemon(server.namespace, [
            TWISTD, "-n", "--pidfile=", "lvs-agent", "--director", "tcp:10.201.0.1:3262",
            "--service", "tcp:8080:nat", "--metric", metric or f"cgroup:path={server.cgroup.path}", "--interval", "0.5",
        ])
        self.agents[server.name] = agent
        return agent

    def kernel(self) -> dict:
        return ipvsadm.parse(self.lab.run(self.lab.director, ["ipvsadm", "-Ln"]).stdout)

    def weights(self, key: ServiceKey = WEB) -> dict[str, int]:
        return {dest.address: weight for dest, (weight, _) in self.kernel()[key].items()}

    def status(self) -> dict:
        answer = self.lab.run(self.lab.director, ["curl", "-sf", "http://127.0.0.1:9101/status.json"])
        return json.loads(answer.stdout)

    def assertDirectorAgreesWithIpvsadm(self) -> None:
        """
        ipvsadm shows every weight as the director recorded it just before
        or just after the read: a pass that completes in between shows in
        the second record. Read in one namespace entry (each costs about a
        second in the VM); read again while a pass is still writing.
        """
        url = "http://127.0.0.1:9101/status.json"
        script = f"curl -sf {url}; echo; echo ====; ipvsadm -Ln; echo ====; curl -sf {url}"
        for _ in range(10):
            first, listing, second = self.lab.run(self.lab.director, ["sh", "-c", script]).stdout.split("====\n")
            views = [self._director_view(json.loads(first)), self._director_view(json.loads(second))]
            kernel = {
                str(key): {str(dest): weight for dest, (weight, _) in dests.items()}
                for key, dests in ipvsadm.parse(listing).items()
            }
            disagreements = [
                (service, server, weight)
                for service, servers in views[1].items()
                for server, weight in servers.items()
                if kernel.get(service, {}).get(server) not in (views[0].get(service, {}).get(server), weight)
            ]
            if not disagreements:
                return
        self.fail(f"director and ipvsadm disagree: {disagreements}; ipvsadm {kernel}")

    @staticmethod
    def _director_view(status: dict) -> dict:
        return {
            service["virtual_service"]: {s["server"]: s["kernel_weight"] for s in service["servers"]}
            for service in status["services"]
            if service["in_kernel"]
        }

    def wait_for_feedback(self, director: Daemon, servers) -> None:
        for server in servers:
            director.wait_for(change_line(server.address, "health"), STARTUP)
