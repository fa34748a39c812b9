"""
Equal servers, capacity mode: how far apart the weights of servers that
should weigh the same wander (run N, docs/experiment.md: 144/144 -> 123/163
in the lab near saturation), by the policy's dead band, the pattern, the
load and the noise on the utilisation agents report. Prints, over ten seeds,
the median and worst of the largest weight ratio seen after the first 30
passes (1.00: no drift).

    .venv/bin/python bench/policy_drift.py [--dead-band B]... [--capacity R]

Three equal servers (R requests/s each, 10 by default, idle floor 0.05),
300 s each, the persistent pattern as the lab's (32 queued connections of
33 s). At 10 requests/s a server gets about the 20 packets a second the
policy needs to count its traffic, and switching between the estimates adds
to the drift; at 100 it does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lvsfeedback.director.policy import Mode, PolicySettings  # noqa: E402
from lvsfeedback.director.simulate import Scenario, Server, run  # noqa: E402

SEEDS = 10
SKIPPED = 30  # passes: slow start and the first steps


def worst_ratio(settings: PolicySettings, capacity: float, life: float, load: float, noise: float, seed: int) -> float:
    servers = [Server(capacity=capacity, floor=0.05, noise=noise) for _ in range(3)]
    scenario = Scenario(servers, load, 300.0, settings, connection_life=life, queued_connections=life > 0,
                        connection_pool=32 if life else 0, seed=seed)
    return max(max(weights) / min(weights) for weights in (p.weights for p in run(scenario)[SKIPPED:]) if all(weights))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dead-band", type=float, action="append", help="the policy's dead_band (default: shipped)")
    parser.add_argument("--capacity", type=float, default=10.0, help="requests/s each server serves")
    args = parser.parse_args()
    for band in args.dead_band or [PolicySettings().dead_band]:
        settings = PolicySettings(mode=Mode.CAPACITY, dead_band=band)
        for pattern, life in (("short", 0.0), ("persistent", 33.0)):
            for load in (0.5, 0.85):
                for noise in (0.02, 0.04, 0.08):
                    ratios = sorted(worst_ratio(settings, args.capacity, life, load, noise, seed) for seed in range(SEEDS))
                    print(f"dead band {band:.2f}  {pattern:10}  load {load:.2f}  noise {noise:.2f}:  "
                          f"largest weight ratio median {ratios[SEEDS // 2]:.2f}, worst {ratios[-1]:.2f}", flush=True)


if __name__ == "__main__":
    main()
