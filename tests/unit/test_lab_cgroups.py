"""The lab's cgroup helpers against a fake cgroup v2 tree in a temporary folder."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.metrics.cgroup import CpuStat, parse_cpu_stat
from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.lab.cgroups import (
    Cgroup,
    CgroupError,
    CgroupTree,
    format_cpu_max,
    parse_cpu_max,
)

# As the 6.1 kernel writes it for a group with the cpu controller.
CPU_STAT = """usage_usec 1523042
user_usec 1402311
system_usec 120731
core_sched.force_idle_usec 0
nr_periods 312
nr_throttled 87
throttled_usec 4109233
nr_bursts 0
burst_usec 0
"""


class CpuFileFormatTests(SynchronousTestCase):
    def test_cpu_stat_fields(self):
        self.assertEqual(
            parse_cpu_stat(CPU_STAT),
            CpuStat(usage_usec=1523042, user_usec=1402311, system_usec=120731,
                    nr_periods=312, nr_throttled=87, throttled_usec=4109233),
        )

    def test_cpu_stat_without_the_cpu_controller_has_no_throttling(self):
        stat = parse_cpu_stat("usage_usec 10\nuser_usec 7\nsystem_usec 3\n")
        self.assertEqual((stat.usage_usec, stat.nr_throttled), (10, 0))

    def test_cpu_stat_without_usage_is_an_error(self):
        with self.assertRaises(MetricReadError) as raised:
            parse_cpu_stat("user_usec 7\nsystem_usec 3\n")
        self.assertIn("usage_usec", str(raised.exception))

    def test_cpu_max_text(self):
        self.assertEqual(format_cpu_max(0.5), "50000 100000")
        self.assertEqual(format_cpu_max(1.5), "150000 100000")
        self.assertEqual(format_cpu_max(0.25, period_usec=20000), "5000 20000")
        self.assertEqual(format_cpu_max(None), "max 100000")

    def test_a_quota_under_the_kernels_minimum_is_refused(self):
        with self.assertRaises(CgroupError) as raised:
            format_cpu_max(0.005)
        self.assertIn("1000 us", str(raised.exception))

    def test_cpu_max_parsing(self):
        self.assertEqual(parse_cpu_max("50000 100000\n"), 0.5)
        self.assertIsNone(parse_cpu_max("max 100000\n"))


class FakeTreeTests(SynchronousTestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        self.root.mkdir()
        (self.root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (self.root / "cgroup.subtree_control").write_text("")

    def test_create_delegates_the_cpu_controller_to_the_parent_and_its_children(self):
        tree = CgroupTree("lvsfeedback-lab-test", self.root).create()
        self.assertEqual((self.root / "cgroup.subtree_control").read_text(), "+cpu")
        self.assertEqual((tree.path / "cgroup.subtree_control").read_text(), "+cpu")
        self.assertEqual(tree.path, self.root / "lvsfeedback-lab-test")

    def test_a_child_gets_its_cpu_quota(self):
        tree = CgroupTree("lab", self.root).create()
        group = tree.child("rs1", cpus=0.5)
        self.assertEqual(group, Cgroup(self.root / "lab" / "rs1"))
        self.assertEqual((group.path / "cpu.max").read_text(), "50000 100000")
        self.assertEqual(group.cpus(), 0.5)
        self.assertEqual(tree.children, {"rs1": group})

    def test_a_child_without_quota_leaves_cpu_max_alone(self):
        group = CgroupTree("lab", self.root).create().child("rs1")
        self.assertFalse((group.path / "cpu.max").exists())

    def test_quota_changes_at_run_time(self):
        group = CgroupTree("lab", self.root).create().child("rs1", cpus=0.5)
        group.set_cpus(0.2)
        self.assertEqual((group.path / "cpu.max").read_text(), "20000 100000")
        group.set_cpus(None)
        self.assertIsNone(group.cpus())

    def test_processes_join_through_cgroup_procs(self):
        group = CgroupTree("lab", self.root).create().child("rs1")
        group.add_process(4242)
        self.assertEqual(group.procs_file.read_text(), "4242")
        self.assertEqual(group.pids(), [4242])

    def test_cpu_stat_is_read_from_the_group(self):
        group = CgroupTree("lab", self.root).create().child("rs1")
        (group.path / "cpu.stat").write_text(CPU_STAT)
        self.assertEqual(group.cpu_stat().usage_usec, 1523042)

    def test_a_group_cpu_stat_without_usage_is_a_cgroup_error_naming_the_file(self):
        group = CgroupTree("lab", self.root).create().child("rs1")
        (group.path / "cpu.stat").write_text("user_usec 7\n")
        with self.assertRaises(CgroupError) as raised:
            group.cpu_stat()
        self.assertIn(f"{group.path / 'cpu.stat'} has no usage_usec", str(raised.exception))

    def test_kill_uses_cgroup_kill_where_present(self):
        group = CgroupTree("lab", self.root).create().child("rs1")
        (group.path / "cgroup.kill").write_text("")
        group.kill()
        self.assertEqual((group.path / "cgroup.kill").read_text(), "1")

    def test_not_cgroup_v2(self):
        (self.root / "cgroup.controllers").unlink()
        with self.assertRaises(CgroupError) as raised:
            CgroupTree("lab", self.root).create()
        self.assertIn("not a cgroup v2 hierarchy", str(raised.exception))

    def test_no_cpu_controller(self):
        (self.root / "cgroup.controllers").write_text("memory pids\n")
        with self.assertRaises(CgroupError) as raised:
            CgroupTree("lab", self.root).create()
        self.assertIn("cpu controller is not available", str(raised.exception))
        self.assertFalse((self.root / "lab").exists())

    def test_a_parent_that_exists_belongs_to_another_run(self):
        (self.root / "lab").mkdir()
        with self.assertRaises(CgroupError) as raised:
            CgroupTree("lab", self.root).create()
        self.assertIn("already exists", str(raised.exception))

    def test_reading_a_missing_group_names_the_file(self):
        group = Cgroup(self.root / "gone")
        with self.assertRaises(CgroupError) as raised:
            group.cpu_stat()
        self.assertIn(str(self.root / "gone" / "cpu.stat"), str(raised.exception))

    def test_removing_what_does_not_exist_is_fine(self):
        CgroupTree("never-made", self.root).remove()
        Cgroup(self.root / "never-made").remove()

    def test_names_that_are_not_one_folder_are_refused(self):
        for name in ("", "a/b", "..", "."):
            with self.assertRaises(CgroupError):
                CgroupTree(name, self.root)
