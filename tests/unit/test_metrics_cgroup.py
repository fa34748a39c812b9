"""The cgroup metric on a fake cgroup v2 tree and a task.Clock."""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.metrics.cgroup import CgroupCPUMetric, read_cpu_limit, read_usage_usec
from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.spec import MetricRegistry

FIXTURE = Path(__file__).parent / "fixtures" / "metrics" / "cgroup"
START_USEC = 76915589


class CgroupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        shutil.copytree(FIXTURE, self.root)
        self.clock = Clock()
        self.clock.advance(1000)
        self.environment = MetricEnvironment(self.clock, cgroup_root=self.root, cpu_count=4)
        self.registry = MetricRegistry.discover()

    def metric(self, spec: str):
        return self.registry.build(spec, self.environment).metric

    def use(self, cgroup: str, cpu_seconds: float, wall_seconds: float) -> None:
        """The cgroup burns C{cpu_seconds} of CPU over C{wall_seconds}."""
        stat = self.root / cgroup / "cpu.stat"
        lines = stat.read_text().splitlines()
        usage = int(lines[0].split()[1]) + round(cpu_seconds * 1_000_000)
        stat.write_text("\n".join([f"usage_usec {usage}", *lines[1:]]) + "\n")
        self.clock.advance(wall_seconds)

    def test_reads_the_kernel_files(self) -> None:
        self.assertEqual(read_usage_usec(self.root / "lab/rs1"), START_USEC)
        self.assertEqual(read_cpu_limit(self.root / "lab/rs1", 4), 0.5)
        self.assertEqual(read_cpu_limit(self.root / "lab/rs2", 4), 4.0)

    def test_no_cpu_max_means_all_cpus(self) -> None:
        (self.root / "lab/rs1/cpu.max").unlink()
        self.assertEqual(read_cpu_limit(self.root / "lab/rs1", 4), 4.0)

    def test_use_against_a_quota(self) -> None:
        metric = self.metric("cgroup:path=lab/rs1")
        # A quarter CPU used of a half CPU quota: 50% of the limit.
        self.use("lab/rs1", 0.5, 2.0)
        self.assertAlmostEqual(metric.usage_percent(), 50.0)

    def test_use_against_all_cpus_when_unlimited(self) -> None:
        metric = self.metric("cgroup:path=lab/rs2")
        self.use("lab/rs2", 3.0, 1.0)
        self.assertAlmostEqual(metric.usage_percent(), 75.0)

    def test_absolute_path_is_used_as_given(self) -> None:
        metric = self.metric(f"cgroup:path={self.root / 'lab/rs1'}")
        self.use("lab/rs1", 0.1, 1.0)
        self.assertAlmostEqual(metric.usage_percent(), 20.0)

    def test_health_is_the_worse_of_use_and_pressure(self) -> None:
        rs1, rs2 = self.metric("cgroup:path=lab/rs1"), self.metric("cgroup:path=lab/rs2")
        self.use("lab/rs1", 0.1, 0)
        self.use("lab/rs2", 0.4, 1.0)
        # rs1: 20% of its quota beats its pressure of 2.52%.
        # rs2: 10% of 4 CPUs, but its pressure of 40% is worse.
        self.assertAlmostEqual(rs1.sample(), 80.0)
        self.assertAlmostEqual(rs2.sample(), 60.0)

    def test_pressure_bounds_are_configurable(self) -> None:
        metric = self.metric("cgroup:path=lab/rs2,pressure_low=20,pressure_high=60")
        self.use("lab/rs2", 0.0, 1.0)
        self.assertAlmostEqual(metric.sample(), 50.0)

    def test_without_psi_use_alone_counts_and_is_logged_once(self) -> None:
        (self.root / "lab/rs2/cpu.pressure").unlink()
        events: list[dict] = []
        self.patch(CgroupCPUMetric, "log", Logger(observer=events.append))
        metric = self.metric("cgroup:path=lab/rs2")
        self.use("lab/rs2", 2.0, 1.0)
        self.assertAlmostEqual(metric.sample(), 50.0)
        self.use("lab/rs2", 2.0, 1.0)
        metric.sample()
        self.assertEqual(len(events), 1)
        self.assertIn("no cpu.pressure", events[0]["log_format"])

    def test_cgroup_that_appears_later_reads_from_its_second_sample(self) -> None:
        shutil.move(self.root / "lab/rs1", self.root / "rs1-later")
        metric = self.metric("cgroup:path=lab/rs1")
        self.assertRaises(FileNotFoundError, metric.sample)
        shutil.move(self.root / "rs1-later", self.root / "lab/rs1")
        error = self.assertRaises(MetricReadError, metric.sample)
        self.assertIn("first reading", str(error))
        self.use("lab/rs1", 0.25, 1.0)
        self.assertAlmostEqual(metric.sample(), 50.0)

    def test_recreated_cgroup_is_not_read_as_idle(self) -> None:
        metric = self.metric("cgroup:path=lab/rs1")
        self.use("lab/rs1", -10.0, 1.0)
        error = self.assertRaises(MetricReadError, metric.sample)
        self.assertIn("went back", str(error))
        self.use("lab/rs1", 0.5, 1.0)
        self.assertAlmostEqual(metric.usage_percent(), 100.0)

    def test_no_wall_time_passed_is_a_read_error(self) -> None:
        metric = self.metric("cgroup:path=lab/rs1")
        self.assertRaises(MetricReadError, metric.sample)
