"""The cpu metric, on CPU times handed in by the test."""

from __future__ import annotations

from collections import namedtuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.metrics.cpu import CPUMetric, busy_and_total
from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric
from lvsfeedback.agent.metrics.scale import HealthScale
from lvsfeedback.agent.metrics.spec import MetricRegistry

# The fields psutil.cpu_times() has on Linux.
CPUTimes = namedtuple(
    "CPUTimes",
    "user nice system idle iowait irq softirq steal guest guest_nice",
)


def times(user: float, idle: float, iowait: float = 0.0, guest: float = 0.0) -> CPUTimes:
    return CPUTimes(user, 0.0, 0.0, idle, iowait, 0.0, 0.0, 0.0, guest, 0.0)


class FakeCPU:
    """Hands out a prepared series of CPU times."""

    def __init__(self, *series: CPUTimes):
        self.series = list(series)

    def __call__(self) -> CPUTimes:
        return self.series.pop(0)


class CPUMetricTests(SynchronousTestCase):
    def test_busy_share_between_samples(self) -> None:
        cpu = FakeCPU(times(100, 100), times(130, 110), times(130, 150))
        metric = CPUMetric(HealthScale(0, 100), cpu)
        self.assertEqual([metric.reading(), metric.reading()], [75.0, 0.0])

    def test_health_is_the_idle_share_by_default(self) -> None:
        cpu = FakeCPU(times(100, 100), times(130, 110))
        self.assertEqual(CPUMetric(HealthScale(0, 100), cpu).sample(), 25.0)

    def test_iowait_counts_as_idle_and_guest_is_not_counted_twice(self) -> None:
        # Sum 110 less guest 20 is 90 in all; idle 30 + iowait 10 leaves 50 busy.
        self.assertEqual(busy_and_total(times(50, 30, iowait=10, guest=20)), (50.0, 90.0))

    def test_no_time_passed_is_a_read_error_that_keeps_the_baseline(self) -> None:
        cpu = FakeCPU(times(100, 100), times(100, 100), times(110, 110))
        metric = CPUMetric(HealthScale(0, 100), cpu)
        self.assertRaises(MetricReadError, metric.reading)
        self.assertEqual(metric.reading(), 50.0)

    def test_built_from_spec_reads_this_machine_without_blocking(self) -> None:
        configured = MetricRegistry.discover().build("cpu:high=90", MetricEnvironment(Clock()))
        self.assertTrue(ILoadMetric.providedBy(configured.metric))
        self.assertEqual(configured.metric.scale, HealthScale(0.0, 90.0))
