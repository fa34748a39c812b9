"""From a reading (a load, bigger is busier) to a health index 0..100."""

from __future__ import annotations

from dataclasses import dataclass

HEALTH_MAX = 100.0


@dataclass(frozen=True)
class HealthScale:
    """
    A linear scale: a reading at or below C{low} is health 100, at or above
    C{high} is health 0, and in between health falls in a straight line.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")

    def health(self, reading: float) -> float:
        """The health for C{reading}, within 0..100."""
        if reading <= self.low:
            return HEALTH_MAX
        if reading >= self.high:
            return 0.0
        return HEALTH_MAX * (self.high - reading) / (self.high - self.low)
