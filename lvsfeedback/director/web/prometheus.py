"""The director's Prometheus metrics, from the status document."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from lvsfeedback.director.vrrp import VRRPState
from lvsfeedback.director.web.status import build_status


class DirectorCollector:
    """Prometheus metrics computed from the status document at scrape time."""

    def __init__(self, director):
        self.director = director

    def collect(self):
        status = build_status(self.director, self.director.reactor.seconds())
        server_labels = ["service", "virtual_service", "server"]
        agents = GaugeMetricFamily("lvsfeedback_agents_connected", "Agents with an NECP session now.")
        agents.add_metric([], len(status["agents"]))
        observe = GaugeMetricFamily("lvsfeedback_observe_mode", "1 when weights are computed but never written.")
        observe.add_metric([], int(status["director"]["observe"]))
        health = GaugeMetricFamily("lvsfeedback_server_health", "Latest health report 0..100.", labels=server_labels)
        age = GaugeMetricFamily(
            "lvsfeedback_server_health_age_seconds", "Seconds since the latest health report.", labels=server_labels
        )
        kernel = GaugeMetricFamily(
            "lvsfeedback_server_kernel_weight", "The real server's IPVS weight after the last pass.", labels=server_labels
        )
        desired = GaugeMetricFamily(
            "lvsfeedback_server_desired_weight", "The weight the policy wants.", labels=server_labels
        )
        reason = GaugeMetricFamily(
            "lvsfeedback_server_weight_reason",
            "1 for the reason behind the desired weight.",
            labels=[*server_labels, "reason"],
        )
        panic = GaugeMetricFamily(
            "lvsfeedback_service_panic", "1 while the service runs on static weights (panic).",
            labels=["service", "virtual_service"],
        )
        for service in status["services"]:
            service_values = [service["name"], service["virtual_service"]]
            if service["panic"] is not None:
                panic.add_metric(service_values, int(service["panic"]))
            for server_status in service["servers"]:
                values = [*service_values, server_status["server"]]
                if server_status["health"] is not None:
                    health.add_metric(values, server_status["health"]["value"])
                    age.add_metric(values, server_status["health"]["age"])
                if server_status["kernel_weight"] is not None:
                    kernel.add_metric(values, server_status["kernel_weight"])
                if server_status["desired_weight"] is not None:
                    desired.add_metric(values, server_status["desired_weight"])
                    reason.add_metric([*values, server_status["reason"]], 1)
        passes = status["passes"]
        total = CounterMetricFamily("lvsfeedback_update_passes", "Weight update passes completed.")
        total.add_metric([], passes["total"])
        failed = CounterMetricFamily("lvsfeedback_update_passes_failed", "Weight update passes that failed.")
        failed.add_metric([], passes["failed"])
        writes = CounterMetricFamily("lvsfeedback_weight_writes", "Changes written to the IPVS table.")
        writes.add_metric([], passes["writes"])
        duration = GaugeMetricFamily(
            "lvsfeedback_update_pass_duration_seconds", "How long the last weight update pass took."
        )
        if passes["last"] is not None:
            duration.add_metric([], passes["last"]["duration"])
        yield from (agents, observe, health, age, kernel, desired, reason, panic, total, failed, writes, duration)
        yield from necp_metrics(status["necp"])
        if status["pair"] is not None:
            yield from pair_metrics(status["pair"])


def pair_metrics(pair: dict[str, Any]):
    """The VRRP state (one series per state, 1 for the current one) and the following."""
    state = GaugeMetricFamily("lvsfeedback_vrrp_state", "1 for this director's VRRP state.", labels=["state"])
    for name in VRRPState:
        state.add_metric([str(name)], int(pair["vrrp_state"] == name))
    following = GaugeMetricFamily(
        "lvsfeedback_pair_following", "1 while this director (VRRP BACKUP or FAULT) follows the master's weights."
    )
    following.add_metric([], int(pair["following"]))
    failures = CounterMetricFamily(
        "lvsfeedback_pair_peer_fetch_failures", "Fetches of the master's desired weights that failed."
    )
    failures.add_metric([], pair["fetch_failures"])
    yield from (state, following, failures)


def necp_metrics(necp: dict[str, Any]):
    """The NECP counts of the status document as Prometheus counters."""
    messages = CounterMetricFamily(
        "lvsfeedback_necp_messages", "NECP messages read from agents and accepted, by type.", labels=["type"]
    )
    for kind, count in necp["messages"]["by_type"].items():
        messages.add_metric([kind], count)
    refusals = CounterMetricFamily(
        "lvsfeedback_necp_refusals", "NECP messages or sessions of agents refused, by reason.", labels=["reason"]
    )
    for why, count in necp["refused"].items():
        refusals.add_metric([why], count)
    connections = CounterMetricFamily(
        "lvsfeedback_agent_connections_refused", "Agent connections refused at connect, by reason.", labels=["reason"]
    )
    for why, count in necp["connections_refused"].items():
        connections.add_metric([why], count)
    yield from (messages, refusals, connections)


def metrics_registry(director) -> CollectorRegistry:
    """A private registry: only this director's metrics, none of the process defaults."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DirectorCollector(director))
    return registry
