"""
The director at scale: three figures (issue #5).

  --part write       kernel VM. One pass changing all 1,000 weights (10 services
                     x 100 real servers) through KernelIPVS.apply, against
                     `ipvsadm -R` making the same 1,000 edits, in the same run.
  --part scale       host. One director (observe mode, in-memory table) and
                     --agents N agents (1,000 by default; 10,000 is the
                     issue's target) in other processes, each agent from its
                     own 127.0.x.y address: the director's CPU per agent
                     against keepalived's per real server (one check script
                     run per 2 s, timed in the same run), its RSS, the latency
                     from a health change at an agent to the new desired
                     weight in the director's decisions, and the agents the
                     director refused.
  --part keepalived  kernel VM. keepalived 2.2 checking 100 real servers with
                     MISC_CHECK misc_dynamic every 2 s, against the director
                     (writing to the kernel) with 100 agents, each asked for
                     its health every 2 s, and a 2 s update interval: CPU
                     seconds over the same wall time. First, on the host, the
                     same director set-ups with an in-memory table and the
                     native cost of one check script run: qemu's emulation
                     slows fork and exec far more than it slows Python, so the
                     VM's ratio alone would flatter the director.

    .venv/bin/python bench/director_scale.py [--part P]... [--window S] [--rounds N] [--host-only]
                                             [--agents N] [--profile FILE]

Without --part every part runs. The parts that need IPVS run together in one
VM booted by lvsfeedback.testing.vm (natively where the kernel has ip_vs);
--host-only leaves them out.
keepalived must be installed on the host (apt-get install keepalived): the
guest runs the host's files. Every figure is printed; the machine is shared,
so run it more than once and read the medians.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsfeedback.agent.metrics.cgroup import read_usage_usec  # noqa: E402
from lvsfeedback.lab.loadgen import percentile  # noqa: E402
from lvsfeedback.testing.daemon import free_port  # noqa: E402

VM_PARTS = ("write", "keepalived")
PARTS = ("write", "scale", "keepalived")
HEALTH_PORT = 80


# Addresses and configuration shared by the parts -------------------------


def agent_address(number: int) -> str:
    """Agent (and real server) `number`'s own loopback address: 127.0.1.1, 127.0.1.2, ..."""
    return f"127.0.{1 + number // 100}.{1 + number % 100}"


def director_toml(listen: str, services: int, reals: int, *, observe: bool, health_interval: float,
                  policy: str = "", update_interval: float = 2.0, director: str = "",
                  status: str = 'listen = "tcp:0:interface=127.0.0.1"') -> str:
    """
    Services 192.0.2.S:80 (nat), real server i of service s at
    agent_address(s * reals + i); by default the status listener on a free
    loopback port. `director` and `status` are more lines for those tables.
    """
    lines = [
        "[director]",
        f'listen = "{listen}"',
        f"update_interval = {update_interval}",
        f"health_interval = {health_interval}",
        f"observe = {'true' if observe else 'false'}",
        director,
        "",
        "[status]",
        status,
        "",
        "[policy]",
        policy,
    ]
    for s in range(services):
        lines += ["[[service]]", f'name = "svc{s}"', 'protocol = "tcp"', f'address = "192.0.2.{s + 1}"',
                  f"port = {HEALTH_PORT}", 'forwarding = "nat"']
        for i in range(reals):
            lines += ["[[service.real]]", f'address = "{agent_address(s * reals + i)}"', "weight = 100"]
    return "\n".join(lines) + "\n"


# What the director's systemd unit sets (LimitNOFILE), and so what the bench
# gives every process it starts, as far as the hard limit allows.
UNIT_FILE_LIMIT = 65536


def raise_file_limit() -> int:
    """Thousands of connections need more descriptors than the usual soft limit of 1024; the limit set."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = UNIT_FILE_LIMIT if hard == resource.RLIM_INFINITY else min(UNIT_FILE_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def begin_logging(path: Path) -> None:
    """Log to a file, as twistd would: unobserved events would pile up in memory."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(path, "a"))], redirectStandardIO=False)


# The simulated agents: one process, many NECP sessions ----------------------


# Agents one process simulates; 10,000 agents take four.
AGENTS_PER_PROCESS = 2500
# Connections opened a second, all agents' processes together, so that the
# director's listen backlog is never the bottleneck.
CONNECT_RATE = 1000.0
CONNECT_STEP = 50
UP_TIMEOUT = 120.0  # seconds, after the last connection is opened


def run_agents(args) -> None:
    """
    Agents `first` .. `first + agents - 1`, agent n connecting from
    agent_address(n), each starting tcp/80 and answering health queries with
    a value the parent sets through stdin: "set HEALTH N..." answers "set
    TIME" (time.time() once set), "cpu" answers "cpu SECONDS", "lost" answers
    "lost FAILED ENDED" (connections that failed, sessions that ended).
    "up COUNT" is printed once every session is up, or after UP_TIMEOUT
    seconds with the count of sessions up then. An agent whose connection
    fails or ends dials again 1-5 s later, as a real one would.
    """
    from twisted.internet import reactor, stdio, task
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    from lvsfeedback.agent.protocol import IHealthSource, SEFactory
    from lvsfeedback.necp.units import FORWARD_LAYER3, Service

    raise_file_limit()
    begin_logging(Path(args.log))

    @implementer(IHealthSource)
    class SettableHealth:
        def __init__(self, value: int):
            self.value = value

        def health(self, protocol, port):
            return self.value

    lost = {"failed": 0, "ended": 0}

    class CountingSEFactory(SEFactory):
        def __init__(self, index: int, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.index = index

        def session_ended(self, session, reason, was_established):
            lost["ended"] += 1
            super().session_ended(session, reason, was_established)
            redial(self.index)

    def redial(index: int) -> None:
        # As a real agent's ClientService would, after a jittered pause.
        reactor.callLater(1.0 + 4.0 * random.random(), dial, index)

    def failed(failure, index: int) -> None:
        lost["failed"] += 1
        redial(index)

    host, port = args.director.rsplit(":", 1)
    timing = {"keepalive_interval": args.keepalive, "keepalive_jitter": args.jitter}
    # As the director reads its own secret file: surrounding whitespace is not part of it.
    secret = Path(args.secret_file).read_bytes().strip() if args.secret_file else None
    numbers = range(args.first, args.first + args.agents)
    sources = {number: SettableHealth(args.health) for number in numbers}
    factories = [
        CountingSEFactory(index, sources[number], {Service(FORWARD_LAYER3, socket.IPPROTO_TCP, HEALTH_PORT)},
                          clock=reactor, secret=secret, **timing)
        for index, number in enumerate(numbers)
    ]

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command, *words = line.decode().split()
            if command == "set":
                health, *changed = map(int, words)
                for number in changed:
                    sources[number].value = health
                self.sendLine(f"set {time.time():.6f}".encode())
            elif command == "cpu":
                times = os.times()
                self.sendLine(f"cpu {times.user + times.system:.3f}".encode())
            elif command == "lost":
                self.sendLine(f"lost {lost['failed']} {lost['ended']}".encode())

    commands = Commands()
    stdio.StandardIO(commands)
    pause = CONNECT_STEP / (args.connect_rate / args.processes)

    def dial(index: int) -> None:
        endpoint = TCP4ClientEndpoint(reactor, host, int(port), timeout=30,
                                      bindAddress=(agent_address(numbers[index]), 0))
        endpoint.connect(factories[index]).addErrback(failed, index)

    def connect(first: int) -> None:
        # In steps, so the director's listen backlog is never the bottleneck.
        for index in range(first, min(first + CONNECT_STEP, args.agents)):
            dial(index)
        if first + CONNECT_STEP < args.agents:
            reactor.callLater(pause, connect, first + CONNECT_STEP)

    given_up = time.monotonic() + args.agents / (args.connect_rate / args.processes) + UP_TIMEOUT

    def report_up() -> None:
        up = sum(1 for factory in factories if factory.session is not None)
        if up == len(factories) or time.monotonic() > given_up:
            commands.sendLine(f"up {up}".encode())
            watch.stop()

    watch = task.LoopingCall(report_up)
    # The processes start their steps at different moments within a pause.
    reactor.callWhenRunning(reactor.callLater, pause * args.first / max(1, args.agents * args.processes), connect, 0)
    reactor.callWhenRunning(watch.start, 0.2)
    reactor.run()


class AgentsProcess:
    """One agents' process seen from a blocking parent: lines in, lines out."""

    def __init__(self, director: str, first: int, count: int, processes: int, keepalive: float, jitter: float,
                 health: int, log: Path, preexec=None, connect_rate: float = CONNECT_RATE,
                 secret_file: Path | None = None):
        self.numbers = range(first, first + count)
        argv = [sys.executable, str(Path(__file__).resolve()), "--role", "agents", "--director", director,
                "--first", str(first), "--agents", str(count), "--processes", str(processes),
                "--connect-rate", str(connect_rate), "--keepalive", str(keepalive), "--jitter", str(jitter),
                "--health", str(health), "--log", str(log)]
        if secret_file is not None:
            argv += ["--secret-file", str(secret_file)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        bufsize=1, preexec_fn=preexec)

    def expect(self, word: str) -> list[str]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the agents' process ended (status {self.process.wait()}) before saying {word!r}")
        found, *rest = line.split()
        if found != word:
            raise RuntimeError(f"the agents' process said {line.strip()!r}, expected {word!r}")
        return rest

    def ask(self, line: str, answer: str) -> list[str]:
        self.process.stdin.write(line + "\n")
        return self.expect(answer)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


class AgentsProcesses:
    """
    `count` agents in as many processes as AGENTS_PER_PROCESS asks for, seen
    as one: agent n lives in the process whose range holds it.
    """

    def __init__(self, director: str, count: int, keepalive: float, jitter: float, health: int, log: Path):
        processes = -(-count // AGENTS_PER_PROCESS)
        share = -(-count // processes)
        self.processes = [
            AgentsProcess(director, first, min(share, count - first), processes, keepalive, jitter, health,
                          log.with_name(f"{log.stem}-{first}{log.suffix}"))
            for first in range(0, count, share)
        ]

    def wait_up(self) -> int:
        """The sessions up once every process has either all of its agents up or given up waiting."""
        return sum(int(process.expect("up")[0]) for process in self.processes)

    def set_health(self, health: int, numbers: list[int]) -> dict[int, float]:
        """When each agent's process took the new value."""
        moments = {}
        for process in self.processes:
            mine = [number for number in numbers if number in process.numbers]
            if mine:
                (changed_at,) = process.ask(f"set {health} " + " ".join(map(str, mine)), "set")
                moments.update(dict.fromkeys(mine, float(changed_at)))
        return moments

    def cpu(self) -> float:
        return sum(float(process.ask("cpu", "cpu")[0]) for process in self.processes)

    def lost(self) -> tuple[int, int]:
        counts = [process.ask("lost", "lost") for process in self.processes]
        return sum(int(failed) for failed, _ in counts), sum(int(ended) for _, ended in counts)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


# Part "scale" (host): 1,000 or 10,000 agents, observe mode ---------------------

SCALE_SERVICES = 10  # virtual services; the agents are their real servers, evenly
KEEPALIVED_INTERVAL = 2.0  # keepalived's delay_loop: one check script run per server per interval


def run_scale(args) -> dict:
    """The director in this process, so that its decisions can be watched as they are made."""
    import psutil
    from twisted.internet import reactor, task, threads

    from lvsfeedback.director.config import load_config
    from lvsfeedback.director.service import DirectorService
    from lvsfeedback.director.tap import tune_garbage_collection
    from lvsfeedback.ipvs.memory import MemoryIPVS

    file_limit = raise_file_limit()
    count = args.agents
    services, reals = SCALE_SERVICES, count // SCALE_SERVICES
    workdir = workspace("lvsbench-scale-")
    # keepalived's cost per real server, timed in this run, before the window
    # and again after it: the machine's speed changes from run to run (one
    # timing alone varied 40 % between runs), the ratio much less.
    script_runs = check_script_costs(workdir)
    begin_logging(workdir / "director.log")
    port = free_port()
    # Health mode, with no smoothing, hysteresis or slow start: the desired
    # weight follows one report at once (base x health / 100), so the latency
    # measured is NECP's and the updater's, not the smoothing an operator
    # chooses, and the wait below for every decision to be a health one ends
    # (capacity mode, the default, steps from traffic these agents never get).
    policy = 'mode = "health"\nsmoothing_half_life = 0.0\nhysteresis = 0.0\nslow_start = 0.0\n'
    config_path = workdir / "director.toml"
    config_path.write_text(
        director_toml(f"tcp:{port}:interface=127.0.0.1:backlog=1024", services, reals, observe=True,
                      health_interval=args.health_interval, policy=policy,
                      director=f"early_pass_change = {args.early_pass_change}")
    )
    config = load_config(config_path)
    timing = {"keepalive_interval": args.keepalive, "keepalive_jitter": args.jitter}
    tune_garbage_collection()  # as twistd lvs-director's makeService does
    director = DirectorService(config, reactor, observe=True, table=MemoryIPVS(), **timing)
    refusals = count_refusals(director.factory)
    me = psutil.Process()
    result: dict = {}

    def servers():
        for s, service in enumerate(config.services):
            for i, real in enumerate(service.reals):
                yield s * reals + i, service.key, real.dest_key

    where = {number: (key, dest) for number, key, dest in servers()}
    flips: dict[int, tuple[float, int]] = {}  # agent -> (time of the change, weight wanted)
    latencies: list[float] = []
    seen_pass = [None]

    def watch_decisions() -> None:
        last = director.updater.last
        if last is None or last is seen_pass[0]:
            return
        seen_pass[0] = last
        decided_at = last.time + last.duration
        for number, (changed_at, wanted) in list(flips.items()):
            key, dest = where[number]
            decision = last.services[key].decision.servers.get(dest)
            if decision is not None and decision.weight == wanted and decided_at >= changed_at:
                latencies.append(decided_at - changed_at)
                del flips[number]

    def sleep_until(moment: float):
        return task.deferLater(reactor, max(0.0, moment - time.monotonic()), lambda: None)

    def blocking(function, *arguments):
        return threads.deferToThread(function, *arguments)

    async def measure():
        agents = await blocking(AgentsProcesses, f"127.0.0.1:{port}", count, args.keepalive, args.jitter, 100,
                                workdir / "agents.log")
        try:
            connecting = time.monotonic()
            up = await blocking(agents.wait_up)
            result["connect_seconds"] = time.monotonic() - connecting
            if up < count:
                failed, ended = await blocking(agents.lost)
                raise RuntimeError(f"only {up} of {count} agents' sessions came up: the director refused "
                                   f"{refusals['count']}, {failed} connections failed, {ended} sessions ended")
            # Every agent reported and every decision is its health's.
            deadline = time.monotonic() + 300
            while not (
                len(director.registry.sessions) == count
                and all(session.health for session in director.registry.sessions)
                and director.updater.last is not None
                and all(d.reason == "health" for sp in director.updater.last.services.values()
                        for d in sp.decision.servers.values())
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not every agent reported within 300 s: "
                                       f"{len(director.registry.sessions)} sessions of {count}")
                await task.deferLater(reactor, 0.5, lambda: None)
            await task.deferLater(reactor, args.settle, lambda: None)
            watcher = task.LoopingCall(watch_decisions)
            watcher.start(0.1)
            agents_before = await blocking(agents.cpu)
            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            before, started = me.cpu_times(), time.monotonic()
            passes_before = director.updater.passes
            # One group of agents a second changes health, at a random moment
            # within the second, so that the changes fall at every phase of
            # the director's questions and passes.
            groups = max(1, int(args.window) - 1)
            for group in range(groups):
                await sleep_until(started + group + random.random())
                numbers = [n for n in range(count) if n % groups == group]
                changed = await blocking(agents.set_health, 50, numbers)
                for number, changed_at in changed.items():
                    flips[number] = (changed_at, 50)
            await sleep_until(started + args.window)
            after, elapsed = me.cpu_times(), time.monotonic() - started
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            passes = director.updater.passes - passes_before
            agents_after = await blocking(agents.cpu)
            failed, ended = await blocking(agents.lost)
            rss = me.memory_info().rss
            # The last group's changes may still be on their way.
            deadline = time.monotonic() + asking_interval(args) + 5
            while flips and time.monotonic() < deadline:
                await task.deferLater(reactor, 0.2, lambda: None)
            watcher.stop()
            script_runs.extend(check_script_costs(workdir))
            cpu = (after.user + after.system) - (before.user + before.system)
            result.update(
                agents=count, sessions=len(director.registry.sessions), window=elapsed, cpu_seconds=cpu,
                cpu_share=cpu / elapsed, rss_mb=rss / 2**20, passes=passes,
                pass_seconds=director.updater.last.duration, agents_cpu_share=(agents_after - agents_before) / elapsed,
                latencies=latencies, unresolved=len(flips), refused=refusals["count"],
                script_run=statistics.median(script_runs), script_runs=script_runs,
                failed=failed, ended=ended, file_limit=file_limit, max_agents=config.director.max_agents,
                load=os.getloadavg(),
            )
        finally:
            await blocking(agents.stop)

    def run():
        director.startService()
        done = task.ensureDeferred(measure())
        done.addErrback(lambda failure: result.update(error=failure.getTraceback()))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def count_refusals(factory) -> dict[str, int]:
    """Connections the director's factory turns away, counted as they happen (its log line sums them)."""
    refusals = {"count": 0}
    build = factory.buildProtocol

    def counted(addr):
        protocol = build(addr)
        if protocol is None:
            refusals["count"] += 1
        return protocol

    factory.buildProtocol = counted
    return refusals


def asking_interval(args) -> float:
    """The longest a changed health waits before the director asks for it."""
    keepalive = args.keepalive + args.jitter
    return min(args.health_interval, keepalive) if args.health_interval > 0 else keepalive


def print_scale(result: dict, args) -> None:
    asked = asking_interval(args)
    count, lat = result["agents"], result["latencies"]
    update = 2.0
    target = update + 0.5
    per_agent = result["cpu_share"] / count
    per_server = result["script_run"] / KEEPALIVED_INTERVAL
    ratio = per_server / per_agent
    load = result["load"]
    print(f"\n== scale: 1 director (observe mode), {count} agents in {-(-count // AGENTS_PER_PROCESS)} "
          f"other process(es), host, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end ==")
    print(f"sessions up: {result['sessions']} (all connected in {result['connect_seconds']:.1f} s); "
          f"keepalive {args.keepalive:g} s + 0..{args.jitter:g} s; health asked every {args.health_interval:g} s "
          f"(0: on keepalives); update interval {update:g} s, early_pass_change {args.early_pass_change}; "
          f"open files {result['file_limit']}, "
          f"max_agents {result['max_agents']}")
    print(f"window {result['window']:.1f} s, {result['passes']} passes, last pass {result['pass_seconds'] * 1000:.0f} ms")
    print(f"director CPU: {result['cpu_seconds']:.2f} s = {100 * result['cpu_share']:.1f} % of one core, "
          f"{1e6 * per_agent * update:.0f} us per agent per {update:g} s round")
    runs = result["script_runs"]
    print(f"keepalived, one check script run (fork, exec /bin/sh, exit 52), timed {len(runs)} times in this run "
          f"(half before the window, half after; 100 runs each, from a fresh process): "
          f"{', '.join(f'{1000 * run:.2f}' for run in runs)} ms CPU, median {1000 * result['script_run']:.2f} ms "
          f"= {1e6 * result['script_run']:.0f} us per server per {KEEPALIVED_INTERVAL:g} s")
    print(f"director per agent = 1/{ratio:.1f} of keepalived per server (target <= 1/10: "
          f"{'met' if ratio >= 10 else 'missed'})")
    print(f"director RSS: {result['rss_mb']:.0f} MB (target <= 600 MB: {'met' if result['rss_mb'] <= 600 else 'missed'})")
    print(f"agents' processes CPU: {100 * result['agents_cpu_share']:.1f} % of one core (not the director's)")
    refused = result["refused"] + result["failed"] + result["ended"]
    print(f"refused by the director: {result['refused']}; agents' connections failed: {result['failed']}, "
          f"sessions ended: {result['ended']} (target: none below max_agents: {'met' if not refused else 'missed'})")
    if lat:
        within = sum(1 for value in lat if value <= target) / len(lat)
        print(
            f"health change -> desired weight, {len(lat)} changes: min {min(lat):.2f} s, median {statistics.median(lat):.2f} s, "
            f"p90 {percentile(sorted(lat), 90):.2f} s, p99 {percentile(sorted(lat), 99):.2f} s, max {max(lat):.2f} s; "
            f"{100 * within:.1f} % within update {update:g} s + 0.5 s = {target:g} s "
            f"(target: all: {'met' if within == 1 and not result['unresolved'] else 'missed'}; "
            f"the asking interval {asked:g} s included: {update + 0.5 + asked:g} s)"
        )
    if result["unresolved"]:
        print(f"changes never seen in a decision: {result['unresolved']}")


# Part "write" (VM): 1,000 weight edits ---------------------------------------


def run_write(args) -> dict:
    from lvsfeedback.ipvs.model import AddDest, AddService, DestKey, EditDest, RealServer, ServiceKey, VirtualService
    from lvsfeedback.ipvs.netlink import KernelIPVS
    from lvsfeedback.testing import ipvsadm

    services = [VirtualService(ServiceKey.for_address("tcp", "10.93.0.1", 8000 + s), scheduler="wrr") for s in range(10)]
    reals = [f"10.93.{1 + i // 250}.{1 + i % 250}" for i in range(100)]

    def weight(s: int, i: int, generation: int) -> int:
        return 1 + (s * 100 + i + 37 * generation) % 1000

    def edits(generation: int) -> list:
        return [
            EditDest(service.key, RealServer(DestKey.of(address, 80), weight(s, i, generation), "nat"))
            for s, service in enumerate(services)
            for i, address in enumerate(reals)
        ]

    def ipvsadm_lines(generation: int) -> str:
        return "".join(
            f"-e -t {service.key.address}:{service.key.port} -r {address}:80 -w {weight(s, i, generation)} -m\n"
            for s, service in enumerate(services)
            for i, address in enumerate(reals)
        )

    ipvsadm.clear()
    kernel = KernelIPVS()
    try:
        populate = [AddService(service) for service in services] + [
            AddDest(change.service, change.server) for change in edits(0)
        ]
        started = time.perf_counter()
        refused = kernel.apply(populate)
        populate_seconds = time.perf_counter() - started
        if refused:
            raise RuntimeError(f"populating the table failed: {refused[:3]}")
        ours, theirs, snapshots, cpu = [], [], [], []
        generation = 0
        for _ in range(args.rounds):
            generation += 1
            changes = edits(generation)
            cpu_before, started = time.process_time(), time.perf_counter()
            refused = kernel.apply(changes)
            ours.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_before)
            if refused:
                raise RuntimeError(f"KernelIPVS.apply refused {len(refused)} edits: {refused[:3]}")
            generation += 1
            script = ipvsadm_lines(generation)
            started = time.perf_counter()
            subprocess.run(["ipvsadm", "-R"], input=script, text=True, check=True)
            theirs.append(time.perf_counter() - started)
            started = time.perf_counter()
            kernel.snapshot()
            snapshots.append(time.perf_counter() - started)
        # The last edits read back as written (ipvsadm's, after ours).
        table = ipvsadm.read_table()
        expected = {change.service: {} for change in edits(generation)}
        for change in edits(generation):
            expected[change.service][change.server.key] = (change.server.weight, "nat")
        if table != expected:
            raise RuntimeError("the table read back through ipvsadm differs from the last edits")
    finally:
        kernel.close()
        ipvsadm.clear()
    return {"populate": populate_seconds, "ours": ours, "cpu": cpu, "ipvsadm": theirs, "snapshot": snapshots}


def print_write(result: dict) -> None:
    ours, theirs = statistics.median(result["ours"]), statistics.median(result["ipvsadm"])
    print(f"\n== write: 1,000 weight edits (10 services x 100 real servers), kernel VM, {len(result['ours'])} rounds ==")
    print(f"KernelIPVS.apply:  median {ours:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in result['ours'])}; "
          f"CPU median {statistics.median(result['cpu']):.3f} s)")
    print(f"ipvsadm -R:        median {theirs:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in result['ipvsadm'])})")
    print(f"ratio: {ours / theirs:.2f} x ipvsadm -R (target <= 2 x)")
    print(f"adding the 10 services and 1,000 real servers: {result['populate']:.3f} s; "
          f"snapshot (netlink dump of 1,000): median {statistics.median(result['snapshot']):.3f} s")


# Part "keepalived" (VM): keepalived's checkers against the director ------------


REALS = 100  # real servers of the one service in the keepalived comparison
CHECK_SCRIPT = "#!/bin/sh\nexit 52\n"  # misc_dynamic: weight = exit code - 2 = 50

# The director set-ups compared with keepalived: (what, keepalive interval,
# keepalive jitter, health_interval). The first two ask each agent once every
# 2 s on average, keepalived's check rate (the second spreads the questions
# as keepalived spreads its checks); the third is the shipped configuration.
DIRECTOR_SETUPS = (
    ("keepalive 2 s, health asked on keepalives", 2.0, 0.0, 0.0),
    ("keepalive 1.5 s + 0..1 s, health asked on keepalives", 1.5, 1.0, 0.0),
    ("shipped defaults: keepalive 5 s + 0..1 s, health asked every 2 s", 5.0, 1.0, 2.0),
)


def workspace(prefix: str) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(workdir, 0o755)
    return workdir


def run_keepalived(args) -> dict:
    """In the kernel VM: keepalived, then each director set-up, one after the other."""
    keepalived = shutil.which("keepalived")
    if keepalived is None:
        raise RuntimeError("keepalived is not installed: apt-get install keepalived (on the host; the VM sees it)")
    version = subprocess.run([keepalived, "--version"], capture_output=True, text=True).stderr.splitlines()[0]
    workdir = workspace("lvsbench-keepalived-")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return {
        "version": version,
        "window": args.window,
        "script_run": statistics.median(check_script_costs(workdir)),
        "keepalived": measure_keepalived(keepalived, workdir, args),
        "directors": [
            (what, measure_director(workdir, args, keepalive, jitter, health_interval, kernel=True))
            for what, keepalive, jitter, health_interval in DIRECTOR_SETUPS
        ],
    }


def run_native(args) -> dict:
    """
    On the host, without IPVS: what one check script run costs natively, and
    the same director set-ups with an in-memory table, for the VM's figures to
    be read against (qemu's emulation slows fork and exec more than Python).
    """
    workdir = workspace("lvsbench-native-")
    return {
        "window": args.window,
        "script_run": statistics.median(check_script_costs(workdir)),
        "directors": [
            (what, measure_director(workdir, args, keepalive, jitter, health_interval, kernel=False))
            for what, keepalive, jitter, health_interval in DIRECTOR_SETUPS
        ],
    }


def check_script(workdir: Path) -> Path:
    script = workdir / "weight.sh"
    script.write_text(CHECK_SCRIPT)
    script.chmod(0o755)
    return script


def check_script_costs(workdir: Path, batches: int = 3) -> list[float]:
    """`check_script_cost` timed `batches` times: one timing is as noisy as the machine."""
    return [check_script_cost(workdir) for _ in range(batches)]


# Runs the check script and prints the CPU its runs took, in a process of its own.
SCRIPT_TIMER = """
import resource, subprocess, sys
for _ in range(int(sys.argv[2])):
    subprocess.run([sys.argv[1]])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)
"""


def check_script_cost(workdir: Path, runs: int = 100) -> float:
    """
    CPU seconds of one run of the check script, forked and executed as
    keepalived does, from a fresh process: forked from the scale part's
    process, which then holds every agent's socket, each child first closed
    them all (subprocess's close_fds), and the figure doubled after the window.
    """
    script = check_script(workdir)
    timer = subprocess.run([sys.executable, "-c", SCRIPT_TIMER, str(script), str(runs)],
                           capture_output=True, text=True, check=True)
    return float(timer.stdout) / runs


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup(name: str) -> Path:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        raise RuntimeError(f"{CGROUP_ROOT} is not a cgroup v2 hierarchy; keepalived's CPU is read from one")
    path = CGROUP_ROOT / name
    path.mkdir(exist_ok=True)
    return path


def cgroup_cpu_seconds(path: Path) -> float:
    """CPU of everything that ran in the cgroup, exited children (the check scripts) included."""
    return read_usage_usec(path) / 1e6


def join(path: Path):
    """A preexec_fn putting the child into the cgroup before it runs anything."""
    procs = path / "cgroup.procs"
    return lambda: procs.write_text(str(os.getpid()))


def remove_cgroup(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)


KEEPALIVED_REAL = """    real_server {address} 80 {{
        weight 100
        MISC_CHECK {{
            misc_path "{script}"
            misc_timeout 1
            misc_dynamic
        }}
    }}
"""


def keepalived_conf(script: Path, reals: int) -> str:
    servers = "".join(KEEPALIVED_REAL.format(address=agent_address(i), script=script) for i in range(reals))
    return (
        "global_defs {\n    script_user root\n}\n"
        "virtual_server 192.0.2.1 80 {\n    delay_loop 2\n    lb_algo wlc\n    lb_kind NAT\n    protocol TCP\n"
        f"{servers}}}\n"
    )


def forks_since_boot() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    raise RuntimeError("no processes line in /proc/stat")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def measure_keepalived(keepalived: str, workdir: Path, args) -> dict:
    """keepalived alone, its CPU read from its own cgroup: the check scripts are short-lived children."""
    from lvsfeedback.ipvs.model import ServiceKey
    from lvsfeedback.testing import ipvsadm

    conf = workdir / "keepalived.conf"
    conf.write_text(keepalived_conf(check_script(workdir), REALS))
    service = ServiceKey.for_address("tcp", "192.0.2.1", 80)

    def weights() -> set[int]:
        servers = ipvsadm.read_table().get(service, {})
        return {weight for weight, _ in servers.values()} if len(servers) == REALS else set()

    ipvsadm.clear()
    group = cgroup("lvsbench-keepalived")
    daemon = subprocess.Popen(
        [keepalived, "--dont-fork", "--check", "--log-console", "--use-file", str(conf),
         "--pid", str(workdir / "keepalived.pid"), "--checkers_pid", str(workdir / "checkers.pid")],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "keepalived.log", "w"), preexec_fn=join(group),
    )
    try:
        wait_for(lambda: weights() == {50}, 120, "keepalived to set 100 weights to 50")
        time.sleep(args.settle)
        before, forks_before, started = cgroup_cpu_seconds(group), forks_since_boot(), time.monotonic()
        time.sleep(args.window)
        cpu, forks, wall = cgroup_cpu_seconds(group) - before, forks_since_boot() - forks_before, time.monotonic() - started
        # Every check is one fork; nothing else forks meanwhile.
        return {"cpu": cpu, "wall": wall, "checks_per_second": forks / wall}
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        remove_cgroup(group)
        ipvsadm.clear()


def measure_director(workdir: Path, args, keepalive: float, jitter: float, health_interval: float, *,
                     kernel: bool) -> dict:
    """
    The director as twistd runs it, in its own process, with 100 agents in
    another; writing to the kernel, or (kernel=False) to an in-memory table.
    """
    import psutil

    port = free_port()
    config = workdir / f"director-{port}.toml"
    config.write_text(director_toml(f"tcp:{port}:interface=127.0.0.1:backlog=1024", 1, REALS, observe=False,
                                    health_interval=health_interval))
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "director", "--config", str(config),
            "--keepalive", str(keepalive), "--jitter", str(jitter), "--log", str(workdir / f"director-{port}.log")]
    director = subprocess.Popen(argv + ([] if kernel else ["--memory-table"]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    log = workdir / f"director-{port}.log"
    agents = None
    try:
        wait_for(lambda: listening(port) or director.poll() is not None, 180, "the director to listen")
        if director.poll() is not None:
            raise RuntimeError(f"the director exited with status {director.returncode}; its log ends:\n{tail(log)}")
        agents = AgentsProcess(f"127.0.0.1:{port}", 0, REALS, 1, keepalive, jitter, 50, workdir / f"agents-{port}.log")
        agents.expect("up")
        try:
            wait_until_steady(director, args.settle, 300)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; the director's log ends:\n{tail(log)}") from None
        processes = psutil.Process(director.pid), psutil.Process(agents.process.pid)
        counts_before = director_counts(director)
        before = [sum(process.cpu_times()[:2]) for process in processes]
        started = time.monotonic()
        time.sleep(args.window)
        cpu, agents_cpu = (sum(process.cpu_times()[:2]) - then for process, then in zip(processes, before))
        wall = time.monotonic() - started
        counts = director_counts(director)
        return {
            "cpu": cpu, "wall": wall, "agents_cpu": agents_cpu, "weights": counts["weights"],
            "passes": int(counts["passes"]) - int(counts_before["passes"]),
            "writes": int(counts["writes"]) - int(counts_before["writes"]),
            "pass_seconds": float(counts["last_pass"]),
        }
    finally:
        if agents is not None:
            agents.stop()
        director.terminate()
        director.wait(timeout=60)
        if kernel:
            from lvsfeedback.testing import ipvsadm

            ipvsadm.clear()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(unreadable: {error})"


def director_counts(director: subprocess.Popen) -> dict[str, str]:
    director.stdin.write("counts\n")
    words = director.stdout.readline().split()
    return dict(zip(words[::2], words[1::2]))


def wait_until_steady(director: subprocess.Popen, settle: float, timeout: float) -> None:
    """Until the table is weighted by health and `settle` seconds pass without a write."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = director_counts(director)
        if settled(counts):
            time.sleep(settle)
            later = director_counts(director)
            if settled(later) and later["writes"] == counts["writes"]:
                return
        else:
            time.sleep(1.0)
    raise RuntimeError(f"the director's weights did not settle within {timeout:g} s")


def settled(counts: dict[str, str]) -> bool:
    """
    Every real server in the table, weighted by health 50 (of base weight
    100) once slow start is over: within the 5 % hysteresis of 50, where the
    end of the ramp may leave it.
    """
    weights = [int(weight) for weight in counts["weights"].split(",") if weight != "none"]
    return int(counts["servers"]) == REALS and min(weights) >= 47


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def run_director(args) -> None:
    """
    The daemon, as twistd runs it, for the keepalived comparison. "counts" on
    stdin answers "passes N writes N last_pass SECONDS servers N weights W,W..."
    (the real servers the last pass read from the table, and their distinct weights).
    """
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from lvsfeedback.director.config import load_config
    from lvsfeedback.director.service import DirectorService

    raise_file_limit()
    begin_logging(Path(args.log))
    table = None
    if args.memory_table:
        from lvsfeedback.ipvs.memory import MemoryIPVS

        table = MemoryIPVS()
    director = DirectorService(
        load_config(args.config), reactor, table=table, keepalive_interval=args.keepalive, keepalive_jitter=args.jitter
    )

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() != b"counts":
                return
            updater, last = director.updater, director.updater.last
            dests = [dest for entry in last.kernel.values() for dest in entry.dests.values()] if last else []
            weights = sorted({dest.server.weight for dest in dests})
            self.sendLine(
                f"passes {updater.passes} writes {updater.writes} last_pass {last.duration if last else 0:.4f} "
                f"servers {len(dests)} weights {','.join(map(str, weights)) or 'none'}".encode()
            )

    stdio.StandardIO(Commands())
    reactor.callWhenRunning(director.startService)
    reactor.addSystemEventTrigger("before", "shutdown", director.stopService)
    reactor.run()


def print_directors(directors: list, keepalived_share: float) -> None:
    for what, director in directors:
        share = director["cpu"] / director["wall"]
        print(f"lvs-director, {what}: {director['cpu']:.2f} CPU-s in {director['wall']:.1f} s = {100 * share:.1f} % "
              f"of one core = 1/{keepalived_share / share:.1f} of keepalived")
        print(f"    {director['passes']} passes (last {1000 * director['pass_seconds']:.0f} ms), "
              f"{director['writes']} writes in the window, weights {director['weights']}; "
              f"the agents' process (on the real servers in production): {director['agents_cpu']:.2f} CPU-s")


def print_keepalived(result: dict) -> None:
    keepalived = result["keepalived"]
    share = keepalived["cpu"] / keepalived["wall"]
    print(f"\n== keepalived: 100 real servers checked every 2 s, kernel VM (2 vCPUs), {result['window']:g} s windows ==")
    print(f"{result['version']}, MISC_CHECK misc_dynamic (a /bin/sh script exiting 52: weight 50), delay_loop 2; "
          f"one script run costs {1000 * result['script_run']:.1f} ms CPU here")
    print(f"keepalived (daemon, checker, scripts): {keepalived['cpu']:.2f} CPU-s in {keepalived['wall']:.1f} s "
          f"= {100 * share:.1f} % of one core, running {keepalived['checks_per_second']:.1f} checks a second "
          f"(50 asked for: below that, the VM cannot keep up and keepalived's share is a floor)")
    print_directors(result["directors"], share)
    print("target: the director at most 1/10 of keepalived")


def print_native(result: dict) -> None:
    # keepalived runs 100 / 2 s = 50 check scripts a second; its own work besides is small.
    share = 50 * result["script_run"]
    print(f"\n== keepalived comparison, natively on this host (no IPVS here: in-memory table), {result['window']:g} s windows ==")
    print(f"one check script run (fork, exec /bin/sh, exit 52) costs {1000 * result['script_run']:.2f} ms CPU: "
          f"keepalived's 50 a second would be about {100 * share:.1f} % of one core")
    print_directors(result["directors"], share)


# Command line ---------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", action="append", choices=PARTS, help="repeatable; default: all")
    parser.add_argument("--window", type=float, help="seconds measured (scale 60, keepalived 30)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of steady state before measuring")
    parser.add_argument("--rounds", type=int, default=5, help="write part: passes of each kind")
    parser.add_argument("--keepalive", type=float, default=5.0, help="scale part: keepalive interval (s)")
    parser.add_argument("--jitter", type=float, default=1.0, help="scale part: keepalive jitter (s)")
    parser.add_argument("--health-interval", type=float, default=2.0,
                        help="scale part: [director] health_interval (s; 0: ask on keepalives only)")
    parser.add_argument("--early-pass-change", type=int, default=20,
                        help="scale part: [director] early_pass_change (the shipped 20; 0: no early passes)")
    parser.add_argument("--host-only", action="store_true",
                        help="only what runs on this host (scale; keepalived's native comparison): no VM")
    # Internal: the processes the parts start.
    parser.add_argument("--role", choices=("agents", "director"), help=argparse.SUPPRESS)
    parser.add_argument("--director", help=argparse.SUPPRESS)
    parser.add_argument("--agents", type=int, default=1000,
                        help="scale part: agents (a multiple of 10; default 1,000; the issue's target 10,000)")
    parser.add_argument("--profile", help="scale part: cProfile the director over the window into this file")
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--connect-rate", type=float, default=CONNECT_RATE, help=argparse.SUPPRESS)
    parser.add_argument("--health", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--memory-table", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def describe_machine() -> str:
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.uname().release}, {os.cpu_count()} CPUs, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "agents":
        run_agents(args)
        return 0
    if args.role == "director":
        run_director(args)
        return 0
    parts = args.part or list(PARTS)
    if args.agents < SCALE_SERVICES or args.agents % SCALE_SERVICES:
        print(f"director_scale: --agents must be a positive multiple of {SCALE_SERVICES}", file=sys.stderr)
        return 2
    print(f"director_scale: {describe_machine()}", flush=True)
    if "scale" in parts and not args.in_vm:
        print_scale(run_scale(argparse.Namespace(**{**vars(args), "window": args.window or 60.0})), args)
    if "keepalived" in parts and not args.in_vm:
        print_native(run_native(argparse.Namespace(**{**vars(args), "window": args.window or 30.0})))
    vm_parts = [part for part in parts if part in VM_PARTS and not args.host_only]
    if vm_parts and not args.in_vm:
        from lvsfeedback.testing import vm

        if not vm.host_has_ipvs():
            sys.stdout.flush()
            command = [sys.executable, str(Path(__file__).resolve()), "--in-vm", "--settle", str(args.settle),
                       "--rounds", str(args.rounds)]
            for part in vm_parts:
                command += ["--part", part]
            if args.window:
                command += ["--window", str(args.window)]
            return vm.main(["--timeout", "1800", "--", *command])
    if "write" in vm_parts:
        print_write(run_write(args))
    if "keepalived" in vm_parts:
        print_keepalived(run_keepalived(argparse.Namespace(**{**vars(args), "window": args.window or 30.0})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
