"""
What the experiment compares, as plain data: the scenarios (server
capacities, a CPU hog, a failure), the schedulers (IPVS with static
weights, lvsfeedback, the oracle), and the capacity model that sets the
offered load and the oracle's weights. No I/O: the unit tests check it all.

Capacity model. A real server's backend is one thread spending C{cost}
seconds of CPU per request (measured by calibration) inside a cgroup
limited to C{quota} CPUs, so it serves at most C{quota / cost} requests a
second. A hog with W spinning workers in the same cgroup is scheduled
fairly against the backend's one thread, so the backend keeps 1/(1+W) of
the quota whenever it has work. That is each server's *spare capacity*,
the weight an all-knowing operator would give it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

from lvsfeedback.director.policy import PolicySettings

SERVICE_PORT = 80
BACKEND_PORT = 8080
DIRECTOR_NECP_PORT = 3262
STATUS_PORT = 9101
BASE_WEIGHT = 100
# Static weights and the oracle's are written in these units: the largest
# capacity gets this weight, the others their share of it.
ORACLE_SCALE = 100


@dataclass(frozen=True)
class Window:
    """A span of the measured period, as fractions of it (0.0 = its start, 1.0 = its end)."""

    start: float
    stop: float

    def __post_init__(self):
        if not 0 <= self.start < self.stop <= 1:
            raise ValueError(f"a window needs 0 <= start < stop <= 1, got {self.start}..{self.stop}")


@dataclass(frozen=True)
class LoadStep:
    """From `at` (a fraction of the measured period; the first step at 0 covers the warm-up too) on, this load."""

    at: float
    load: float  # a share of the cluster's capacity in its weakest state


@dataclass(frozen=True)
class Resize:
    """A server's CPU quota changes to `quota` during `window`, and returns to the scenario's after it."""

    server: int  # index into quotas
    quota: float
    window: Window


@dataclass(frozen=True)
class Event:
    """A change a cell makes at `at` seconds from the load's start."""

    at: float
    kind: str  # hog-on, hog-off, fail, return, quota, load
    server: int | None
    text: str
    value: float | None = None  # quota: the new quota; load: the new share of capacity


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    title: str
    quotas: tuple[float, ...]  # CPUs per real server, rs1 first
    hog_server: int | None = None  # index into quotas
    hog_workers: int = 1
    # When the hog runs, within the measured period; None: during the whole cell.
    hog_window: Window | None = None
    failed_server: int | None = None
    failure_window: Window | None = None
    resize: Resize | None = None
    # The offered load over time; none: the plan's load throughout.
    load_steps: tuple[LoadStep, ...] = ()
    # A ramp: equal load steps of the plan's ramp_step seconds each, which
    # make the measured period; the report finds the highest one sustained.
    ramp: bool = False
    # A pair of directors in DR (VRRP, connection sync) instead of the NAT
    # director; its master is killed at this fraction of the measured period.
    director_kill: float | None = None
    # The only schedulers this scenario compares; None: every one the plan asks.
    schedulers: tuple[str, ...] | None = None

    def __post_init__(self):
        moments = [step.at for step in self.load_steps]
        if moments and (moments[0] != 0 or moments != sorted(set(moments)) or moments[-1] >= 1):
            raise ValueError(f"{self.name}: load steps start at 0 and rise inside the measured period")
        if self.director_kill is not None and not 0 < self.director_kill < 1:
            raise ValueError(f"{self.name}: the master director is killed inside the measured period")

    @property
    def pair(self) -> bool:
        """Whether it runs behind a pair of directors (the failover lab) rather than the NAT director."""
        return self.director_kill is not None

    @property
    def site(self) -> Site:
        return DR_SITE if self.pair else NAT_SITE

    def compares(self, scheduler: str) -> bool:
        return self.schedulers is None or scheduler in self.schedulers

    @property
    def servers(self) -> int:
        return len(self.quotas)

    def server_names(self) -> list[str]:
        return [f"rs{number}" for number in range(1, self.servers + 1)]

    def phases(self) -> list[dict[str, object]]:
        """Each distinct state of the cluster: which server is hogged, which is down, whether one is resized."""
        states = [{"hogged": self.hog_server if self.hog_window is None else None, "down": None, "resized": False}]
        if self.hog_window is not None:
            states.append({"hogged": self.hog_server, "down": None, "resized": False})
        if self.failure_window is not None:
            states.append({"hogged": None, "down": self.failed_server, "resized": False})
        if self.resize is not None:
            states.append({"hogged": None, "down": None, "resized": True})
        return states

    def capacities(self, cost: float, hogged: int | None, down: int | None, resized: bool = False) -> list[float]:
        """Requests a second each server can serve in one state of the cluster."""
        capacities = []
        for index, quota in enumerate(self.quotas):
            if index == down:
                capacities.append(0.0)
                continue
            if resized and index == self.resize.server:
                quota = self.resize.quota
            share = 1 / (1 + self.hog_workers) if index == hogged else 1.0
            capacities.append(quota * share / cost)
        return capacities

    def measured(self, measure: float, ramp_step: float) -> float:
        """Seconds measured: the plan's, or a ramp's steps end to end."""
        return ramp_step * len(self.load_steps) if self.ramp else measure

    def ramp_steps(self, warmup: float, measure: float) -> list[dict[str, float]]:
        """A ramp's steps: their start and stop in seconds from the load's start, and their load."""
        if not self.ramp:
            return []
        bounds = [warmup + step.at * measure for step in self.load_steps] + [warmup + measure]
        return [{"start": start, "stop": stop, "load": step.load}
                for step, start, stop in zip(self.load_steps, bounds, bounds[1:])]

    def load_schedule(self, load: float, warmup: float, measure: float) -> list[tuple[float, float]]:
        """(seconds from the load's start, share of capacity) of each step of offered load, the first at 0."""
        if not self.load_steps:
            return [(0.0, load)]
        return [(warmup + step.at * measure if step.at else 0.0, step.load) for step in self.load_steps]

    def mean_load(self, load: float, warmup: float, measure: float) -> float:
        """The share of capacity offered on average over the measured period."""
        schedule = self.load_schedule(load, warmup, measure) + [(warmup + measure, 0.0)]
        return sum(share * (min(end, warmup + measure) - max(begin, warmup))
                   for (begin, share), (end, _) in zip(schedule, schedule[1:]) if end > warmup) / measure

    def events(self, warmup: float, measure: float, feedback: bool) -> list[Event]:
        """What a cell changes and when, in time order: the hog, a failure, a quota, the offered load."""
        def at(fraction: float) -> float:
            return warmup + fraction * measure

        names = self.server_names()
        killed = "backend and agent" if feedback else "backend"
        events = []
        if self.hog_window is not None:
            server = self.hog_server
            events += [Event(at(self.hog_window.start), "hog-on", server, f"hog starts on {names[server]}"),
                       Event(at(self.hog_window.stop), "hog-off", server, f"hog stops on {names[server]}")]
        if self.failure_window is not None:
            server = self.failed_server
            events += [Event(at(self.failure_window.start), "fail", server, f"{names[server]} fails ({killed} killed)"),
                       Event(at(self.failure_window.stop), "return", server,
                             f"{names[server]} returns ({killed} restarted)")]
        if self.resize is not None:
            server, quota = self.resize.server, self.quotas[self.resize.server]
            events += [Event(at(self.resize.window.start), "quota", server,
                             f"{names[server]}'s quota {quota:g} -> {self.resize.quota:g} CPU", self.resize.quota),
                       Event(at(self.resize.window.stop), "quota", server,
                             f"{names[server]}'s quota {self.resize.quota:g} -> {quota:g} CPU", quota)]
        if self.director_kill is not None:
            events.append(Event(at(self.director_kill), "director-kill", None,
                                "the master director dies (keepalived and lvs-director SIGKILL)"))
        for step in [] if self.ramp else self.load_steps[1:]:
            events.append(Event(at(step.at), "load", None, f"offered load {step.load:.0%} of capacity", step.load))
        return sorted(events, key=lambda event: event.at)

    def worst_capacity(self, cost: float) -> float:
        """The cluster's total capacity in its weakest state: what the offered load is a share of."""
        return min(sum(self.capacities(cost, **phase)) for phase in self.phases())

    def oracle_capacities(self, cost: float) -> list[float]:
        """
        The spare capacities a static oracle knows: with the hog when it runs
        all the time, otherwise the cluster's normal state (a static weight
        cannot follow a hog that comes and goes, nor a failure).
        """
        hogged = self.hog_server if self.hog_window is None else None
        return self.capacities(cost, hogged, None)


# Nine equal steps of offered load, 50% to 130% of the cluster's true capacity.
RAMP = tuple(LoadStep(index / 9, round(0.5 + 0.1 * index, 1)) for index in range(9))

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(1, "equal", "equal servers", (0.3, 0.3, 0.3)),
        Scenario(2, "hog", "equal servers, rs1 also runs a CPU hog", (0.3, 0.3, 0.3), hog_server=0),
        Scenario(3, "unequal", "unequal capacities 1:2:4", (0.15, 0.3, 0.6)),
        Scenario(4, "hog-on-off", "a hog starts on rs1 at 1/3 of the run and stops at 2/3", (0.3, 0.3, 0.3),
                 hog_server=0, hog_window=Window(1 / 3, 2 / 3)),
        Scenario(5, "failure", "rs1 fails (backend and agent killed) at 1/3 of the run and returns at 2/3",
                 (0.3, 0.3, 0.3), failed_server=0, failure_window=Window(1 / 3, 2 / 3)),
        # Scenarios nobody tuned the policy for (issue #14): they run with the shipped defaults untouched.
        Scenario(6, "light", "unequal capacities 1:2:4 at 40% load, 70% from 1/3 of the run on", (0.15, 0.3, 0.6),
                 load_steps=(LoadStep(0.0, 0.4), LoadStep(1 / 3, 0.7))),
        Scenario(7, "shrink", "unequal capacities 1:2:4, rs3's quota halves at 1/3 of the run and returns at 2/3",
                 (0.15, 0.3, 0.6), resize=Resize(2, 0.3, Window(1 / 3, 2 / 3))),
        Scenario(8, "grow", "unequal capacities 1:2:4, rs1's quota doubles at 1/3 of the run and returns at 2/3",
                 (0.15, 0.3, 0.6), resize=Resize(0, 0.3, Window(1 / 3, 2 / 3))),
        # Five servers share the VM's 2 CPUs with the director and the load: 1.0 CPU of quotas in all.
        Scenario(9, "five", "five servers, capacities 1:1:2:2:4", (0.1, 0.1, 0.2, 0.2, 0.4)),
        # Overload: what load each scheduler sustains, in scenario 2's and 3's conditions.
        Scenario(10, "ramp-hog", "scenario 2's cluster (rs1 hogged), load rising from 50% to 130% of capacity",
                 (0.3, 0.3, 0.3), hog_server=0, load_steps=RAMP, ramp=True),
        Scenario(11, "ramp-unequal", "scenario 3's cluster (1:2:4), load rising from 50% to 130% of capacity",
                 (0.15, 0.3, 0.6), load_steps=RAMP, ramp=True),
        # Issue #17: a pair against a keepalived pair with the static weights an operator would write.
        Scenario(12, "failover", "scenario 2's cluster (rs1 hogged) behind a director pair in DR (VRRP, "
                 "connection sync), the master killed at half time", (0.3, 0.3, 0.3), hog_server=0,
                 director_kill=0.5, schedulers=("wlc", "lvsfeedback-capacity")),
    )
}


@dataclass(frozen=True)
class Scheduler:
    name: str
    ipvs_scheduler: str
    # "equal": every server the base weight; "oracle": weights from the true
    # spare capacities; None: lvsfeedback sets them from its agents' reports.
    static_weights: str | None
    mode: str | None = None  # the lvsfeedback policy mode
    # At most this many repeats of a cell; None: as many as the plan asks.
    repeats: int | None = None
    # lvsfeedback started just before the load, instead of having run with
    # the scenario's condition in place for the plan's pre-roll (warm).
    cold: bool = False

    @property
    def feedback(self) -> bool:
        return self.static_weights is None


COLD_SUFFIX = "-cold"


def feedback_schedulers(mode: str) -> tuple[Scheduler, Scheduler]:
    """
    lvsfeedback in one policy mode, on wlc: C{lvsfeedback-MODE}, warm (its
    director has run before the load, as in production), and
    C{lvsfeedback-MODE-cold} (started just before the load).
    """
    warm = Scheduler(f"lvsfeedback-{mode}", "wlc", None, mode)
    return warm, replace(warm, name=warm.name + COLD_SUFFIX, cold=True)


SCHEDULERS: dict[str, Scheduler] = {
    scheduler.name: scheduler
    for scheduler in (
        # With equal weights rr and wrr only show what no scheduler knowledge
        # costs; their spread over repeats answers nothing the verdicts need.
        Scheduler("rr", "rr", "equal", repeats=1),
        Scheduler("wrr", "wrr", "equal", repeats=1),
        Scheduler("wlc", "wlc", "equal"),
        *feedback_schedulers("health"),
        *feedback_schedulers("capacity"),
        Scheduler("oracle", "wlc", "oracle"),
    )
}


def matrix_schedulers() -> tuple[str, ...]:
    """Every scheduler but the cold starts of the modes that do not ship as the default: the full matrix's."""
    default = str(PolicySettings().mode)
    return tuple(name for name, scheduler in SCHEDULERS.items() if not scheduler.cold or scheduler.mode == default)


def static_weights(scheduler: Scheduler, scenario: Scenario, cost: float) -> list[int]:
    """The weights a static scheduler gives rs1, rs2, ...: equal, or the oracle's."""
    if scheduler.static_weights == "equal":
        return [BASE_WEIGHT] * scenario.servers
    if scheduler.static_weights == "oracle":
        capacities = scenario.oracle_capacities(cost)
        largest = max(capacities)
        return [max(1, round(ORACLE_SCALE * capacity / largest)) for capacity in capacities]
    raise ValueError(f"{scheduler.name} has no static weights: lvsfeedback sets them")


@dataclass(frozen=True)
class Site:
    """How a lab's director reaches its real servers (see L{lvsfeedback.lab.topology})."""

    forwarding: str  # nat, dr
    network: str  # the real servers' /24, rs1 at .11
    port: int  # where their backends listen: in DR the virtual service's own

    def server_address(self, index: int) -> str:
        return f"{self.network}.{11 + index}"

    @property
    def ipvsadm_flag(self) -> str:
        return {"nat": "-m", "dr": "-g"}[self.forwarding]


NAT_SITE = Site("nat", "10.201.0", BACKEND_PORT)
# The pair's lab: everyone on the clients' segment.
DR_SITE = Site("dr", "10.200.0", SERVICE_PORT)


def server_address(index: int) -> str:
    """rs1 is 10.201.0.11, as in L{lvsfeedback.lab.topology}."""
    return NAT_SITE.server_address(index)


def ipvsadm_restore(vip: str, scheduler: str, weights: list[int], site: Site = NAT_SITE) -> str:
    """C{ipvsadm -R} input: clear the table, then one service with these real servers and weights."""
    service = f"-t {vip}:{SERVICE_PORT}"
    lines = ["-C", f"-A {service} -s {scheduler}"]
    lines += [f"-a {service} -r {site.server_address(index)}:{site.port} {site.ipvsadm_flag} -w {weight}"
              for index, weight in enumerate(weights)]
    return "".join(line + "\n" for line in lines)


def shipped_policy() -> dict[str, object]:
    """The director's default [policy] knobs but the mode (each scheduler sets its own): the experiment measures what ships."""
    defaults = PolicySettings()
    return {knob.name: getattr(defaults, knob.name) for knob in fields(defaults) if knob.name != "mode"}


@dataclass(frozen=True)
class FeedbackSettings:
    """The director's settings the experiment chooses (the policy knobs are reported with the results)."""

    update_interval: float = 2.0
    health_interval: float = 1.0
    policy: dict[str, object] = field(default_factory=shipped_policy)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def director_config(vip: str, director_address: str, scheduler: Scheduler, servers: int,
                    settings: FeedbackSettings, site: Site = NAT_SITE, pair: dict[str, object] | None = None,
                    token_file: str | None = None) -> str:
    """
    The lvs-director configuration of a feedback cell: one service, every
    real server at base weight; with `pair`, its [pair] table, and the
    status listener on every address (the peer fetches it) behind `token_file`.
    """
    status: dict[str, object] = {"listen": f"tcp:{STATUS_PORT}:interface=127.0.0.1"}
    if pair is not None:
        status = {"listen": f"tcp:{STATUS_PORT}", "token_file": token_file}
    sections = [
        ("director", {
            "listen": f"tcp:{DIRECTOR_NECP_PORT}:interface={director_address}",
            "allow": [f"{director_address.rsplit('.', 1)[0]}.0/24"],
            "update_interval": settings.update_interval,
            "health_interval": settings.health_interval,
        }),
        ("status", status),
        ("policy", {"mode": scheduler.mode, **settings.policy}),
        *([("pair", pair)] if pair is not None else []),
    ]
    text = []
    for name, values in sections:
        text.append(f"[{name}]")
        text += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        text.append("")
    text += [
        "[[service]]",
        'name = "lab"',
        'protocol = "tcp"',
        f"address = {_toml_value(vip)}",
        f"port = {SERVICE_PORT}",
        f"scheduler = {_toml_value(scheduler.ipvs_scheduler)}",
        f"forwarding = {_toml_value(site.forwarding)}",
        "",
    ]
    for index in range(servers):
        text += [
            "[[service.real]]",
            f"address = {_toml_value(site.server_address(index))}",
            f"port = {site.port}",
            f"weight = {BASE_WEIGHT}",
            "",
        ]
    return "\n".join(text)


def agent_arguments(director_addresses: Sequence[str], cgroup_path: str, site: Site = NAT_SITE) -> list[str]:
    """
    twistd lvs-agent's flags for one real server: report the backend's
    service and its cgroup's load to every director (a pair: both).
    """
    directors = [flag for address in director_addresses
                 for flag in ("--director", f"tcp:{address}:{DIRECTOR_NECP_PORT}")]
    return [
        *directors,
        "--service", f"tcp:{site.port}:{site.forwarding}",
        "--metric", f"cgroup:path={cgroup_path}",
    ]
