"""The command metric, running real short programs on the real reactor."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricReadError, MetricSpecError
from lvsfeedback.agent.metrics.spec import MetricRegistry


class RecordingReactor:
    """The real reactor, noting when each spawned process ends."""

    def __init__(self):
        self.ended: list[Deferred] = []

    def spawnProcess(self, protocol, *args, **kwargs):
        ended: Deferred = Deferred()
        process_ended = protocol.processEnded

        def note_end(reason):
            process_ended(reason)
            ended.callback(reason.value)

        protocol.processEnded = note_end
        self.ended.append(ended)
        return reactor.spawnProcess(protocol, *args, **kwargs)

    def callLater(self, *args, **kwargs):
        return reactor.callLater(*args, **kwargs)


class CommandMetricTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.reactor = RecordingReactor()
        self.environment = MetricEnvironment(self.reactor)

    def metric(self, spec: str):
        return MetricRegistry.discover().build(spec, self.environment).metric

    @inlineCallbacks
    def test_printed_number_is_the_load(self):
        metric = self.metric("command:cmd=sh -c 'echo 25',timeout=5")
        self.assertEqual((yield metric.reading()), 25.0)
        self.assertEqual((yield metric.sample()), 75.0)

    @inlineCallbacks
    def test_bounds_scale_the_load(self):
        metric = self.metric("command:cmd=echo 3,low=1,high=5")
        self.assertEqual((yield metric.sample()), 50.0)

    @inlineCallbacks
    def test_program_outliving_its_timeout_is_killed(self):
        metric = self.metric("command:cmd=sleep 10,timeout=0.2")
        error = yield self.assertFailure(metric.sample(), MetricReadError)
        self.assertRegex(str(error), r"^/\S*sleep killed after its 0.2 s timeout$")
        end = yield self.reactor.ended[0]
        self.assertEqual(end.signal, 9)

    @inlineCallbacks
    def test_cancelled_reading_kills_the_program(self):
        reading = self.metric("command:cmd=sleep 10").sample()
        reading.cancel()
        yield self.assertFailure(reading, CancelledError)
        end = yield self.reactor.ended[0]
        self.assertEqual(end.signal, 9)

    @inlineCallbacks
    def test_failing_program_reports_status_and_stderr(self):
        metric = self.metric(r"command:cmd=sh -c 'echo 7; echo disk gone >&2; exit 3'")
        error = yield self.assertFailure(metric.sample(), MetricReadError)
        self.assertRegex(str(error), r"sh failed \(3\): disk gone$")

    @inlineCallbacks
    def test_output_that_is_not_a_number_is_refused(self):
        for command in ("echo busy", "echo nan", "true"):
            metric = self.metric(f"command:cmd={command}")
            error = yield self.assertFailure(metric.sample(), MetricReadError)
            self.assertIn("not a number", str(error))

    def test_unknown_program_is_a_spec_error(self) -> None:
        error = self.assertRaises(MetricSpecError, self.metric, "command:cmd=/nonexistent/load.sh")
        self.assertEqual(
            str(error),
            "metric 'command': key 'cmd': '/nonexistent/load.sh' is not an executable program",
        )

    def test_unbalanced_quotes_are_a_spec_error(self) -> None:
        error = self.assertRaises(MetricSpecError, self.metric, "command:cmd=sh -c 'echo")
        self.assertIn("cannot be split into words", str(error))
