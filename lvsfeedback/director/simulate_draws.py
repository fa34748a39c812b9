"""Random draws for the policy simulator (lvsfeedback.director.simulate), fast enough for its sweeps."""

from __future__ import annotations

import math
import random


def poisson(rng: random.Random, mean: float) -> int:
    """A count with a Poisson distribution of `mean` (a normal draw above 50: as good, and faster)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    # Knuth: multiply uniforms until the product falls below e^-mean.
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def binomial(rng: random.Random, count: int, chance: float) -> int:
    """How many of `count` independent trials succeed, each with `chance`."""
    if count * min(chance, 1 - chance) > 25:
        spread = math.sqrt(count * chance * (1 - chance))
        return min(count, max(0, round(rng.gauss(count * chance, spread))))
    return sum(1 for _ in range(count) if rng.random() < chance)
