"""
The agent's settings: an optional TOML file, with command-line flags on top.

    [agent]
    directors = ["tcp:10.0.0.1:3262"]     # Twisted client endpoint strings
    secret_file = "/etc/lvsfeedback/necp.secret"
    interval = 1.0                         # seconds between samples
    smoothing = 0.5                        # weight of the newest reading (1: none)
    drain_timeout = 10.0                   # seconds to wait for STOP_ACK on drain
    haproxy_agent = "tcp:9777"             # optional HAProxy agent-check listener
    haproxy_service = "tcp:80"             # which service it speaks for (default: the first)
    capacity = "auto"                      # "auto", a number of CPUs, or "off" (see agent.capacity)

    [[service]]
    protocol = "tcp"                       # tcp, udp or sctp
    port = 80
    forwarding = "dr"                      # dr, tun or nat (how the director reaches us)
    combine = "worst"                      # worst or mean
    metrics = ["cpu", "connections:port=80,high=500"]

Every problem is reported as FILE: KEY: reason, all at once.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from lvsfeedback.agent.capacity import AUTO, Setting, parse_capacity
from lvsfeedback.ipvs.model import IPVS_FORWARDING, PROTOCOLS

FORWARDING_CODES = {name: code for code, name in IPVS_FORWARDING.items()}  # NECP's data0 in START units
COMBINATIONS = ("worst", "mean")
AGENT_KEYS = {"directors", "secret_file", "interval", "smoothing", "drain_timeout", "haproxy_agent", "haproxy_service",
              "capacity"}
SERVICE_KEYS = {"protocol", "port", "forwarding", "combine", "metrics"}


class AgentConfigError(Exception):
    """Every problem found, one per line."""

    def __init__(self, problems):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class ServiceSettings:
    protocol: str
    port: int
    forwarding: str = "dr"
    combine: str = "worst"
    metrics: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.protocol}:{self.port}"


@dataclass(frozen=True)
class AgentSettings:
    directors: tuple[str, ...] = ()
    services: tuple[ServiceSettings, ...] = ()
    secret_file: Path | None = None
    interval: float = 1.0
    smoothing: float = 0.5
    drain_timeout: float = 10.0
    haproxy_agent: str | None = None
    haproxy_service: str | None = None
    capacity: Setting = AUTO


def parse_service(text: str) -> ServiceSettings:
    """PROTO:PORT[:FORWARDING], e.g. tcp:80 or udp:53:nat. ValueError says what is wrong."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"service {text!r}: expected PROTO:PORT[:FORWARDING], e.g. tcp:80:dr")
    protocol, port, *rest = parts
    forwarding = rest[0] if rest else "dr"
    if protocol not in PROTOCOLS:
        raise ValueError(f"service {text!r}: protocol must be one of {', '.join(PROTOCOLS)}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"service {text!r}: port must be 1..65535")
    if forwarding not in FORWARDING_CODES:
        raise ValueError(f"service {text!r}: forwarding must be one of {', '.join(FORWARDING_CODES)}")
    return ServiceSettings(protocol, int(port), forwarding)


# The numeric [agent] settings' bounds, for the file's keys and the flags alike:
# (least, greatest or None, whether the least itself is excluded).
NUMBER_BOUNDS = {"interval": (0, None, True), "smoothing": (0, 1, True), "drain_timeout": (0, None, False)}


def check_number(problems: list[str], where: str, key: str, value):
    """`value` for the setting `key`; a problem naming `where` is added when it is out of bounds."""
    low, high, above = NUMBER_BOUNDS[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if above else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"above {low}" if above else f"at least {low}"
        problems.append(f"{where}: must be a number {bound}{'' if high is None else f' and at most {high}'}, got {value!r}")
    return value


def load_agent_config(path: str | Path) -> AgentSettings:
    path = Path(path)
    problems: list[str] = []
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise AgentConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise AgentConfigError([f"{path}: not valid TOML: {error}"]) from None
    where = lambda key: f"{path}: {key}"  # noqa: E731
    for key in set(data) - {"agent", "service"}:
        problems.append(f"{where(key)}: unknown section")
    agent = data.get("agent", {})
    for key in sorted(set(agent) - AGENT_KEYS):
        problems.append(f"{where('agent.' + key)}: unknown key")
    directors = agent.get("directors", [])
    if not isinstance(directors, list) or not all(isinstance(d, str) and d for d in directors):
        problems.append(f"{where('agent.directors')}: must be a list of endpoint strings")
        directors = []
    secret = agent.get("secret_file")
    if secret is not None:
        secret = path.parent / secret
    try:
        capacity = parse_capacity(agent.get("capacity", AUTO))
    except ValueError as error:
        problems.append(f"{where('agent.capacity')}: {error}")
        capacity = AUTO
    services = []
    for index, table in enumerate(data.get("service", [])):
        at = f"service[{index}]"
        for key in sorted(set(table) - SERVICE_KEYS):
            problems.append(f"{where(at + '.' + key)}: unknown key")
        try:
            service = parse_service(f"{table.get('protocol', 'tcp')}:{table.get('port', '')}:{table.get('forwarding', 'dr')}")
        except ValueError as error:
            problems.append(f"{where(at)}: {error}")
            continue
        combine = table.get("combine", "worst")
        if combine not in COMBINATIONS:
            problems.append(f"{where(at + '.combine')}: must be one of {', '.join(COMBINATIONS)}, got {combine!r}")
        metrics = table.get("metrics", [])
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            problems.append(f"{where(at + '.metrics')}: must be a list of metric specs")
            metrics = []
        services.append(ServiceSettings(service.protocol, service.port, service.forwarding, combine, tuple(metrics)))
    settings = AgentSettings(
        directors=tuple(directors),
        services=tuple(services),
        secret_file=secret,
        **{
            key: check_number(problems, where(f"agent.{key}"), key, agent.get(key, getattr(AgentSettings, key)))
            for key in NUMBER_BOUNDS
        },
        haproxy_agent=agent.get("haproxy_agent"),
        haproxy_service=agent.get("haproxy_service"),
        capacity=capacity,
    )
    if problems:
        raise AgentConfigError(problems)
    return settings


def check(settings: AgentSettings) -> list[str]:
    """Contradictions a complete configuration must not have."""
    problems = []
    if not settings.directors:
        problems.append("no director: give --director ENDPOINT or [agent] directors")
    if not settings.services:
        problems.append("no service: give --service PROTO:PORT[:FORWARDING] or [[service]]")
    seen = set()
    for service in settings.services:
        key = (service.protocol, service.port)
        if key in seen:
            problems.append(f"service {service.name} is given twice")
        seen.add(key)
        if not service.metrics:
            problems.append(f"service {service.name} has no metric: give --metric SPEC or metrics = [...]")
        if service.combine not in COMBINATIONS:
            problems.append(f"service {service.name}: combine must be one of {', '.join(COMBINATIONS)}")
    if settings.haproxy_service is not None and settings.haproxy_service not in {s.name for s in settings.services}:
        problems.append(f"haproxy service {settings.haproxy_service} is not one of the agent's services")
    if settings.secret_file is not None and not settings.secret_file.is_file():
        problems.append(f"secret file {settings.secret_file} does not exist")
    return problems
