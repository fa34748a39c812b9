"""Examples for the policy's tests: a service, four servers, plain settings, one pass."""

from __future__ import annotations

from lvsfeedback.director.policy import (
    Agent,
    AgentState,
    HealthReport,
    Mode,
    PolicySettings,
    PolicyState,
    ServerInput,
    ServiceInput,
    decide,
)
from lvsfeedback.ipvs.model import DestKey, ServiceKey

SERVICE = ServiceKey.for_address("tcp", "192.0.2.1", 80)
A, B, C, D = (DestKey.of(f"198.51.100.{n}", 80) for n in (1, 2, 3, 4))

# Smoothing and slow start off, so each example shows one rule alone.
PLAIN = PolicySettings(mode=Mode.HEALTH, smoothing_half_life=0, slow_start=0)
CONNECTED = Agent(AgentState.CONNECTED, since=0.0)
NOW = 100.0


def reporting(health: int, base: int = 100, at: float = NOW, **fields) -> ServerInput:
    """A server whose agent is connected and has just reported `health`."""
    return ServerInput(base, CONNECTED, HealthReport(health, at), **fields)


def decide_once(servers, settings=PLAIN, now=NOW, state=PolicyState()):
    decisions, next_state = decide({SERVICE: ServiceInput(settings, servers)}, state, now)
    return decisions[SERVICE], next_state
