"""
The agent's health source: samples every service's metrics on a timer and
keeps the latest health of each service, ready to answer at once.

Each pass reads every metric (synchronous and asynchronous alike), smooths
each metric's health with an exponentially weighted moving average, and
combines a service's metrics by its rule (worst, or weighted mean). Queries
never measure: L{Sampler.health} returns what the last pass found.

Failing metrics:

  - A metric whose reading fails (an exception, an errback, or no answer
    within C{sample_timeout}) counts as health 0 when its spec says
    C{on_error=zero} (the default for C{probe}), and is left out of the
    combination when it says C{on_error=ignore} (the default otherwise).
  - When a service has no metric left to combine (all ignored and failing),
    its health is 0: a server that cannot tell how loaded it is gets no
    new work. The director's panic rule keeps a farm-wide failure from
    emptying the farm.
  - Each change of state (ok to failing, failing to ok, service usable to
    unusable and back) is logged once, not every pass.
  - A metric that recovers starts its average afresh.

Before the first pass completes, one interval after start, every service
reports health 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lvsfeedback.agent.interfaces import IHealthSource
from lvsfeedback.agent.metrics.combine import Combination, combine
from lvsfeedback.agent.metrics.errors import MetricReadError, MetricSpecError
from lvsfeedback.agent.metrics.interfaces import OnError
from lvsfeedback.agent.metrics.scale import HEALTH_MAX
from lvsfeedback.agent.metrics.spec import ConfiguredMetric
from lvsfeedback.ipvs.model import PROTOCOL_NAMES, PROTOCOLS


class UnknownServiceError(LookupError):
    """Health was asked for a service that has no metrics configured."""


def smooth(previous: float | None, reading: float, weight: float) -> float:
    """
    One step of an exponentially weighted moving average: C{weight} is the
    share of the new reading (1 keeps no history); the first reading
    (C{previous} is L{None}) stands alone.
    """
    if previous is None:
        return reading
    return weight * reading + (1 - weight) * previous


def health_index(health: float) -> int:
    """A health 0..100 rounded half up to the integer NECP carries."""
    return int(math.floor(health + 0.5))


@dataclass(frozen=True)
class ServiceMetrics:
    """
    The metrics of one service and how they combine.

    @ivar protocol: C{"tcp"}, C{"udp"} or C{"sctp"}.
    """

    protocol: str
    port: int
    metrics: tuple[ConfiguredMetric, ...]
    combination: Combination = Combination.WORST

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"service protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}"
            )
        if not 0 < self.port <= 65535:
            raise ValueError(f"service {self.name}: port must be in 1..65535")
        if not self.metrics:
            raise ValueError(f"service {self.name} has no metrics")
        if self.combination is Combination.WORST:
            for metric in self.metrics:
                if metric.weight is not None:
                    raise MetricSpecError(
                        f"service {self.name}: metric {metric.spec!r} has a weight, "
                        "which only counts when the service combines by 'mean'"
                    )

    @property
    def name(self) -> str:
        """C{tcp/80}, for messages."""
        return f"{self.protocol}/{self.port}"


class _MetricState:
    """One metric of one service as the sampler last saw it."""

    def __init__(self, configured: ConfiguredMetric):
        self.configured = configured
        self.smoothed: float | None = None
        self.failing = False


class _ServiceState:
    def __init__(self, config: ServiceMetrics):
        self.config = config
        self.metrics = [_MetricState(metric) for metric in config.metrics]
        self.health = 0
        self.usable = True


def _checked_health(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricReadError(f"the metric returned {value!r}, not a number")
    if not 0 <= value <= HEALTH_MAX:
        raise MetricReadError(f"the metric returned health {value!r}, outside 0..100")
    return float(value)


def _reason(failure: Failure) -> str:
    if failure.check(MetricReadError):
        return failure.getErrorMessage()
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"


@implementer(IHealthSource)
class Sampler(Service):
    """
    Samples metrics every C{interval} seconds on C{clock} and answers
    L{health} from the latest pass. A pass never starts while the previous
    one is still waiting for an asynchronous reading.

    @ivar drained: when true, every service reports health 0.
    """

    log = Logger()

    def __init__(
        self,
        services: Iterable[ServiceMetrics],
        clock,
        interval: float = 1.0,
        smoothing: float = 0.5,
        sample_timeout: float = 10.0,
    ):
        """
        @param clock: an C{IReactorTime}.
        @param interval: seconds between the starts of two passes.
        @param smoothing: the weight of the newest reading in each metric's
            moving average, above 0 and at most 1 (1: no smoothing).
        @param sample_timeout: seconds a reading may take before it counts
            as failed and is cancelled.
        """
        if not interval > 0:
            raise ValueError(f"sampling interval must be above 0, got {interval!r}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be above 0 and at most 1, got {smoothing!r}")
        if not sample_timeout > 0:
            raise ValueError(f"sample timeout must be above 0, got {sample_timeout!r}")
        self._clock = clock
        self._interval = interval
        self._smoothing = smoothing
        self._sample_timeout = sample_timeout
        self._services: dict[tuple[int, int], _ServiceState] = {}
        for config in services:
            key = (PROTOCOLS[config.protocol], config.port)
            if key in self._services:
                raise ValueError(f"service {config.name} is configured twice")
            self._services[key] = _ServiceState(config)
        self.drained = False
        self._sampled = False
        self._waiting_for_sample: list[Deferred] = []
        self._loop: LoopingCall | None = None
        self._loop_stopped: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._sample_all)
        self._loop.clock = self._clock
        self._loop_stopped = self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop sampling; fires once a pass in progress has finished."""
        super().stopService()
        self._loop.stop()
        return self._loop_stopped.addCallback(lambda _: None)

    def health(self, protocol: int | str, port: int) -> int:
        """
        The latest health 0..100 of a service, at once.

        @param protocol: an IP protocol number (6, as NECP carries it) or
            name (C{"tcp"}).
        @raise UnknownServiceError: when the service has no metrics.
        """
        number = PROTOCOLS.get(protocol, protocol) if isinstance(protocol, str) else protocol
        service = self._services.get((number, port))
        if service is None:
            name = PROTOCOL_NAMES.get(number, protocol)
            raise UnknownServiceError(f"no metrics are configured for service {name}/{port}")
        return 0 if self.drained else service.health

    def metrics_of(self, protocol: int, port: int) -> tuple[ConfiguredMetric, ...]:
        """
        The metrics configured for a service (by IP protocol number).

        @raise UnknownServiceError: when the service has no metrics.
        """
        service = self._services.get((protocol, port))
        if service is None:
            name = PROTOCOL_NAMES.get(protocol, protocol)
            raise UnknownServiceError(f"no metrics are configured for service {name}/{port}")
        return service.config.metrics

    def failing(self, protocol: int | str, port: int) -> list[str]:
        """The names of a service's metrics whose last reading failed (e.g. C{probe})."""
        number = PROTOCOLS.get(protocol, protocol) if isinstance(protocol, str) else protocol
        service = self._services.get((number, port))
        if service is None:
            raise UnknownServiceError(f"no metrics are configured for service {protocol}/{port}")
        return [state.configured.name for state in service.metrics if state.failing]

    def _sample_all(self) -> Deferred[None]:
        """One pass. Its Deferred never fails: a failure would end the loop."""
        sampled = maybeDeferred(self._read_all)
        sampled.addCallback(lambda _: self._update_health())
        sampled.addErrback(lambda failure: self.log.failure("sampling pass failed", failure))
        sampled.addCallback(self._first_sample_done)
        return sampled

    def when_sampled(self) -> Deferred[None]:
        """Fires once a first pass has completed: until then every health is 0."""
        if self._sampled:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiting_for_sample.append(waiting)
        return waiting

    def _first_sample_done(self, _) -> None:
        if not self._sampled:
            self._sampled = True
            waiting, self._waiting_for_sample = self._waiting_for_sample, []
            for deferred in waiting:
                deferred.callback(None)

    def _read_all(self) -> Deferred:
        return DeferredList(
            [
                self._read(service, state)
                for service in self._services.values()
                for state in service.metrics
            ]
        )

    def _read(self, service: _ServiceState, state: _MetricState) -> Deferred[None]:
        reading = maybeDeferred(state.configured.metric.sample)
        if not reading.called:
            reading.addTimeout(self._sample_timeout, self._clock, onTimeoutCancel=self._timed_out)
        reading.addCallback(_checked_health)
        reading.addCallbacks(
            lambda health: self._succeeded(service, state, health),
            lambda failure: self._failed(service, state, failure),
        )
        return reading

    def _timed_out(self, result: object, timeout: float) -> Failure:
        return Failure(MetricReadError(f"no reading within {timeout:g} s"))

    def _succeeded(self, service: _ServiceState, state: _MetricState, health: float) -> None:
        if state.failing:
            state.failing = False
            self.log.info(
                "metric {metric} of service {service} reads again",
                metric=state.configured.spec,
                service=service.config.name,
            )
        state.smoothed = smooth(state.smoothed, health, self._smoothing)

    def _failed(self, service: _ServiceState, state: _MetricState, failure: Failure) -> None:
        if not state.failing:
            state.failing = True
            self.log.warn(
                "metric {metric} of service {service} fails ({on_error}): {reason}",
                metric=state.configured.spec,
                service=service.config.name,
                on_error=state.configured.on_error.value,
                reason=_reason(failure),
            )
        state.smoothed = None

    def _update_health(self) -> None:
        for service in self._services.values():
            weighted = []
            for state in service.metrics:
                weight = state.configured.effective_weight
                if state.failing:
                    if state.configured.on_error is OnError.ZERO:
                        weighted.append((0.0, weight))
                elif state.smoothed is not None:
                    weighted.append((state.smoothed, weight))
            usable = bool(weighted)
            if usable != service.usable:
                service.usable = usable
                if usable:
                    self.log.info(
                        "service {service} has a usable metric again",
                        service=service.config.name,
                    )
                else:
                    self.log.warn(
                        "service {service} has no usable metric: reporting health 0",
                        service=service.config.name,
                    )
            service.health = (
                health_index(combine(service.config.combination, weighted)) if usable else 0
            )
