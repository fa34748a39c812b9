"""The C{cpu} metric: the share of all CPUs busy since the last sample."""

from __future__ import annotations

from typing import Callable, NamedTuple

import psutil
from zope.interface import implementer

from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric
from lvsfeedback.agent.metrics.scale import HealthScale


def busy_and_total(times: NamedTuple) -> tuple[float, float]:
    """
    Busy and total CPU seconds from C{psutil.cpu_times()}, counted the way
    C{psutil.cpu_percent} counts them: guest time is already inside user
    time, and iowait is idle.
    """
    values = times._asdict()
    total = sum(values.values()) - values.get("guest", 0.0) - values.get("guest_nice", 0.0)
    idle = values["idle"] + values.get("iowait", 0.0)
    return total - idle, total


@implementer(ILoadMetric)
class CPUMetric:
    """
    Percent of all CPUs busy between two samples, from the system-wide CPU
    times. It keeps its own previous reading (unlike C{psutil.cpu_percent},
    whose shared state two metrics would disturb) and never blocks.
    """

    def __init__(self, scale: HealthScale, cpu_times: Callable[[], NamedTuple] = psutil.cpu_times):
        self.scale = scale
        self._cpu_times = cpu_times
        self._previous = busy_and_total(cpu_times())

    def reading(self) -> float:
        busy, total = busy_and_total(self._cpu_times())
        previous_busy, previous_total = self._previous
        elapsed = total - previous_total
        if elapsed <= 0:
            raise MetricReadError("no CPU time has passed since the last sample")
        self._previous = busy, total
        return min(max(100.0 * (busy - previous_busy) / elapsed, 0.0), 100.0)

    def sample(self) -> float:
        return self.scale.health(self.reading())


def build(options, environment) -> CPUMetric:
    """C{cpu[:low=0,high=100]}: percent of all CPUs busy."""
    return CPUMetric(options.scale(0.0, 100.0))
