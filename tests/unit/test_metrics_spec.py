"""Metric specs: the grammar, typed options, the health scale, the registry."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricPluginError, MetricSpecError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric, OnError
from lvsfeedback.agent.metrics.options import MetricOptions
from lvsfeedback.agent.metrics.plugin import LazyMetricFactory
from lvsfeedback.agent.metrics.scale import HealthScale
from lvsfeedback.agent.metrics.spec import MetricRegistry, parse_spec

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@implementer(ILoadMetric)
class ConstantMetric:
    """A metric whose health is fixed by its spec, for registry tests."""

    def __init__(self, health: float):
        self.health = health

    def sample(self) -> float:
        return self.health


def build_constant(options, environment) -> ConstantMetric:
    return ConstantMetric(options.number("health", 50.0, minimum=0))


def registry() -> MetricRegistry:
    return MetricRegistry(
        [
            LazyMetricFactory("constant", f"{__name__}.build_constant", "fixed health"),
            LazyMetricFactory(
                "alive", f"{__name__}.build_constant", "fixed", on_error_default=OnError.ZERO
            ),
        ]
    )


class ParseSpecTests(SynchronousTestCase):
    def test_bare_name_has_no_options(self) -> None:
        spec = parse_spec("cpu")
        self.assertEqual((spec.name, spec.options), ("cpu", ()))

    def test_options_keep_their_order_and_values(self) -> None:
        spec = parse_spec("pressure:resource=io,kind=some,window=avg10")
        self.assertEqual(spec.options, (("resource", "io"), ("kind", "some"), ("window", "avg10")))

    def test_value_keeps_colons_and_equals_signs(self) -> None:
        spec = parse_spec("http:url=http://127.0.0.1:8080/load?x=1,field=load.value")
        self.assertEqual(
            dict(spec.options), {"url": "http://127.0.0.1:8080/load?x=1", "field": "load.value"}
        )

    def test_backslash_escapes_comma_and_backslash(self) -> None:
        spec = parse_spec(r"command:cmd=load.sh a\,b c\\d,timeout=2")
        self.assertEqual(dict(spec.options), {"cmd": r"load.sh a,b c\d", "timeout": "2"})

    def test_spaces_around_keys_and_values_are_ignored(self) -> None:
        spec = parse_spec(" loadavg : low = 0.5 , high = 2 ")
        self.assertEqual((spec.name, spec.options), ("loadavg", (("low", "0.5"), ("high", "2"))))

    def test_refusals_name_the_fault(self) -> None:
        cases = {
            "": "has no metric name",
            ":low=1": "has no metric name",
            "CPU": "bad metric name 'CPU'",
            "cpu:low": "option 1 ('low') is not key=value",
            "cpu:low=1,": "option 2 ('') is not key=value",
            "cpu:Low=1": "bad key 'Low'",
            "cpu:low=1,low=2": "key 'low' given twice",
            "cpu:low=1\\": "ends with a lone backslash",
        }
        for text, expected in cases.items():
            error = self.assertRaises(MetricSpecError, parse_spec, text)
            self.assertIn(expected, str(error), text)
            self.assertNotIn("\n", str(error))


class MetricOptionsTests(SynchronousTestCase):
    def test_number_parses_and_defaults(self) -> None:
        options = MetricOptions("m", {"a": "2.5"})
        self.assertEqual((options.number("a", 1.0), options.number("b", 1.0)), (2.5, 1.0))

    def test_number_refuses_words_and_non_finite_values(self) -> None:
        for value in ("abc", "nan", "inf", ""):
            error = self.assertRaises(MetricSpecError, MetricOptions("m", {"a": value}).number, "a")
            self.assertEqual(str(error), f"metric 'm': key 'a' must be a number, got {value!r}")

    def test_number_bounds(self) -> None:
        above = self.assertRaises(
            MetricSpecError, MetricOptions("m", {"a": "0"}).number, "a", positive=True
        )
        least = self.assertRaises(
            MetricSpecError, MetricOptions("m", {"a": "-1"}).number, "a", minimum=0
        )
        self.assertEqual(
            (str(above), str(least)),
            (
                "metric 'm': key 'a' must be above 0, got '0'",
                "metric 'm': key 'a' must be at least 0, got '-1'",
            ),
        )

    def test_integer_range(self) -> None:
        self.assertEqual(MetricOptions("m", {"p": "80"}).integer("p", minimum=1, maximum=65535), 80)
        for value in ("0", "65536", "8.0", "x"):
            self.assertRaises(
                MetricSpecError,
                MetricOptions("m", {"p": value}).integer,
                "p",
                minimum=1,
                maximum=65535,
            )

    def test_missing_required_key(self) -> None:
        options = MetricOptions("probe", {})
        error = self.assertRaises(MetricSpecError, options.integer, "port", minimum=1, maximum=2)
        self.assertEqual(str(error), "metric 'probe': missing key 'port'")

    def test_choice_lists_the_choices(self) -> None:
        error = self.assertRaises(
            MetricSpecError, MetricOptions("m", {"k": "x"}).choice, "k", ["some", "full"]
        )
        self.assertEqual(str(error), "metric 'm': key 'k' must be one of some, full, got 'x'")

    def test_scale_needs_low_below_high(self) -> None:
        error = self.assertRaises(
            MetricSpecError, MetricOptions("m", {"low": "5", "high": "5"}).scale, 0.0, 1.0
        )
        self.assertEqual(str(error), "metric 'm': low (5) must be below high (5)")

    def test_scale_with_prefix_reads_its_own_keys(self) -> None:
        options = MetricOptions("m", {"pressure_high": "40"})
        self.assertEqual(options.scale(0.0, 100.0, prefix="pressure_"), HealthScale(0.0, 40.0))

    def test_finish_refuses_unread_keys_and_lists_known_ones(self) -> None:
        options = MetricOptions("m", {"low": "1", "lwo": "2"}, common=["weight"])
        options.number("low", 0.0)
        error = self.assertRaises(MetricSpecError, options.finish)
        self.assertEqual(str(error), "metric 'm': unknown key 'lwo' (known keys: low, weight)")


class HealthScaleTests(SynchronousTestCase):
    def test_endpoints_and_middle_and_saturation_is_barely_able_to_serve(self) -> None:
        scale = HealthScale(10.0, 30.0)
        self.assertEqual(
            [scale.health(r) for r in (0, 10, 15, 20, 30, 99)], [100, 100, 75, 50, 1, 1]
        )

    def test_low_must_be_below_high(self) -> None:
        self.assertRaises(ValueError, HealthScale, 2.0, 2.0)

    @given(finite, finite, finite, finite)
    def test_health_stays_within_1_and_100_and_never_rises_with_load(self, a, b, r1, r2) -> None:
        assume(a != b)
        scale = HealthScale(min(a, b), max(a, b))
        lighter, heavier = sorted((r1, r2))
        self.assertTrue(1 <= scale.health(heavier) <= scale.health(lighter) <= 100)


    def test_bounds_whose_difference_overflows_still_give_a_health_in_range(self) -> None:
        scale = HealthScale(-1.5e308, 1.5e308)
        self.assertEqual([scale.health(r) for r in (-1.5e308, 0.0, 1.5e308)], [100, 50, 1])


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.environment = MetricEnvironment(Clock())

    def test_builds_metric_with_its_options(self) -> None:
        configured = registry().build("constant:health=42", self.environment)
        self.assertEqual(
            (configured.spec, configured.name, configured.metric.sample()),
            ("constant:health=42", "constant", 42.0),
        )

    def test_common_keys_are_taken_out_for_the_sampler(self) -> None:
        configured = registry().build("constant:weight=3,on_error=zero", self.environment)
        self.assertEqual((configured.weight, configured.on_error), (3.0, OnError.ZERO))

    def test_defaults_weight_none_and_on_error_from_factory(self) -> None:
        ignored = registry().build("constant", self.environment)
        zeroed = registry().build("alive", self.environment)
        self.assertEqual(
            (ignored.weight, ignored.effective_weight, ignored.on_error, zeroed.on_error),
            (None, 1.0, OnError.IGNORE, OnError.ZERO),
        )

    def test_unknown_metric_lists_known_ones(self) -> None:
        error = self.assertRaises(MetricSpecError, registry().build, "cpu", self.environment)
        self.assertEqual(str(error), "unknown metric 'cpu' (known metrics: alive, constant)")

    def test_unknown_key_is_refused(self) -> None:
        error = self.assertRaises(
            MetricSpecError, registry().build, "constant:helth=1", self.environment
        )
        self.assertEqual(
            str(error),
            "metric 'constant': unknown key 'helth' (known keys: health, on_error, weight)",
        )

    def test_bad_common_values_are_refused(self) -> None:
        for text, expected in {
            "constant:weight=0": "key 'weight' must be above 0",
            "constant:weight=x": "key 'weight' must be a number",
            "constant:on_error=panic": "key 'on_error' must be one of ignore, zero",
        }.items():
            error = self.assertRaises(MetricSpecError, registry().build, text, self.environment)
            self.assertIn(expected, str(error))

    def test_two_plugins_with_one_name_are_refused(self) -> None:
        one = LazyMetricFactory("x", f"{__name__}.build_constant", "one")
        two = LazyMetricFactory("x", f"{__name__}.build_constant", "two")
        error = self.assertRaises(MetricPluginError, MetricRegistry, [one, two])
        self.assertIn("both named 'x'", str(error))
