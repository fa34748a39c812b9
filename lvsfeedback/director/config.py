"""
The director's configuration file: TOML in, typed frozen values out.

`load_config` reads the whole file before it complains, and then complains
about everything at once, one line per problem, as ``FILE: KEY: reason``
(``director.toml: service[1].real[0].weight: must be an integer 1..65535,
got "ten"``). Unknown keys are problems too: a misspelt knob must not be
silently ignored. The sample ``tap/director.toml`` documents every key.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from zope.interface import Interface

from lvsfeedback.director.config_parse import (
    Network,
    _address,
    _boolean,
    _choice,
    _endpoint,
    _enum,
    _family,
    _family_name,
    _family_name_choice,
    _http_url,
    _integer,
    _Invalid,
    _name,
    _network,
    _number,
    _seconds,
    _show,
    _string,
    _syntax_problem,
    _Table,
)
from lvsfeedback.director.policy import LostAgentAction, Mode, PolicySettings
from lvsfeedback.director.protocol import MAX_EXCEPTIONS_PER_AGENT
from lvsfeedback.ipvs.fwmark import iptables_installed
from lvsfeedback.ipvs.model import (
    FORWARDING,
    MAX_WEIGHT,
    PROTOCOLS,
    DestKey,
    ServiceKey,
    VirtualService,
)
from lvsfeedback.necp.factory import MAX_QUEUED_OUTPUT

# Twisted's own backlog is 50: a thousand agents reconnecting after a restart
# would have their SYNs dropped and retried a second later. The kernel caps
# it at net.core.somaxconn (4096 since Linux 5.4).
DEFAULT_LISTEN = "tcp:3262:backlog=1024"
# Agent connections open at once, each one file descriptor. The director's
# own files (epoll, listeners, netlink, logs, status clients) come on top;
# the shipped unit's LimitNOFILE=65536 leaves room for six times this.
DEFAULT_MAX_AGENTS = 10_000
MAX_MAX_AGENTS = 1_000_000
# The same for the status listener: a burst of a thousand requests (a
# dashboard wall, a scraper fleet, a flood) with Twisted's 50 had SYNs
# dropped and retried for seconds while the director was busy (#15).
DEFAULT_STATUS_LISTEN = "tcp:9101:interface=127.0.0.1:backlog=1024"
# [pair] guard_file's name, beside the vrrp_state_file.
DEFAULT_GUARD_FILE = "pair-guard"
# Health mode multiplies the base weight by health/100, so a base of 100
# gives weights in 1% steps; a base of 1 could only ever be 0 or 1.
DEFAULT_WEIGHT = 100
DEFAULT_SCHEDULER = "wlc"
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")
MAX_FWMARK = 0xFFFFFFFF
# The kernel keeps the persistence timeout in jiffies in 32 bits; at HZ=1000
# this is the largest number of seconds that fits.
MAX_PERSISTENCE = 0xFFFFFFFF // 1000
# The iptables multiport match takes at most 15 ports.
MAX_MARK_PORTS = 15
EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class OnLeave(enum.StrEnum):
    """What happens to an auto-joined real server when its agent stops the service or goes."""

    REMOVE = "remove"
    QUIESCE = "quiesce"


class ConfigError(Exception):
    """The configuration file has problems; `problems` lists every one."""

    def __init__(self, problems: Iterable[str]):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class DirectorSettings:
    listen: str  # Twisted server endpoint for agents
    max_agents: int  # agent connections open at once; more are refused at connect
    secret_file: Path | None  # shared NECP secret; None: no authentication
    allow: tuple[Network, ...]  # agent source networks
    update_interval: float  # seconds between policy passes
    health_interval: float  # seconds between health questions to each agent; 0: on keepalives only
    adoption_grace: float  # after start, seconds a server no agent has spoken for keeps its kernel weight
    early_pass_change: int  # health points a report must move by to bring the next pass forward; 0: never
    observe: bool  # compute and expose weights, never touch the kernel
    weights_only: bool  # only edit weights of real servers already in the kernel
    # The secret_file's content, read with the rest of the file (so a reload
    # that cannot read it is refused before anything changes).
    secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NECPSettings:
    """Limits on what one agent connection may cost the director."""

    max_exceptions_per_agent: int  # exception rules one agent may install
    max_queued_output: int  # bytes in an agent's kernel send buffer, and again queued past Twisted's when it stops reading


@dataclass(frozen=True)
class StatusSettings:
    listen: str  # Twisted server endpoint for the status and control listener
    token_file: Path | None  # bearer token for the control API; None: read-only


@dataclass(frozen=True)
class PairSettings:
    """The [pair] table: this director's VRRP state, and the peer it follows while BACKUP."""

    vrrp_state_file: Path  # written by tap/vrrp-notify; absent: state unknown
    peer: str  # the other director's status listener, http(s)://HOST:PORT
    peer_token_file: Path | None  # bearer token sent to the peer (its [status] token_file)
    peer_timeout: float  # seconds one fetch of the peer's desired weights may take
    follow_stale_after: float  # seconds without a new answer before the backup runs its own policy
    guard_file: Path  # the split-brain guard's verdict, keepalived's track_file: "1" stand down, "0" VRRP decides
    guard_interval: float  # seconds between the guard's rounds
    guard_timeout: float  # seconds the guard's fetch of the peer's addresses may take
    peer_token: bytes | None = field(default=None, repr=False)  # the peer_token_file's content


@dataclass(frozen=True)
class RealConfig:
    dest_key: DestKey
    base_weight: int
    forwarding: str  # "nat", "dr" or "tun"


@dataclass(frozen=True)
class MarkRule:
    """The packets an iptables MARK rule gives a fwmark service's mark."""

    destination: Network
    protocol: str  # "tcp", "udp" or "sctp"
    ports: tuple[int, ...]  # destination ports; empty: every port


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    key: ServiceKey
    scheduler: str
    persistence: int  # seconds; 0: not persistent
    forwarding: str  # default for its real servers
    reals: tuple[RealConfig, ...]
    policy: PolicySettings  # [policy] with this service's overrides applied
    auto_join: tuple[Network, ...]  # agents from here that START this service join it
    auto_join_weight: int
    on_leave: OnLeave
    mark: MarkRule | None  # None: the mark is set by rules the director does not own

    def virtual_service(self) -> VirtualService:
        return VirtualService(self.key, self.scheduler, self.persistence)


@dataclass(frozen=True)
class DirectorConfig:
    path: Path
    director: DirectorSettings
    status: StatusSettings
    policy: PolicySettings  # the [policy] table; each service has its effective one
    services: tuple[ServiceConfig, ...]
    necp: NECPSettings
    pair: PairSettings | None = None  # None: no [pair] table, a director alone


class IReconfigurable(Interface):
    """A part of the director that takes a reloaded config by itself."""

    def reconfigure(config):
        """
        Take C{config}, a L{DirectorConfig} that has been read and checked
        whole, and so cannot be refused here: what changes at once changes
        now; what takes a restart is logged as such.
        """


def load_config(path: str | os.PathLike[str]) -> DirectorConfig:
    """The configuration in `path`; ConfigError listing every problem otherwise."""
    reader = _Reader(Path(path))
    config = reader.read()
    if reader.problems or config is None:
        raise ConfigError(reader.problems)
    return config


def check_config(path: str | os.PathLike[str]) -> list[str]:
    """Every problem in the configuration file at `path`; empty when it is fine."""
    try:
        load_config(path)
    except ConfigError as error:
        return list(error.problems)
    return []


# Reading ------------------------------------------------------------------


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []
        self.contents: dict[Path, bytes] = {}  # of the files read, stripped

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{self.path}: {key}: {reason}")

    def read(self) -> DirectorConfig | None:
        try:
            content = self.path.read_bytes()
        except OSError as error:
            self.problems.append(f"{self.path}: cannot read: {error.strerror}")
            return None
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as error:
            line = content.count(b"\n", 0, error.start) + 1
            self.problems.append(f"{self.path}: line {line}: not UTF-8 text")
            return None
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            self.problems.append(f"{self.path}: {_syntax_problem(str(error))}")
            return None
        top = _Table(self, "", document)
        director = self._director(top.table("director"))
        status = self._status(top.table("status"))
        policy = self._policy(top.table("policy"), PolicySettings(), "policy")
        services = self._services(top.tables("service"), policy)
        necp = self._necp(top.table("necp"))
        pair_table = top.optional_table("pair")
        pair = None if pair_table is None else self._pair(pair_table, director.update_interval)
        top.finish()
        return DirectorConfig(self.path, director, status, policy, services, necp, pair)

    def _director(self, table: _Table) -> DirectorSettings:
        settings = DirectorSettings(
            listen=table.take("listen", _endpoint, DEFAULT_LISTEN),
            max_agents=table.take("max_agents", _integer(1, MAX_MAX_AGENTS), DEFAULT_MAX_AGENTS),
            secret_file=table.take("secret_file", self._readable_file, None),
            allow=table.take_list("allow", _network, EVERYWHERE, allow_empty=False),
            update_interval=table.take("update_interval", _seconds(lambda n: n > 0, "> 0"), 2.0),
            health_interval=table.take("health_interval", _seconds(lambda n: n >= 0, ">= 0"), 2.0),
            adoption_grace=table.take("adoption_grace", _seconds(lambda n: n >= 0, ">= 0"), 60.0),
            early_pass_change=table.take("early_pass_change", _integer(0, 100), 20),
            observe=table.take("observe", _boolean, False),
            weights_only=table.take("weights_only", _boolean, False),
        )
        table.finish()
        if settings.secret_file is not None:
            settings = replace(settings, secret=self.contents[settings.secret_file])
        return settings

    def _necp(self, table: _Table) -> NECPSettings:
        settings = NECPSettings(
            max_exceptions_per_agent=table.take(
                "max_exceptions_per_agent", _integer(0, 65536), MAX_EXCEPTIONS_PER_AGENT
            ),
            max_queued_output=table.take("max_queued_output", _integer(1024, 64 * 1024 * 1024), MAX_QUEUED_OUTPUT),
        )
        table.finish()
        return settings

    def _status(self, table: _Table) -> StatusSettings:
        settings = StatusSettings(
            listen=table.take("listen", _endpoint, DEFAULT_STATUS_LISTEN),
            token_file=table.take("token_file", self._readable_file, None),
        )
        table.finish()
        return settings

    def _pair(self, table: _Table, update_interval: float | None) -> PairSettings:
        # The default: three passes of the master's that the backup did not hear of.
        stale_default = 3 * (update_interval or 2.0)
        settings = PairSettings(
            vrrp_state_file=table.take("vrrp_state_file", self._path),
            peer=table.take("peer", _http_url),
            peer_token_file=table.take("peer_token_file", self._readable_file, None),
            peer_timeout=table.take("peer_timeout", _seconds(lambda n: 0 < n <= 60, "> 0 and <= 60"), 1.0),
            follow_stale_after=table.take("follow_stale_after", _seconds(lambda n: n > 0, "> 0"), stale_default),
            guard_file=table.take("guard_file", self._path, None),
            guard_interval=table.take("guard_interval", _seconds(lambda n: 0.1 <= n <= 60, ">= 0.1 and <= 60"), 0.5),
            guard_timeout=table.take("guard_timeout", _seconds(lambda n: 0 < n <= 60, "> 0 and <= 60"), None),
        )
        table.finish()
        if settings.guard_timeout is None and settings.guard_interval is not None:
            # A dead peer is found within two rounds' time; a false "unheard"
            # only lets VRRP decide, which holds while VRRP's adverts pass.
            settings = replace(settings, guard_timeout=settings.guard_interval)
        if settings.guard_file is None and settings.vrrp_state_file is not None:
            # Beside the notify hook's file, in the folder keepalived reads from.
            settings = replace(settings, guard_file=settings.vrrp_state_file.parent / DEFAULT_GUARD_FILE)
        if settings.guard_file is not None and settings.guard_file == settings.vrrp_state_file:
            self.problem("pair.guard_file", "must not be the vrrp_state_file: each has its own writer")
        if settings.peer_token_file is not None:
            settings = replace(settings, peer_token=self.contents[settings.peer_token_file])
        return settings

    def _path(self, value: object) -> Path:
        """A path, relative to the configuration file's folder; the file need not exist yet."""
        return self.path.parent / _name(value)

    def _readable_file(self, value: object) -> Path:
        """A path, relative to the configuration file's folder, of a readable non-empty file."""
        name = _string(value)
        path = self.path.parent / name
        try:
            content = path.read_bytes().strip()
        except OSError as error:
            raise _Invalid(f"cannot read {path}: {error.strerror}") from None
        if not content:
            raise _Invalid(f"{path} is empty")
        self.contents[path] = content
        return path

    def _policy(self, table: _Table, base: PolicySettings, where: str) -> PolicySettings:
        """`base` with the knobs `table` sets; invalid ones keep the base value."""
        changes: dict[str, Any] = {}
        for knob in fields(PolicySettings):
            value = table.take(knob.name, _POLICY_KNOBS[knob.name], None)
            if value is not None:
                changes[knob.name] = value
        table.finish()
        settings = replace(base, **changes)
        if ("floor" in changes or "ceiling" in changes) and settings.floor > settings.ceiling:
            self.problem(
                f"{where}.{'floor' if 'floor' in changes else 'ceiling'}",
                f"floor ({settings.floor}) must not be greater than ceiling ({settings.ceiling})",
            )
        return settings

    def _services(self, tables: list[_Table], policy: PolicySettings) -> tuple[ServiceConfig, ...]:
        services: list[ServiceConfig] = []
        names: dict[str, str] = {}
        keys: dict[ServiceKey, str] = {}
        for table in tables:
            service = self._service(table, policy)
            name = table.data.get("name")
            if isinstance(name, str):
                if name in names:
                    self.problem(
                        table.key("name"), f"duplicate service name {_show(name)}, also {names[name]}"
                    )
                names.setdefault(name, table.path)
            if service is None:
                continue
            if service.key in keys:
                self.problem(table.path, f"duplicate virtual service {service.key}, also {keys[service.key]}")
            keys.setdefault(service.key, table.path)
            services.append(service)
        return tuple(services)

    def _service(self, table: _Table, policy: PolicySettings) -> ServiceConfig | None:
        """The service in `table`, or None when its identity could not be read."""
        name = table.take("name", _name)
        protocol = table.take("protocol", _choice((*PROTOCOLS, "fwmark")))
        key: ServiceKey | None = None
        mark: MarkRule | None = None
        if protocol == "fwmark":
            for only_address in ("address", "port"):
                table.forbid(
                    only_address, "only for tcp, udp and sctp services; a fwmark service has its mark"
                )
            fwmark = table.take("fwmark", _integer(1, MAX_FWMARK))
            family = table.take("family", _family_name_choice, socket.AF_INET)
            if fwmark is not None and family is not None:
                key = ServiceKey.for_fwmark(fwmark, family)
            mark_table = table.optional_table("mark")
            if mark_table is not None:
                mark = self._mark(mark_table, family)
                if not iptables_installed():
                    self.problem(f"{table.path}.mark", "needs python-iptables, which is not installed: lvsfeedback[fwmark]")
        elif protocol is not None:
            for only_fwmark in ("fwmark", "family", "mark"):
                table.forbid(only_fwmark, 'only for protocol "fwmark"')
            address = table.take("address", _address)
            port = table.take("port", _integer(1, 65535))
            if address is not None and port is not None:
                key = ServiceKey.for_address(protocol, address, port)
        else:
            # The protocol decides which of these belong here; without one,
            # judging them would only bury the real problem in noise.
            table.skip("address", "port", "fwmark", "family", "mark")
        scheduler = table.take("scheduler", _choice(SCHEDULERS), DEFAULT_SCHEDULER)
        persistence = table.take("persistence", _integer(0, MAX_PERSISTENCE), 0)
        forwarding = table.take("forwarding", _choice(tuple(FORWARDING)), "nat")
        auto_join = table.take_list("auto_join", _network, ())
        auto_join_weight = table.take("auto_join_weight", _integer(1, MAX_WEIGHT), DEFAULT_WEIGHT)
        on_leave = table.take("on_leave", _enum(OnLeave), OnLeave.REMOVE)
        service_policy = self._policy(table.table("policy"), policy, f"{table.path}.policy")
        if key is not None:
            for index, network in enumerate(auto_join):
                if _family(network) != key.family:
                    self.problem(
                        f"{table.key('auto_join')}[{index}]", f"{network} is not {_family_name(key.family)}"
                    )
        reals = self._reals(table.tables("real"), key, forwarding)
        table.finish()
        if key is None or name is None:
            return None
        return ServiceConfig(
            name=name,
            key=key,
            scheduler=scheduler,
            persistence=persistence,
            forwarding=forwarding,
            reals=reals,
            policy=service_policy,
            auto_join=auto_join,
            auto_join_weight=auto_join_weight,
            on_leave=on_leave,
            mark=mark,
        )

    def _mark(self, table: _Table, family: int | None) -> MarkRule:
        destination = table.take("destination", _network)
        if destination is not None and family is not None and _family(destination) != family:
            self.problem(table.key("destination"), f"{destination} is not {_family_name(family)}")
        rule = MarkRule(
            destination=destination,
            protocol=table.take("protocol", _choice(tuple(PROTOCOLS)), "tcp"),
            ports=table.take_list("ports", _integer(1, 65535), ()),
        )
        if len(rule.ports) > MAX_MARK_PORTS:
            self.problem(
                table.key("ports"),
                f"at most {MAX_MARK_PORTS} ports (the iptables multiport match's limit), "
                f"got {len(rule.ports)}",
            )
        table.finish()
        return rule

    def _reals(
        self, tables: list[_Table], service: ServiceKey | None, forwarding: str
    ) -> tuple[RealConfig, ...]:
        reals: list[RealConfig] = []
        seen: dict[DestKey, str] = {}
        for table in tables:
            real = self._real(table, service, forwarding)
            if real is None:
                continue
            if real.dest_key in seen:
                self.problem(table.path, f"duplicate real server {real.dest_key}, also {seen[real.dest_key]}")
            seen.setdefault(real.dest_key, table.path)
            reals.append(real)
        return tuple(reals)

    def _real(self, table: _Table, service: ServiceKey | None, default_forwarding: str) -> RealConfig | None:
        address = table.take("address", _address)
        forwarding = table.take("forwarding", _choice(tuple(FORWARDING)), default_forwarding)
        weight = table.take("weight", _integer(1, MAX_WEIGHT), DEFAULT_WEIGHT)
        # A fwmark service has no port of its own: 0 keeps the port the client asked for.
        port = table.take("port", _integer(0 if service is None or service.is_fwmark else 1, 65535), None)
        table.finish()
        if service is None or address is None or weight is None:
            return None
        if port is None:
            port = service.port
        elif forwarding in ("dr", "tun") and not service.is_fwmark and port != service.port:
            # Direct routing and tunnelling do not rewrite the packet, so the
            # real server sees the service's port whatever is written here.
            self.problem(
                table.key("port"),
                f"must be the service port {service.port} with forwarding {_show(forwarding)}, got {port}",
            )
        dest = DestKey.of(address, port)
        if dest.family != service.family:
            self.problem(
                table.key("address"), f"{address} is not {_family_name(service.family)}, as the service is"
            )
        return RealConfig(dest, weight, forwarding)


_POLICY_KNOBS: dict[str, Callable[[object], Any]] = {
    "mode": _enum(Mode),
    "smoothing_half_life": _seconds(lambda n: n >= 0, ">= 0"),
    "hysteresis": _number(lambda n: 0 <= n < 1, "a number 0 <= h < 1"),
    "floor": _integer(1, MAX_WEIGHT),
    "ceiling": _integer(1, MAX_WEIGHT),
    "slow_start": _seconds(lambda n: n >= 0, ">= 0"),
    "lost_agent": _enum(LostAgentAction),
    "stale_after": _seconds(lambda n: n > 0, "> 0"),
    "panic_threshold": _number(lambda n: 0 <= n <= 1, "a number 0..1"),
    "min_utilisation": _number(lambda n: 0 < n <= 1, "a number 0 < u <= 1"),
    "dead_band": _number(lambda n: 0 <= n < 1, "a number 0 <= b < 1"),
}
