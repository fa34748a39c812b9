"""The status document: what the director knows and decided, as plain JSON-ready values."""

from __future__ import annotations

from typing import Any

import lvsfeedback
from lvsfeedback.director.policy import Drained, Pinned
from lvsfeedback.ipvs.model import PROTOCOL_NAMES, AddDest, DeleteDest, DestKey, EditDest, ServiceKey
from lvsfeedback.necp.codec import opcode_name

def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def service_members(director, service) -> list[DestKey]:
    """
    The real servers of a configured service the director knows of: those
    configured, those auto-joined, and those the last pass saw or decided on
    (with weights_only, the kernel's), in that order.
    """
    found = dict.fromkeys(real.dest_key for real in service.reals)
    last = director.updater.last
    decision = last.decisions.get(service.key) if last is not None else None
    entry = last.kernel.get(service.key) if last is not None else None
    for more in (
        director.registry.auto_joined.get(service.key, {}),
        decision.servers if decision is not None else {},
        entry.dests if entry is not None else {},
    ):
        # Sorting only those not found yet: usually none, and sorting a
        # hundred keys costs more than all the rest of a history sample.
        found.update(dict.fromkeys(sorted(dest for dest in more if dest not in found)))
    return list(found)


def kernel_weights(updater) -> dict[tuple[ServiceKey, DestKey], int]:
    """
    The kernel's weights after the last pass: what it read, with the writes
    it made on top (the read happens before the writes). In observe mode
    nothing was written, so the read stands.
    """
    last = updater.last
    if last is None:
        return {}
    weights = {
        (key, dest): found.server.weight for key, entry in last.kernel.items() for dest, found in entry.dests.items()
    }
    if updater.observing:
        return weights
    refused = {id(error.change) for error in last.refused}
    for change in last.changes:
        if id(change) in refused:
            continue
        match change:
            case AddDest(key, server) | EditDest(key, server):
                weights[key, server.key] = server.weight
            case DeleteDest(key, dest):
                weights.pop((key, dest), None)
    return weights


def describe_override(override) -> str | None:
    match override:
        case Drained():
            return "drained"
        case Pinned(weight):
            return f"pinned {weight}"
    return None


def _configured(director, service, dest: DestKey) -> tuple[int | None, str]:
    """Base weight and forwarding of a member; a kernel-only one has no base weight."""
    for real in service.reals:
        if real.dest_key == dest:
            return real.base_weight, real.forwarding
    joined = director.registry.auto_joined.get(service.key, {}).get(dest)
    if joined is not None:
        return joined.weight, joined.forwarding
    return None, service.forwarding


def _server_status(director, service, dest: DestKey, kernel: dict, now: float) -> dict[str, Any]:
    last = director.updater.last
    service_decision = last.decisions.get(service.key) if last is not None else None
    decision = service_decision.servers.get(dest) if service_decision is not None else None
    entry = last.kernel.get(service.key) if last is not None else None
    seen = entry.dests.get(dest) if entry is not None else None
    facts = director.registry.facts(service, dest)
    kernel_weight = kernel.get((service.key, dest))
    counters = seen.counters if seen is not None else None
    base_weight, forwarding = _configured(director, service, dest)
    return {
        "server": str(dest),
        "forwarding": forwarding,
        "base_weight": base_weight,
        "kernel_weight": kernel_weight,
        "desired_weight": None if decision is None else decision.weight,
        "reason": None if decision is None else str(decision.reason),
        "detail": "" if decision is None else decision.detail,
        "remove": False if decision is None else decision.remove,
        # The policy wants a weight the kernel does not have yet: held back by
        # hysteresis, by the adoption grace, or because the director observes.
        "pending": decision is not None and not decision.remove and decision.weight != kernel_weight,
        "held": last is not None and (service.key, dest) in last.held,
        "override": describe_override(director.updater.overrides.get((service.key, dest))),
        "agent": {
            "state": str(facts.agent.state),
            "since": _seconds(facts.agent.since),
            "for": _seconds(None if facts.agent.since is None else now - facts.agent.since),
            "stopped": facts.stopped,
        },
        "health": None
        if facts.report is None
        else {"value": facts.report.value, "time": _seconds(facts.report.time), "age": _seconds(now - facts.report.time)},
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


def _service_status(director, service, kernel: dict, now: float) -> dict[str, Any]:
    last = director.updater.last
    decision = last.decisions.get(service.key) if last is not None else None
    return {
        "name": service.name,
        "virtual_service": str(service.key),
        "scheduler": service.scheduler,
        "persistence": service.persistence,
        "mode": str(service.policy.mode),
        "in_kernel": last is not None and service.key in last.kernel,
        "panic": None if decision is None else decision.panic,
        "serving": None if decision is None else decision.serving,
        "considered": None if decision is None else decision.considered,
        "servers": [_server_status(director, service, dest, kernel, now) for dest in service_members(director, service)],
    }


def _agent_status(session, now: float) -> dict[str, Any]:
    def name(port) -> str:
        protocol, number = port
        return f"{PROTOCOL_NAMES.get(protocol, protocol)}/{number}"

    return {
        "address": session.address,
        "connected_at": _seconds(session.connected_at),
        "connected_for": _seconds(now - session.connected_at),
        "services": [name(port) for port in session.started],
        "health": [
            {"service": name(port), "value": report.value, "age": _seconds(now - report.time)}
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


def build_status(director, now: float) -> dict[str, Any]:
    """Everything the director knows and decided, as plain JSON-ready values."""
    updater = director.updater
    config = director.config
    last = updater.last
    kernel = kernel_weights(updater)
    return {
        "director": {
            "version": lvsfeedback.__version__,
            "config": str(config.path),
            "time": _seconds(now),
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
                "time": _seconds(last.time),
                "age": _seconds(now - last.time),
                "duration": round(last.duration, 6),
                "changes": len(last.changes),
                "refused": len(last.refused),
            },
        },
        "agents": [_agent_status(session, now) for session in director.registry.sessions],
        "necp": _necp_status(director.factory.counters),
        "services": [_service_status(director, service, kernel, now) for service in config.services],
    }
