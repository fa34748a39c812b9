"""
Metrics read from procfs: C{loadavg}, C{memory}, C{pressure} and
C{connections}. Each reads small files under an injectable root.
"""

from __future__ import annotations

from pathlib import Path

from twisted.logger import Logger
from zope.interface import implementer

from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric
from lvsfeedback.agent.metrics.scale import HealthScale
from lvsfeedback.agent.metrics.sockdiag import EstablishedCounter

PRESSURE_RESOURCES = ("cpu", "memory", "io")
PRESSURE_KINDS = ("some", "full")
PRESSURE_WINDOWS = ("avg10", "avg60", "avg300")
TCP_ESTABLISHED = "01"
CONNECTION_SOURCES = ("sock_diag", "proc")


def read_pressure(path: Path, kind: str, window: str) -> float:
    """
    One figure from a PSI file (C{/proc/pressure/*} or a cgroup's
    C{*.pressure}): the percentage of time C{kind} tasks stalled, averaged
    over C{window}.
    """
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == kind:
            for field in fields[1:]:
                name, _, value = field.partition("=")
                if name == window:
                    return float(value)
    raise MetricReadError(f"{path} has no {kind} {window} figure")


def count_established(proc_root: Path, port: int) -> int:
    """
    How many established TCP connections have local port C{port}, over IPv4
    and IPv6 (C{/proc/net/tcp6} may be absent when IPv6 is off).
    """
    count = 0
    for table in ("tcp", "tcp6"):
        path = proc_root / "net" / table
        try:
            lines = path.read_text().splitlines()[1:]
        except FileNotFoundError:
            if table == "tcp6":
                continue
            raise
        for line in lines:
            # "sl local_address rem_address st ...", addresses as HEXIP:HEXPORT
            _, local, _, state = line.split(maxsplit=4)[:4]
            if state == TCP_ESTABLISHED and int(local.rpartition(":")[2], 16) == port:
                count += 1
    return count


@implementer(ILoadMetric)
class LoadAverageMetric:
    """The 1-minute load average divided by the number of CPUs."""

    def __init__(self, proc_root: Path, cpu_count: int, scale: HealthScale):
        self.proc_root = proc_root
        self.cpu_count = cpu_count
        self.scale = scale

    def reading(self) -> float:
        return float((self.proc_root / "loadavg").read_text().split()[0]) / self.cpu_count

    def sample(self) -> float:
        return self.scale.health(self.reading())


@implementer(ILoadMetric)
class MemoryMetric:
    """The percentage of memory not available (100 - MemAvailable/MemTotal)."""

    def __init__(self, proc_root: Path, scale: HealthScale):
        self.proc_root = proc_root
        self.scale = scale

    def reading(self) -> float:
        path = self.proc_root / "meminfo"
        fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
        try:
            total = int(fields["MemTotal"].split()[0])
            available = int(fields["MemAvailable"].split()[0])
        except (KeyError, ValueError, IndexError):
            raise MetricReadError(f"{path} lacks MemTotal or MemAvailable") from None
        return 100.0 * (1 - available / total)

    def sample(self) -> float:
        return self.scale.health(self.reading())


@implementer(ILoadMetric)
class PressureMetric:
    """Linux pressure stall information for one resource."""

    def __init__(self, proc_root: Path, resource: str, kind: str, window: str, scale: HealthScale):
        self.path = proc_root / "pressure" / resource
        self.kind = kind
        self.window = window
        self.scale = scale

    def reading(self) -> float:
        return read_pressure(self.path, self.kind, self.window)

    def sample(self) -> float:
        return self.scale.health(self.reading())


@implementer(ILoadMetric)
class ConnectionsMetric:
    """
    Established TCP connections to one local port, counted by the kernel
    through sock_diag (C{counter}), or read from C{/proc/net/tcp{,6}} when
    there is no counter or the kernel refuses sock_diag.
    """

    log = Logger()

    def __init__(self, proc_root: Path, port: int, scale: HealthScale, counter=None):
        self.proc_root = proc_root
        self.port = port
        self.scale = scale
        self.counter = counter

    def reading(self) -> float:
        if self.counter is not None:
            try:
                return float(self.counter.count(self.port))
            except OSError as error:
                self.log.warn("connections: {error}; reading /proc/net/tcp from now on", error=error)
                self.counter.close()
                self.counter = None
        return float(count_established(self.proc_root, self.port))

    def sample(self) -> float:
        return self.scale.health(self.reading())


def build_loadavg(options, environment) -> LoadAverageMetric:
    """C{loadavg[:low=0,high=1]}: load per CPU."""
    return LoadAverageMetric(
        environment.proc_root, environment.cpu_count, options.scale(0.0, 1.0)
    )


def build_memory(options, environment) -> MemoryMetric:
    """C{memory[:low=50,high=95]}: percent of memory not available."""
    return MemoryMetric(environment.proc_root, options.scale(50.0, 95.0))


def build_pressure(options, environment) -> PressureMetric:
    """C{pressure[:resource=cpu,kind=some,window=avg10,low=0,high=100]}."""
    return PressureMetric(
        environment.proc_root,
        options.choice("resource", PRESSURE_RESOURCES, "cpu"),
        options.choice("kind", PRESSURE_KINDS, "some"),
        options.choice("window", PRESSURE_WINDOWS, "avg10"),
        options.scale(0.0, 100.0),
    )


def build_connections(options, environment) -> ConnectionsMetric:
    """C{connections:port=P,high=N[,low=0,source=sock_diag|proc]}: established connections to P."""
    port = options.integer("port", minimum=1, maximum=65535)
    scale = options.scale(0.0)
    counter = None
    if options.choice("source", CONNECTION_SOURCES, "sock_diag") == "sock_diag":
        try:
            counter = EstablishedCounter()
        except OSError as error:
            ConnectionsMetric.log.warn("connections: no netlink sock_diag ({error}); reading /proc/net/tcp", error=error)
    return ConnectionsMetric(environment.proc_root, port, scale, counter)
