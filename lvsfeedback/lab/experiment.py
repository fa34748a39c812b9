"""
The experiment that measures what feedback buys: the same Poisson arrival
schedule offered to a lab cluster balanced by IPVS with static weights, by
lvsfeedback, and by an oracle that knows every server's true spare
capacity, in several scenarios (see L{lvsfeedback.lab.scenarios}).

    lvsfeedback experiment [--quick] [--scenario hog ...] [--out results/experiment]

Run as root on a kernel with IPVS (in the test VM: see C{scripts/demo}).
It prints a line per cell as it goes, then the table, where the files
are, and last the verdicts on the targets, with a plain line when the
machine was too busy to judge (the load generator ran late, or the VM did
not get its CPU). It writes C{results.json} (raw), C{report.md} and PNG
plots into the output folder; a C{results.json} already there is resumed
(see L{open_result_set}).

One cell = one scenario x scheduler x connection pattern x repeat:

1. set the quotas of the scenario's servers (the lab's first ones) and
   start the hog if the scenario has one for the whole cell;
2. configure IPVS: static weights with C{ipvsadm -R}, or start
   C{lvs-director} and one C{lvs-agent} per real server (each reporting the
   C{cgroup} metric of its server's cgroup), wait for their first reports
   and, unless the scheduler is a C{-cold} one, let them run for the
   plan's pre-roll (a warm start, as a director that has been running);
3. offer load for C{warmup + measure} seconds (a ramp: its steps), the
   first C{warmup} seconds uncounted, while sampling the IPVS table and the
   servers' C{cpu.stat} every second and acting the scenario's events (hog
   on/off, a server killed and restarted, a quota changed) at their times;
   the machine's steal time is read at the load's start and end;
4. read the director's status (its weight writes), stop what the cell started.

A scenario behind a pair of directors (C{failover}) runs its cells in the
pair's lab after the others, with L{lvsfeedback.lab.failover_cells}.

Processes are forked from this one rather than started afresh: in the
emulated VM each Python start reads hundreds of files over a slow 9p mount
(importing asyncio alone takes tens of seconds there), while a fork of a
process that has imported everything costs nothing. A forked child enters
its network namespace with setns(2) and its cgroup by writing its pid; the
cgroup hierarchy is the one this process sees, at the same paths. This
process itself stays single-threaded and never runs a reactor or an event
loop, so forking it is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from lvsfeedback.lab import report
from lvsfeedback.lab.backend import READY_MARKER as BACKEND_READY
from lvsfeedback.lab.cgroups import Cgroup
from lvsfeedback.lab.hog import READY_MARKER as HOG_READY
from lvsfeedback.lab.loadgen import LoadConfig, LoadRun, RequestRecord
from lvsfeedback.lab.scenarios import (
    BACKEND_PORT,
    BASE_WEIGHT,
    NAT_SITE,
    SCENARIOS,
    SCHEDULERS,
    SERVICE_PORT,
    STATUS_PORT,
    Event,
    FeedbackSettings,
    Scenario,
    Scheduler,
    agent_arguments,
    director_config,
    ipvsadm_restore,
    matrix_schedulers,
    static_weights,
)
from lvsfeedback.lab.topology import DIRECTOR_BACKEND_ADDRESS, NETNS_DIR, VIP, LabError, Topology

CLONE_NEWNET = 0x40000000
STOP_TIMEOUT = 10.0
SAMPLE_INTERVAL = 1.0
# CFS bandwidth period of the servers' quotas: shorter than the kernel's
# 100 ms default, so that a throttled server slows down evenly instead of
# stalling for most of a period.
QUOTA_PERIOD_USEC = 20_000
STARTUP_TIMEOUT = 120.0
# A feedback cell starts its load once every agent has reported and slow start is over.
FEEDBACK_READY_TIMEOUT = 120.0

_libc = ctypes.CDLL(None, use_errno=True)


class ExperimentError(Exception):
    """The experiment could not go on; the message says which step and why."""


# network namespaces and forked processes --------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"setns: {os.strerror(number)}")


@contextmanager
def network_namespace(name: str):
    """Run the block in the named network namespace (sockets made there stay there), then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class ForkedProcess:
    """
    A child forked from this process running a function, in its own
    process group, optionally in a network namespace and a cgroup, with
    stdout and stderr in a log file.
    """

    def __init__(self, pid: int, name: str, log_path: Path):
        self.pid = pid
        self.name = name
        self.log_path = log_path
        self.status: int | None = None

    @classmethod
    def start(cls, name: str, function: Callable[[], int | None], log_path: Path, *,
              namespace: str | None = None, cgroup: Cgroup | None = None) -> ForkedProcess:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.setsid()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                if cgroup is not None:
                    cgroup.add_process(os.getpid())
                if namespace is not None:
                    target = os.open(NETNS_DIR / namespace, os.O_RDONLY)
                    _setns(target)
                    os.close(target)
                result = function()
                code = result if isinstance(result, int) else 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        return cls(pid, name, log_path)

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.status

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM its process group; SIGKILL it after timeout seconds. Its exit status."""
        if self.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill()
        return self.status

    def kill(self) -> int:
        self.signal(signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.02)
        return self.status

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_log(self, marker: str, timeout: float) -> None:
        """Wait until the log holds marker; raise if the process ends or the time is up first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if marker in self.log_path.read_text(errors="replace"):
                    return
            except FileNotFoundError:
                pass
            if self.poll() is not None:
                raise ExperimentError(f"{self.name} exited ({self.status}) before {marker!r}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ExperimentError(f"{self.name} did not say {marker!r} in {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)


def preload_daemons() -> None:
    """
    Import what twistd, lvs-agent and lvs-director need, so their forked
    children start at once. Importing must not install a reactor here.
    """
    import twisted.scripts.twistd  # noqa: F401
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    list(getPlugins(IServiceMaker))
    import lvsfeedback.agent.service  # noqa: F401
    import lvsfeedback.agent.tap  # noqa: F401
    import lvsfeedback.director.service  # noqa: F401
    import lvsfeedback.director.tap  # noqa: F401
    import lvsfeedback.ipvs.netlink  # noqa: F401

    if "twisted.internet.reactor" in sys.modules:
        raise ExperimentError("preloading installed a reactor in the experiment's process: children cannot fork from it")


def twistd(arguments: list[str]) -> Callable[[], int | None]:
    def run() -> None:
        from twisted.scripts.twistd import run as run_twistd

        sys.argv = ["twistd", "--nodaemon", "--pidfile=", *arguments]
        run_twistd()

    return run


def backend(name: str, work_ms: float, port: int = BACKEND_PORT) -> Callable[[], int]:
    def run() -> int:
        from lvsfeedback.lab.backend import main

        return main(["--port", str(port), "--work-ms", str(work_ms), "--name", name])

    return run


def hog(workers: int) -> Callable[[], int]:
    def run() -> int:
        from lvsfeedback.lab.hog import main

        return main(["--workers", str(workers)])

    return run


# the load --------------------------------------------------------------------------


class ScheduledLoadRun(LoadRun):
    """
    The lab's open-loop run, started at a set moment of the monotonic clock
    (which the experiment shares) and noting how late each arrival left:
    a late generator would hide the servers' own delays.
    """

    def __init__(self, config: LoadConfig, start_at: float):
        super().__init__(config)
        self.start_at = start_at
        self.lateness: list[float] = []

    async def run(self) -> list[RequestRecord]:
        self._loop = asyncio.get_running_loop()
        self._start = self.start_at
        if self.config.pattern == "short":
            await self._run_short()
        else:
            await self._run_persistent()
        return list(self.records)

    async def _arrivals(self):
        async for index, offset in super()._arrivals():
            self.lateness.append(self._loop.time() - (self._start + offset))
            yield index, offset


def load_run(config: LoadConfig, start_at: float, result_path: Path) -> Callable[[], int]:
    def run() -> int:
        scheduled = ScheduledLoadRun(config, start_at)
        records = asyncio.run(scheduled.run())
        result_path.write_text(json.dumps({
            "records": [report.pack_record(record) for record in records],
            "lateness": scheduled.lateness,
        }))
        return 0

    return run


# reading the cluster ---------------------------------------------------------------


def parse_ip_vs(text: str) -> dict[str, dict[str, int]]:
    """
    C{/proc/net/ip_vs} → {"10.201.0.11:8080": {"weight", "active", "inactive"}}
    for the real servers of every service (addresses are hex there).
    """
    servers = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0] == "->" and ":" in parts[1] and parts[1] != "RemoteAddress:Port":
            address, _, port = parts[1].partition(":")
            if len(address) != 8:
                continue  # IPv6: not in the lab
            dotted = ".".join(str(int(address[i:i + 2], 16)) for i in range(0, 8, 2))
            servers[f"{dotted}:{int(port, 16)}"] = {
                "weight": int(parts[3]), "active": int(parts[4]), "inactive": int(parts[5]),
            }
    return servers


def parse_cpu_times(text: str) -> dict[str, int]:
    """
    C{/proc/stat} → the machine's CPU time so far, in ticks: C{total} and
    C{steal}, the time a hypervisor ran something else while this guest had
    work. Total is user to steal (guest time is already inside user).
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:9]]
            ticks += [0] * (8 - len(ticks))  # kernels older than 2.6.11 have no steal column
            return {"total": sum(ticks), "steal": ticks[7]}
    raise ExperimentError("/proc/stat has no 'cpu' line")


def read_cpu_times() -> dict[str, int]:
    with open("/proc/stat") as stat:
        return parse_cpu_times(stat.read())


def http_get_json(namespace: str, port: int, path: str, timeout: float = 10.0) -> dict:
    """GET http://127.0.0.1:port/path inside a namespace (the socket is made there), as JSON."""
    with network_namespace(namespace):
        connection = socket.socket()
    with connection:
        connection.settimeout(timeout)
        connection.connect(("127.0.0.1", port))
        connection.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head.split()[1] != b"200":
        raise ExperimentError(f"GET {path} in {namespace} answered {head[:80]!r}")
    return json.loads(body)


# cells ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to run: scenarios x schedulers x patterns x repeats, and each cell's shape."""

    scenarios: tuple[str, ...]
    schedulers: tuple[str, ...]
    patterns: tuple[str, ...]
    repeats: int
    warmup: float
    measure: float
    load: float = 0.7  # offered load, a share of the cluster's capacity in its weakest state
    # The load generator shares the machine's CPUs with the servers: fewer,
    # longer requests keep its share small, so the servers are the bottleneck.
    work_ms: float = 25.0
    seed: int = 1
    connections: int = 32
    requests_per_connection: int = 25
    timeout: float = 5.0
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    # Seconds a warm feedback cell's director and agents run, the scenario's
    # condition in place (quotas, a hog from the start), before the load.
    preroll: float = 20.0
    # Seconds of each load step of a ramp scenario (they replace `measure` there).
    ramp_step: float = 15.0
    # A cell whose load generator sent its arrivals later than this (p99, ms)
    # measured a stalled machine: it runs again, at most `retries` times.
    max_lateness: float | None = 50.0
    retries: int = 2

    def cells(self) -> list[tuple[str, str, str, int]]:
        return [
            (scenario, pattern, scheduler, repeat)
            for scenario in self.scenarios
            for pattern in self.patterns
            for repeat in range(self.repeats)
            for scheduler in self.schedulers
            if (SCHEDULERS[scheduler].repeats is None or repeat < SCHEDULERS[scheduler].repeats)
            and SCENARIOS[scenario].compares(scheduler)
        ]


# The demo reruns a late cell once at most, to stay near its five minutes.
QUICK = Plan(scenarios=("hog",), schedulers=("wlc", "lvsfeedback-capacity", "oracle"), patterns=("persistent",),
             repeats=1, warmup=15.0, measure=45.0, retries=1)
FULL = Plan(scenarios=tuple(SCENARIOS), schedulers=matrix_schedulers(), patterns=("persistent", "short"),
            repeats=3, warmup=20.0, measure=60.0)


class Lab:
    """The running cluster of one experiment: topology, backends, and what each cell adds."""

    # How the director reaches the real servers: the NAT lab's.
    site = NAT_SITE

    def __init__(self, topology: Topology, plan: Plan, out: Path, say: Callable[[str], None]):
        self.topology = topology
        self.plan = plan
        self.out = out
        self.say = say
        self.log_dir = out / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.backends: dict[str, ForkedProcess] = {}
        self.children: list[ForkedProcess] = []
        self._logs = 0

    def fork(self, name: str, function, **where) -> ForkedProcess:
        self._logs += 1
        child = ForkedProcess.start(name, function, self.log_dir / f"{self._logs:04d}-{name}.log", **where)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.children:
            child.stop()
        self.children.clear()
        self.backends.clear()

    def set_quotas(self, quotas: tuple[float, ...]) -> None:
        for server, quota in zip(self.topology.servers, quotas):
            server.cgroup.set_cpus(quota, QUOTA_PERIOD_USEC)

    def start_backend(self, index: int) -> ForkedProcess:
        server = self.topology.servers[index]
        process = self.fork(f"backend-{server.name}", backend(server.name, self.plan.work_ms, self.site.port),
                            namespace=server.namespace, cgroup=server.cgroup)
        self.backends[server.name] = process
        return process

    def start_backends(self) -> None:
        started = [self.start_backend(index) for index in range(len(self.topology.servers))]
        for process in started:
            process.wait_for_log(BACKEND_READY, STARTUP_TIMEOUT)

    def backends_alive(self) -> bool:
        return all(process.poll() is None for process in self.backends.values())

    def restart_dead_backends(self) -> None:
        started = []
        for index, server in enumerate(self.topology.servers):
            process = self.backends.get(server.name)
            if process is None or process.poll() is not None:
                started.append(self.start_backend(index))
        for process in started:
            process.wait_for_log(BACKEND_READY, STARTUP_TIMEOUT)

    def progress(self, cell: str, elapsed: float, duration: float, sample: dict, addresses: dict[str, str]) -> None:
        """One status line while a cell runs: rewritten in place on a terminal, every few seconds otherwise."""
        weights = " ".join(
            f"{name}={sample['ipvs'].get(address, {}).get('weight', '-')}"
            for name, address in addresses.items()
        )
        line = f"    {cell}: {max(0.0, elapsed):5.1f}/{duration:.0f} s  weights {weights}"
        if sys.stdout.isatty():
            sys.stdout.write("\r" + line.ljust(100))
            sys.stdout.flush()
        else:
            self.say(line)

    def progress_done(self) -> None:
        if sys.stdout.isatty():
            sys.stdout.write("\r" + " " * 100 + "\r")
            sys.stdout.flush()

    def servers(self, scenario: Scenario) -> list:
        """The real servers a scenario uses: the lab's first ones (it holds as many as the plan's largest scenario)."""
        return self.topology.servers[:scenario.servers]

    def addresses(self, servers: list) -> dict[str, str]:
        return {server.name: f"{server.address}:{self.site.port}" for server in servers}

    def sampled_director(self) -> str:
        """The namespace of the director whose IPVS table the samples read."""
        return self.topology.director

    def ipvs_table(self) -> dict[str, dict[str, int]]:
        with network_namespace(self.sampled_director()):
            with open("/proc/net/ip_vs") as table:
                return parse_ip_vs(table.read())

    def restore_ipvs(self, text: str) -> None:
        """The same table on every director (a pair has two)."""
        for director in self.topology.plan.director_namespaces:
            with network_namespace(director):
                result = subprocess.run(["ipvsadm", "-R"], input=text, capture_output=True, text=True)
            if result.returncode != 0:
                raise ExperimentError(f"ipvsadm -R in {director} failed: {result.stderr.strip()}\ninput:\n{text}")

    def run_load(self, config: LoadConfig, start_at: float, result_path: Path) -> ForkedProcess:
        return self.fork("loadgen", load_run(config, start_at, result_path), namespace=self.topology.client)

    def calibrate(self, scenario: Scenario) -> dict[str, float]:
        """
        CPU seconds one request costs a backend: the servers' cgroup usage
        over the requests they served, from a short run through IPVS
        (round robin) at a moderate load. A light load would overstate the
        cost: the emulated VM charges every wake-up dearly.
        """
        servers = self.servers(scenario)
        self.restore_ipvs(ipvsadm_restore(VIP, "rr", [BASE_WEIGHT] * len(servers), self.site))
        rate, duration = 4.0 * len(servers), 12.0
        config = LoadConfig(VIP, SERVICE_PORT, rate=rate, duration=duration, seed=self.plan.seed + 1000,
                            pattern="persistent", connections=2 * len(servers), timeout=self.plan.timeout)
        result_path = self.out / "calibration-records.json"
        before = sum(server.cgroup.cpu_stat().usage_usec for server in servers)
        start_at = time.monotonic() + 0.5
        loadgen = self.run_load(config, start_at, result_path)
        if loadgen.wait(duration + config.timeout + STARTUP_TIMEOUT) != 0:
            raise ExperimentError(f"the calibration load failed ({loadgen.status}):\n{loadgen.log_tail()}")
        used = (sum(server.cgroup.cpu_stat().usage_usec for server in servers) - before) / 1e6
        self.restore_ipvs("-C\n")
        records = [report.unpack_record(packed) for packed in json.loads(result_path.read_text())["records"]]
        ok = [record for record in records if record.outcome == "ok"]
        if len(ok) < rate * duration / 2:
            raise ExperimentError(f"calibration: only {len(ok)} of {len(records)} requests succeeded")
        latencies = sorted(record.latency for record in ok)
        return {"cost": used / len(ok), "requests": len(ok), "median_latency": latencies[len(latencies) // 2]}


class FeedbackDaemons:
    """lvs-director and one lvs-agent per real server, for one cell."""

    def __init__(self, lab: Lab, scheduler: Scheduler, scenario: Scenario):
        self.lab = lab
        topology = lab.topology
        config = lab.out / "director.toml"
        config.write_text(director_config(VIP, DIRECTOR_BACKEND_ADDRESS, scheduler, scenario.servers,
                                          lab.plan.feedback))
        self.director = lab.fork("lvs-director", twistd(["lvs-director", "--config", str(config)]),
                                 namespace=topology.director)
        self.director.wait_for_log("status listener on", STARTUP_TIMEOUT)
        self.agents = {server.name: self.start_agent(index) for index, server in enumerate(lab.servers(scenario))}

    def start_agent(self, index: int) -> ForkedProcess:
        # The agent runs beside the server (its namespace), not inside its
        # cgroup: its CPU would otherwise count against the server's quota
        # and differ from the static cells, where no agent runs.
        server = self.lab.topology.servers[index]
        arguments = agent_arguments([DIRECTOR_BACKEND_ADDRESS], str(server.cgroup.path))
        return self.lab.fork(f"lvs-agent-{server.name}", twistd(["lvs-agent", *arguments]),
                             namespace=server.namespace)

    def status(self) -> dict:
        return http_get_json(self.lab.topology.director, STATUS_PORT, "/status.json")

    def wait_until_feeding_back(self, timeout: float = FEEDBACK_READY_TIMEOUT) -> None:
        """Until every real server has a health report and none is in slow start any more."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                servers = self.status()["services"][0]["servers"]
                if all(s["health"] is not None and s["reason"] not in (None, "slow-start", "static")
                       for s in servers):
                    return
                state = ", ".join(f"{s['server']} {s['reason']}" for s in servers)
            except (OSError, ExperimentError, KeyError, IndexError, ValueError) as error:
                state = str(error)
            if time.monotonic() > deadline:
                raise ExperimentError(f"the director did not start feeding back in {timeout:g} s ({state}):\n"
                                      f"{self.director.log_tail()}")
            time.sleep(1.0)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.director.stop()


def cell_load(plan: Plan, scenario: Scenario, pattern: str, cost: float) -> LoadConfig:
    """The arrivals of a cell: the scenario's load (or the plan's) as a share of the cluster's capacity in its weakest state."""
    capacity = scenario.worst_capacity(cost)
    measure = scenario.measured(plan.measure, plan.ramp_step)
    (_, load), *changes = scenario.load_schedule(plan.load, plan.warmup, measure)
    return LoadConfig(VIP, SERVICE_PORT, rate=load * capacity, duration=plan.warmup + measure, seed=plan.seed,
                      pattern=pattern, connections=plan.connections,
                      requests_per_connection=plan.requests_per_connection, timeout=plan.timeout,
                      rate_changes=tuple((at, share * capacity) for at, share in changes))


def run_cell(lab: Lab, scenario: Scenario, scheduler: Scheduler, pattern: str, repeat: int,
             cost: float) -> dict:
    """One cell, from a clean IPVS table to its result document (see L{report} for the fields)."""
    plan = lab.plan
    servers = lab.servers(scenario)
    names = [server.name for server in servers]
    addresses = lab.addresses(servers)
    measure = scenario.measured(plan.measure, plan.ramp_step)
    lab.set_quotas(scenario.quotas)
    config = cell_load(plan, scenario, pattern, cost)
    cell_name = f"{scenario.name}-{pattern}-{scheduler.name}-{repeat}"
    extras: list[ForkedProcess] = []
    events: list[dict] = []
    running_hogs: list[ForkedProcess] = []
    daemons = None
    weights = None
    try:
        hogged = scenario.hog_server
        if hogged is not None and scenario.hog_window is None:
            extras.append(lab.fork("hog", hog(scenario.hog_workers), cgroup=servers[hogged].cgroup))
            extras[-1].wait_for_log(HOG_READY, STARTUP_TIMEOUT)
        if scheduler.feedback:
            lab.restore_ipvs("-C\n")
            daemons = FeedbackDaemons(lab, scheduler, scenario)
            daemons.wait_until_feeding_back()
            if not scheduler.cold:
                lab.say(f"    the director runs {plan.preroll:g} s before the load (warm start)")
                time.sleep(plan.preroll)
        else:
            weights = static_weights(scheduler, scenario, cost)
            lab.restore_ipvs(ipvsadm_restore(VIP, scheduler.ipvs_scheduler, weights))

        def act(event: Event) -> None:
            """What the scenario changes at this event; the load generator changes its own rate."""
            server = None if event.server is None else servers[event.server]
            if event.kind == "hog-on":
                running_hogs.append(lab.fork("hog", hog(scenario.hog_workers), cgroup=server.cgroup))
            elif event.kind == "hog-off":
                running_hogs.pop().stop()
            elif event.kind == "fail":
                lab.backends[server.name].kill()
                if daemons is not None:
                    daemons.agents[server.name].kill()
            elif event.kind == "return":
                lab.start_backend(event.server)
                if daemons is not None:
                    daemons.agents[server.name] = daemons.start_agent(event.server)
            elif event.kind == "quota":
                server.cgroup.set_cpus(event.value, QUOTA_PERIOD_USEC)

        timeline = scenario.events(plan.warmup, measure, scheduler.feedback)
        result_path = lab.out / "records" / f"{cell_name}.json"
        result_path.parent.mkdir(exist_ok=True)
        cpu_before = read_cpu_times()
        start_at = time.monotonic() + 1.0
        loadgen = lab.run_load(config, start_at, result_path)
        samples = []
        next_sample = start_at
        last_line = 0.0
        while loadgen.poll() is None:
            now = time.monotonic()
            while timeline and now >= start_at + timeline[0].at:
                event = timeline.pop(0)
                act(event)
                events.append({"time": round(time.monotonic() - start_at, 3), "planned": event.at,
                               "event": event.text})
                lab.say(f"    t={event.at:5.1f}s {event.text}")
            if now >= next_sample:
                samples.append(sample_cluster(lab, start_at, servers, addresses))
                next_sample += SAMPLE_INTERVAL
                if sys.stdout.isatty() or now - last_line >= 15:
                    last_line = now
                    lab.progress(cell_name, now - start_at, config.duration, samples[-1], addresses)
            time.sleep(min(0.1, max(0.0, min([next_sample - time.monotonic()]
                                               + [start_at + event.at - time.monotonic() for event in timeline]))))
        cpu_after = read_cpu_times()
        lab.progress_done()
        if loadgen.status != 0:
            raise ExperimentError(f"the load generator of {cell_name} failed ({loadgen.status}):\n{loadgen.log_tail()}")
        director = None
        if daemons is not None:
            status = daemons.status()
            director = {"passes": status["passes"]["total"], "writes": status["passes"]["writes"],
                        "failed_passes": status["passes"]["failed"]}
        raw = json.loads(result_path.read_text())
    finally:
        for extra in extras + running_hogs:
            extra.stop()
        if daemons is not None:
            daemons.stop()
        if scenario.failure_window is not None and not lab.backends_alive():
            lab.restart_dead_backends()
    return report.cell_result(
        scenario=scenario.name, scheduler=scheduler.name, pattern=pattern, repeat=repeat,
        config=asdict(config), warmup=plan.warmup, measure=measure,
        rate=scenario.mean_load(plan.load, plan.warmup, measure) * scenario.worst_capacity(cost),
        static_weights=None if weights is None else dict(zip(names, weights)),
        quotas=dict(zip(names, scenario.quotas)),
        hog_server=None if scenario.hog_server is None else names[scenario.hog_server],
        records=raw["records"], lateness=raw["lateness"], samples=samples, events=events, director=director,
        addresses=addresses,
        update_interval=plan.feedback.update_interval if scheduler.feedback else None,
        preroll=None if not scheduler.feedback else 0.0 if scheduler.cold else plan.preroll,
        ramp_steps=scenario.ramp_steps(plan.warmup, measure),
        cpu_times=(cpu_before, cpu_after),
    )


def sample_cluster(lab: Lab, start_at: float, servers: list, addresses: dict[str, str]) -> dict:
    """One sample: time since the load's start, the scenario's servers in the IPVS table, their CPU usage so far."""
    table = lab.ipvs_table()
    return {
        "time": round(time.monotonic() - start_at, 3),
        "ipvs": {address: table[address] for address in addresses.values() if address in table},
        "usage_usec": {server.name: server.cgroup.cpu_stat().usage_usec for server in servers},
    }


# the whole run --------------------------------------------------------------------


def machine(where: str) -> dict:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"where": where, "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
            "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


def scenario_setup(plan: Plan, cost: float) -> dict:
    setup = {}
    for name in plan.scenarios:
        scenario = SCENARIOS[name]
        setup[name] = {
            "number": scenario.number, "title": scenario.title, "quotas": list(scenario.quotas),
            "rate": scenario.mean_load(plan.load, plan.warmup, scenario.measured(plan.measure, plan.ramp_step))
                    * scenario.worst_capacity(cost),
            "capacities": [round(c, 2) for c in scenario.oracle_capacities(cost)],
            "oracle_weights": static_weights(SCHEDULERS["oracle"], scenario, cost),
        }
    return setup


def open_result_set(results: Path, plan: Plan, session: dict, fresh: bool) -> dict:
    """
    The result set this run adds its cells to: the one in C{results} when
    there is one, measured with the same plan shape (L{report.PLAN_SHAPE}),
    unless C{fresh}; else a new one. A run is limited in time, the matrix
    is not: the cells already measured are kept and skipped.
    """
    stored_plan = json.loads(json.dumps(asdict(plan)))  # as results.json holds it: lists, not tuples
    servers = max(SCENARIOS[name].servers for name in plan.scenarios)
    if fresh or not results.exists():
        return {"experiment": {
            **session, "vip": VIP, "servers": servers, "quota_period_ms": QUOTA_PERIOD_USEC / 1000,
            "plan": stored_plan, "sessions": [session],
        }, "cells": []}
    try:
        document = report.read_results(results)
    except report.ResultsError as error:
        raise ExperimentError(f"{error}: --fresh starts a new result set there") from None
    experiment = document["experiment"]
    differences = report.plan_differences(experiment["plan"], stored_plan)
    if differences:
        raise ExperimentError(f"{results} was measured with another plan ({'; '.join(differences)}): resume it with "
                              "the same settings, or start again with --fresh, or use another --out")
    experiment["sessions"] = report.sessions(experiment) + [session]
    experiment["plan"] = report.widen_plan(experiment["plan"], stored_plan)
    experiment["servers"] = max(experiment["servers"], servers)
    return document


def cells_to_run(plan: Plan, document: dict) -> list[tuple[str, str, str, int]]:
    """The plan's cells the result set does not hold yet."""
    held = {report.cell_key(cell) for cell in document["cells"]}
    return [cell for cell in plan.cells() if cell not in held]


@dataclass
class Run:
    """One run's result set and the cells it measures into it, lab by lab."""

    plan: Plan
    document: dict
    results: Path
    session: dict
    say: Callable[[str], None]
    started: float

    def measure(self, lab: Lab, cells: list[tuple[str, str, str, int]],
                run_cell: Callable[[Lab, Scenario, Scheduler, str, int, float], dict]) -> None:
        """
        Start the lab's backends, calibrate unless the result set has its
        calibration, then measure the cells, results.json rewritten after each.
        """
        say, experiment, plan = self.say, self.document["experiment"], self.plan
        try:
            lab.set_quotas(SCENARIOS[cells[0][0]].quotas)
            lab.start_backends()
            if "calibration" in experiment:
                # The same cost as the cells already measured: the same offered loads.
                calibration = experiment["calibration"]
                say(f"lab up in {time.monotonic() - self.started:.0f} s; the result set's calibration stands")
            else:
                say(f"lab up in {time.monotonic() - self.started:.0f} s; calibrating the cost of a request")
                calibration = lab.calibrate(SCENARIOS[cells[0][0]])
                experiment["calibration"] = calibration
            cost = calibration["cost"]
            experiment["scenarios"] = {**scenario_setup(plan, cost), **experiment.get("scenarios", {})}
            say(f"a request costs {cost * 1000:.1f} ms of CPU (median latency at light load "
                f"{calibration['median_latency'] * 1000:.0f} ms)")
            for number, (scenario_name, pattern, scheduler_name, repeat) in enumerate(cells, 1):
                scenario = SCENARIOS[scenario_name]
                say(f"[{number}/{len(cells)}] {scenario_name} ({scenario.title}), {pattern}, {scheduler_name}, "
                    f"repeat {repeat + 1}: {experiment['scenarios'][scenario_name]['rate']:.1f} requests/s on average "
                    f"({time.monotonic() - self.started:.0f} s so far)")
                late_attempts = []
                while True:
                    cell = run_cell(lab, scenario, SCHEDULERS[scheduler_name], pattern, repeat, cost)
                    summary = cell["summary"]
                    late = cell["lateness_ms"]["p99"]
                    say(f"    p50 {summary['p50']} ms, p99 {summary['p99']} ms, failed "
                        f"{summary['errors'] + summary['timeouts']}, shares "
                        + " ".join(f"{name} {share:.0%}" for name, share in summary["shares"].items())
                        + f", generator late p99 {late} ms"
                        + ("" if cell["steal"] is None else f", CPU stolen from the VM {cell['steal']:.1%}"))
                    if plan.max_lateness is None or late is None or late <= plan.max_lateness \
                            or len(late_attempts) >= plan.retries:
                        break
                    # The machine stalled the generator (and everything else): the
                    # cell measured the host's other work. Run it again.
                    late_attempts.append({"lateness_ms": cell["lateness_ms"], "p99": summary["p99"]})
                    say(f"    the generator ran late (p99 {late} ms > {plan.max_lateness:g} ms): running the cell again")
                cell["late_attempts"] = late_attempts
                self.document["cells"].append(cell)
                self.document["cells"].sort(key=lambda held: report.plan_order(experiment["plan"], held))
                self.session["machine"]["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                self.results.write_text(json.dumps(self.document))
        finally:
            lab.stop_all()


def run_experiment(plan: Plan, out: Path, command: str, where: str, say: Callable[[str], None] = print,
                   fresh: bool = False) -> dict:
    """
    The plan's cells that results.json in C{out} does not hold yet (every
    cell when C{fresh}); results.json is rewritten after each cell, so a
    broken run keeps what it measured and the next run goes on from there.
    """
    if os.geteuid() != 0 or not os.path.exists("/proc/net/ip_vs"):
        raise ExperimentError("the experiment needs root on a kernel with IPVS (ip_vs loaded): see scripts/demo")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = out / "results.json"
    session = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": command, "machine": machine(where)}
    document = open_result_set(results, plan, session, fresh)
    cells = cells_to_run(plan, document)
    if document["cells"]:
        say(f"resuming {results}: {len(document['cells'])} cells measured already, {len(cells)} to go")
    if not cells:
        return document
    if any(SCHEDULERS[name].feedback for name in plan.schedulers):
        say("preparing: importing the daemons once, so that every process forks from this one")
        preload_daemons()
    run = Run(plan, document, results, session, say, started)
    behind_one = [cell for cell in cells if not SCENARIOS[cell[0]].pair]
    behind_pair = [cell for cell in cells if SCENARIOS[cell[0]].pair]
    if behind_one:
        with Topology(servers=max(SCENARIOS[cell[0]].servers for cell in behind_one)) as topology:
            run.measure(Lab(topology, plan, out, say), behind_one, run_cell)
    if behind_pair:
        # Imported here: the pair's lab builds on this module's.
        from lvsfeedback.lab.failover_cells import PairLab, run_pair_cell

        with PairLab.build(plan, out, say) as lab:
            run.measure(lab, behind_pair, run_pair_cell)
    say(f"all cells done in {time.monotonic() - started:.0f} s; writing the report")
    return document


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lvsfeedback experiment",
        description="Measure what feedback buys: lab cluster, scenarios x schedulers, report with plots.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="the demo: scenario hog, persistent, wlc vs lvsfeedback-capacity (the default mode) "
                             "vs oracle, one repeat")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="a scenario (repeatable)")
    parser.add_argument("--scheduler", action="append", choices=sorted(SCHEDULERS),
                        help="a scheduler (repeatable; lvsfeedback-MODE-cold: lvsfeedback started just before the load)")
    parser.add_argument("--pattern", action="append", choices=("persistent", "short"), help="a pattern (repeatable)")
    parser.add_argument("--repeats", type=int, help="repeats per cell (full: 3, quick: 1)")
    parser.add_argument("--warmup", type=float, help="seconds of load before measuring (full: 20, quick: 15)")
    parser.add_argument("--measure", type=float, help="seconds measured per cell (full: 60, quick: 45)")
    parser.add_argument("--preroll", type=float,
                        help="seconds lvsfeedback runs before the load in its warm cells (20; -cold cells: none)")
    parser.add_argument("--ramp-step", type=float, help="seconds of each load step of the ramp scenarios (15)")
    parser.add_argument("--load", type=float, help="offered load as a share of capacity (0.7)")
    parser.add_argument("--policy", action="append", default=[], metavar="KNOB=VALUE",
                        help="a director [policy] setting for the feedback cells, e.g. smoothing_half_life=1")
    parser.add_argument("--update-interval", type=float, help="the director's update_interval (2)")
    parser.add_argument("--max-lateness", type=float, metavar="MS",
                        help="run a cell again when the generator's p99 lateness exceeds this (50; 0: never)")
    parser.add_argument("--retries", type=int, help="at most this many reruns of a late cell (2)")
    parser.add_argument("--out", type=Path, default=Path("results/experiment"),
                        help="output folder; a results.json there is resumed: its cells are kept and skipped")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new result set in --out, replacing its results.json")
    parser.add_argument("--where", default="the lab", help="where it runs, for the report (e.g. 'the test VM')")
    return parser.parse_args(argv)


def _policy_value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def plan_from_args(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    changes = {}
    for option, key in (("scenario", "scenarios"), ("scheduler", "schedulers"), ("pattern", "patterns")):
        if getattr(args, option):
            changes[key] = tuple(getattr(args, option))
    for key in ("repeats", "warmup", "measure", "load", "retries", "preroll", "ramp_step"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.max_lateness is not None:
        changes["max_lateness"] = args.max_lateness or None
    feedback = plan.feedback
    if args.policy:
        policy = dict(feedback.policy)
        for setting in args.policy:
            knob, equals, value = setting.partition("=")
            if not equals:
                raise ExperimentError(f"--policy {setting!r}: write KNOB=VALUE")
            policy[knob] = _policy_value(value)
        feedback = replace(feedback, policy=policy)
    if args.update_interval is not None:
        feedback = replace(feedback, update_interval=args.update_interval)
    return replace(plan, feedback=feedback, **changes)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = parse_args(arguments)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        plan = plan_from_args(args)
        document = run_experiment(plan, args.out, "lvsfeedback experiment " + " ".join(arguments), args.where, say,
                                  fresh=args.fresh)
    except (ExperimentError, LabError) as error:
        print(f"lvsfeedback experiment: {error}", file=sys.stderr)
        return 1
    terminal, plot_paths = report.write_report(document, args.out)
    print()
    print(terminal)
    print(f"\nreport: {args.out / 'report.md'}")
    print(f"raw results: {args.out / 'results.json'}")
    print("plots: " + ", ".join(str(path) for path in plot_paths))
    # What the run concludes comes last, where a reader of the terminal looks.
    conclusion = report.verdicts(document)
    if conclusion:
        print()
        print(conclusion)
    return 0


if __name__ == "__main__":
    sys.exit(main())
