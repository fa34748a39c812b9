"""
The weight policy: facts about real servers in, IPVS weights out.

`decide` is a pure function. Everything it depends on (settings, the latest
health reports, agent states, kernel counters, kernel weights, operator
overrides, the time) is passed in, and what it must remember between passes
(smoothed health, slow-start ramps) goes in and out as an immutable
`PolicyState`. It reads no clock and does no I/O, so the same inputs always
give the same outputs; the updater owns the loop and the kernel.

One pass, per virtual service:

1. Each real server is assessed alone: operator override, then agent state and
   report freshness, then its health (see `Reason` for the outcomes).
2. Servers with live feedback get a weight from the service's mode: ``health``
   (base x smoothed health / 100) or ``capacity`` (throughput divided by
   utilisation, the estimator of client-side weighted round robin in gRPC and
   Envoy), clamped to [floor, ceiling]. Throughput is the rate of incoming
   packets per real server: it moves with requests whether they come one per
   connection or many, where the connection rate, a whole number per second,
   stays 0 under persistent connections. The policy measures it from the
   kernel's packet totals between passes and smooths it like health, so that
   both halves of the estimate lag alike (the kernel's own rate estimator
   lags by ~8 s and counts in whole packets per second).
3. Panic: when fewer than ``panic_threshold`` of the servers without an
   operator override would keep a non-zero weight, all of those get their
   static base weight instead, so that the service never sends everything to
   one server or to none.
4. Slow start: a server that comes up (joins, recovers, is undrained) ramps
   linearly from ``floor`` to its weight over ``slow_start`` seconds.
5. Hysteresis: a feedback weight that moved less than ``hysteresis`` (relative)
   from the kernel's current weight is not worth a write; changes to or from
   zero always are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Mapping

from lvsfeedback.ipvs.model import MAX_WEIGHT, DestCounters, DestKey, ServiceKey


class Mode(enum.StrEnum):
    HEALTH = "health"
    CAPACITY = "capacity"


class LostAgentAction(enum.StrEnum):
    """What to do with a real server whose agent is gone or silent."""

    KEEP = "keep"  # leave the kernel's weight as it is
    STATIC = "static"  # use the configured base weight
    QUIESCE = "quiesce"  # weight 0: no new connections, existing ones continue
    REMOVE = "remove"  # delete the real server from the service


class AgentState(enum.StrEnum):
    NEVER_SEEN = "never-seen"
    CONNECTED = "connected"
    STOPPED = "stopped"  # connected, but the service is not started
    LOST = "lost"


class Reason(enum.StrEnum):
    """Why a real server got its weight."""

    HEALTH = "health"  # base x smoothed health; also health 0 from a live agent
    CAPACITY = "capacity"  # packet rate / utilisation
    SLOW_START = "slow-start"  # ramping up to one of the other weights
    PANIC = "panic"  # too few servers left with weight: static base weights
    DRAINED = "drained"  # operator override: weight 0
    PINNED = "pinned"  # operator override: a fixed weight
    LOST_AGENT = "lost-agent"  # the agent disconnected; the lost-agent action applies
    STALE = "stale"  # the agent is connected but its report is too old; same action
    STATIC = "static"  # no feedback yet: the configured base weight
    STOPPED = "stopped"  # the agent is up but has not started (or has stopped) the service


# Weights that follow feedback move a little on every report; hysteresis keeps
# those small moves out of the kernel. Every other reason is a deliberate state
# change and is written as soon as it differs.
_FEEDBACK_REASONS = frozenset({Reason.HEALTH, Reason.CAPACITY, Reason.SLOW_START})


@dataclass(frozen=True)
class PolicySettings:
    """
    The knobs of the policy. `lvsfeedback.director.config` validates them;
    this module trusts them. Times are in seconds.
    """

    mode: Mode = Mode.CAPACITY
    # Half-life of the health EWMA, measured between report times (not between
    # policy passes, so the update interval does not change the smoothing),
    # and of the packet rate's in capacity mode. 0 turns smoothing off.
    smoothing_half_life: float = 4.0
    hysteresis: float = 0.1  # 0 <= h < 1: relative change below which no write
    floor: int = 1  # least weight of a server with health > 0; >= 1
    ceiling: int = MAX_WEIGHT  # greatest automatic weight; floor <= ceiling <= MAX_WEIGHT
    slow_start: float = 10.0  # ramp length; 0 turns slow start off
    lost_agent: LostAgentAction = LostAgentAction.QUIESCE
    stale_after: float = 10.0  # a report older than this counts as a lost agent; > 0
    panic_threshold: float = 0.5  # 0..1; 0 turns panic off
    # Capacity mode: utilisation is taken as at least this (0 < u <= 1), so an
    # idle server's estimate is at most 1/min_utilisation times its rate.
    min_utilisation: float = 0.1


@dataclass(frozen=True)
class HealthReport:
    value: int  # 0..100; 0 means "send me nothing new"
    time: float  # when the director received it


@dataclass(frozen=True)
class Agent:
    state: AgentState = AgentState.NEVER_SEEN
    since: float | None = None  # when it entered that state; None when never seen


@dataclass(frozen=True)
class Drained:
    """Operator override: weight 0 whatever the feedback says."""


@dataclass(frozen=True)
class Pinned:
    """Operator override: this weight whatever the feedback says."""

    weight: int


DRAINED = Drained()

Override = Drained | Pinned | None


@dataclass(frozen=True)
class ServerInput:
    """What the policy knows about one real server of one virtual service."""

    base_weight: int  # configured, >= 1
    agent: Agent = Agent()
    report: HealthReport | None = None  # the latest one
    counters: DestCounters | None = None  # None when the kernel has not been read
    current_weight: int | None = None  # the kernel's weight now; None: not in the table
    override: Override = None


@dataclass(frozen=True)
class ServiceInput:
    settings: PolicySettings
    servers: Mapping[DestKey, ServerInput]


@dataclass(frozen=True)
class Decision:
    weight: int  # 0..MAX_WEIGHT; 0 when removed
    reason: Reason
    write: bool  # the kernel differs enough to be worth a write (or a delete)
    remove: bool = False  # delete this real server from the service
    lost_action: LostAgentAction | None = None  # set for LOST_AGENT and STALE
    detail: str = ""  # for people: the numbers behind the weight


@dataclass(frozen=True)
class ServiceDecision:
    panic: bool  # the caller should say so loudly
    serving: int  # servers without override that would keep a weight, panic aside
    considered: int  # servers without override: what panic_threshold is a share of
    servers: Mapping[DestKey, Decision]


@dataclass(frozen=True)
class ServerMemory:
    smoothed_health: float | None = None
    smoothed_at: float | None = None  # time of the latest report folded into it
    packets: int | None = None  # the kernel's incoming packet total at `packets_at`
    packets_at: float | None = None
    packet_rate: float | None = None  # smoothed packets per second; None until two passes
    up: bool = False  # had a non-zero weight (panic aside) at the last pass
    ramp_start: float | None = None  # when its current slow start began


@dataclass(frozen=True)
class PolicyState:
    """Memory between passes. Never mutated: `decide` returns a new one."""

    servers: Mapping[tuple[ServiceKey, DestKey], ServerMemory] = field(default_factory=dict)


def decide(
    services: Mapping[ServiceKey, ServiceInput], state: PolicyState, now: float
) -> tuple[dict[ServiceKey, ServiceDecision], PolicyState]:
    """
    The weights every real server of every service should have at `now`,
    and the state to pass to the next call. Servers absent from `services`
    are forgotten.
    """
    decisions: dict[ServiceKey, ServiceDecision] = {}
    memories: dict[tuple[ServiceKey, DestKey], ServerMemory] = {}
    for service_key, service in services.items():
        previous = {dest: state.servers.get((service_key, dest)) for dest in service.servers}
        decision, service_memories = _decide_service(service, previous, now)
        decisions[service_key] = decision
        for dest, memory in service_memories.items():
            memories[service_key, dest] = memory
    return decisions, PolicyState(memories)


@dataclass(frozen=True)
class _Assessment:
    weight: int
    reason: Reason
    detail: str
    automatic: bool = True  # False for operator overrides: obeyed as given, not part of panic
    rampable: bool = False  # slow start may hold this weight back
    remove: bool = False
    lost_action: LostAgentAction | None = None


def _decide_service(
    service: ServiceInput, previous: Mapping[DestKey, ServerMemory | None], now: float
) -> tuple[ServiceDecision, dict[DestKey, ServerMemory]]:
    settings = service.settings
    folded = {
        dest: _fold_packets(
            _fold_report(previous[dest] or ServerMemory(), server.report, settings), server.counters, settings, now
        )
        for dest, server in service.servers.items()
    }
    assessments: dict[DestKey, _Assessment] = {}
    feedback: dict[DestKey, _Feedback] = {}
    for dest, server in service.servers.items():
        assessment = _assess(server, settings, now)
        if assessment is not None:
            assessments[dest] = assessment
        elif server.report is not None and folded[dest].smoothed_health is not None:
            # _assess returns None only for a fresh report, which is folded in.
            feedback[dest] = _Feedback(server.report.value, folded[dest].smoothed_health, folded[dest].packet_rate)
    assessments.update(_feedback_weights(service.servers, feedback, settings))

    automatic = [a for a in assessments.values() if a.automatic]
    serving = sum(1 for a in automatic if a.weight > 0 and not a.remove)
    panic = settings.panic_threshold > 0 and serving < settings.panic_threshold * len(automatic)

    decisions: dict[DestKey, Decision] = {}
    memories: dict[DestKey, ServerMemory] = {}
    for dest, server in service.servers.items():
        assessment = assessments[dest]
        up = assessment.weight > 0 and not assessment.remove
        memory = _next_memory(folded[dest], previous[dest], server, up, settings, now)
        if panic and assessment.automatic:
            assessment = _Assessment(
                _clamp(server.base_weight, settings),
                Reason.PANIC,
                f"{serving} of {len(automatic)} servers would keep a weight, "
                f"fewer than {settings.panic_threshold:.0%}; was {assessment.reason}",
            )
        elif assessment.rampable and memory.ramp_start is not None:
            assessment = _ramp(assessment, memory.ramp_start, settings, now)
        decisions[dest] = Decision(
            weight=assessment.weight,
            reason=assessment.reason,
            write=_worth_writing(assessment, server.current_weight, settings),
            remove=assessment.remove,
            lost_action=assessment.lost_action,
            detail=assessment.detail,
        )
        memories[dest] = memory
    return ServiceDecision(panic, serving, len(automatic), decisions), memories


def _fold_report(memory: ServerMemory, report: HealthReport | None, settings: PolicySettings) -> ServerMemory:
    """The EWMA with `report` folded in, once per report."""
    if report is None or (memory.smoothed_at is not None and report.time <= memory.smoothed_at):
        return memory
    if memory.smoothed_health is None or memory.smoothed_at is None or not settings.smoothing_half_life:
        smoothed = float(report.value)
    else:
        # alpha from the time between reports: a report after a long silence
        # counts for almost everything, one right after the last for little.
        elapsed = report.time - memory.smoothed_at
        alpha = 1 - 2 ** (-elapsed / settings.smoothing_half_life)
        smoothed = memory.smoothed_health + alpha * (report.value - memory.smoothed_health)
    return replace(memory, smoothed_health=smoothed, smoothed_at=report.time)


def _fold_packets(
    memory: ServerMemory, counters: DestCounters | None, settings: PolicySettings, now: float
) -> ServerMemory:
    """The packet rate since the last pass folded in, by the same EWMA as health."""
    if counters is None or memory.packets_at == now:
        return memory
    if memory.packets is None or memory.packets_at is None or now < memory.packets_at or counters.packets < memory.packets:
        # First sight, a clock stepped back, or a total that restarted (the
        # server was deleted and added again): a new baseline, no rate yet.
        return replace(memory, packets=counters.packets, packets_at=now, packet_rate=None)
    elapsed = now - memory.packets_at
    rate = (counters.packets - memory.packets) / elapsed
    if memory.packet_rate is None or not settings.smoothing_half_life:
        smoothed = rate
    else:
        alpha = 1 - 2 ** (-elapsed / settings.smoothing_half_life)
        smoothed = memory.packet_rate + alpha * (rate - memory.packet_rate)
    return replace(memory, packets=counters.packets, packets_at=now, packet_rate=smoothed)


def _assess(server: ServerInput, settings: PolicySettings, now: float) -> _Assessment | None:
    """One server's weight from its own facts; None when it has live feedback > 0."""
    if isinstance(server.override, Drained):
        return _Assessment(0, Reason.DRAINED, "drained by the operator", automatic=False)
    if isinstance(server.override, Pinned):
        return _Assessment(server.override.weight, Reason.PINNED, "pinned by the operator", automatic=False)
    agent = server.agent
    if agent.state is AgentState.STOPPED:
        # NECP: after INIT, and after STOP, a service gets no new flows until START.
        # A deliberate request, like a drain: obeyed, and no part of panic.
        return _Assessment(0, Reason.STOPPED, "service stopped by its agent", automatic=False)
    if agent.state is AgentState.LOST:
        since = "" if agent.since is None else f" {now - agent.since:.1f}s ago"
        return _lost(server, settings, Reason.LOST_AGENT, f"agent lost{since}")
    if agent.state is AgentState.NEVER_SEEN or server.report is None:
        detail = "agent never seen" if agent.state is AgentState.NEVER_SEEN else "no health report yet"
        return _Assessment(_clamp(server.base_weight, settings), Reason.STATIC, detail, rampable=True)
    age = now - server.report.time
    if age > settings.stale_after:
        return _lost(server, settings, Reason.STALE, f"last report {age:.1f}s old")
    if server.report.value == 0:
        return _Assessment(0, Reason.HEALTH, "health 0: quiesced")
    return None


def _lost(server: ServerInput, settings: PolicySettings, reason: Reason, detail: str) -> _Assessment:
    action = settings.lost_agent
    detail = f"{detail}; {action}"
    if action is LostAgentAction.KEEP:
        if server.current_weight is None:
            # Nothing in the kernel to keep (the director restarted onto an
            # empty table): the configured weight is the honest guess.
            weight = _clamp(server.base_weight, settings)
            detail = f"{detail} (not in the table: base weight)"
        else:
            weight = server.current_weight
        return _Assessment(weight, reason, detail, lost_action=action)
    if action is LostAgentAction.STATIC:
        weight = _clamp(server.base_weight, settings)
        return _Assessment(weight, reason, detail, rampable=True, lost_action=action)
    return _Assessment(0, reason, detail, remove=action is LostAgentAction.REMOVE, lost_action=action)


@dataclass(frozen=True)
class _Feedback:
    latest: int  # the health just reported
    smoothed: float
    packet_rate: float | None  # smoothed incoming packets per second


def _feedback_weights(
    servers: Mapping[DestKey, ServerInput], feedback: Mapping[DestKey, _Feedback], settings: PolicySettings
) -> dict[DestKey, _Assessment]:
    """Weights of the servers with live feedback, from their smoothed health."""
    rates = {dest: health.packet_rate for dest, health in feedback.items() if health.packet_rate}
    if settings.mode is Mode.CAPACITY and rates:
        return _capacity_weights(servers, feedback, rates, settings)
    note = "; capacity mode without packet rates" if settings.mode is Mode.CAPACITY else ""
    return {
        dest: _Assessment(
            _clamp(servers[dest].base_weight * health.smoothed / 100, settings),
            Reason.HEALTH,
            f"health {health.latest} (smoothed {health.smoothed:.1f}){note}",
            rampable=True,
        )
        for dest, health in feedback.items()
    }


def _capacity_weights(
    servers: Mapping[DestKey, ServerInput],
    feedback: Mapping[DestKey, _Feedback],
    rates: Mapping[DestKey, float],
    settings: PolicySettings,
) -> dict[DestKey, _Assessment]:
    """
    Each server's capacity is estimated as rate / utilisation (packets per
    second it would take at full utilisation), utilisation = 1 - health/100.
    Weights are those capacities in units of base weight: a server with the
    service's average capacity per unit of base weight gets its base weight.
    A server without a rate yet (just joined, or starved) is assumed to be
    average, so it gets its base weight and a chance to show its rate.
    """
    capacities = {dest: rate / _utilisation(feedback[dest], settings) for dest, rate in rates.items()}
    per_base = sum(capacities.values()) / sum(servers[dest].base_weight for dest in capacities)
    weights: dict[DestKey, _Assessment] = {}
    for dest, health in feedback.items():
        if dest in capacities:
            weight = capacities[dest] / per_base
            detail = f"{rates[dest]:.1f} packets/s at utilisation {_utilisation(health, settings):.2f}"
        else:
            weight = servers[dest].base_weight
            detail = "no packet rate yet: base weight"
        weights[dest] = _Assessment(_clamp(weight, settings), Reason.CAPACITY, detail, rampable=True)
    return weights


def _utilisation(health: _Feedback, settings: PolicySettings) -> float:
    return max(1 - health.smoothed / 100, settings.min_utilisation)


def _clamp(weight: float, settings: PolicySettings) -> int:
    """An automatic non-zero weight: rounded, within [floor, ceiling]."""
    return min(max(round(weight), settings.floor), settings.ceiling)


def _next_memory(
    memory: ServerMemory,
    previous: ServerMemory | None,
    server: ServerInput,
    up: bool,
    settings: PolicySettings,
    now: float,
) -> ServerMemory:
    # The memory itself when nothing changes: the usual case, every pass.
    if not up:
        if not memory.up and memory.ramp_start is None:
            return memory
        return replace(memory, up=False, ramp_start=None)
    if previous is None:
        # First sight of this server: if the kernel already gives it weight
        # (a director restart), it is not joining, so it does not ramp.
        was_up = (server.current_weight or 0) > 0
    else:
        was_up = previous.up
    ramp_start = memory.ramp_start if was_up else now
    if ramp_start is not None and now - ramp_start >= settings.slow_start:
        ramp_start = None
    if memory.up and memory.ramp_start == ramp_start:
        return memory
    return replace(memory, up=True, ramp_start=ramp_start)


def _ramp(assessment: _Assessment, ramp_start: float, settings: PolicySettings, now: float) -> _Assessment:
    """The weight `elapsed/slow_start` of the way from floor to the target."""
    target = assessment.weight
    if target <= settings.floor:
        return assessment
    # Never below 0: a wall clock stepped backwards must not push the weight under the floor.
    share = max(now - ramp_start, 0) / settings.slow_start
    weight = settings.floor + round((target - settings.floor) * share)
    return replace(
        assessment,
        weight=weight,
        reason=Reason.SLOW_START,
        detail=f"{share:.0%} of {settings.slow_start:g}s towards {target} "
        f"({assessment.reason}: {assessment.detail})",
    )


def _worth_writing(assessment: _Assessment, current: int | None, settings: PolicySettings) -> bool:
    if assessment.remove:
        return current is not None
    if current is None:
        return True
    if assessment.weight == current:
        return False
    if assessment.weight == 0 or current == 0:
        return True
    if assessment.reason not in _FEEDBACK_REASONS:
        return True
    return abs(assessment.weight - current) / current >= settings.hysteresis
