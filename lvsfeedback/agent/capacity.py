"""
What the agent says of a service's capacity, in CPUs, when a director asks
(the project's capacity query, an extension of NECP; see README.md).

The setting C{capacity} is C{"auto"} (the default), a number of CPUs, or
C{"off"} (the agent then does not announce that it answers, and a director
never asks). With C{"auto"} a service's capacity is its C{cgroup} metric's
C{cpu.max} quota when it has such a metric with a quota, else the CPUs the
agent may run on. It is read when asked (with each health question: a
changed quota is known to the director a round later), never on a timer.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol

from zope.interface import implementer

from lvsfeedback.agent.interfaces import ICapacitySource
from lvsfeedback.agent.metrics.cgroup import CgroupCPUMetric, read_cpu_quota

AUTO = "auto"
OFF = "off"

Setting = str | float  # AUTO, OFF, or CPUs above 0


class ServiceMetrics(Protocol):
    """What knows each service's metrics: the agent's L{Sampler}."""

    def metrics_of(self, protocol: int, port: int) -> tuple:
        """The configured metrics of a service; L{LookupError} for an unknown one."""


def allowed_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers narrow)."""
    return len(os.sched_getaffinity(0))


def parse_capacity(value: object) -> Setting:
    """C{"auto"}, C{"off"}, or a number of CPUs above 0 (a string from the command line too)."""
    if value in (AUTO, OFF):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f'must be "auto", "off" or a number of CPUs above 0, got {value!r}')
    return float(value)


@implementer(ICapacitySource)
class FixedCapacity:
    """The same configured number of CPUs for every service."""

    def __init__(self, cpus: float):
        self.cpus = cpus

    def capacity(self, protocol: int, port: int) -> float:
        return self.cpus


@implementer(ICapacitySource)
class MeasuredCapacity:
    """
    A service's cgroup quota, or the CPUs the agent may run on.

    @param services: knows each service's metrics.
    @param cpus: the CPUs the agent may run on.
    """

    def __init__(self, services: ServiceMetrics, cpus: Callable[[], int] = allowed_cpus):
        self._services = services
        self._cpus = cpus

    def capacity(self, protocol: int, port: int) -> float:
        for configured in self._services.metrics_of(protocol, port):
            if isinstance(configured.metric, CgroupCPUMetric):
                quota = read_cpu_quota(configured.metric.path)
                if quota is not None:
                    return quota
        return float(self._cpus())


def capacity_source(setting: Setting, services: ServiceMetrics) -> ICapacitySource | None:
    """The source for a C{capacity} setting; None for C{"off"}."""
    if setting == OFF:
        return None
    if setting == AUTO:
        return MeasuredCapacity(services)
    return FixedCapacity(float(setting))
