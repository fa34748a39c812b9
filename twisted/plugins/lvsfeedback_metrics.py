"""
The built-in load metrics of the lvsfeedback agent, as Twisted plugins.

Imported by every plugin scan (C{twistd --help} among them), so each plugin
only names the function that builds its metric; that module is imported
when a spec uses the metric. A site adds a metric the same way: a module in
any C{twisted/plugins/} directory holding an object that provides
C{IPlugin} and C{lvsfeedback.agent.metrics.interfaces.IMetricFactory}.
"""

from lvsfeedback.agent.metrics.interfaces import OnError
from lvsfeedback.agent.metrics.plugin import LazyMetricFactory

_BUILTIN = "lvsfeedback.agent.metrics."

cpuMetric = LazyMetricFactory(
    "cpu", _BUILTIN + "cpu.build", "Percent of all CPUs busy since the last sample."
)
loadavgMetric = LazyMetricFactory(
    "loadavg", _BUILTIN + "procfs.build_loadavg", "1-minute load average per CPU."
)
memoryMetric = LazyMetricFactory(
    "memory", _BUILTIN + "procfs.build_memory", "Percent of memory not available."
)
pressureMetric = LazyMetricFactory(
    "pressure", _BUILTIN + "procfs.build_pressure", "Linux pressure stall information (PSI)."
)
cgroupMetric = LazyMetricFactory(
    "cgroup",
    _BUILTIN + "cgroup.build",
    "CPU use of a cgroup v2 against its cpu.max, with its CPU pressure.",
)
connectionsMetric = LazyMetricFactory(
    "connections",
    _BUILTIN + "procfs.build_connections",
    "Established TCP connections to a local port.",
)
commandMetric = LazyMetricFactory(
    "command", _BUILTIN + "command.build", "The number a site's program prints."
)
httpMetric = LazyMetricFactory(
    "http", _BUILTIN + "http.build", "The number in an HTTP answer, or in one JSON field."
)
probeMetric = LazyMetricFactory(
    "probe",
    _BUILTIN + "probe.build",
    "Health 100 while a TCP connection to the service opens, else 0.",
    on_error_default=OnError.ZERO,
)
