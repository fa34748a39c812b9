"""
The weight policy: facts about real servers in, IPVS weights out.

`decide` is a pure function. Everything it depends on (settings, the latest
health reports, agent states, kernel counters, kernel weights, operator
overrides, the time) is passed in, and what it must remember between passes
(smoothed health, slow-start ramps) goes in and out as an immutable
`PolicyState`. It reads no clock and does no I/O, so the same inputs always
give the same outputs; the updater owns the loop and the kernel.

One pass, per virtual service:

1. Each real server is assessed alone: operator override, then on a VRRP
   backup the master's weight (`ServerInput.followed`; capacity mode
   remembers it as its target, so a takeover starts from it), then agent
   state and report freshness, then its health (see `Reason` for the outcomes).
2. Servers with live feedback get a weight from the service's mode: ``health``
   (base x smoothed health / 100) or ``capacity`` (a controller that evens
   out utilisation, utilisation = 1 - smoothed health / 100, so that shares
   follow capacity, stepping from where the traffic really goes: the
   kernel's packet totals, or with too few packets its active connections,
   else the weights; see `capacity_weights`), clamped to [floor, ceiling].
   Capacity mode used to divide each server's packet rate by its
   utilisation (gRPC's and Envoy's estimator); a server's idle utilisation
   made a server that got little look small, and it starved (#14). Where
   agents report their capacity (CPUs, a project extension of NECP), it is
   the prior the traffic then corrects: a new server starts from its spare
   capacity (`capacity_policy._priors`), and a capacity change scales its weight at once.
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

from dataclasses import replace
from functools import lru_cache
from typing import Mapping

from lvsfeedback.director.capacity_policy import Control, capacity_weights, followed_noise
from lvsfeedback.director.policy_model import (
    DRAINED,
    FEEDBACK_REASONS,
    Agent,
    AgentState,
    Assessment,
    Decision,
    Drained,
    Feedback,
    HealthReport,
    LostAgentAction,
    Mode,
    Override,
    Pinned,
    PolicySettings,
    PolicyState,
    Reason,
    ServerInput,
    ServerMemory,
    ServiceDecision,
    ServiceInput,
    clamp,
    ewma,
)
from lvsfeedback.ipvs.model import DestKey, ServiceKey

# The policy's interface: its values are defined in policy_model.py.
__all__ = [
    "DRAINED",
    "Agent",
    "AgentState",
    "Decision",
    "Drained",
    "HealthReport",
    "LostAgentAction",
    "Mode",
    "Override",
    "Pinned",
    "PolicySettings",
    "PolicyState",
    "Reason",
    "ServerInput",
    "ServiceDecision",
    "ServiceInput",
    "decide",
]


def decide(
    services: Mapping[ServiceKey, ServiceInput], state: PolicyState, now: float
) -> tuple[dict[ServiceKey, ServiceDecision], PolicyState]:
    """
    The weights every real server of every service should have at `now`,
    and the state to pass to the next call. Servers absent from `services`
    are forgotten.
    """
    decisions: dict[ServiceKey, ServiceDecision] = {}
    memories: dict[ServiceKey, dict[DestKey, ServerMemory]] = {}
    for service_key, service in services.items():
        known = state.services.get(service_key, {})
        previous = {dest: known.get(dest) for dest in service.servers}
        decisions[service_key], memories[service_key] = _decide_service(service, previous, now)
    return decisions, PolicyState(memories)


# A server's memory of health and traffic with this pass's report and
# counters folded in: smoothed health, its time, packets, their time, packet rate.
_Folded = tuple[float | None, float | None, int | None, float | None, float | None]


def _decide_service(
    service: ServiceInput, previous: Mapping[DestKey, ServerMemory | None], now: float
) -> tuple[ServiceDecision, dict[DestKey, ServerMemory]]:
    # Every server, every pass (10,000 of them at scale): each server's new
    # memory is built once, from the folded figures and its weight's fate.
    settings = service.settings
    folded: dict[DestKey, _Folded] = {}
    assessments: dict[DestKey, Assessment] = {}
    feedback: dict[DestKey, Feedback] = {}
    for dest, server in service.servers.items():
        fold = folded[dest] = _fold(previous[dest] or _FRESH, server, settings, now)
        assessment = _assess(server, settings, now)
        if assessment is not None:
            assessments[dest] = assessment
        elif server.report is not None and fold[0] is not None:
            # _assess returns None only for a fresh report, which is folded in.
            feedback[dest] = Feedback(server.report.value, fold[0], fold[4])
    weights, controls = _feedback_weights(service.servers, feedback, previous, settings, now)
    assessments.update(weights)

    automatic = [a for a in assessments.values() if a.automatic]
    serving = len([a for a in automatic if a.weight > 0 and not a.remove])
    panic = settings.panic_threshold > 0 and serving < settings.panic_threshold * len(automatic)

    decisions: dict[DestKey, Decision] = {}
    memories: dict[DestKey, ServerMemory] = {}
    for dest, server in service.servers.items():
        assessment = assessments[dest]
        up = assessment.weight > 0 and not assessment.remove
        ramp_start = _ramp_start(previous[dest], server, up, settings, now)
        smoothed, smoothed_at, packets, packets_at, packet_rate = folded[dest]
        # Panic writes base weights: a controller that resumes starts from them.
        control = None if panic else controls.get(dest)
        # Positional, in the fields' order: keywords cost a third more, per server and pass.
        if assessment.reason is Reason.FOLLOWING:
            memories[dest] = _followed_memory(folded[dest], up, server, previous[dest], settings, now)
        elif control is None:
            memories[dest] = ServerMemory(smoothed, smoothed_at, up, ramp_start, packets, packets_at, packet_rate)
        else:
            memories[dest] = ServerMemory(
                smoothed, smoothed_at, up, ramp_start, packets, packets_at, packet_rate,
                control.target, control.share, control.share_at, control.capacity, False,
                control.reported, control.noise,
            )
        if panic and assessment.automatic:
            assessment = Assessment(
                clamp(server.base_weight, settings),
                Reason.PANIC,
                f"{serving} of {len(automatic)} servers would keep a weight, "
                f"fewer than {settings.panic_threshold:.0%}; was {assessment.reason}",
            )
        elif assessment.rampable and ramp_start is not None:
            assessment = _ramp(assessment, ramp_start, settings, now)
        decisions[dest] = Decision(
            assessment.weight,
            assessment.reason,
            _worth_writing(assessment, server.current_weight, settings),
            assessment.remove,
            assessment.lost_action,
            assessment.detail,
        )
    return ServiceDecision(panic, serving, len(automatic), decisions), memories


_FRESH = ServerMemory()


def _fold(memory: ServerMemory, server: ServerInput, settings: PolicySettings, now: float) -> _Folded:
    """
    The health EWMA with the server's report folded in, once per report, and
    the packet rate since the last pass folded in by the same EWMA.
    """
    smoothed, smoothed_at = memory.smoothed_health, memory.smoothed_at
    report = server.report
    if report is not None and (smoothed_at is None or report.time > smoothed_at):
        elapsed = 0.0 if smoothed_at is None else report.time - smoothed_at
        smoothed, smoothed_at = ewma(smoothed, float(report.value), elapsed, settings), report.time
    packets, packets_at, rate = memory.packets, memory.packets_at, memory.packet_rate
    counters = server.counters
    if counters is not None and packets_at != now:
        if packets is None or packets_at is None or now < packets_at or counters.packets < packets:
            # First sight, a clock stepped back, or a total that restarted (the
            # server was deleted and added again): a new baseline, no rate yet.
            rate = None
        else:
            elapsed = now - packets_at
            rate = ewma(rate, (counters.packets - packets) / elapsed, elapsed, settings)
        packets, packets_at = counters.packets, now
    return smoothed, smoothed_at, packets, packets_at, rate


def _assess(server: ServerInput, settings: PolicySettings, now: float) -> Assessment | None:
    """One server's weight from its own facts; None when it has live feedback > 0."""
    if isinstance(server.override, Drained):
        return Assessment(0, Reason.DRAINED, "drained by the operator", automatic=False)
    if isinstance(server.override, Pinned):
        return Assessment(server.override.weight, Reason.PINNED, "pinned by the operator", automatic=False)
    if server.followed is not None:
        # The master decided it, panic and slow start included, from the same agents.
        return Assessment(server.followed, Reason.FOLLOWING, "following the master", automatic=False)
    agent = server.agent
    if agent.state is AgentState.STOPPED:
        # NECP: after INIT, and after STOP, a service gets no new flows until START.
        # A deliberate request, like a drain: obeyed, and no part of panic.
        return Assessment(0, Reason.STOPPED, "service stopped by its agent", automatic=False)
    if agent.state is AgentState.LOST:
        since = "" if agent.since is None else f" {now - agent.since:.1f}s ago"
        return _lost(server, settings, Reason.LOST_AGENT, f"agent lost{since}")
    if agent.state is AgentState.NEVER_SEEN or server.report is None:
        detail = "agent never seen" if agent.state is AgentState.NEVER_SEEN else "no health report yet"
        return Assessment(clamp(server.base_weight, settings), Reason.STATIC, detail, rampable=True)
    age = now - server.report.time
    if age > settings.stale_after:
        return _lost(server, settings, Reason.STALE, f"last report {age:.1f}s old")
    if server.report.value == 0:
        return Assessment(0, Reason.HEALTH, "health 0: quiesced")
    return None


def _followed_memory(
    fold: _Folded, up: bool, server: ServerInput, previous: ServerMemory | None, settings: PolicySettings, now: float
) -> ServerMemory:
    """
    A followed server's memory: health and traffic folded as ever; no ramp
    (the master's weight has its own); and in capacity mode the followed
    weight as the controller's target, its share of the kernel forgotten
    (the pass's time kept), so that a pass of its own (after a takeover)
    starts from that weight, and the noise of its live reports folded in as
    the master folds it, so that it starts with the master's dead band too.
    """
    smoothed, smoothed_at, packets, packets_at, packet_rate = fold
    if settings.mode is not Mode.CAPACITY:
        return ServerMemory(smoothed, smoothed_at, up, None, packets, packets_at, packet_rate)
    memory = previous or _FRESH
    reported, noise = memory.reported, memory.noise
    if server.report is not None and _assess(server._replace(followed=None), settings, now) is None:
        # Live feedback of its own: the reports the master's controller sees.
        reported, noise = followed_noise(memory, server.report.value, settings, now)
    target = float(server.followed) if server.followed else None
    return ServerMemory(
        smoothed, smoothed_at, up, None, packets, packets_at, packet_rate,
        target, None, now, server.capacity, target is not None, reported, noise,
    )


def _lost(server: ServerInput, settings: PolicySettings, reason: Reason, detail: str) -> Assessment:
    action = settings.lost_agent
    detail = f"{detail}; {action}"
    if action is LostAgentAction.KEEP:
        if server.current_weight is None:
            # Nothing in the kernel to keep (the director restarted onto an
            # empty table): the configured weight is the honest guess.
            weight = clamp(server.base_weight, settings)
            detail = f"{detail} (not in the table: base weight)"
        else:
            weight = server.current_weight
        return Assessment(weight, reason, detail, lost_action=action)
    if action is LostAgentAction.STATIC:
        weight = clamp(server.base_weight, settings)
        return Assessment(weight, reason, detail, rampable=True, lost_action=action)
    return Assessment(0, reason, detail, remove=action is LostAgentAction.REMOVE, lost_action=action)


def _feedback_weights(
    servers: Mapping[DestKey, ServerInput],
    feedback: Mapping[DestKey, Feedback],
    previous: Mapping[DestKey, ServerMemory | None],
    settings: PolicySettings,
    now: float,
) -> tuple[dict[DestKey, Assessment], dict[DestKey, Control]]:
    """Weights of the servers with live feedback, and what capacity mode remembers of them."""
    if settings.mode is Mode.CAPACITY and feedback:
        return capacity_weights(servers, feedback, previous, settings, now)
    weights = {
        dest: Assessment(
            clamp(servers[dest].base_weight * health.smoothed / 100, settings),
            Reason.HEALTH,
            _health_detail(health.latest, health.smoothed),
            rampable=True,
        )
        for dest, health in feedback.items()
    }
    return weights, {}


# Formatting a float costs as much as the rest of a server's weight; the
# same few figures come back pass after pass.
@lru_cache(maxsize=1024)
def _health_detail(latest: int, smoothed: float) -> str:
    return f"health {latest} (smoothed {smoothed:.1f})"


def _ramp_start(
    previous: ServerMemory | None, server: ServerInput, up: bool, settings: PolicySettings, now: float
) -> float | None:
    """When the server's current slow start began; None when it is not ramping (or not up)."""
    if not up:
        return None
    if previous is None:
        # First sight of this server: if the kernel already gives it weight
        # (a director restart), it is not joining, so it does not ramp.
        was_up = (server.current_weight or 0) > 0
    else:
        was_up = previous.up
    ramp_start = (previous.ramp_start if previous is not None else None) if was_up else now
    if ramp_start is not None and now - ramp_start >= settings.slow_start:
        return None
    return ramp_start


def _ramp(assessment: Assessment, ramp_start: float, settings: PolicySettings, now: float) -> Assessment:
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


def _worth_writing(assessment: Assessment, current: int | None, settings: PolicySettings) -> bool:
    if assessment.remove:
        return current is not None
    if current is None:
        return True
    if assessment.weight == current:
        return False
    if assessment.weight == 0 or current == 0:
        return True
    if assessment.reason not in FEEDBACK_REASONS:
        return True
    return abs(assessment.weight - current) / current >= settings.hysteresis
