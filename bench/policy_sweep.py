"""
The policy over many model clusters (lvsfeedback.director.simulate): how fast
it settles, how close its fixed point comes to equal utilisation, whether it
starves a server, how often it writes, with short requests and with
persistent connections. Prints one row per mode and connection life.

    .venv/bin/python bench/policy_sweep.py [--clusters N] [--seed S] [--mode M]...

Clusters: 2 to 8 servers, capacities up to 1:8, idle floors 0 to 0.15, report
noise 0 to 0.03, offered load 0.3 to 0.7 of capacity above the highest floor,
20 to 2,000 requests/s in all; 120 s each, shipped defaults.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lvsfeedback.director.policy import Mode, PolicySettings  # noqa: E402
from lvsfeedback.director.simulate import Scenario, Server, equal_utilisation_shares, run  # noqa: E402

DURATION = 120.0
BAND = 0.2  # settled: every share within 20 % of the equalising shares, and staying there


def cluster(rng: random.Random) -> tuple[list[Server], float]:
    count = rng.randint(2, 8)
    scale = rng.choice([3.0, 20.0, 100.0])
    noise = rng.uniform(0, 0.03)
    servers = [Server(scale * rng.uniform(1, 8), rng.uniform(0, 0.15), noise) for _ in range(count)]
    load = max(0.2, rng.uniform(0.3, 0.7) - max(server.floor for server in servers))
    return servers, load


def figures(history, servers, load) -> dict[str, float | None]:
    rate = load * sum(server.capacity for server in servers)
    want = equal_utilisation_shares(servers, [True] * len(servers), rate)

    def error(record) -> float:
        return max(abs(share - w) / w for share, w in zip(record.shares, want) if w > 0)

    settled = next((i for i in range(len(history)) if all(error(r) <= BAND for r in history[i:])), None)
    last = history[-10:]
    averaged = [sum(r.shares[i] for r in last) / len(last) for i in range(len(servers))]
    fixed = max(abs(a - w) / w for a, w in zip(averaged, want) if w > 0)
    least = min(min(r.shares[i] / want[i] for i in range(len(servers)) if want[i] > 0) for r in history[10:])
    peak = max(max(r.utilisations) for r in history[len(history) // 2:])
    writes = sum(r.writes for r in history[len(history) // 2:]) / len(servers)
    return {"settled": settled, "fixed": fixed, "least": least, "peak": peak, "writes": writes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/policy_sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", action="append", choices=[m.value for m in Mode])
    parser.add_argument("--life", type=float, action="append", help="connection life in seconds (0 and 33)")
    parser.add_argument("--hysteresis", type=float, default=PolicySettings().hysteresis,
                        help="[policy] hysteresis (default: shipped)")
    parser.add_argument("--dead-band", type=float, default=PolicySettings().dead_band,
                        help="[policy] dead_band (default: shipped)")
    args = parser.parse_args(argv)
    modes = [Mode(m) for m in args.mode or [m.value for m in Mode]]
    lives = args.life or [0.0, 33.0]
    print(f"{args.clusters} clusters (seed {args.seed}), {DURATION:g} s each; passes every 2 s; "
          f"hysteresis {args.hysteresis:g}, dead band {args.dead_band:g}")
    print(f"{'mode':<9} {'life s':>6}  {'settled (passes) median/p90/never':>34}  {'fixed-point error median/worst':>31}"
          f"  {'least share/wanted':>18}  {'peak util p90':>13}  {'writes/server/min':>17}")
    for mode in modes:
        for life in lives:
            rng = random.Random(args.seed)
            settings = PolicySettings(mode=mode, hysteresis=args.hysteresis, dead_band=args.dead_band)
            rows = []
            for number in range(args.clusters):
                servers, load = cluster(rng)
                scenario = Scenario(servers, load, DURATION, settings, connection_life=life, seed=number)
                rows.append(figures(run(scenario), servers, load))
            settled = sorted(r["settled"] for r in rows if r["settled"] is not None)
            never = sum(1 for r in rows if r["settled"] is None)
            p90 = settled[int(0.9 * len(settled))] if len(settled) > 0.9 * len(rows) else "-"
            fixed = [r["fixed"] for r in rows]
            peaks = sorted(r["peak"] for r in rows)
            writes = statistics.mean(r["writes"] for r in rows) * 60 / (DURATION / 2)
            median = statistics.median(settled) if settled else "-"
            print(f"{mode.value:<9} {life:>6g}  {median!s:>14} / {p90!s:>4} / {never:>4}"
                  f"      {statistics.median(fixed):>14.1%} / {max(fixed):>6.1%}  {min(r['least'] for r in rows):>18.2f}"
                  f"  {peaks[int(0.9 * len(peaks))]:>13.2f}  {writes:>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
