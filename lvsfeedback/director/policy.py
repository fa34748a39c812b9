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
   (base x smoothed health / 100) or ``capacity`` (a controller that evens
   out utilisation, utilisation = 1 - smoothed health / 100, so that shares
   follow capacity, stepping from where the traffic really goes, counted in
   the kernel's packet totals; see `_capacity_weights`), clamped to [floor,
   ceiling].
   Capacity mode used to divide each server's packet rate by its
   utilisation (gRPC's and Envoy's estimator); a server's idle utilisation
   made a server that got little look small, and it starved (#14). Where
   agents report their capacity (CPUs, a project extension of NECP), it is
   the prior the traffic then corrects: a new server starts from its spare
   capacity (`_priors`), and a capacity change scales its weight at once.
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
    CAPACITY = "capacity"  # evening out utilisation
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
    # and of capacity mode's kernel shares. 0 turns smoothing off.
    smoothing_half_life: float = 4.0
    hysteresis: float = 0.1  # 0 <= h < 1: relative change below which no write
    floor: int = 1  # least weight of a server with health > 0; >= 1
    ceiling: int = MAX_WEIGHT  # greatest automatic weight; floor <= ceiling <= MAX_WEIGHT
    slow_start: float = 10.0  # ramp length; 0 turns slow start off
    lost_agent: LostAgentAction = LostAgentAction.QUIESCE
    stale_after: float = 10.0  # a report older than this counts as a lost agent; > 0
    panic_threshold: float = 0.5  # 0..1; 0 turns panic off
    # Capacity mode: utilisation is taken as at least this (0 < u <= 1), so
    # servers all nearly idle count as balanced whatever their noise says.
    min_utilisation: float = 0.1
    # Capacity mode: a server whose smoothed utilisation is within this of the
    # service's mean counts as balanced and keeps its weight (0 <= b < 1).
    dead_band: float = 0.02


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
    capacity: float | None = None  # CPUs, as its agent reports them; None: unknown


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
    up: bool = False  # had a non-zero weight (panic aside) at the last pass
    ramp_start: float | None = None  # when its current slow start began
    packets: int | None = None  # the kernel's incoming packet total at `packets_at`
    packets_at: float | None = None
    packet_rate: float | None = None  # smoothed packets per second; None until two passes
    # Capacity mode: the weight the controller chose at the last pass, before
    # rounding, slow start and hysteresis; None when it has none.
    target: float | None = None
    # Capacity mode: the server's share of the kernel weights of the servers
    # with feedback, smoothed like health so that it lags as utilisation does.
    share: float | None = None
    share_at: float | None = None
    # Capacity mode: the capacity (CPUs) the server's agent reported when
    # the target was set; None when it reported none.
    capacity: float | None = None


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
        elif server.report is not None and (smoothed := folded[dest].smoothed_health) is not None:
            # _assess returns None only for a fresh report, which is folded in.
            feedback[dest] = _Feedback(server.report.value, smoothed, folded[dest].packet_rate)
    weights, controls = _feedback_weights(service.servers, feedback, previous, settings, now)
    assessments.update(weights)

    automatic = [a for a in assessments.values() if a.automatic]
    serving = sum(1 for a in automatic if a.weight > 0 and not a.remove)
    panic = settings.panic_threshold > 0 and serving < settings.panic_threshold * len(automatic)

    decisions: dict[DestKey, Decision] = {}
    memories: dict[DestKey, ServerMemory] = {}
    for dest, server in service.servers.items():
        assessment = assessments[dest]
        up = assessment.weight > 0 and not assessment.remove
        memory = _next_memory(folded[dest], previous[dest], server, up, settings, now)
        # Panic writes base weights: a controller that resumes starts from them.
        control = None if panic else controls.get(dest)
        if control is None:
            if memory.target is not None or memory.share is not None or memory.capacity is not None:
                memory = replace(memory, target=None, share=None, share_at=None, capacity=None)
        else:
            memory = replace(
                memory,
                target=control.target,
                share=control.share,
                share_at=control.share_at,
                capacity=control.capacity,
            )
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
    elapsed = 0.0 if memory.smoothed_at is None else report.time - memory.smoothed_at
    smoothed = _ewma(memory.smoothed_health, float(report.value), elapsed, settings)
    return replace(memory, smoothed_health=smoothed, smoothed_at=report.time)


def _ewma(previous: float | None, value: float, elapsed: float, settings: PolicySettings) -> float:
    """
    `value` folded into `previous` with the smoothing half-life, its weight
    from the time since `previous`: a value after a long silence counts for
    almost everything, one right after the last for little. The first value,
    or any with smoothing off, stands alone.
    """
    if previous is None or not settings.smoothing_half_life:
        return value
    alpha = 1 - 2 ** (-elapsed / settings.smoothing_half_life)
    return previous + alpha * (value - previous)


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
    smoothed = _ewma(memory.packet_rate, rate, elapsed, settings)
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
    servers: Mapping[DestKey, ServerInput],
    feedback: Mapping[DestKey, _Feedback],
    previous: Mapping[DestKey, ServerMemory | None],
    settings: PolicySettings,
    now: float,
) -> tuple[dict[DestKey, _Assessment], dict[DestKey, _Control]]:
    """Weights of the servers with live feedback, and what capacity mode remembers of them."""
    if settings.mode is Mode.CAPACITY and feedback:
        return _capacity_weights(servers, feedback, previous, settings, now)
    weights = {
        dest: _Assessment(
            _clamp(servers[dest].base_weight * health.smoothed / 100, settings),
            Reason.HEALTH,
            f"health {health.latest} (smoothed {health.smoothed:.1f})",
            rampable=True,
        )
        for dest, health in feedback.items()
    }
    return weights, {}


# Capacity mode's controller, tuned on lvsfeedback.director.simulate: the
# exponent of the utilisation ratio, and the most a weight may be scaled in
# one pass.
_GAIN = 1.0
_MAX_STEP = 2.0
_INTEGRAL_GAIN = 0.5
# Packets a second a server must receive for its share of the traffic to be
# counted (about a hundred packets in a smoothing window); below it, noise
# in so few packets would move the weights more than the traffic does.
_COUNTED_RATE = 20.0
# A step starts from at least this part of a server's base share, so that
# one that gets next to no traffic now still climbs back quickly.
_LEAST_SHARE = 1 / 8


@dataclass(frozen=True)
class _Control:
    """What capacity mode remembers of one server after a pass."""

    target: float
    share: float | None
    share_at: float | None
    capacity: float | None


def _capacity_weights(
    servers: Mapping[DestKey, ServerInput],
    feedback: Mapping[DestKey, _Feedback],
    previous: Mapping[DestKey, ServerMemory | None],
    settings: PolicySettings,
    now: float,
) -> tuple[dict[DestKey, _Assessment], dict[DestKey, _Control]]:
    """
    Weights that bring every server to the same utilisation, which puts each
    server's share in proportion to its capacity (the aim of Cloudflare's
    Unimog). A server's new weight is the share of the traffic it has had,
    times (mean utilisation / its utilisation) ** gain, within [1/step,
    step]. The share of the traffic is counted in the kernel's packets when
    every server gets enough of them to count; otherwise it is the share of
    the kernel's weights it has had. Either is smoothed like health, so that
    it and the utilisation it caused lag alike and the step lands where it
    aims rather than ringing; and the traffic, not the weights, is what the
    step starts from because persistent connections follow new weights only
    as they are renewed. A server within `dead_band` of the mean keeps its
    weight. The weights are then scaled to add up to the base weights (no
    drift).

    The traffic sets where a step starts, never how big it is, and a step
    starts from at least an eighth of the server's base share: a server
    below the mean always gains, however little it gets now, so none can be
    starved (the trap of dividing its traffic by its utilisation, #14); one
    above it always loses. While a server ramps up, its utilisation shows
    the ramp, not its weight: it may lose then, never gain.

    A server new to the controller starts at the weight the kernel gives it
    (a director restart: what the traffic already taught stands), else,
    when its agent reports its capacity, at the prior (`_priors`), else at
    its base weight. When a server's reported capacity changes, its target
    scales by new / old at once: a quota change is known before the traffic
    shows it.
    """
    utilisations = {dest: max(1 - health.smoothed / 100, settings.min_utilisation) for dest, health in feedback.items()}
    rates = {dest: health.packet_rate for dest, health in feedback.items()}
    rate_total = sum(rate or 0 for rate in rates.values())
    # Where the traffic really goes: with persistent connections it follows
    # new weights only as connections are renewed, so a step taken from the
    # weights' shares would be taken again and again before it shows.
    traffic = (
        {dest: rate / rate_total for dest, rate in rates.items() if rate is not None}
        if all(rate is not None and rate >= _COUNTED_RATE for rate in rates.values())
        else {}
    )
    mean = sum(utilisations.values()) / len(utilisations)
    base_total = sum(servers[dest].base_weight for dest in feedback)
    kernel_total = sum(servers[dest].current_weight or 0 for dest in feedback)
    raw: dict[DestKey, float] = {}
    shares: dict[DestKey, tuple[float | None, float | None]] = {}
    details: dict[DestKey, str] = {}
    capacities: dict[DestKey, float | None] = {}  # what the controller remembers: the latest known
    priors: list[DestKey] = []  # new, with a capacity: weighed once the others are
    for dest, utilisation in utilisations.items():
        memory = previous[dest] or ServerMemory()
        server = servers[dest]
        share = _smoothed_share(memory, (server.current_weight or 0) / kernel_total if kernel_total else None, settings, now)
        shares[dest] = share
        capacities[dest] = server.capacity or memory.capacity
        if memory.target is None or share[0] is None:
            adopted = previous[dest] is None and (server.current_weight or 0) > 0
            if adopted:
                raw[dest] = float(server.current_weight or 0)
                details[dest] = "new: the kernel's weight"
            elif server.capacity:
                priors.append(dest)
            else:
                raw[dest] = float(server.base_weight)
                details[dest] = "new: base weight"
            continue
        if server.capacity and memory.capacity and server.capacity != memory.capacity:
            rescale = server.capacity / memory.capacity
            raw[dest] = memory.target * rescale
            details[dest] = f"capacity {memory.capacity:.2f} -> {server.capacity:.2f} CPUs: x{rescale:.2f}"
            continue
        comparison = f"utilisation {utilisation:.2f} vs mean {mean:.2f}"
        factor = min(max((mean / utilisation) ** _GAIN, 1 / _MAX_STEP), _MAX_STEP)
        ramping = memory.ramp_start is not None and now - memory.ramp_start < settings.slow_start
        if abs(utilisation - mean) <= settings.dead_band:
            raw[dest] = memory.target
            details[dest] = f"{comparison}: balanced"
        elif ramping and factor > 1:
            raw[dest] = memory.target
            details[dest] = f"{comparison}: slow start, held"
        else:
            anchor = max(traffic.get(dest, share[0]), _LEAST_SHARE * server.base_weight / base_total)
            raw[dest] = anchor * base_total * factor
            current = server.current_weight
            if current and abs(raw[dest] - current) < settings.hysteresis * current:
                # A step hysteresis would not write, most often because idle
                # floors make the ratio understate it: keep integrating from
                # the last target until the step is big enough to be written.
                raw[dest] = memory.target * factor ** _INTEGRAL_GAIN
            details[dest] = f"{comparison}: x{factor:.2f}"
    if priors:
        _priors(priors, servers, feedback, raw, details)
    scale = base_total / sum(raw.values())
    targets = {dest: min(max(weight * scale, settings.floor), settings.ceiling) for dest, weight in raw.items()}
    weights = {
        dest: _Assessment(_clamp(target, settings), Reason.CAPACITY, details[dest], rampable=True)
        for dest, target in targets.items()
    }
    return weights, {dest: _Control(target, *shares[dest], capacities[dest]) for dest, target in targets.items()}


def _priors(
    priors: list[DestKey],
    servers: Mapping[DestKey, ServerInput],
    feedback: Mapping[DestKey, _Feedback],
    raw: dict[DestKey, float],
    details: dict[DestKey, str],
) -> None:
    """
    The weights servers new to the controller start from, before traffic
    corrects them: base weight x spare capacity / the capacity that earns a
    base weight, spare capacity = reported CPUs x smoothed health / 100. So
    an idle but hogged server starts below its idle peers, a 1:2:4 cluster
    at 1:2:4, and a server with that capacity and full health at its base
    weight.

    The capacity that earns a base weight is the (base-weighted) mean
    capacity of the new servers; once servers already weighted in this pass
    report a capacity, it is the capacity per weight they have now, so a
    server that reports after them lands in proportion to them. Capacity,
    not spare capacity: loaded servers have little spare, and measured
    against that an idle newcomer would look enormous.
    """
    # Every server weighed here has a capacity: `or 0.0` only tells the type checker.
    capacity = {dest: servers[dest].capacity or 0.0 for dest in (*raw, *priors)}
    weighed = [dest for dest in raw if capacity[dest]]
    if weighed:
        mean = sum(servers[dest].base_weight * capacity[dest] for dest in weighed) / sum(
            raw[dest] for dest in weighed
        )
    else:
        mean = sum(servers[dest].base_weight * capacity[dest] for dest in priors) / sum(
            servers[dest].base_weight for dest in priors
        )
    for dest in priors:
        server, health = servers[dest], feedback[dest].smoothed
        raw[dest] = server.base_weight * capacity[dest] * health / 100 / mean
        details[dest] = f"prior: {server.capacity:.2f} CPUs x health {health:.0f} of mean {mean:.2f}"


def _smoothed_share(
    memory: ServerMemory, share: float | None, settings: PolicySettings, now: float
) -> tuple[float | None, float | None]:
    """The kernel share folded into its EWMA once per pass: (smoothed share, when)."""
    if share is None:
        return None, None
    if memory.share_at is None or now <= memory.share_at:
        return share, now
    return _ewma(memory.share, share, now - memory.share_at, settings), now


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
