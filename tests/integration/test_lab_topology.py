"""
The lab cluster on a real kernel: namespaces, cgroups, backends, IPVS NAT
from the client's VIP to every real server, the load generator's view of
it, and a teardown that leaves nothing behind.
"""

from twisted.trial.unittest import TestCase

from lvsfeedback.lab.loadgen import LoadConfig
from lvsfeedback.lab.topology import BACKEND_PORT, VIP, LabError, Topology, list_namespaces
from tests.integration import require_ipvs

SERVICE = f"{VIP}:80"


class LabTopologyTests(TestCase):
    def build_lab(self, servers, cpus_per_server):
        lab = Topology(servers=servers, cpus_per_server=cpus_per_server).build()

        def teardown_unless_done():
            if lab.leftovers():
                lab.teardown()

        self.addCleanup(teardown_unless_done)
        return lab

    def add_nat_service(self, lab):
        lab.run(lab.director, ["ipvsadm", "-A", "-t", SERVICE, "-s", "rr"])
        for server in lab.servers:
            lab.run(lab.director, [
                "ipvsadm", "-a", "-t", SERVICE, "-r", f"{server.address}:{BACKEND_PORT}", "-m", "-w", "1",
            ])

    def run_load(self, lab, **pattern):
        return lab.generate_load(LoadConfig(VIP, 80, rate=30, duration=4, seed=7, timeout=5, **pattern))

    def assertEveryServerAnsweredEverything(self, lab, summary):
        self.assertGreater(summary.requests, 60)
        self.assertEqual((summary.errors, summary.timeouts), (0, 0))
        self.assertEqual(summary.ok, summary.requests)
        self.assertEqual(set(summary.servers), {server.name for server in lab.servers})

    def test_ipvs_nat_reaches_every_backend_and_teardown_leaves_nothing(self):
        require_ipvs()
        lab = self.build_lab(servers=3, cpus_per_server=0.5)
        self.assertEqual(set(lab.plan.namespaces) - set(list_namespaces()), set())
        lab.start_backends(work_ms=2)
        self.add_nat_service(lab)

        short = self.run_load(lab, pattern="short")
        self.assertEveryServerAnsweredEverything(lab, short)
        # Round robin over one-request connections: an equal split, give or take one.
        for count in short.servers.values():
            self.assertLessEqual(abs(count - short.requests / 3), 1)

        persistent = self.run_load(lab, pattern="persistent", connections=6, requests_per_connection=10)
        self.assertEveryServerAnsweredEverything(lab, persistent)

        for server in lab.servers:
            self.assertEqual(server.cgroup.cpus(), 0.5)
            # The backends ran inside their cgroups, so their work shows there.
            self.assertGreater(server.cgroup.cpu_stat().usage_usec, 0)

        lab.teardown()
        self.assertEqual(lab.leftovers(), [])
        self.assertEqual([name for name in list_namespaces() if name.startswith(lab.prefix)], [])
        self.assertFalse(lab.plan.cgroup_parent.exists())

    def test_hog_and_quota_change_act_on_the_servers_cgroup(self):
        require_ipvs()
        lab = self.build_lab(servers=1, cpus_per_server=None)
        server = lab.servers[0]
        self.assertIsNone(server.cgroup.cpus())

        lab.set_cpus(server, 0.25)
        self.assertEqual(server.cgroup.cpus(), 0.25)
        # Inside the namespace the command is in its cgroup and sees the hierarchy where it is outside.
        seen = lab.run(server.namespace, ["sh", "-c", f"cat /proc/self/cgroup {server.cgroup.path}/cpu.max"],
                       cgroup=server.cgroup).stdout
        self.assertEqual(seen, f"0::/{lab.prefix}/{server.name}\n25000 100000\n")

        hog = lab.start_hog(server, workers=2)
        in_cgroup = server.cgroup.pids()
        # The leader and both of the workers it forked.
        self.assertIn(hog.pid, in_cgroup)
        self.assertEqual(len(in_cgroup), 3)
        hog.stop()
        self.assertEqual(server.cgroup.pids(), [])

        lab.teardown()
        self.assertEqual(lab.leftovers(), [])

    def test_a_prefix_in_use_is_refused_and_left_alone(self):
        require_ipvs()
        lab = self.build_lab(servers=1, cpus_per_server=None)
        with self.assertRaises(LabError) as raised:
            Topology(servers=1, prefix=lab.prefix).build()
        self.assertIn("in use", str(raised.exception))
        self.assertEqual(set(lab.plan.namespaces) - set(list_namespaces()), set())
        self.assertTrue(lab.plan.cgroup_parent.exists())
