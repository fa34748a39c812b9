"""
The C{cgroup} metric: CPU used by one cgroup v2 against its C{cpu.max}
quota, combined with that cgroup's own CPU pressure.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, fields
from pathlib import Path

from twisted.logger import Logger
from zope.interface import implementer

from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric
from lvsfeedback.agent.metrics.procfs import read_pressure
from lvsfeedback.agent.metrics.scale import HealthScale

MICROSECONDS = 1_000_000


@dataclass(frozen=True)
class CpuStat:
    """
    The fields of C{cpu.stat} the metric and the lab read, in microseconds or
    counts. Only C{usage_usec} is always there: the others need the cpu
    controller.
    """

    usage_usec: int
    user_usec: int = 0
    system_usec: int = 0
    nr_periods: int = 0
    nr_throttled: int = 0
    throttled_usec: int = 0


def parse_cpu_stat(text: str, source: str = "cpu.stat") -> CpuStat:
    """C{cpu.stat} text → L{CpuStat}; C{source} names the file in the error."""
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value:
            values[name] = int(value)
    if "usage_usec" not in values:
        raise MetricReadError(f"{source} has no usage_usec")
    return CpuStat(**{field.name: values.get(field.name, 0) for field in fields(CpuStat)})


def read_cpu_stat(cgroup: Path) -> CpuStat:
    path = cgroup / "cpu.stat"
    return parse_cpu_stat(path.read_text(), str(path))


def read_usage_usec(cgroup: Path) -> int:
    """Total CPU time the cgroup has used, from C{cpu.stat}."""
    return read_cpu_stat(cgroup).usage_usec


def read_cpu_quota(cgroup: Path) -> float | None:
    """
    The CPUs the cgroup's C{cpu.max} allows (quota / period), or None when
    it sets no quota (C{max}) or the file is absent (the root cgroup, or no
    cpu controller).
    """
    try:
        quota, _, period = (cgroup / "cpu.max").read_text().strip().partition(" ")
    except FileNotFoundError:
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def read_cpu_limit(cgroup: Path, cpu_count: int) -> float:
    """How many CPUs the cgroup may use: its quota, or C{cpu_count} without one."""
    quota = read_cpu_quota(cgroup)
    return float(cpu_count) if quota is None else quota


@implementer(ILoadMetric)
class CgroupCPUMetric:
    """
    Health from a cgroup's CPU use as a percent of its limit, and from its
    C{cpu.pressure} (C{some avg10}); the worse of the two counts. On a
    kernel without PSI the pressure file is absent and CPU use alone counts.
    """

    log = Logger()

    def __init__(
        self,
        path: Path,
        clock,
        cpu_count: int,
        scale: HealthScale,
        pressure_scale: HealthScale,
    ):
        self.path = path
        self._clock = clock
        self.cpu_count = cpu_count
        self.scale = scale
        self.pressure_scale = pressure_scale
        self._without_pressure = False
        try:
            self._previous: tuple[int, float] | None = self._usage_now()
        except OSError:
            # The cgroup may appear once its service starts; sample() will say.
            self._previous = None

    def _usage_now(self) -> tuple[int, float]:
        return read_usage_usec(self.path), self._clock.seconds()

    def usage_percent(self) -> float:
        """Percent of the CPU limit used since the previous call."""
        try:
            usage, now = self._usage_now()
        except OSError:
            self._previous = None
            raise
        previous, self._previous = self._previous, (usage, now)
        if previous is None:
            raise MetricReadError(f"first reading of {self.path}: CPU use needs two")
        if usage < previous[0]:
            raise MetricReadError(f"CPU usage of {self.path} went back: cgroup recreated")
        elapsed = now - previous[1]
        if elapsed <= 0:
            raise MetricReadError("no time has passed since the last sample")
        used_cpus = (usage - previous[0]) / MICROSECONDS / elapsed
        return 100.0 * used_cpus / read_cpu_limit(self.path, self.cpu_count)

    def pressure(self) -> float | None:
        """The cgroup's C{some avg10} CPU pressure, or L{None} without PSI."""
        try:
            return read_pressure(self.path / "cpu.pressure", "some", "avg10")
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.EOPNOTSUPP):
                raise
        if not self._without_pressure:
            self._without_pressure = True
            self.log.info(
                "cgroup {path} has no cpu.pressure (kernel without PSI); "
                "using its CPU use alone",
                path=str(self.path),
            )
        return None

    def sample(self) -> float:
        health = self.scale.health(self.usage_percent())
        pressure = self.pressure()
        if pressure is None:
            return health
        return min(health, self.pressure_scale.health(pressure))


def build(options, environment) -> CgroupCPUMetric:
    """
    C{cgroup:path=P[,low=0,high=100,pressure_low=0,pressure_high=100]};
    a relative C{P} is taken from the cgroup root.
    """
    return CgroupCPUMetric(
        environment.cgroup_root / options.text("path"),
        environment.reactor,
        environment.cpu_count,
        options.scale(0.0, 100.0),
        options.scale(0.0, 100.0, prefix="pressure_"),
    )
