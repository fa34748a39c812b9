"""How a service's metrics combine into one health: pure functions."""

from __future__ import annotations

import enum
from typing import Sequence


class Combination(str, enum.Enum):
    """The rule that combines a service's metric healths."""

    #: The lowest health wins: the service is as fit as its busiest resource.
    WORST = "worst"
    #: The mean of the healths, weighted by each spec's C{weight}.
    MEAN = "mean"


def worst(healths: Sequence[float]) -> float:
    """The lowest of C{healths} (at least one)."""
    return min(healths)


def weighted_mean(weighted: Sequence[tuple[float, float]]) -> float:
    """
    The mean of C{(health, weight)} pairs (at least one, weights above 0),
    clamped into the range of the inputs against rounding.
    """
    total_weight = sum(weight for _, weight in weighted)
    mean = sum(health * weight for health, weight in weighted) / total_weight
    healths = [health for health, _ in weighted]
    return min(max(mean, min(healths)), max(healths))


def combine(rule: Combination, weighted: Sequence[tuple[float, float]]) -> float:
    """Combine C{(health, weight)} pairs (at least one) by C{rule}."""
    if rule is Combination.WORST:
        return worst([health for health, _ in weighted])
    return weighted_mean(weighted)
