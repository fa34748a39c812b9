"""
Typed access to a metric spec's C{key=value} options, with one-line errors
that name the metric and the key.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from lvsfeedback.agent.metrics.errors import MetricSpecError
from lvsfeedback.agent.metrics.scale import HealthScale

_REQUIRED = object()


class MetricOptions:
    """
    The options of one spec for one metric.

    Every accessor records the key it was asked for, so that L{finish} can
    refuse the keys nobody read and list the ones the metric accepts.
    """

    def __init__(self, metric: str, values: Mapping[str, str], common: Iterable[str] = ()):
        """
        @param metric: the metric's name, for messages.
        @param values: the spec's options.
        @param common: keys handled outside the metric (listed as known in
            errors, but not expected in C{values}).
        """
        self.metric = metric
        self._values = dict(values)
        self._known: list[str] = list(common)

    def error(self, message: str) -> MetricSpecError:
        """A L{MetricSpecError} saying C{message} about this metric."""
        return MetricSpecError(f"metric {self.metric!r}: {message}")

    def _raw(self, key: str, default: object) -> str | object:
        if key not in self._known:
            self._known.append(key)
        if key in self._values:
            return self._values[key]
        if default is _REQUIRED:
            raise self.error(f"missing key {key!r}")
        return default

    def text(self, key: str, default: object = _REQUIRED) -> str:
        """A non-empty string."""
        value = self._raw(key, default)
        if value == "":
            raise self.error(f"key {key!r} is empty")
        return value  # type: ignore[return-value]

    def number(
        self,
        key: str,
        default: object = _REQUIRED,
        *,
        minimum: float | None = None,
        positive: bool = False,
    ) -> float:
        """A finite real number, optionally C{>= minimum} or C{> 0}."""
        value = self._raw(key, default)
        if not isinstance(value, str):
            return value  # type: ignore[return-value]
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise self.error(f"key {key!r} must be a number, got {value!r}")
        if positive and number <= 0:
            raise self.error(f"key {key!r} must be above 0, got {value!r}")
        if minimum is not None and number < minimum:
            raise self.error(f"key {key!r} must be at least {minimum:g}, got {value!r}")
        return number

    def integer(self, key: str, default: object = _REQUIRED, *, minimum: int, maximum: int) -> int:
        """A whole number within C{minimum..maximum}."""
        value = self._raw(key, default)
        if not isinstance(value, str):
            return value  # type: ignore[return-value]
        try:
            number = int(value, 10)
        except ValueError:
            raise self.error(f"key {key!r} must be a whole number, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise self.error(f"key {key!r} must be in {minimum}..{maximum}, got {value!r}")
        return number

    def choice(self, key: str, choices: Iterable[str], default: object = _REQUIRED) -> str:
        """One of C{choices}."""
        allowed = list(choices)
        value = self._raw(key, default)
        if value not in allowed:
            raise self.error(f"key {key!r} must be one of {', '.join(allowed)}, got {value!r}")
        return value  # type: ignore[return-value]

    def scale(
        self, low: float, high: float | object = _REQUIRED, *, prefix: str = ""
    ) -> HealthScale:
        """
        The L{HealthScale} from keys C{<prefix>low} and C{<prefix>high}.

        @param low: the default for C{low}.
        @param high: the default for C{high}; required when not given.
        """
        low_key, high_key = f"{prefix}low", f"{prefix}high"
        low_value = self.number(low_key, low)
        high_value = self.number(high_key, high)
        if not low_value < high_value:
            raise self.error(
                f"{low_key} ({low_value:g}) must be below {high_key} ({high_value:g})"
            )
        return HealthScale(low_value, high_value)

    def finish(self) -> None:
        """
        Refuse the keys no accessor asked for.

        @raise MetricSpecError: naming the first unknown key and the known ones.
        """
        for key in self._values:
            if key not in self._known:
                known = ", ".join(sorted(self._known)) or "none"
                raise self.error(f"unknown key {key!r} (known keys: {known})")
