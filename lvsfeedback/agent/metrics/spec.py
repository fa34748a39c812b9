"""
Metric specs: the grammar, its parser, and the registry that turns a spec
into a configured metric through the metric plugins.

Grammar::

    spec   = name [ ":" option { "," option } ]
    option = key "=" value

C{name} and C{key} are lowercase letters, digits, C{_} and C{-}, starting
with a letter. A value runs to the next comma; write C{\\,} for a comma
inside a value and C{\\\\} for a backslash. Spaces around keys and values are
ignored. Every metric accepts two common keys besides its own: C{weight}
(above 0, for the C{mean} combination) and C{on_error} (C{ignore} or
C{zero}).

Examples: C{cpu}, C{loadavg:high=2.0},
C{pressure:resource=io,kind=some,window=avg10}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from lvsfeedback.agent.metrics.errors import MetricPluginError, MetricSpecError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric, IMetricFactory, OnError
from lvsfeedback.agent.metrics.options import MetricOptions

_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
WEIGHT_KEY = "weight"
ON_ERROR_KEY = "on_error"
COMMON_KEYS = (WEIGHT_KEY, ON_ERROR_KEY)


@dataclass(frozen=True)
class MetricSpec:
    """A parsed spec: the metric's name and its options in written order."""

    text: str
    name: str
    options: tuple[tuple[str, str], ...]


def _split_options(text: str, spec: str) -> list[str]:
    """Split on commas that are not escaped; keep escapes for the next step."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise MetricSpecError(f"metric spec {spec!r} ends with a lone backslash")
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_spec(text: str) -> MetricSpec:
    """
    Parse C{name[:key=value,...]}.

    @raise MetricSpecError: when the text does not follow the grammar.
    """
    name, colon, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise MetricSpecError(f"metric spec {text!r} has no metric name")
    if not _NAME.match(name):
        raise MetricSpecError(
            f"metric spec {text!r}: bad metric name {name!r} "
            "(use lowercase letters, digits, '_' and '-', starting with a letter)"
        )
    options: list[tuple[str, str]] = []
    if colon:
        for number, part in enumerate(_split_options(rest, text), start=1):
            key, equals, value = part.partition("=")
            key = key.strip()
            if not equals:
                raise MetricSpecError(
                    f"metric spec {text!r}: option {number} ({part.strip()!r}) is not key=value"
                )
            if not _NAME.match(key):
                raise MetricSpecError(f"metric spec {text!r}: bad key {key!r}")
            if any(key == seen for seen, _ in options):
                raise MetricSpecError(f"metric spec {text!r}: key {key!r} given twice")
            options.append((key, _unescape(value.strip())))
    return MetricSpec(text, name, tuple(options))


@dataclass(frozen=True)
class ConfiguredMetric:
    """
    A metric built from a spec, with what the sampler needs to combine it.

    @ivar weight: the spec's C{weight}, or L{None} when it gave none.
    """

    spec: str
    name: str
    metric: ILoadMetric
    weight: float | None
    on_error: OnError

    @property
    def effective_weight(self) -> float:
        """The weight in a C{mean} combination: 1 unless the spec says."""
        return 1.0 if self.weight is None else self.weight


class MetricRegistry:
    """The metric factories by name; builds metrics from spec strings."""

    def __init__(self, factories: Iterable[IMetricFactory]):
        """
        @raise MetricPluginError: when two factories claim one name.
        """
        self._factories: dict[str, IMetricFactory] = {}
        for factory in factories:
            if factory.name in self._factories:
                raise MetricPluginError(
                    f"two metric plugins are both named {factory.name!r}: "
                    f"{self._factories[factory.name]!r} and {factory!r}"
                )
            self._factories[factory.name] = factory

    @classmethod
    def discover(cls, package=None) -> MetricRegistry:
        """
        A registry of every L{IMetricFactory} plugin in C{package}.

        @param package: a plugin package; L{None} means C{twisted.plugins},
            which spans every C{twisted/plugins/} directory on C{sys.path}.
        """
        from twisted.plugin import getPlugins

        return cls(getPlugins(IMetricFactory, package))

    def names(self) -> list[str]:
        """The known metric names, sorted."""
        return sorted(self._factories)

    def factory(self, name: str) -> IMetricFactory:
        """The factory called C{name}; L{MetricSpecError} when there is none."""
        try:
            return self._factories[name]
        except KeyError:
            raise MetricSpecError(
                f"unknown metric {name!r} (known metrics: {', '.join(self.names())})"
            ) from None

    def build(self, text: str, environment) -> ConfiguredMetric:
        """
        Parse C{text} and build its metric.

        @param environment: the
            L{lvsfeedback.agent.metrics.environment.MetricEnvironment}.
        @raise MetricSpecError: for any mistake in the spec.
        """
        spec = parse_spec(text)
        factory = self.factory(spec.name)
        values = dict(spec.options)
        common = MetricOptions(
            spec.name, {key: values.pop(key) for key in COMMON_KEYS if key in values}
        )
        weight = common.number(WEIGHT_KEY, None, positive=True)
        on_error = OnError(
            common.choice(ON_ERROR_KEY, [choice.value for choice in OnError],
                          OnError(factory.on_error_default).value)
        )
        options = MetricOptions(spec.name, values, common=COMMON_KEYS)
        metric = factory.build(options, environment)
        options.finish()
        return ConfiguredMetric(spec.text.strip(), spec.name, metric, weight, on_error)
