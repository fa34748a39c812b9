"""How a service's metric healths combine."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.metrics.combine import Combination, combine, weighted_mean, worst

healths = st.floats(min_value=0, max_value=100)
weights = st.floats(min_value=0.01, max_value=1000)
weighted_healths = st.lists(st.tuples(healths, weights), min_size=1, max_size=8)


class CombinationTests(SynchronousTestCase):
    def test_worst_is_the_lowest(self) -> None:
        self.assertEqual(worst([80.0, 20.0, 60.0]), 20.0)

    def test_weighted_mean_counts_weights(self) -> None:
        self.assertAlmostEqual(weighted_mean([(100.0, 3.0), (0.0, 1.0)]), 75.0)

    def test_combine_picks_the_rule(self) -> None:
        pairs = [(100.0, 1.0), (50.0, 1.0)]
        self.assertEqual(
            (combine(Combination.WORST, pairs), combine(Combination.MEAN, pairs)), (50.0, 75.0)
        )

    @given(weighted_healths)
    def test_results_stay_within_the_inputs(self, pairs) -> None:
        values = [health for health, _ in pairs]
        for rule in Combination:
            self.assertTrue(min(values) <= combine(rule, pairs) <= max(values))

    @given(weighted_healths)
    def test_worst_never_exceeds_the_mean(self, pairs) -> None:
        self.assertLessEqual(combine(Combination.WORST, pairs), combine(Combination.MEAN, pairs))

    @given(weighted_healths, st.randoms())
    def test_order_does_not_matter(self, pairs, random) -> None:
        shuffled = list(pairs)
        random.shuffle(shuffled)
        for rule in Combination:
            self.assertAlmostEqual(combine(rule, pairs), combine(rule, shuffled), places=6)

    @given(weighted_healths, st.floats(min_value=0.1, max_value=10))
    def test_scaling_every_weight_keeps_the_mean(self, pairs, factor) -> None:
        scaled = [(health, weight * factor) for health, weight in pairs]
        self.assertAlmostEqual(weighted_mean(pairs), weighted_mean(scaled), places=6)

    @given(healths, st.lists(weights, min_size=1, max_size=8))
    def test_equal_healths_combine_to_themselves(self, health, weight_list) -> None:
        pairs = [(health, weight) for weight in weight_list]
        for rule in Combination:
            self.assertEqual(combine(rule, pairs), health)
