"""The lab topology's names, addresses and commands, and its process handles, without root or a VM."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lvsfeedback.lab.cgroups import Cgroup
from lvsfeedback.lab.topology import (
    DR,
    TUN,
    Command,
    LabError,
    LabProcess,
    Topology,
    TopologyPlan,
    list_namespaces,
    namespace_command,
    namespace_pids,
    new_prefix,
    run_command,
    setup_commands,
    teardown_commands,
)


def batch_lines(test, commands, namespace):
    """The lines of the iproute2 batch run in a namespace."""
    for command in commands:
        if command.argv == ["ip", "-n", namespace, "-batch", "-"]:
            return command.input.splitlines()
    test.fail(f"no batch for {namespace}")


class PlanTests(SynchronousTestCase):
    def test_names_and_addresses(self):
        plan = TopologyPlan("lab-x", 3, Path("/cg"))
        self.assertEqual(plan.namespaces, ["lab-x-director", "lab-x-client", "lab-x-rs1", "lab-x-rs2", "lab-x-rs3"])
        self.assertEqual(
            [(s.name, s.namespace, s.address) for s in plan.real_servers],
            [("rs1", "lab-x-rs1", "10.201.0.11"), ("rs2", "lab-x-rs2", "10.201.0.12"),
             ("rs3", "lab-x-rs3", "10.201.0.13")],
        )
        self.assertEqual(plan.real_servers[1].cgroup, Cgroup(Path("/cg/lab-x/rs2")))
        self.assertEqual(plan.cgroup_parent, Path("/cg/lab-x"))

    def test_prefixes_are_unique_and_usable(self):
        first, second = new_prefix(), new_prefix()
        self.assertNotEqual(first, second)
        self.assertTrue(first.startswith("lvsfeedback-lab-"))
        TopologyPlan(first, 1)

    def test_unusable_prefix_and_sizes(self):
        for prefix in ("", "a b", "x/y", "-lead"):
            self.assertRaises(LabError, TopologyPlan, prefix, 1)
        self.assertRaises(LabError, TopologyPlan, "ok", 0)
        self.assertRaises(LabError, TopologyPlan, "ok", 201)

    def test_server_lookup(self):
        lab = Topology(2, prefix="lab-y")
        self.assertEqual(lab.server("rs2").address, "10.201.0.12")
        with self.assertRaises(LabError) as raised:
            lab.server("rs9")
        self.assertIn("rs1, rs2", str(raised.exception))


class CommandTests(SynchronousTestCase):
    def setUp(self):
        self.plan = TopologyPlan("p", 2)
        self.commands = setup_commands(self.plan)

    def batch(self, namespace):
        return batch_lines(self, self.commands, namespace)

    def test_namespaces_come_first(self):
        first = self.commands[0]
        self.assertEqual(first.argv, ["ip", "-batch", "-"])
        self.assertEqual(first.input, "".join(f"netns add {name}\n" for name in self.plan.namespaces))

    def test_director_has_the_vip_and_a_bridge_to_every_server(self):
        lines = self.batch("p-director")
        for expected in [
            "link set lo up",
            "link add br-backend type bridge",
            "addr add 10.201.0.1/24 dev br-backend",
            "link add to-client type veth peer name eth0 netns p-client",
            "addr add 10.200.0.1/24 dev to-client",
            "link add to-rs1 type veth peer name eth0 netns p-rs1",
            "link set to-rs1 master br-backend",
            "link set to-rs2 up",
        ]:
            self.assertIn(expected, lines)
        # A link is made before it is given a master or brought up.
        self.assertLess(lines.index("link add to-rs2 type veth peer name eth0 netns p-rs2"),
                        lines.index("link set to-rs2 master br-backend"))

    def test_real_servers_route_through_the_director(self):
        self.assertEqual(self.batch("p-rs2"), [
            "link set lo up",
            "addr add 10.201.0.12/24 dev eth0",
            "link set eth0 up",
            "route add default via 10.201.0.1",
        ])

    def test_the_client_is_on_the_vip_network(self):
        self.assertIn("addr add 10.200.0.2/24 dev eth0", self.batch("p-client"))

    def test_director_forwards(self):
        self.assertIn(
            Command(["ip", "netns", "exec", "p-director", "sysctl", "-qw", "net.ipv4.ip_forward=1"]),
            self.commands,
        )

    def test_teardown_deletes_the_namespaces_it_is_given(self):
        [command] = teardown_commands(["p-client", "p-rs1"])
        self.assertEqual(command.argv, ["ip", "-force", "-batch", "-"])
        self.assertEqual(command.input, "netns del p-client\nnetns del p-rs1\n")

    def test_a_command_in_a_namespace_joins_its_cgroup_first(self):
        argv = namespace_command("p-rs1", ["python3", "-m", "x"], Path("/cg/p/rs1/cgroup.procs"))
        self.assertEqual(argv[:5], ["ip", "netns", "exec", "p-rs1", "sh"])
        self.assertEqual(argv[-5:], ["lab-in-namespace", "/cg/p/rs1/cgroup.procs", "python3", "-m", "x"])
        script = argv[6]
        self.assertLess(script.index("mount -t cgroup2"), script.index('echo $$ > "$1"'))
        self.assertTrue(script.endswith('exec "$@"'))

    def test_without_cgroup_the_slot_is_empty(self):
        argv = namespace_command("p-client", ["ipvsadm", "-Ln"])
        self.assertEqual(argv[-3:], ["", "ipvsadm", "-Ln"])


class SharedSegmentCommandTests(SynchronousTestCase):
    """DR and TUN: client, director and real servers on one bridge of its own (#17)."""

    def commands(self, mode):
        self.plan = TopologyPlan("p", 2, mode=mode)
        return setup_commands(self.plan)

    def batch(self, commands, namespace):
        return batch_lines(self, commands, namespace)

    def test_a_bridge_in_its_own_namespace_links_everyone(self):
        commands = self.commands(DR)
        self.assertEqual(self.plan.namespaces, ["p-director", "p-client", "p-rs1", "p-rs2", "p-segment"])
        lines = self.batch(commands, "p-segment")
        for name in ("director", "client", "rs1", "rs2"):
            self.assertIn(f"link add to-{name} type veth peer name eth0 netns p-{name}", lines)
            self.assertIn(f"link set to-{name} master segment", lines)
        self.assertEqual([s.address for s in self.plan.real_servers], ["10.200.0.11", "10.200.0.12"])

    def test_the_director_holds_the_vip_beside_its_own_address_and_does_not_forward(self):
        commands = self.commands(DR)
        self.assertEqual(self.batch(commands, "p-director")[1:3],
                         ["addr add 10.200.0.3/24 dev eth0", "addr add 10.200.0.1/32 dev eth0"])
        self.assertEqual([c for c in commands if c.argv[:4] == ["ip", "netns", "exec", "p-director"]], [],
                         "no sysctl: it does not forward")

    def test_a_dr_real_server_holds_the_vip_on_lo_and_never_answers_arp_for_it(self):
        commands = self.commands(DR)
        lines = self.batch(commands, "p-rs2")
        self.assertIn("addr add 10.200.0.1/32 dev lo", lines)
        self.assertNotIn("route add default via 10.201.0.1", lines)
        arp = Command(["ip", "netns", "exec", "p-rs2", "sysctl", "-qw",
                       "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"])
        batch = next(c for c in commands if c.argv == ["ip", "-n", "p-rs2", "-batch", "-"])
        self.assertLess(commands.index(arp), commands.index(batch), "silent before it holds the VIP")

    def test_a_tun_real_server_holds_the_vip_on_an_ipip_device_with_reverse_path_filtering_off(self):
        commands = self.commands(TUN)
        lines = self.batch(commands, "p-rs1")
        self.assertEqual(lines[-3:], ["link add vip-tun type ipip local 10.200.0.11",
                                      "addr add 10.200.0.1/32 dev vip-tun", "link set vip-tun up"])
        self.assertNotIn("addr add 10.200.0.1/32 dev lo", lines)
        self.assertIn(Command(["ip", "netns", "exec", "p-rs1", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                               "net.ipv4.conf.vip-tun.rp_filter=0"]), commands)

    def test_unknown_mode_and_ipv6_outside_nat_are_refused(self):
        self.assertIn("mode must be one of nat, dr, tun", str(self.assertRaises(LabError, TopologyPlan, "p", 1,
                                                                                 mode="masq")))
        self.assertIn("IPv6 lab is a NAT one", str(self.assertRaises(LabError, TopologyPlan, "p", 1,
                                                                       mode=DR, ipv6=True)))


class PairCommandTests(SynchronousTestCase):
    def setUp(self):
        self.plan = TopologyPlan("p", 3, mode=DR, directors=2)
        self.commands = setup_commands(self.plan)

    def test_two_directors_on_the_segment_with_their_own_addresses_and_neither_holds_the_vip(self):
        self.assertEqual(self.plan.director_namespaces, ["p-director", "p-director2"])
        self.assertEqual(self.plan.namespaces[:3], ["p-director", "p-director2", "p-client"])
        segment = batch_lines(self, self.commands, "p-segment")
        self.assertIn("link add to-director2 type veth peer name eth0 netns p-director2", segment)
        self.assertIn("link set to-director2 master segment", segment)
        for namespace, address in (("p-director", "10.200.0.3"), ("p-director2", "10.200.0.4")):
            lines = batch_lines(self, self.commands, namespace)
            self.assertIn(f"addr add {address}/24 dev eth0", lines)
            self.assertNotIn("addr add 10.200.0.1/32 dev eth0", lines, "keepalived gives the VIP")

    def test_the_real_servers_are_those_of_a_single_director_lab(self):
        self.assertEqual(self.plan.real_servers, TopologyPlan("p", 3, mode=DR).real_servers)

    def test_a_pair_needs_the_shared_segment_and_two_directors_at_most(self):
        self.assertIn("DR or TUN, not NAT", str(self.assertRaises(LabError, TopologyPlan, "p", 1, directors=2)))
        self.assertIn("one director or a pair", str(self.assertRaises(LabError, TopologyPlan, "p", 1, mode=DR,
                                                                         directors=3)))


class IPv6CommandTests(SynchronousTestCase):
    def setUp(self):
        self.plan = TopologyPlan("p", 2, ipv6=True)
        self.commands = setup_commands(self.plan)

    def batch(self, namespace):
        return batch_lines(self, self.commands, namespace)

    def test_every_nat_leg_also_gets_an_ipv6_address_at_once(self):
        self.assertIn("addr add fd00:200::1/64 dev to-client nodad", self.batch("p-director"))
        self.assertIn("addr add fd00:201::1/64 dev br-backend nodad", self.batch("p-director"))
        self.assertIn("addr add fd00:200::2/64 dev eth0 nodad", self.batch("p-client"))
        self.assertEqual(self.batch("p-rs2")[-2:], ["addr add fd00:201::12/64 dev eth0 nodad",
                                                    "route add ::/0 via fd00:201::1"])
        self.assertEqual(self.plan.real_servers[1].address6, "fd00:201::12")

    def test_the_director_forwards_both_families(self):
        self.assertIn(Command(["ip", "netns", "exec", "p-director", "sysctl", "-qw", "net.ipv4.ip_forward=1",
                               "net.ipv6.conf.all.forwarding=1"]), self.commands)

    def test_without_ipv6_the_nat_lab_is_unchanged(self):
        plain = setup_commands(TopologyPlan("p", 2))
        self.assertFalse([c for c in plain if "fd00" in (c.input or "") or "forwarding=1" in " ".join(c.argv)])


class RunCommandTests(SynchronousTestCase):
    def test_failure_names_the_command_and_its_stderr(self):
        with self.assertRaises(LabError) as raised:
            run_command(Command(["sh", "-c", "echo no such device >&2; exit 2"]))
        self.assertIn("status 2", str(raised.exception))
        self.assertIn("no such device", str(raised.exception))

    def test_input_reaches_the_command(self):
        self.assertEqual(run_command(Command(["cat"], "netns add x\n")).stdout, "netns add x\n")

    def test_a_missing_program(self):
        with self.assertRaises(LabError) as raised:
            run_command(Command(["lvsfeedback-no-such-program"]))
        self.assertIn("not found", str(raised.exception))


class NamespaceDiscoveryTests(SynchronousTestCase):
    def setUp(self):
        self.base = Path(self.mktemp())
        self.netns = self.base / "netns"
        self.proc = self.base / "proc"
        self.netns.mkdir(parents=True)
        (self.netns / "lab-rs1").write_text("")
        (self.netns / "other").write_text("")
        for pid in ("12", "34", "56"):
            (self.proc / pid / "ns").mkdir(parents=True)
        # A process's ns/net is the same file (device and inode) as the namespace's.
        os.link(self.netns / "lab-rs1", self.proc / "12" / "ns" / "net")
        os.link(self.netns / "other", self.proc / "34" / "ns" / "net")
        (self.proc / "self").mkdir()

    def test_listing(self):
        self.assertEqual(list_namespaces(self.netns), ["lab-rs1", "other"])
        self.assertEqual(list_namespaces(self.base / "absent"), [])

    def test_processes_of_a_namespace(self):
        self.assertEqual(namespace_pids("lab-rs1", self.netns, self.proc), [12])
        self.assertEqual(namespace_pids("gone", self.netns, self.proc), [])


class LabProcessTests(SynchronousTestCase):
    def start(self, script):
        argv = ["sh", "-c", script]
        process = LabProcess.start(argv, argv=argv, namespace="host", log_path=Path(self.mktemp()))
        self.addCleanup(process.stop)
        return process

    def test_waits_for_the_marker_line(self):
        process = self.start("echo starting; echo 'ready on 8080'; echo after; exec sleep 30")
        self.assertEqual(process.wait_for_output("ready", timeout=10), "ready on 8080")
        self.assertEqual(process.wait_for_output("after", timeout=10), "after")

    def test_exit_before_the_marker_quotes_stderr(self):
        process = self.start("echo cannot bind >&2; exit 3")
        with self.assertRaises(LabError) as raised:
            process.wait_for_output("ready", timeout=10)
        self.assertIn("exited (status 3)", str(raised.exception))
        self.assertIn("cannot bind", str(raised.exception))

    def test_no_marker_in_time(self):
        process = self.start("exec sleep 30")
        with self.assertRaises(LabError) as raised:
            process.wait_for_output("ready", timeout=0.2)
        self.assertIn("no expected output in 0.2 s", str(raised.exception))

    def test_all_output_once_it_exits(self):
        process = self.start("echo one; echo two")
        self.assertEqual(process.read_output(timeout=10), "one\ntwo\n")
        self.assertEqual(process.returncode, 0)

    def test_spawn_needs_a_built_lab(self):
        self.assertRaises(LabError, Topology(1, prefix="unbuilt").spawn, "unbuilt-rs1", ["true"])


class FailedBuildTests(SynchronousTestCase):
    def test_a_build_that_fails_early_leaves_nothing_and_says_why(self):
        if os.geteuid() != 0:
            raise SkipTest("build() refuses to start without root")
        cgroup_root = Path(self.mktemp())
        cgroup_root.mkdir()
        (cgroup_root / "cgroup.controllers").write_text("memory pids\n")
        netns_dir = Path(self.mktemp())
        netns_dir.mkdir()
        lab = Topology(1, prefix="failing", cgroup_root=cgroup_root, netns_dir=netns_dir)
        with self.assertRaises(LabError) as raised:
            lab.build()
        self.assertIn("cpu controller", str(raised.exception))
        self.assertEqual(lab.leftovers(), [])
        self.assertIsNone(lab.log_dir)
