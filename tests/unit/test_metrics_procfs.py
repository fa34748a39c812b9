"""The procfs metrics (loadavg, memory, pressure, connections) on fixture trees."""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricReadError, MetricSpecError
from lvsfeedback.agent.metrics.procfs import ConnectionsMetric, count_established, read_pressure
from lvsfeedback.agent.metrics.scale import HealthScale
from lvsfeedback.agent.metrics.sockdiag import EstablishedCounter
from lvsfeedback.agent.metrics.spec import MetricRegistry

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
PROC = FIXTURES / "proc"


class RefusingCounter:
    """A sock_diag counter on a kernel without tcp_diag."""

    asked = 0
    closed = False

    def count(self, port: int) -> int:
        self.asked += 1
        raise FileNotFoundError(2, "sock_diag refused the dump: No such file or directory")

    def close(self) -> None:
        self.closed = True


class ProcfsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = MetricRegistry.discover()
        self.environment = MetricEnvironment(Clock(), proc_root=PROC, cpu_count=2)

    def health(self, spec: str) -> float:
        return self.registry.build(spec, self.environment).metric.sample()

    def fake_proc(self) -> Path:
        """A writable copy of the fixture /proc."""
        root = Path(self.mktemp()) / "proc"
        shutil.copytree(PROC, root)
        return root


class LoadAverageTests(ProcfsTestCase):
    def test_load_per_cpu_against_default_bound_of_one(self) -> None:
        # 1.72 over 2 CPUs is 0.86 per CPU: 14% short of the default high of 1.
        self.assertAlmostEqual(self.health("loadavg"), 14.0)

    def test_high_bound_is_configurable(self) -> None:
        self.assertAlmostEqual(self.health("loadavg:high=2.0"), 57.0)

    def test_low_bound_gives_full_health(self) -> None:
        self.assertEqual(self.health("loadavg:low=0.9,high=2"), 100.0)


class MemoryTests(ProcfsTestCase):
    def test_share_not_available_on_the_default_scale(self) -> None:
        # MemAvailable is a quarter of MemTotal: 75% in use, on 50..95.
        self.assertAlmostEqual(self.health("memory"), 100 * 20 / 45)

    def test_missing_mem_available_is_a_read_error(self) -> None:
        proc = self.fake_proc()
        (proc / "meminfo").write_text("MemTotal:       24684092 kB\nMemFree: 1 kB\n")
        metric = self.registry.build("memory", MetricEnvironment(Clock(), proc_root=proc)).metric
        error = self.assertRaises(MetricReadError, metric.sample)
        self.assertIn("lacks MemTotal or MemAvailable", str(error))


class PressureTests(ProcfsTestCase):
    def test_cpu_some_avg10_by_default(self) -> None:
        self.assertAlmostEqual(self.health("pressure"), 100 - 0.84)

    def test_resource_kind_and_window_pick_the_figure(self) -> None:
        health = self.health("pressure:resource=io,kind=full,window=avg60")
        self.assertAlmostEqual(health, 100 - 2.16)

    def test_bounds_scale_the_percentage(self) -> None:
        self.assertAlmostEqual(self.health("pressure:resource=io,low=2.06,high=22.06"), 50.0)

    def test_missing_kind_is_a_read_error(self) -> None:
        path = self.fake_proc() / "pressure" / "cpu"
        path.write_text("some avg10=0.84 avg60=0.67 avg300=0.72 total=6728962\n")
        error = self.assertRaises(MetricReadError, read_pressure, path, "full", "avg10")
        self.assertIn("has no full avg10 figure", str(error))

    def test_kernel_without_psi_is_a_read_error(self) -> None:
        proc = self.fake_proc()
        shutil.rmtree(proc / "pressure")
        metric = self.registry.build("pressure", MetricEnvironment(Clock(), proc_root=proc)).metric
        self.assertRaises(FileNotFoundError, metric.sample)


class ConnectionsTests(ProcfsTestCase):
    def test_counts_established_ipv4_and_ipv6_server_sockets(self) -> None:
        # Port 8080: one IPv4 and one IPv6 established server socket; the
        # CLOSE_WAIT socket, the listener and the client ends do not count.
        self.assertEqual(count_established(PROC, 8080), 2)

    def test_counts_ipv4_mapped_connections_on_dual_stack_sockets(self) -> None:
        self.assertEqual(count_established(PROC, 8081), 1)

    def test_port_without_connections_counts_none(self) -> None:
        self.assertEqual(count_established(PROC, 2024), 0)

    def test_missing_tcp6_table_means_ipv6_is_off(self) -> None:
        proc = self.fake_proc()
        (proc / "net" / "tcp6").unlink()
        self.assertEqual(count_established(proc, 8080), 1)

    def test_health_scales_the_count(self) -> None:
        self.assertEqual(self.health("connections:port=8080,high=8,source=proc"), 75.0)
        self.assertEqual(self.health("connections:port=8080,low=2,high=8,source=proc"), 100.0)
        self.assertEqual(self.health("connections:port=8080,high=2,source=proc"), 1.0)

    def test_sock_diag_is_the_default_source(self) -> None:
        metric = self.registry.build("connections:port=8080,high=8", self.environment).metric
        self.addCleanup(lambda: metric.counter and metric.counter.close())
        self.assertIsInstance(metric.counter, EstablishedCounter)

    def test_a_refused_sock_diag_falls_back_to_proc_for_good(self) -> None:
        counter = RefusingCounter()
        metric = ConnectionsMetric(PROC, 8080, HealthScale(0.0, 8.0), counter)
        self.assertEqual(metric.sample(), 75.0)
        self.assertEqual((counter.asked, counter.closed, metric.counter), (1, True, None))
        self.assertEqual(metric.sample(), 75.0)
        self.assertEqual(counter.asked, 1)

    def test_unknown_source_is_refused(self) -> None:
        error = self.assertRaises(MetricSpecError, self.health, "connections:port=8080,high=8,source=ss")
        self.assertIn("source", str(error))

    def test_high_is_required(self) -> None:
        error = self.assertRaises(MetricSpecError, self.health, "connections:port=8080")
        self.assertEqual(str(error), "metric 'connections': missing key 'high'")
