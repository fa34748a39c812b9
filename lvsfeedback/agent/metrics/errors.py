"""Exceptions raised by metric configuration and metric readings."""


class MetricSpecError(ValueError):
    """
    A metric spec is wrong: unknown metric, unknown key or bad value.

    The message is one line meant for the operator, naming the metric and
    the key at fault.
    """


class MetricReadError(Exception):
    """
    A metric could not take a reading this time (file missing, script failed,
    service unreachable). The message says why, in one line.
    """


class MetricPluginError(Exception):
    """Two metric plugins claim the same metric name."""
