"""
Equal servers beside a hogged one, capacity mode (#14, #17; the lab's
failover scenario, run O): rs1 has a CPU hog in its cgroup, so its
utilisation reads ~0.98 whatever its weight and it serves half as much;
rs2 and rs3 are equal. Prints, over seeds, the median and worst of the
largest rs2/rs3 weight ratio after the first 30 passes (1.00: no drift),
by pattern, load and report noise. With --takeover T the master director
dies at T s and its backup, which followed its weights, goes on (#17): the
ratio is then counted from T on, with and without the takeover, so that
the pair's drift reads against a director that never failed.

    .venv/bin/python bench/hog_drift.py [--seeds N] [--policy NAME]... [--pattern P]... [--load L]... [--noise N]...
                                        [--takeover T]

The lab's persistent pattern: 32 queued connections, each renewed after 25
requests (life = 32 x 25 / rate); short: one request per connection.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lvsfeedback.director import capacity_policy  # noqa: E402
from lvsfeedback.director.policy import Mode, PolicySettings  # noqa: E402
from lvsfeedback.director.simulate import Event, EventKind, Scenario, Server, run  # noqa: E402

SKIPPED = 30  # passes: slow start and the first steps
SETTINGS = PolicySettings(mode=Mode.CAPACITY)
REQUESTS_PER_CONNECTION = 25
POOL = 32


def hog_scenario(persistent: bool, load: float, noise: float, seed: int, duration: float = 300.0,
                 takeover: float | None = None) -> Scenario:
    servers = [Server(5.25, 0.1, noise, busy=0.98), Server(10.49, 0.1, noise), Server(10.49, 0.1, noise)]
    rate = load * sum(server.capacity for server in servers)
    life = POOL * REQUESTS_PER_CONNECTION / rate if persistent else 0.0
    events = [] if takeover is None else [Event(takeover, EventKind.TAKEOVER)]
    return Scenario(servers, load, duration, SETTINGS, events, packets_per_request=2.0, connection_life=life,
                    queued_connections=persistent, connection_pool=POOL, seed=seed)


def equal_ratio(scenario: Scenario, since: float | None = None) -> float:
    """The largest ratio of the equal servers' (rs2, rs3) weights after `SKIPPED` passes, or from `since` s on."""
    passes = run(scenario)
    counted = passes[SKIPPED:] if since is None else [p for p in passes if p.time >= since]
    return max(max(p.weights[1], p.weights[2]) / min(p.weights[1], p.weights[2])
               for p in counted if p.weights[1] and p.weights[2])


# The policies compared, and single factors switched off to find the mechanism
# (module constants of capacity_policy; _SATURATED 2.0: no server is pinned).
# "before": the policy before 5b27ee3, neither change.
VARIANTS = {
    "before": {"_NOISE_BAND": 0.0, "_SATURATED": 2.0},
    "pinned-out-only": {"_NOISE_BAND": 0.0},  # pinned servers out of the others' mean, no noise band
    "noise-band-only": {"_SATURATED": 2.0},
    "shipped": {},  # the noise band and pinned servers out
    "shipped-no-lag-gain": {"_LAG_GAIN": 1.0},
    "shipped-weight-anchor": {"_COUNTED_RATE": float("inf"), "_COUNTED_CONNECTIONS": 10**9},  # no traffic anchor
    "before-no-lag-gain": {"_NOISE_BAND": 0.0, "_SATURATED": 2.0, "_LAG_GAIN": 1.0},
    "before-no-integrator": {"_NOISE_BAND": 0.0, "_SATURATED": 2.0, "_INTEGRAL_GAIN": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--policy", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--pattern", choices=["short", "persistent"], action="append")
    parser.add_argument("--load", type=float, action="append")
    parser.add_argument("--noise", type=float, action="append")
    parser.add_argument("--takeover", type=float, help="the master dies at this second (the run lasts twice as long)")
    args = parser.parse_args()
    runs = [("", None)] if args.takeover is None else [("no takeover", None), ("takeover", args.takeover)]
    shipped = {name: getattr(capacity_policy, name) for variant in VARIANTS.values() for name in variant}
    for policy in args.policy or ["before", "noise-band-only", "pinned-out-only", "shipped"]:
        for name, value in {**shipped, **VARIANTS[policy]}.items():
            setattr(capacity_policy, name, value)
        for pattern in args.pattern or ["short", "persistent"]:
            for load in args.load or [0.5, 0.7, 0.9]:
                for noise in args.noise or [0.0, 0.01, 0.03, 0.06]:
                    for label, takeover in runs:
                        ratios = sorted(
                            equal_ratio(hog_scenario(pattern == "persistent", load, noise, seed,
                                                     2 * args.takeover if args.takeover else 300.0, takeover),
                                        args.takeover)
                            for seed in range(args.seeds))
                        print(f"{policy:21} {pattern:10}  load {load:.2f}  noise {noise:.2f} {label:11}:  rs2/rs3 "
                              f"largest ratio median {ratios[len(ratios) // 2]:.2f}, worst {ratios[-1]:.2f}", flush=True)


if __name__ == "__main__":
    main()
