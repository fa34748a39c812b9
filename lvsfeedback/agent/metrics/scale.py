"""From a reading (a load, bigger is busier) to a health index 1..100."""

from __future__ import annotations

import math
from dataclasses import dataclass

HEALTH_MAX = 100.0
# NECP: 1 is "barely able to serve", 0 is "send it no work". A server at or
# past its load limit is the former: still serving, just full. Reporting 0
# would quiesce it, its load would fall, its health jump back, and the
# weight would swing on every round trip. Health 0 is left to failures
# (a failing metric, a refused probe) and to drains.
HEALTH_SATURATED = 1.0
_HUGE = 1e300  # beyond this, HEALTH_MAX times a difference may overflow


@dataclass(frozen=True)
class HealthScale:
    """
    A linear scale: a reading at or below C{low} is health 100, at or above
    C{high} is health 1 (L{HEALTH_SATURATED}), and in between health falls
    in a straight line, never below 1.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")

    def health(self, reading: float) -> float:
        """The health for C{reading}, within 1..100."""
        return max(HEALTH_SATURATED, self._linear(reading))

    def _linear(self, reading: float) -> float:
        if reading <= self.low:
            return HEALTH_MAX
        if reading >= self.high:
            return 0.0
        span, left = self.high - self.low, self.high - reading
        if math.isinf(span) or abs(left) > _HUGE:
            # Bounds so far apart that their difference (or 100 times it)
            # overflows: halve both and divide first.
            span, left = self.high / 2 - self.low / 2, self.high / 2 - reading / 2
            return min(HEALTH_MAX, max(0.0, HEALTH_MAX * (left / span)))
        # Rounding may carry a reading just above low a hair past 100.
        return min(HEALTH_MAX, max(0.0, HEALTH_MAX * left / span))
