"""
The status document: what the director knows and decided, as plain
JSON-ready values. A service's servers, their facts, desired and kernel
weights come from the updater's last pass result and nowhere else, so that
a health shown beside a weight is the one that weight was decided from.
"""

from __future__ import annotations

from typing import Any

import lvsfeedback
from lvsfeedback.director.policy import AgentState, Drained, Pinned
from lvsfeedback.director.updater import ServicePass
from lvsfeedback.ipvs.model import PROTOCOL_NAMES, DestKey
from lvsfeedback.necp.wire import opcode_name


def seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def describe_override(override) -> str | None:
    match override:
        case Drained():
            return "drained"
        case Pinned(weight):
            return f"pinned {weight}"
    return None


def _server_status(service_pass: ServicePass, dest: DestKey, now: float) -> dict[str, Any]:
    facts = service_pass.inputs[dest]
    decision = service_pass.decision.servers.get(dest) if service_pass.decision is not None else None
    kernel_weight = service_pass.written.get(dest)
    counters = facts.counters
    agent = facts.agent
    return {
        "server": str(dest),
        "forwarding": service_pass.members[dest].forwarding,
        "base_weight": facts.base_weight,
        "kernel_weight": kernel_weight,
        "desired_weight": None if decision is None else decision.weight,
        "reason": None if decision is None else str(decision.reason),
        "detail": "" if decision is None else decision.detail,
        "remove": False if decision is None else decision.remove,
        # The policy wants a weight the kernel does not have yet: held back by
        # hysteresis, by the adoption grace, or because the director observes.
        "pending": decision is not None and not decision.remove and decision.weight != kernel_weight,
        "held": dest in service_pass.held,
        "override": describe_override(facts.override),
        "agent": {
            "state": str(agent.state),
            "since": seconds(agent.since),
            "for": seconds(None if agent.since is None else now - agent.since),
            "stopped": agent.state is AgentState.STOPPED,
        },
        "health": None
        if facts.report is None
        else {"value": facts.report.value, "time": seconds(facts.report.time), "age": seconds(now - facts.report.time)},
        # CPUs, as the agent reports them (project extension); None: unknown or not asked.
        "capacity": facts.capacity,
        "counters": None
        if counters is None
        else {
            "active_connections": counters.active_connections,
            "inactive_connections": counters.inactive_connections,
            "connections": counters.connections,
            "connection_rate": counters.connection_rate,
            "packet_rate": counters.packet_rate,
        },
    }


def _service_status(service_pass: ServicePass, now: float) -> dict[str, Any]:
    service = service_pass.service
    decision = service_pass.decision
    return {
        "name": service.name,
        "virtual_service": str(service.key),
        "scheduler": service.scheduler,
        "persistence": service.persistence,
        "mode": str(service.policy.mode),
        "in_kernel": service_pass.in_kernel,
        "panic": None if decision is None else decision.panic,
        "serving": None if decision is None else decision.serving,
        "considered": None if decision is None else decision.considered,
        "servers": [_server_status(service_pass, dest, now) for dest in service_pass.members],
    }


def _agent_status(session, now: float) -> dict[str, Any]:
    def name(port) -> str:
        protocol, number = port
        return f"{PROTOCOL_NAMES.get(protocol, protocol)}/{number}"

    return {
        "address": session.address,
        "connected_at": seconds(session.connected_at),
        "connected_for": seconds(now - session.connected_at),
        "services": [name(port) for port in session.started],
        "health": [
            {"service": name(port), "value": report.value, "age": seconds(now - report.time)}
            for port, report in session.health.items()
        ],
    }


def _necp_status(counters) -> dict[str, Any]:
    """What the agents' listener handled and refused (its L{NECPCounters})."""
    return {
        "messages": {
            "total": sum(counters.messages.values()),
            "by_type": {opcode_name(opcode): count for opcode, count in sorted(counters.messages.items())},
        },
        "refused": dict(counters.refusals),
        "connections_refused": dict(counters.connections_refused),
    }


def _pair_status(pair, guard, now: float) -> dict[str, Any] | None:
    """
    This director's VRRP state and what it follows (its L{PairFollower}),
    and its split-brain guard's last verdict (L{PairGuard}); None without [pair].
    """
    settings = pair.settings
    if settings is None:
        return None
    return {
        "vrrp_state": str(pair.state),
        "since": seconds(pair.since),
        "for": seconds(None if pair.since is None else now - pair.since),
        "priority": pair.priority,
        "peer": settings.peer,
        "following": pair.following,
        "last_fetch": seconds(pair.last_fetch),
        "fetch_failures": pair.fetch_failures,
        # Why the state is unknown, or why a backup runs its own policy (a fetch that failed among them).
        "last_error": pair.last_error or pair.fallback or pair.state_problem,
        "guard": None if guard.verdict is None else {
            "stand_down": guard.verdict.stand_down, "reason": guard.verdict.reason, "problem": guard.problem},
    }


def build_status(director, now: float) -> dict[str, Any]:
    """
    Everything the director knows and decided, as plain JSON-ready values:
    the services as the last pass saw, decided and wrote them (none before
    the first pass), beside the agents' sessions and the NECP counts.
    """
    updater = director.updater
    config = director.config
    last = updater.last
    return {
        "director": {
            "version": lvsfeedback.__version__,
            "config": str(config.path),
            "time": seconds(now),
            "observe": updater.observing,
            "weights_only": config.director.weights_only,
            "update_interval": config.director.update_interval,
        },
        "passes": {
            "total": updater.passes,
            "failed": updater.failed_passes,
            "writes": updater.writes,
            "last": None
            if last is None
            else {
                "time": seconds(last.time),
                "age": seconds(now - last.time),
                "duration": round(last.duration, 6),
                "changes": len(last.changes),
                "refused": len(last.refused),
            },
        },
        "agents": [_agent_status(session, now) for session in director.registry.sessions],
        "necp": _necp_status(director.factory.counters),
        "pair": _pair_status(director.pair, director.guard, now),
        "services": [] if last is None else [_service_status(service, now) for service in last.services.values()],
    }
