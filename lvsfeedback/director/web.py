"""
The director's status listener: what it knows, for people and for
Prometheus, and the few knobs an operator may turn.

    GET  /                  the dashboard (files shipped in this package, no CDN)
    GET  /status.json       services, real servers, weights and why, agents, passes, NECP counts
    GET  /history.json      weights and health of the last minutes, for the charts
    GET  /metrics           Prometheus exposition, read from the live objects
    POST /control/drain     {"service": ..., "server": ...}: weight 0 until undrained
    POST /control/undrain   {"service": ..., "server": ...}: back to feedback
    POST /control/pin       {"service": ..., "server": ..., "weight": N}: a fixed weight

Everything here reads the director's live objects at request time (config,
registry, the updater's last pass), so there is nothing to keep in sync.
The status builder, the metrics collector and the control panel are plain
objects; the resources only translate HTTP to and from them.

Control is allowed without a token only on a listener bound to loopback;
with `[status] token_file` set, every control request needs its bearer token.
A listener reachable from the network without a token file is read-only.
A request body is judged on its headers before it is read (L{StatusRequest}):
only a sender allowed control may send one, of at most MAX_BODY bytes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import server, static
from twisted.web.http import RESPONSES
from twisted.web.resource import Resource

import lvsfeedback
from lvsfeedback.director.policy import DRAINED, Drained, Pinned
from lvsfeedback.ipvs.model import (
    MAX_WEIGHT,
    PROTOCOL_NAMES,
    AddDest,
    DeleteDest,
    DestKey,
    EditDest,
    ServiceKey,
)
from lvsfeedback.necp.wire import opcode_name

JSON_TYPE = b"application/json"
BEARER_CHALLENGE = b'Bearer realm="lvsfeedback"'
# A control request is a JSON object of a few fields; a body larger than this
# is refused on its headers, before it is read.
MAX_BODY = 64 * 1024
# The dashboard's files come from this package and nowhere else; the policy
# makes the browser refuse anything else, injected or not.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The dashboard charts this much of the past, from a sample after every pass.
HISTORY_WINDOW = 300.0
DASHBOARD_FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


# The status document ---------------------------------------------------------


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


class History:
    """
    Every real server's weights and health over the last `window` seconds,
    sampled by the status listener, so that the dashboard opens on the
    recent past instead of an empty chart.

    Kept compact, for 150 samples of 10,000 servers would otherwise take
    about 240 MB: per sample and service, the servers' names (one tuple,
    shared with the sample before while they stay the same) and their
    figures in one flat tuple; the names themselves are built once.
    """

    FIELDS = ("kernel_weight", "desired_weight", "health")

    def __init__(self, window: float = HISTORY_WINDOW):
        self.window = window
        # (time, {service name: (server names, figures: len(FIELDS) per server)})
        self._samples: deque[tuple[float, dict[str, tuple[tuple[str, ...], tuple]]]] = deque()
        self._names: dict[DestKey, str] = {}

    def record(self, director, now: float) -> None:
        """
        Keep one sample: each server's kernel weight, desired weight and
        health as `build_status` has them, computed alone (the whole status
        is ten times the work, every two seconds).
        """
        now = _seconds(now)
        last = director.updater.last
        kernel = kernel_weights(director.updater)
        facts = director.registry.facts
        known, names = self._names, {}
        before = self._samples[-1][1] if self._samples else {}
        services = {}
        for service in director.config.services:
            decisions = last.decisions.get(service.key) if last is not None else None
            decided = decisions.servers if decisions is not None else {}
            members = service_members(director, service)
            figures = []
            for dest in members:
                decision = decided.get(dest)
                report = facts(service, dest).report
                figures += (
                    kernel.get((service.key, dest)),
                    None if decision is None else decision.weight,
                    None if report is None else report.value,
                )
                names[dest] = known.get(dest) or str(dest)
            server_names = tuple(names[dest] for dest in members)
            previous = before.get(service.name)
            if previous is not None and previous[0] == server_names:
                server_names = previous[0]
            services[service.name] = (server_names, tuple(figures))
        # Only the names of servers sampled now: a departed server's goes.
        self._names = names
        self._samples.append((now, services))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    @property
    def samples(self) -> list[dict[str, Any]]:
        """The samples as the document has them: per service, per server, the FIELDS."""
        width = len(self.FIELDS)
        return [
            {
                "time": time,
                "services": {
                    name: {server: list(figures[width * i:width * i + width]) for i, server in enumerate(servers)}
                    for name, (servers, figures) in services.items()
                },
            }
            for time, services in self._samples
        ]

    def document(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "fields": list(self.FIELDS),
            "samples": self.samples,
        }


# Prometheus -------------------------------------------------------------------


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


# Control ----------------------------------------------------------------------


class ControlError(Exception):
    """A control request refused: the HTTP status and a message for people."""

    def __init__(self, code: int, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


_SERVICE_ADDRESS = re.compile(r"^(?P<protocol>tcp|udp|sctp)\s+\[?(?P<address>[^\]\s]+?)\]?:(?P<port>\d+)$", re.I)
_SERVICE_MARK = re.compile(r"^fwm\s+(?P<mark>\d+)(?P<v6>\s+ipv6)?$", re.I)
_SERVER = re.compile(r"^\[?(?P<address>[^\]]+?)\]?(?::(?P<port>\d+))?$")


def parse_service_key(text: str) -> ServiceKey | None:
    """A virtual service in ipvsadm's words ("TCP 10.0.0.1:80", "FWM 5"); None if it is not one."""
    text = " ".join(text.split())
    try:
        if match := _SERVICE_ADDRESS.match(text):
            return ServiceKey.for_address(match["protocol"].lower(), match["address"], int(match["port"]))
        if match := _SERVICE_MARK.match(text):
            return ServiceKey.for_fwmark(int(match["mark"]), socket.AF_INET6 if match["v6"] else socket.AF_INET)
    except ValueError:
        return None
    return None


class ControlPanel:
    """The operator overrides: drain, undrain and pin one real server."""

    log = Logger()

    def __init__(self, director):
        self.director = director

    def find_service(self, text: str):
        for service in self.director.config.services:
            if service.name == text:
                return service
        key = parse_service_key(text)
        for service in self.director.config.services:
            if service.key == key:
                return service
        known = ", ".join(f"{service.name} ({service.key})" for service in self.director.config.services)
        raise ControlError(404, f"no service {text!r}; configured: {known or 'none'}")

    def find_server(self, service, text: str) -> DestKey:
        """The member named `text` ("10.1.0.1:80"; the address alone when only one port has it)."""
        members = service_members(self.director, service)
        match = _SERVER.match(text.strip())
        try:
            address = str(ipaddress.ip_address(match["address"])) if match else None
        except ValueError:
            address = None
        if address is not None:
            candidates = [
                dest for dest in members
                if dest.address == address and (match["port"] is None or dest.port == int(match["port"]))
            ]
            if len(candidates) == 1:
                return candidates[0]
            if len(candidates) > 1:
                raise ControlError(
                    400, f"{text} names several real servers of {service.name}; add the port",
                    servers=[str(dest) for dest in candidates],
                )
        raise ControlError(
            404, f"no real server {text!r} in service {service.name} ({service.key})",
            servers=[str(dest) for dest in members],
        )

    def act(self, action: str, request: dict[str, Any], who: str) -> dict[str, Any]:
        """Carry out `action` as asked in `request` (a decoded JSON object) by `who`."""
        if action not in ("drain", "undrain", "pin"):
            raise ControlError(404, f"no control action {action!r}; use drain, undrain or pin")
        service = self.find_service(_text_field(request, "service"))
        dest = self.find_server(service, _text_field(request, "server"))
        key = (service.key, dest)
        previous = describe_override(self.director.updater.overrides.get(key))
        if action == "drain":
            self.director.updater.overrides[key] = DRAINED
        elif action == "pin":
            self.director.updater.overrides[key] = Pinned(_weight_field(request))
        else:
            self.director.updater.overrides.pop(key, None)
        now = describe_override(self.director.updater.overrides.get(key))
        self.log.info(
            "control: {who} asked to {action} {server} of {service}: {previous} -> {now}",
            who=who, action=action, server=str(dest), service=f"{service.name} ({service.key})",
            previous=previous or "feedback", now=now or "feedback",
        )
        return {
            "action": action,
            "service": service.name,
            "virtual_service": str(service.key),
            "server": str(dest),
            "previous": previous,
            "override": now,
            "applies": f"on the next weight update pass (every {self.director.config.director.update_interval:g}s)",
        }


def _text_field(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ControlError(400, f'"{name}" is required: a non-empty string')
    return value


def _weight_field(request: dict[str, Any]) -> int:
    value = request.get("weight")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise ControlError(400, f'"weight" must be an integer 0..{MAX_WEIGHT}, got {json.dumps(value)}')
    return value


def is_local(address) -> bool:
    """Can only this host reach a listener bound to `address`?"""
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, IPv4Address | IPv6Address):
        return ipaddress.ip_address(address.host.split("%")[0]).is_loopback
    return False


@dataclass
class ControlAccess:
    """
    Who may use the control API. `loopback_only` and `token_file` are asked
    on each request, so a reload that sets a token file applies at once.
    """

    loopback_only: Callable[[], bool]
    token_file: Callable[[], Any]

    def check(self, request) -> None:
        path = self.token_file()
        if path is not None:
            self._check_token(request, path)
            return
        if not self.loopback_only():
            raise ControlError(
                403,
                "control is refused: this status listener is reachable from the network and "
                "[status] token_file is not set; set a token file, or listen on loopback only",
            )
        # Without a token, only the listener's locality protects control. A
        # web page's script could still reach a loopback listener through a
        # name it points at 127.0.0.1 (DNS rebinding); such requests name
        # that host, so only address literals and localhost are taken.
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not _local_host_name(host):
            raise ControlError(403, f"control without a token takes Host: localhost or an address, not {host!r}")

    @staticmethod
    def _check_token(request, path) -> None:
        try:
            expected = path.read_bytes().strip()
        except OSError as error:
            raise ControlError(503, f"cannot read the token file {path}: {error.strerror}") from None
        given = request.getHeader(b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise ControlError(401, "control needs a token: send Authorization: Bearer <token from [status] token_file>")
        if not hmac.compare_digest(token.strip(), expected):
            raise ControlError(401, "wrong token")


_HOST = re.compile(r"^(?:\[(?P<bracketed>[^\]]+)\]|(?P<name>[^:]+))(?::\d+)?$")


def _local_host_name(host: str) -> bool:
    """Is a Host header `localhost` or an address literal, port aside?"""
    match = _HOST.match(host)
    if match is None:
        return False
    name = match["bracketed"] or match["name"]
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# Resources --------------------------------------------------------------------


def _json(request, code: int, document: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=1).encode() + b"\n"


def _peer(request) -> str:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer)
    return f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}"


class JSONResource(Resource):
    """A leaf whose refusals are JSON too, 405 included."""

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET", b"HEAD")

    def render(self, request):
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _json(request, 405, {"error": f"{request.method.decode('latin-1')} is not allowed here; use "
                                                 f"{' or '.join(m.decode() for m in self.methods if m != b'HEAD')}"})
        return super().render(request)


class StatusResource(JSONResource):
    def __init__(self, director):
        super().__init__()
        self.director = director

    def render_GET(self, request):
        return _json(request, 200, build_status(self.director, self.director.reactor.seconds()))


class HistoryResource(JSONResource):
    def __init__(self, history: History):
        super().__init__()
        self.history = history

    def render_GET(self, request):
        return _json(request, 200, self.history.document())


class MetricsResource(JSONResource):
    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class ControlResource(JSONResource):
    """POST /control/ACTION with a JSON object; answers JSON, refusals included."""

    methods = (b"POST",)
    log = Logger()

    def __init__(self, panel: ControlPanel, access: ControlAccess):
        super().__init__()
        self.panel = panel
        self.access = access

    def render_POST(self, request):
        who = _peer(request)
        action = b"/".join(request.postpath).decode("utf-8", "replace")
        try:
            self.access.check(request)
            answer = self.panel.act(action, self._body(request), who)
        except ControlError as error:
            self.log.warn(
                "control: refused {who} ({code}) {action}: {message}",
                who=who, code=error.code, action=action, message=error.message,
            )
            if error.code == 401:
                request.setHeader(b"www-authenticate", BEARER_CHALLENGE)
            return _json(request, error.code, {"error": error.message, **error.extra})
        return _json(request, 200, answer)

    @staticmethod
    def _body(request) -> dict[str, Any]:
        # JSON only: a page on another site can make a browser post a form
        # here without asking, but not a JSON request (that needs CORS consent).
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != JSON_TYPE:
            raise ControlError(415, "send the request as Content-Type: application/json")
        try:
            document = json.loads(request.content.read() or b"null")
        except ValueError as error:
            raise ControlError(400, f"the body is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise ControlError(400, 'the body must be a JSON object such as {"service": "web", "server": "10.1.0.1:80"}')
        return document


def _dashboard_file(name: str) -> bytes:
    return resources.files("lvsfeedback.director").joinpath("static", name).read_bytes()


class DashboardFile(static.Data):
    """One of the dashboard's files, sent with a policy that allows only this listener's own."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render_GET(request)


def status_root(director, access: ControlAccess, history: History) -> Resource:
    """The resource tree of the status listener."""
    root = Resource()
    for path, (name, kind) in DASHBOARD_FILES.items():
        root.putChild(path, DashboardFile(_dashboard_file(name), kind.decode()))
    root.putChild(b"status.json", StatusResource(director))
    root.putChild(b"history.json", HistoryResource(history))
    root.putChild(b"metrics", MetricsResource(metrics_registry(director)))
    root.putChild(b"control", ControlResource(ControlPanel(director), access))
    return root


class StatusRequest(server.Request):
    """
    A request whose body is judged on its headers, before any of it is
    read (twisted.web would read it all before rendering). Only control
    requests take a body, so a body's sender must be allowed control, and
    the body may be at most MAX_BODY bytes: a stranger's 50 MB is refused
    with a 401 on its headers, not read first. A chunked body, whose size
    the headers do not tell, is cut off where it passes the limit. A refusal
    is answered at once and the connection closed.
    """

    log = Logger()
    _refused = False
    _received = 0

    def gotLength(self, length):
        if length != 0:  # None: chunked
            try:
                self.channel.site.access.check(self)
                if length is not None and length > MAX_BODY:
                    raise _too_large()
            except ControlError as error:
                self._refuse(error)
                return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse(_too_large())
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, error: ControlError) -> None:
        """Answer `error` and close, before the body: the request is never rendered."""
        self._refused = True
        self.log.warn("control: refused {who} ({code}) before its body: {message}",
                      who=_peer(self), code=error.code, message=error.message)
        # twisted.web would promise the body it is refusing (100 Continue) after the answer.
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps({"error": error.message, **error.extra}, indent=1).encode() + b"\n"
        head = [
            b"HTTP/1.1 %d %s" % (error.code, RESPONSES[error.code]),
            b"Content-Type: " + JSON_TYPE,
            b"Cache-Control: no-store",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if error.code == 401:
            head.append(b"WWW-Authenticate: " + BEARER_CHALLENGE)
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.loseConnection()


def _too_large() -> ControlError:
    return ControlError(413, f"the body must be at most {MAX_BODY} bytes: a control request is a small JSON object")


class StatusSite(server.Site):
    """The status listener's site; `access` judges control requests (see L{StatusRequest})."""

    noisy = False
    requestFactory = StatusRequest

    def __init__(self, resource, *, access: ControlAccess, **kwargs):
        super().__init__(resource, **kwargs)
        self.access = access

    def log(self, request):
        """No access log: the dashboard polls every second, and control actions log themselves."""


class StatusListener(Service):
    """
    The status listener as a child service of the director, on the endpoint
    `[status] listen` names, and the sampler of the charts' history. A
    listener that cannot start is logged and the director balances on
    without it: status is not worth an outage.
    """

    log = Logger()

    def __init__(self, director, reactor):
        self.director = director
        self.reactor = reactor
        self.port = None
        self.history = History()
        access = ControlAccess(lambda: self.loopback_only, lambda: self.director.config.status.token_file)
        self.site = StatusSite(status_root(director, access, self.history), access=access, reactor=reactor)

    def sample(self) -> None:
        self.history.record(self.director, self.reactor.seconds())

    @property
    def loopback_only(self) -> bool:
        return self.port is not None and is_local(self.port.getHost())

    def startService(self):
        super().startService()
        # A sample now, then one after every pass: weights change only in
        # passes, and a sample in the pass's own turn of the reactor costs
        # far less than one on a timer of its own (the caches are warm).
        self.sample()
        self.director.updater.pass_listeners.append(self._pass_done)
        description = self.director.config.status.listen
        listening = serverFromString(self.reactor, description).listen(self.site)
        listening.addCallbacks(self._listening, self._cannot_listen, errbackArgs=(description,))

    def _listening(self, port) -> None:
        self.port = port
        self.log.info("status listener on {address}", address=str(port.getHost()))

    def _cannot_listen(self, failure, description: str) -> None:
        self.log.critical(
            "the status listener cannot listen on {listen}: {reason}; the director runs without it",
            listen=description, reason=failure.getErrorMessage(),
        )

    def _pass_done(self, result) -> None:
        self.sample()

    def stopService(self):
        super().stopService()
        self.director.updater.pass_listeners.remove(self._pass_done)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
