"""The sampling loop on a task.Clock: smoothing, combination, failures, draining."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lvsfeedback.agent import sampler as sampler_module
from lvsfeedback.agent.metrics.combine import Combination
from lvsfeedback.agent.metrics.errors import MetricReadError, MetricSpecError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric, OnError
from lvsfeedback.agent.metrics.spec import ConfiguredMetric
from lvsfeedback.agent.sampler import (
    Sampler,
    ServiceMetrics,
    UnknownServiceError,
    health_index,
    smooth,
)


@implementer(ILoadMetric)
class ScriptedMetric:
    """Returns (or raises) the next item of a script; repeats the last one."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls = 0

    def sample(self):
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


@implementer(ILoadMetric)
class PendingMetric:
    """Answers with Deferreds the test fires."""

    def __init__(self):
        self.pending: list[Deferred] = []
        self.cancelled = 0

    def sample(self) -> Deferred:
        reading: Deferred = Deferred(lambda _: self._cancelled())
        self.pending.append(reading)
        return reading

    def _cancelled(self) -> None:
        self.cancelled += 1


def configured(metric, spec="scripted", weight=None, on_error=OnError.IGNORE) -> ConfiguredMetric:
    return ConfiguredMetric(spec, spec.partition(":")[0], metric, weight, on_error)


class SamplerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict] = []
        self.patch(Sampler, "log", Logger(observer=self.events.append))

    def start(self, *services: ServiceMetrics, **settings) -> Sampler:
        sampler = Sampler(services, self.clock, **settings)
        sampler.startService()
        self.addCleanup(lambda: sampler.running and sampler.stopService())
        return sampler

    def service(self, *metrics: ConfiguredMetric, port=80, combination=Combination.WORST):
        return ServiceMetrics("tcp", port, tuple(metrics), combination)

    def passes(self, count: int = 1) -> None:
        for _ in range(count):
            self.clock.advance(1.0)

    def messages(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


class SamplingTests(SamplerTestCase):
    def test_health_is_zero_until_the_first_pass(self) -> None:
        sampler = self.start(self.service(configured(ScriptedMetric(80.0))))
        self.assertEqual(sampler.health("tcp", 80), 0)
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 80)

    def test_queries_never_measure(self) -> None:
        metric = ScriptedMetric(80.0)
        sampler = self.start(self.service(configured(metric)))
        self.passes()
        for _ in range(5):
            sampler.health("tcp", 80)
        self.assertEqual(metric.calls, 1)

    def test_interval_is_configurable(self) -> None:
        metric = ScriptedMetric(80.0)
        self.start(self.service(configured(metric)), interval=5.0)
        self.passes(9)
        self.assertEqual(metric.calls, 1)

    def test_protocol_by_number_or_name(self) -> None:
        sampler = self.start(self.service(configured(ScriptedMetric(42.0)), port=8080))
        self.passes()
        self.assertEqual((sampler.health(6, 8080), sampler.health("tcp", 8080)), (42, 42))

    def test_unknown_service_is_refused(self) -> None:
        sampler = self.start(self.service(configured(ScriptedMetric(42.0))))
        for protocol, port in ((17, 80), ("tcp", 81), (99, 80)):
            error = self.assertRaises(UnknownServiceError, sampler.health, protocol, port)
            self.assertIn("no metrics are configured for service", str(error))

    def test_readings_are_smoothed(self) -> None:
        metric = configured(ScriptedMetric(100.0, 0.0, 0.0))
        sampler = self.start(self.service(metric), smoothing=0.5)
        healths = []
        for _ in range(3):
            self.passes()
            healths.append(sampler.health("tcp", 80))
        self.assertEqual(healths, [100, 50, 25])

    def test_smoothing_of_one_follows_readings(self) -> None:
        sampler = self.start(self.service(configured(ScriptedMetric(100.0, 0.0))), smoothing=1.0)
        self.passes(2)
        self.assertEqual(sampler.health("tcp", 80), 0)

    def test_services_are_independent(self) -> None:
        sampler = self.start(
            self.service(configured(ScriptedMetric(10.0)), port=80),
            self.service(configured(ScriptedMetric(90.0)), port=443),
        )
        self.passes()
        self.assertEqual((sampler.health("tcp", 80), sampler.health("tcp", 443)), (10, 90))


class CombinationTests(SamplerTestCase):
    def test_worst_metric_decides_by_default(self) -> None:
        sampler = self.start(
            self.service(configured(ScriptedMetric(80.0)), configured(ScriptedMetric(30.0)))
        )
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 30)

    def test_weighted_mean_when_the_service_asks(self) -> None:
        sampler = self.start(
            self.service(
                configured(ScriptedMetric(80.0), weight=3.0),
                configured(ScriptedMetric(30.0)),
                combination=Combination.MEAN,
            )
        )
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 68)  # (240 + 30) / 4 = 67.5

    def test_weight_in_a_worst_combination_is_refused(self) -> None:
        error = self.assertRaises(
            MetricSpecError,
            self.service,
            configured(ScriptedMetric(1.0), spec="cpu:weight=2", weight=2.0),
        )
        self.assertEqual(
            str(error),
            "service tcp/80: metric 'cpu:weight=2' has a weight, "
            "which only counts when the service combines by 'mean'",
        )


class FailureTests(SamplerTestCase):
    def test_ignored_failing_metric_is_left_out(self) -> None:
        sampler = self.start(
            self.service(
                configured(ScriptedMetric(80.0)),
                configured(ScriptedMetric(MetricReadError("gone"))),
            )
        )
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 80)

    def test_failing_zero_metric_drops_health_at_once(self) -> None:
        sampler = self.start(
            self.service(
                configured(ScriptedMetric(100.0)),
                configured(
                    ScriptedMetric(100.0, MetricReadError("refused")), on_error=OnError.ZERO
                ),
            ),
            smoothing=0.1,
        )
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 100)
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 0)

    def test_failing_zero_metric_counts_with_its_weight_in_a_mean(self) -> None:
        sampler = self.start(
            self.service(
                configured(ScriptedMetric(90.0), weight=2.0),
                configured(ScriptedMetric(MetricReadError("refused")), on_error=OnError.ZERO),
                combination=Combination.MEAN,
            )
        )
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 60)

    def test_failure_is_logged_once_per_change_of_state(self) -> None:
        script = [MetricReadError("file gone")] * 3 + [50.0] * 2 + [MetricReadError("file gone")]
        self.start(
            self.service(
                configured(ScriptedMetric(*script), spec="pressure"),
                configured(ScriptedMetric(70.0)),
            )
        )
        self.passes(7)
        self.assertEqual(
            self.messages(),
            [
                "metric pressure of service tcp/80 fails (ignore): file gone",
                "metric pressure of service tcp/80 reads again",
                "metric pressure of service tcp/80 fails (ignore): file gone",
            ],
        )

    def test_unexpected_exception_counts_as_a_failure_with_its_type(self) -> None:
        broken = ScriptedMetric(ZeroDivisionError("division by zero"))
        sampler = self.start(self.service(configured(broken, on_error=OnError.ZERO)))
        self.passes(2)
        self.assertEqual(sampler.health("tcp", 80), 0)
        self.assertIn("fails (zero): ZeroDivisionError: division by zero", self.messages()[0])

    def test_health_outside_the_range_is_a_failure(self) -> None:
        self.start(
            self.service(configured(ScriptedMetric(150.0)), configured(ScriptedMetric(50.0)))
        )
        self.passes()
        self.assertIn("returned health 150.0, outside 0..100", self.messages()[0])

    def test_no_usable_metric_reports_zero_and_logs_once(self) -> None:
        script = [MetricReadError("file gone")] * 3 + [40.0]
        sampler = self.start(self.service(configured(ScriptedMetric(*script))))
        self.passes(3)
        self.assertEqual(sampler.health("tcp", 80), 0)
        self.passes()
        self.assertEqual(sampler.health("tcp", 80), 40)
        self.assertEqual(
            [message for message in self.messages() if message.startswith("service")],
            [
                "service tcp/80 has no usable metric: reporting health 0",
                "service tcp/80 has a usable metric again",
            ],
        )

    def test_recovered_metric_starts_its_average_afresh(self) -> None:
        metric = configured(ScriptedMetric(100.0, MetricReadError("file gone"), 20.0))
        sampler = self.start(self.service(metric), smoothing=0.5)
        self.passes(3)
        self.assertEqual(sampler.health("tcp", 80), 20)


class AsynchronousTests(SamplerTestCase):
    def test_no_new_pass_while_a_reading_is_pending(self) -> None:
        metric = PendingMetric()
        sampler = self.start(self.service(configured(metric)))
        self.passes(5)
        self.assertEqual(len(metric.pending), 1)
        metric.pending[0].callback(70.0)
        self.assertEqual(sampler.health("tcp", 80), 70)
        self.passes()
        self.assertEqual(len(metric.pending), 2)

    def test_pass_waits_for_every_reading(self) -> None:
        slow, fast = PendingMetric(), ScriptedMetric(90.0)
        sampler = self.start(self.service(configured(slow), configured(fast)))
        self.passes(3)
        self.assertEqual((sampler.health("tcp", 80), fast.calls), (0, 1))
        slow.pending[0].callback(40.0)
        self.assertEqual(sampler.health("tcp", 80), 40)

    def test_reading_that_takes_too_long_is_cancelled_and_fails(self) -> None:
        metric = PendingMetric()
        sampler = self.start(
            self.service(configured(metric, spec="http"), configured(ScriptedMetric(90.0))),
            sample_timeout=3.0,
        )
        self.passes(3)  # the reading started at 1 s
        self.assertEqual(metric.cancelled, 0)
        self.passes()
        self.assertEqual(metric.cancelled, 1)
        self.assertEqual(sampler.health("tcp", 80), 90)
        self.assertEqual(
            self.messages(), ["metric http of service tcp/80 fails (ignore): no reading within 3 s"]
        )
        self.passes()
        self.assertEqual(len(metric.pending), 2)  # the loop goes on

    def test_stop_waits_for_the_pass_in_progress(self) -> None:
        metric = PendingMetric()
        sampler = self.start(self.service(configured(metric)))
        self.passes()
        stopped = sampler.stopService()
        self.assertNoResult(stopped)
        metric.pending[0].callback(50.0)
        self.assertIsNone(self.successResultOf(stopped))
        self.passes(3)
        self.assertEqual(len(metric.pending), 1)


class LoopTests(SamplerTestCase):
    def test_error_in_a_pass_is_logged_and_the_loop_goes_on(self) -> None:
        def broken(rule, weighted):
            raise ArithmeticError("broken rule")

        metric = ScriptedMetric(80.0)
        self.start(self.service(configured(metric)))
        self.patch(sampler_module, "combine", broken)
        self.passes(2)
        self.assertEqual(metric.calls, 2)
        self.assertEqual(self.messages(), ["sampling pass failed"] * 2)
        self.assertIsInstance(self.events[0]["log_failure"].value, ArithmeticError)

    def test_drained_answers_zero_and_undrained_answers_again(self) -> None:
        sampler = self.start(self.service(configured(ScriptedMetric(80.0))))
        self.passes()
        sampler.drained = True
        self.assertEqual(sampler.health("tcp", 80), 0)
        sampler.drained = False
        self.assertEqual(sampler.health("tcp", 80), 80)


class ConfigurationTests(SynchronousTestCase):
    def test_bad_settings_are_refused_with_a_message(self) -> None:
        service = ServiceMetrics("tcp", 80, (configured(ScriptedMetric(1.0)),))
        for settings, expected in (
            ({"interval": 0}, "sampling interval must be above 0"),
            ({"smoothing": 0}, "smoothing must be above 0 and at most 1"),
            ({"smoothing": 1.5}, "smoothing must be above 0 and at most 1"),
            ({"sample_timeout": -1}, "sample timeout must be above 0"),
        ):
            error = self.assertRaises(ValueError, Sampler, [service], Clock(), **settings)
            self.assertIn(expected, str(error))

    def test_bad_services_are_refused_with_a_message(self) -> None:
        metric = (configured(ScriptedMetric(1.0)),)
        for arguments, expected in (
            (("icmp", 80, metric), "service protocol must be one of tcp, udp, sctp, got 'icmp'"),
            (("tcp", 0, metric), "service tcp/0: port must be in 1..65535"),
            (("tcp", 80, ()), "service tcp/80 has no metrics"),
        ):
            error = self.assertRaises(ValueError, ServiceMetrics, *arguments)
            self.assertEqual(str(error), expected)
        service = ServiceMetrics("tcp", 80, metric)
        error = self.assertRaises(ValueError, Sampler, [service, service], Clock())
        self.assertEqual(str(error), "service tcp/80 is configured twice")


class PureHelperTests(SynchronousTestCase):
    @given(st.floats(0, 100), st.floats(0, 100), st.floats(0.01, 1))
    def test_smoothing_lands_between_old_and_new(self, previous, reading, weight) -> None:
        value = smooth(previous, reading, weight)
        self.assertTrue(min(previous, reading) - 1e-9 <= value <= max(previous, reading) + 1e-9)

    def test_first_reading_stands_alone(self) -> None:
        self.assertEqual(smooth(None, 42.0, 0.1), 42.0)

    def test_health_index_rounds_half_up(self) -> None:
        healths = (0.0, 0.49, 0.5, 67.5, 99.5, 100.0)
        self.assertEqual([health_index(h) for h in healths], [0, 0, 1, 68, 100, 100])


class FirstSampleTests(SynchronousTestCase):
    def test_when_sampled_fires_after_the_first_pass_and_at_once_afterwards(self):
        from lvsfeedback.agent.sampler import Sampler

        clock = Clock()
        sampler = Sampler([], clock, interval=1.0)
        sampler.startService()
        self.addCleanup(sampler.stopService)
        waiting = sampler.when_sampled()
        self.assertNoResult(waiting)
        clock.advance(1.0)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIsNone(self.successResultOf(sampler.when_sampled()))
