"""
A policy simulator: the real `decide` driven pass after pass by a model cluster.

Pure and fast: no reactor, no I/O, one seedable `random.Random`. It is the
bench the policy is tuned and property-tested on (tests/unit/
test_policy_simulation.py), and ``python -m lvsfeedback.director.simulate``
prints a scenario's trajectory.

The model, per real server: a capacity (requests/s at full utilisation), an
idle utilisation floor (the agent, an idle backend), and noise on the
utilisation its agent reports. Clients offer a constant request rate, a
fraction of the cluster's total capacity. The scheduler is a fluid weighted
round robin: a server's share of requests is its kernel weight over the sum
of kernel weights, so feedback has to do all the balancing (wlc would help
it). With persistent connections (`connection_life` > 0) the traffic
follows the weights only as connections are renewed: each server's share of
the requests moves towards its share of the weights with that time
constant, the lag a controller must not overshoot on. The kernel's count of each
server's active connections is then a birth-death process: connections
arrive at the request rate, each placed by the kernel's weights, and each
ends after an exponential life of `connection_life` seconds, so on average
a server holds its share of the traffic x rate x life of them (short
requests hold none when the kernel is read). Utilisation is ``min(1, floor + requests/s / capacity)``; requests
beyond what a server can take are its excess. The kernel's packet total of
each server advances by a Poisson draw of ``packets_per_request`` packets a
request, so low rates count in whole, noisy packets as they do in IPVS.

The lab's conditions, where a scenario asks for them: a hogged server
(`Server.busy`: its agent reports it busy whatever its traffic, its backend
still serves its capacity); the lab's persistent pattern
(`queued_connections`: a pool of connections, requests dealt to them alike
and waiting in their connection's queue, so an overloaded server's
connections live longer, and its packets count only the requests it
answers); and a director pair (a TAKEOVER event: the backup follows the
master's weights (its kernel's) with its own memory and kernel, counts no packets,
and holds the synced connections, `stale_synced` of them more than the
master's).

Time, as the director runs it: every agent reports its health
(``round(100 x (1 - utilisation))``, at least 1 as the agent's scale gives a
saturated server, 0 only for a failed one) every `health_interval` seconds,
half a second before a pass when the two intervals are equal; a pass every
`update_interval` seconds builds `ServerInput`s as the updater does (the
latest report, the kernel's counters and weight, the agent's state), runs
`decide`, and changes a kernel weight only where the updater would.
"""

from __future__ import annotations

import argparse
import enum
import math
import random
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from lvsfeedback.agent.metrics.scale import HEALTH_MAX, HEALTH_SATURATED
from lvsfeedback.director.policy import (
    Agent,
    AgentState,
    Decision,
    HealthReport,
    Mode,
    PolicySettings,
    PolicyState,
    Reason,
    ServerInput,
    ServiceInput,
    decide,
)
from lvsfeedback.director.simulate_draws import binomial, poisson
from lvsfeedback.ipvs.model import DestCounters, DestKey, ServiceKey

SERVICE = ServiceKey.for_address("tcp", "192.0.2.1", 80)


@dataclass(frozen=True)
class Server:
    """One real server of the model."""

    capacity: float  # requests/s it serves at full utilisation
    floor: float = 0.0  # its utilisation when idle, 0 <= floor < 1
    noise: float = 0.0  # standard deviation of the utilisation its agent reports
    base_weight: int = 100
    present: bool = True  # False: it joins later, by an Event
    # Utilisation its agent reports at least, whatever its traffic: a hog in
    # its cgroup takes what the backend leaves (the lab's scenario 2), while
    # the backend still serves `capacity`.
    busy: float = 0.0


class EventKind(enum.StrEnum):
    JOIN = "join"  # the server's agent connects and the server enters the service
    FAIL = "fail"  # the server dies: its agent is lost, requests sent to it fail
    RECOVER = "recover"  # it comes back, agent and all
    CAPACITY = "capacity"  # its capacity becomes `value`
    LOAD = "load"  # the offered load becomes `value` (a share of the initial total capacity)
    # The master director dies; the backup, which followed its weights
    # until now, goes on from its own memory, its own kernel's packet totals
    # (it carried nothing while backup) and the connections synced to it.
    TAKEOVER = "takeover"


@dataclass(frozen=True)
class Event:
    time: float
    kind: EventKind
    server: int = 0  # index into Scenario.servers; unused for LOAD
    value: float = 0.0


@dataclass(frozen=True)
class Scenario:
    servers: Sequence[Server]
    load: float  # offered requests/s as a share of the present servers' total capacity at the start
    duration: float = 60.0
    settings: PolicySettings = PolicySettings()
    events: Sequence[Event] = ()
    packets_per_request: float = 4.0
    update_interval: float = 2.0
    health_interval: float = 1.0
    # Seconds a client connection lives; 0: every request is placed afresh.
    connection_life: float = 0.0
    # As the lab's persistent pattern: requests are dealt to connections
    # alike and wait in their connection's queue, so an overloaded server
    # serves its connections' requests late and they live longer (life x
    # offered / servable): its share of the connections, and of the requests,
    # stays above its share of the weights.
    queued_connections: bool = False
    connection_pool: int = 0  # with queued_connections, the clients' connections (the lab's: 32); 0: rate x life
    # With queued_connections and a pool: the kernel places each renewed
    # connection as IPVS's wlc does, on the server with the fewest active
    # connections per weight, one at a time, and a server's share of the
    # requests is its share of the pool's connections (whole ones). A new
    # weight then fills the server's deficit of connections with the next
    # renewals rather than a proportion of each (the default: placed by
    # weight share, the traffic as a fluid).
    least_connection: bool = False
    # With a TAKEOVER: active connections per server that the backup's
    # synced table holds beyond the master's (ended on the master, not in
    # the backup's table; they outlive the run on IPVS's 15-minute timer).
    stale_synced: Sequence[int] = ()
    # The utilisation an agent reads is the CPU its server used over the
    # report interval (the lab's cgroup metric over 1 s): whole requests,
    # arriving Poisson at the server's share of the rate, served up to its
    # capacity, the rest queued for the next interval; not the fluid
    # utilisation. A server a few requests a second reads 0.2-0.4 apart
    # from one second to the next at a steady share, as in the lab (run K's
    # oracle cells; bench/persist_lab.py). `Server.noise` comes on top.
    counted_utilisation: bool = False
    # Every agent reports its server's capacity (as the lab's report their
    # cgroup's quota), so capacity mode starts a server at its prior.
    report_capacity: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Pass:
    """What one pass decided, and the cluster it saw and left behind."""

    time: float
    weights: tuple[int | None, ...]  # the kernel's weights after the pass; None: not in the table
    shares: tuple[float, ...]  # each server's share of the offered requests from now on
    utilisations: tuple[float, ...]  # true utilisation, from now on, before noise
    excess: float  # requests/s offered beyond what the servers can take (or sent to dead ones)
    reasons: tuple[Reason | None, ...]
    details: tuple[str, ...]
    writes: int  # weights this pass changed in the kernel
    # With counted_utilisation: the seconds of work queued on each server
    # (its backlog over its capacity), what a request arriving now waits.
    waits: tuple[float, ...] = ()


def capacity_shares(servers: Sequence[Server], up: Sequence[bool]) -> tuple[float, ...]:
    total = sum(server.capacity for server, alive in zip(servers, up) if alive)
    return tuple(server.capacity / total if alive and total else 0.0 for server, alive in zip(servers, up))


def equal_utilisation_shares(servers: Sequence[Server], up: Sequence[bool], rate: float) -> tuple[float, ...]:
    """
    The shares at which every live server runs at the same utilisation (the
    fixed point of a utilisation-balancing policy): capacity shares when the
    floors are alike; a server whose floor is above that utilisation gets none.
    """
    live = [i for i, alive in enumerate(up) if alive]
    # u such that sum of capacity_i * max(0, u - floor_i) = rate; bisection, the sum is monotone.
    low, high = 0.0, 1.0 + max(servers[i].floor for i in live)
    for _ in range(60):
        middle = (low + high) / 2
        if sum(servers[i].capacity * max(0.0, middle - servers[i].floor) for i in live) < rate:
            low = middle
        else:
            high = middle
    taken = [servers[i].capacity * max(0.0, high - servers[i].floor) if up[i] else 0.0 for i in range(len(servers))]
    total = sum(taken)
    return tuple(t / total for t in taken)


def dest(index: int) -> DestKey:
    return DestKey.of(f"198.51.100.{index + 1}", 80)


class _Cluster:
    """The mutable model: the simulation's own state, never shown outside `run`."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.random = random.Random(scenario.seed)
        self.servers = list(scenario.servers)
        self.present = [server.present for server in self.servers]
        self.alive = list(self.present)
        self.rate = scenario.load * sum(s.capacity for s in self.servers if s.present)
        self.kernel: list[int | None] = [None] * len(self.servers)
        self.packets = [0] * len(self.servers)
        self.reports: list[HealthReport | None] = [None] * len(self.servers)
        self.agents = [Agent(AgentState.CONNECTED, 0.0) if p else Agent() for p in self.present]
        self.traffic: list[float] = [0.0] * len(self.servers)  # each server's share of the requests
        self.connections = [0] * len(self.servers)  # the kernel's active connections of each server
        # A director pair: the backup's memory, kernel weights and packet
        # totals, until a TAKEOVER; then the new master's stale synced entries.
        self.standby: PolicyState | None = (
            PolicyState() if any(e.kind is EventKind.TAKEOVER for e in scenario.events) else None
        )
        self.standby_kernel: list[int | None] = [None] * len(self.servers)
        self.standby_packets = [0] * len(self.servers)
        stale = list(scenario.stale_synced)
        self.stale = stale + [0] * (len(self.servers) - len(stale))
        self.ghosts = [0] * len(self.servers)  # stale entries in the kernel that passes read
        self.backlog = [0.0] * len(self.servers)  # with counted_utilisation: requests queued on each server
        self.reported_at: float | None = None

    def weight_shares(self) -> list[float]:
        weights = [w or 0 for w in self.kernel]
        total = sum(weights)
        return [w / total if total else 0.0 for w in weights]

    def shares(self) -> list[float]:
        return list(self.traffic)

    def advance(self, seconds: float) -> None:
        """The traffic after `seconds` more of connections being renewed by the current weights."""
        target = self.weight_shares()
        life = self.scenario.connection_life
        if life and self.scenario.least_connection and not any(self.connections):
            if any(target) and self.rate:  # the clients open their connections once they have requests
                self._place(self.scenario.connection_pool)
            return
        if not life or not any(self.traffic):
            self.traffic = target
            if life:  # connections as if the weights had always been these
                held = self.scenario.connection_pool if self.scenario.queued_connections else 0
                self.connections = [poisson(self.random, share * (held or self.rate * life)) for share in target]
            return
        if self.scenario.queued_connections and self.scenario.least_connection:
            self._advance_least_connection(seconds)
            return
        if self.scenario.queued_connections:
            self._advance_queued(seconds, target)
            return
        kept = math.exp(-seconds / life)
        self.traffic = [want + (now - want) * kept for want, now in zip(target, self.traffic)]
        self.connections = [
            binomial(self.random, count, kept) + poisson(self.random, share * self.rate * life * (1 - kept))
            if alive else 0
            for count, share, alive in zip(self.connections, target, self.alive)
        ]

    def lives(self) -> list[float]:
        """Each server's connection life: longer where requests wait on an overloaded server."""
        life = self.scenario.connection_life
        if not self.scenario.queued_connections:
            return [life] * len(self.servers)
        return [
            life * max(1.0, self.rate * share / max(server.capacity * (1 - server.floor), 1e-9))
            for server, share in zip(self.servers, self.traffic)
        ]

    def _advance_queued(self, seconds: float, target: Sequence[float]) -> None:
        """Connections end at their server's pace; every one ended reconnects, placed by the weights."""
        steps = max(1, math.ceil(seconds / 0.25))
        for _ in range(steps):
            ending = [share / life for share, life in zip(self.traffic, self.lives())]
            renewed = sum(ending)
            self.traffic = [
                share + seconds / steps * (want * renewed - end) for share, want, end in zip(self.traffic, target, ending)
            ]
        kept = [
            binomial(self.random, count, math.exp(-seconds / life)) if alive else 0
            for count, life, alive in zip(self.connections, self.lives(), self.alive)
        ]
        ended = sum(self.connections) - sum(kept)
        self.connections = [count + poisson(self.random, share * ended) for count, share in zip(kept, target)]

    def _advance_least_connection(self, seconds: float) -> None:
        """Connections end at their server's pace; each renewal goes where wlc sends it."""
        steps = max(1, math.ceil(seconds / 0.25))
        for _ in range(steps):
            lives = self.lives()
            ended = 0
            for i, (count, life) in enumerate(zip(self.connections, lives)):
                gone = binomial(self.random, count, 1 - math.exp(-seconds / steps / life)) if self.alive[i] else count
                self.connections[i] -= gone
                ended += gone
            self._place(ended)

    def _place(self, count: int) -> None:
        """`count` new connections, one at a time on the least connections per weight (IPVS wlc)."""
        candidates = [i for i, weight in enumerate(self.kernel) if weight and self.alive[i]]
        for _ in range(count if candidates else 0):
            chosen = min(candidates, key=lambda i: self.connections[i] / (self.kernel[i] or 1))
            self.connections[chosen] += 1
        held = sum(self.connections)
        self.traffic = [count / held if held else 0.0 for count in self.connections]

    def placed_afresh(self) -> None:
        """After a pass: without persistent connections, requests follow the new weights at once."""
        if not self.scenario.connection_life:
            self.traffic = self.weight_shares()

    def utilisations(self, shares: Sequence[float]) -> list[float]:
        return [
            min(1.0, max(server.busy, server.floor + self.rate * share / server.capacity)) if alive else 0.0
            for server, share, alive in zip(self.servers, shares, self.alive)
        ]

    def excess(self, shares: Sequence[float]) -> float:
        if not any(self.kernel):
            return self.rate
        lost = 0.0
        for server, share, alive in zip(self.servers, shares, self.alive):
            offered = self.rate * share
            lost += offered if not alive else max(0.0, offered - server.capacity * (1 - server.floor))
        return lost

    def apply(self, event: Event, now: float) -> None:
        i = event.server
        match event.kind:
            case EventKind.JOIN | EventKind.RECOVER:
                self.present[i] = self.alive[i] = True
                self.agents[i] = Agent(AgentState.CONNECTED, now)
                self.reports[i] = None
            case EventKind.FAIL:
                self.alive[i] = False
                self.agents[i] = Agent(AgentState.LOST, now)
                # Its clients' connections break; they reconnect by the weights.
                others = sum(self.traffic) - self.traffic[i]
                moved, self.traffic[i] = self.traffic[i], 0.0
                if others:
                    self.traffic = [share * (1 + moved / others) for share in self.traffic]
                broken, self.connections[i] = self.connections[i], 0
                held = sum(self.connections)
                if held:
                    self.connections = [count + round(broken * count / held) for count in self.connections]
            case EventKind.CAPACITY:
                self.servers[i] = replace(self.servers[i], capacity=event.value)
            case EventKind.LOAD:
                self.rate = event.value * sum(s.capacity for s in self.scenario.servers if s.present)

    def report(self, now: float) -> None:
        utilisations = self.utilisations(self.shares())
        if self.scenario.counted_utilisation:
            utilisations = self.counted(now, utilisations)
        for i, server in enumerate(self.servers):
            if not (self.present[i] and self.alive[i]):
                continue
            measured = utilisations[i] + (self.random.gauss(0.0, server.noise) if server.noise else 0.0)
            health = min(HEALTH_MAX, max(HEALTH_SATURATED, round(HEALTH_MAX * (1 - measured))))
            self.reports[i] = HealthReport(int(health), now)

    def counted(self, now: float, fluid: Sequence[float]) -> list[float]:
        """The utilisation over the interval since the last report, from the requests each server served in it."""
        elapsed = now - self.reported_at if self.reported_at is not None else self.scenario.health_interval
        self.reported_at = now
        counted = list(fluid)
        for i, (server, share) in enumerate(zip(self.servers, self.shares())):
            if not self.alive[i] or elapsed <= 0:
                self.backlog[i] = 0.0
                continue
            waiting = self.backlog[i] + poisson(self.random, self.rate * share * elapsed)
            served = min(waiting, server.capacity * (1 - server.floor) * elapsed)
            self.backlog[i] = waiting - served
            counted[i] = min(1.0, max(server.busy, server.floor + served / server.capacity / elapsed))
        return counted

    def waits(self) -> tuple[float, ...]:
        if not self.scenario.counted_utilisation:
            return ()
        return tuple(
            backlog / (server.capacity * (1 - server.floor)) for backlog, server in zip(self.backlog, self.servers)
        )

    def carry(self, seconds: float) -> None:
        """The packets each server receives over `seconds` at the current shares (the backup's: none)."""
        for i, share in enumerate(self.shares()):
            if self.kernel[i] is not None:
                offered = self.rate * share
                if self.scenario.queued_connections:  # a connection sends its next request once answered
                    offered = min(offered, self.servers[i].capacity * (1 - self.servers[i].floor))
                expected = offered * self.scenario.packets_per_request * seconds
                self.packets[i] += poisson(self.random, expected)

    def inputs(self) -> dict[DestKey, ServerInput]:
        return self._inputs(self.kernel, self.packets, self.ghosts, None)

    def standby_inputs(self, followed: dict[DestKey, int]) -> dict[DestKey, ServerInput]:
        """The backup's: the same agents, its own kernel, the synced connections, the master's weights."""
        return self._inputs(self.standby_kernel, self.standby_packets, self.stale, followed)

    def _inputs(
        self, kernel: Sequence[int | None], packets: Sequence[int], ghosts: Sequence[int],
        followed: dict[DestKey, int] | None,
    ) -> dict[DestKey, ServerInput]:
        return {
            dest(i): ServerInput(
                base_weight=server.base_weight,
                agent=self.agents[i],
                report=self.reports[i],
                counters=(
                    DestCounters(active_connections=self.connections[i] + ghosts[i], packets=packets[i])
                    if kernel[i] is not None
                    else None
                ),
                current_weight=kernel[i],
                capacity=server.capacity if self.scenario.report_capacity else None,
                followed=None if followed is None else followed.get(dest(i)),
            )
            for i, server in enumerate(self.servers)
            if self.present[i]
        }

    def take_over(self) -> PolicyState:
        """The backup becomes the master: its kernel, packet totals and memory from now on."""
        assert self.standby is not None, "a TAKEOVER needs a backup that followed"
        state, self.standby = self.standby, None
        self.kernel, self.packets, self.ghosts = self.standby_kernel, self.standby_packets, self.stale
        self.placed_afresh()
        return state


def run(scenario: Scenario) -> list[Pass]:
    """Every pass of `scenario`, in order; the first at time 0."""
    cluster = _Cluster(scenario)
    state = PolicyState()
    # Every moment something happens, in order: (time, order, what); at equal
    # times events come first, then reports, then the pass.
    moments: list[tuple[float, int, object]] = [(e.time, 0, e) for e in scenario.events]
    offset = scenario.update_interval - 0.5 if scenario.health_interval == scenario.update_interval else 0.5
    t = offset % scenario.health_interval if scenario.health_interval else scenario.duration + 1
    while t <= scenario.duration:
        moments.append((t, 1, "report"))
        t += scenario.health_interval
    passes = int(scenario.duration // scenario.update_interval) + 1
    moments += [(k * scenario.update_interval, 2, "pass") for k in range(passes)]
    moments.sort(key=lambda moment: (moment[0], moment[1]))

    history: list[Pass] = []
    clock = 0.0
    for now, _, what in moments:
        cluster.carry(now - clock)
        cluster.advance(now - clock)
        clock = now
        if isinstance(what, Event) and what.kind is EventKind.TAKEOVER:
            state = cluster.take_over()
        elif isinstance(what, Event):
            cluster.apply(what, now)
        elif what == "report":
            cluster.report(now)
        else:
            state, record = _one_pass(cluster, scenario.settings, state, now)
            history.append(record)
    return history


def _one_pass(cluster: _Cluster, settings: PolicySettings, state: PolicyState, now: float):
    decisions, state = decide({SERVICE: ServiceInput(settings, cluster.inputs())}, state, now)
    service = decisions[SERVICE]
    writes = _write(service.servers, cluster.kernel, cluster.packets)
    if cluster.standby is not None:
        # The backup, asked for the master's weights (its kernel's) ahead of its own pass.
        followed = {dest(i): weight or 0 for i, weight in enumerate(cluster.kernel)}
        inputs = cluster.standby_inputs(followed)
        standby, cluster.standby = decide({SERVICE: ServiceInput(settings, inputs)}, cluster.standby, now)
        _write(standby[SERVICE].servers, cluster.standby_kernel, cluster.standby_packets)
    reasons: list[Reason | None] = []
    details: list[str] = []
    for i in range(len(cluster.servers)):
        decision = service.servers.get(dest(i))
        reasons.append(decision.reason if decision else None)
        details.append(decision.detail if decision else "")
    cluster.placed_afresh()
    shares = cluster.shares()
    record = Pass(
        time=now,
        weights=tuple(cluster.kernel),
        shares=tuple(shares),
        utilisations=tuple(cluster.utilisations(shares)),
        excess=cluster.excess(shares),
        reasons=tuple(reasons),
        details=tuple(details),
        writes=writes,
        waits=cluster.waits(),
    )
    return state, record


def _write(decisions: Mapping[DestKey, Decision], kernel: list[int | None], packets: list[int]) -> int:
    """As WeightUpdater._change_for: add when absent, edit when written, delete when removed; the writes."""
    writes = 0
    for i in range(len(kernel)):
        decision = decisions.get(dest(i))
        if decision is None:
            continue
        current = kernel[i]
        if decision.remove:
            if current is not None:
                kernel[i] = None
                packets[i] = 0  # a new dest starts a new total
                writes += 1
        elif current is None or (decision.weight != current and decision.write):
            kernel[i] = decision.weight
            writes += 1
    return writes


def table(history: Sequence[Pass], every: int = 1) -> str:
    """The trajectory as text: one line a pass, weights, shares %, utilisations %."""
    count = len(history[0].weights)
    names = [f"rs{i + 1}" for i in range(count)]
    header = (
        f"{'t':>5}  " + " ".join(f"{'w ' + n:>7}" for n in names) + "  " + " ".join(f"{'%' + n:>6}" for n in names)
        + "  " + " ".join(f"{'u ' + n:>6}" for n in names) + f"  {'excess':>7}  writes"
    )
    lines = [header]
    for record in history[::every]:
        weights = " ".join(f"{'-' if w is None else w:>7}" for w in record.weights)
        shares = " ".join(f"{100 * s:>6.1f}" for s in record.shares)
        utils = " ".join(f"{100 * u:>6.1f}" for u in record.utilisations)
        lines.append(f"{record.time:>5.0f}  {weights}  {shares}  {utils}  {record.excess:>7.2f}  {record.writes:>6}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lvsfeedback.director.simulate",
        description="Run the weight policy against a model cluster (fluid weighted round robin) and print each pass.",
    )
    parser.add_argument("--capacity", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                        help="requests/s each server serves at full utilisation (default 1 2 4), one per server")
    parser.add_argument("--floor", type=float, nargs="+", default=[0.1],
                        help="idle utilisation of each server (one value for all, or one per server)")
    parser.add_argument("--noise", type=float, default=0.01, help="sd of the reported utilisation")
    parser.add_argument("--load", type=float, default=0.4, help="offered load, share of the total capacity")
    parser.add_argument("--scale", type=float, default=10.0,
                        help="multiply every capacity by this (requests/s; with --packets it sets how many packets count)")
    parser.add_argument("--packets", type=float, default=4.0, help="packets per request")
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=PolicySettings().mode.value)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--capacity-change", nargs=3, metavar=("TIME", "SERVER", "CAPACITY"), action="append",
                        default=[], help="at TIME, server number SERVER (1-based) gets CAPACITY (before --scale)")
    parser.add_argument("--connection-life", type=float, default=0.0,
                        help="seconds a client connection lives (0: every request placed afresh)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    floors = args.floor * len(args.capacity) if len(args.floor) == 1 else args.floor
    if len(floors) != len(args.capacity):
        parser.error("give one --floor, or one per --capacity")
    servers = [Server(c * args.scale, f, args.noise) for c, f in zip(args.capacity, floors)]
    events = [Event(float(t), EventKind.CAPACITY, int(s) - 1, float(c) * args.scale) for t, s, c in args.capacity_change]
    scenario = Scenario(servers, args.load, args.duration, PolicySettings(mode=Mode(args.mode)), events,
                        args.packets, connection_life=args.connection_life, seed=args.seed)
    history = run(scenario)
    print(table(history))
    up = [True] * len(servers)
    print("capacity shares %:", " ".join(f"{100 * s:.1f}" for s in capacity_shares(servers, up)))
    print("last pass:", "; ".join(f"rs{i + 1} {d}" for i, d in enumerate(history[-1].details)))


if __name__ == "__main__":
    main()
