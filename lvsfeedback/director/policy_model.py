"""
The weight policy's values: what `lvsfeedback.director.policy.decide` takes
(settings, per-server facts, the memory of the last pass) and returns
(decisions), all immutable; and the few pieces the policy and its capacity-mode
controller (lvsfeedback.director.capacity_policy) both build on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

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
    FOLLOWING = "following"  # a VRRP backup: the master's weight (its kernel's)


# Weights that follow feedback move a little on every report; hysteresis keeps
# those small moves out of the kernel. Every other reason is a deliberate state
# change and is written as soon as it differs.
# A backup's followed weights are written as they are: its kernel holds the
# master's weights, which its first pass of its own starts from.
FEEDBACK_REASONS = frozenset({Reason.HEALTH, Reason.CAPACITY, Reason.SLOW_START})


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


# The values built for every report, and for every server in every pass
# (10,000 of them at scale), are named tuples: as immutable as a frozen
# dataclass, and built three to four times as fast (a frozen dataclass sets
# each field through object.__setattr__).
class HealthReport(NamedTuple):
    value: int  # 0..100; 0 means "send me nothing new"
    time: float  # when the director received it


@dataclass(frozen=True, slots=True)
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


class ServerInput(NamedTuple):
    """What the policy knows about one real server of one virtual service."""

    base_weight: int  # configured, >= 1
    agent: Agent = Agent()
    report: HealthReport | None = None  # the latest one
    counters: DestCounters | None = None  # None when the kernel has not been read
    current_weight: int | None = None  # the kernel's weight now; None: not in the table
    override: Override = None
    capacity: float | None = None  # CPUs, as its agent reports them; None: unknown
    # A VRRP backup: the master's weight as its kernel holds it, which overrides feedback
    # (not the operator); None: decide from this director's own facts.
    followed: int | None = None


@dataclass(frozen=True)
class ServiceInput:
    settings: PolicySettings
    servers: Mapping[DestKey, ServerInput]


class Decision(NamedTuple):
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


class ServerMemory(NamedTuple):
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
    # The pass it was folded at, which the report noise counts from too; a
    # VRRP backup keeps it while following, when the share itself is None.
    share_at: float | None = None
    # Capacity mode: the capacity (CPUs) the server's agent reported when
    # the target was set; None when it reported none.
    capacity: float | None = None
    # Capacity mode: the target is the master's weight this director followed
    # at the last pass, so the next pass of its own starts from it.
    followed: bool = False
    # Capacity mode: the utilisation the latest report gave at the last pass,
    # and the estimated noise (standard deviation) of such reports.
    reported: float | None = None
    noise: float | None = None


@dataclass(frozen=True)
class PolicyState:
    """Memory between passes. Never mutated: `decide` returns a new one."""

    # By service, then server: a pass looks each server up by its own key alone.
    services: Mapping[ServiceKey, Mapping[DestKey, ServerMemory]] = field(default_factory=dict)

    @property
    def servers(self) -> dict[tuple[ServiceKey, DestKey], ServerMemory]:
        """Every server's memory by (service, server)."""
        return {(key, dest): memory for key, memories in self.services.items() for dest, memory in memories.items()}


# Assessment and Feedback are one pass's working values, built for every
# server in every pass and kept by nothing: not frozen, for a frozen
# dataclass costs about five times as much to build (object.__setattr__ per field).
@dataclass(slots=True)
class Assessment:
    weight: int
    reason: Reason
    detail: str
    automatic: bool = True  # False for operator overrides: obeyed as given, not part of panic
    rampable: bool = False  # slow start may hold this weight back
    remove: bool = False
    lost_action: LostAgentAction | None = None


def ewma(previous: float | None, value: float, elapsed: float, settings: PolicySettings) -> float:
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


@dataclass(slots=True)
class Feedback:
    latest: int  # the health just reported
    smoothed: float
    packet_rate: float | None  # smoothed incoming packets per second


def clamp(weight: float, settings: PolicySettings) -> int:
    """An automatic non-zero weight: rounded, within [floor, ceiling]."""
    return min(max(round(weight), settings.floor), settings.ceiling)
