"""
The director's pass alone, per real server: N agents in a registry (no
connections), each answering every round as the scale bench's do (a new
report a round, a few of them with another health), then one updater pass
on an in-memory IPVS table and the status history's sample of it. Prints the
CPU microseconds per server of the pass and of the sample, in the quickest
round of all (the machine is shared) and the median.

    .venv/bin/python bench/director_pass.py [--agents N] [--rounds R] [--repeat K] [--observe] [--shipped]

The scale bench's director: 10 services, health mode without smoothing,
hysteresis or slow start, observe mode on an empty table (`--observe`);
without `--observe` the pass writes, so the table holds every server and
its counters. `--shipped`: the shipped policy (capacity mode) instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402

from lvsfeedback.director.config import load_config  # noqa: E402
from lvsfeedback.director.events import Agent  # noqa: E402
from lvsfeedback.director.registry import Registry  # noqa: E402
from lvsfeedback.director.updater import WeightUpdater  # noqa: E402
from lvsfeedback.director.web.history import History  # noqa: E402
from lvsfeedback.ipvs.memory import MemoryIPVS  # noqa: E402
from lvsfeedback.ipvs.model import DestCounters  # noqa: E402
from lvsfeedback.necp.units import Service  # noqa: E402

SERVICES = 10
HTTP = Service(forwarding=3, protocol=6, port=80)
SCALE_POLICY = 'mode = "health"\nsmoothing_half_life = 0.0\nhysteresis = 0.0\nslow_start = 0.0\n'
INTERVAL = 2.0
CHANGING = 0.05  # share of the agents whose health changes in a round


def address(number: int) -> str:
    return f"127.0.{1 + number // 100}.{1 + number % 100}"


def config_text(agents: int, observe: bool, policy: str) -> str:
    reals = agents // SERVICES
    lines = ["[director]", 'listen = "tcp:0:interface=127.0.0.1"', f"update_interval = {INTERVAL}",
             f"observe = {'true' if observe else 'false'}", "", "[policy]", policy]
    for s in range(SERVICES):
        lines += ["[[service]]", f'name = "svc{s}"', 'protocol = "tcp"', f'address = "192.0.2.{s + 1}"',
                  "port = 80", 'forwarding = "nat"']
        for i in range(reals):
            lines += ["[[service.real]]", f'address = "{address(s * reals + i)}"', "weight = 100"]
    return "\n".join(lines) + "\n"


def one_run(args) -> tuple[list[float], list[float]]:
    folder = Path(tempfile.mkdtemp(prefix="lvsbench-pass-"))
    path = folder / "director.toml"
    path.write_text(config_text(args.agents, args.observe, "" if args.shipped else SCALE_POLICY))
    config = load_config(path)
    clock = Clock()
    clock.advance(1000.0)
    registry = Registry(config, clock)
    table = MemoryIPVS()
    updater = WeightUpdater(config, registry, table, clock, observe=args.observe)
    history = History()
    agents = [Agent(address(n), 40000, n) for n in range(args.agents)]
    for agent in agents:
        registry.agentUp(agent)
        registry.servicesStarted(agent, [HTTP])
    health = {n: 80 for n in range(args.agents)}
    changing = max(1, int(args.agents * CHANGING))
    passes, samples = [], []
    for number in range(args.rounds):
        now = clock.seconds()
        # The answers to the round's questions, half a second before the pass.
        for n in range(number * changing, (number + 1) * changing):
            health[n % args.agents] = 130 - health[n % args.agents]
        for n, agent in enumerate(agents):
            registry.healthReported(agent, HTTP, health[n], now - 0.5)
        if not args.observe:
            # Traffic, as the kernel counts it: capacity mode steps from it.
            for key, entry in table.table().items():
                for dest, found in entry.dests.items():
                    packets = (found.counters.packets if found.counters else 0) + 100 + hash(dest) % 50
                    table.set_counters(key, dest, DestCounters(packets=packets))
        before = time.process_time()
        updater.run_pass()
        middle = time.process_time()
        history.record(updater.last)
        after = time.process_time()
        passes.append((middle - before) / args.agents * 1e6)
        samples.append((after - middle) / args.agents * 1e6)
        clock.advance(INTERVAL)
    # The first passes add every server and start every controller: not the steady state.
    return passes[2:], samples[2:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/director_pass.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000, help="a multiple of 10")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--observe", action="store_true", help="observe mode on an empty table, as the scale bench")
    parser.add_argument("--shipped", action="store_true", help="the shipped policy (capacity mode)")
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False, discardBuffer=True)
    passes, samples = [], []
    for _ in range(args.repeat):
        p, s = one_run(args)
        passes += p
        samples += s
    print(f"{args.agents} servers, {'observe' if args.observe else 'writing'}, "
          f"{'shipped policy' if args.shipped else 'scale bench policy'}: CPU µs per server, quickest / median")
    print(f"pass {min(passes):.2f} / {statistics.median(passes):.2f}   "
          f"history sample {min(samples):.2f} / {statistics.median(samples):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
