"""
The lab's persistent-connection cells, pass to pass (#14): how far and how
fast capacity mode's weights swing, and how noisy the utilisation an agent
reads over its 1 s window is, next to the static oracle's and wlc's cells.

    .venv/bin/python bench/persist_lab.py [results.json.gz ...]

A server's utilisation is rebuilt from the request records: a request ran
on its server at the server's whole quota for cost / quota seconds before it
completed (a backend serves one at a time), so the CPU used in a window is
the overlap of those intervals with it, over quota x window.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
from pathlib import Path

DEFAULT = ["docs/experiment/matrix/results.json.gz", "docs/experiment/run-q-untuned/results.json.gz"]


def utilisation(cell, window: float = 1.0) -> dict[str, list[float]]:
    cost, quotas = cell["cost_ms"] / 1000, cell["quotas"]
    end = cell["warmup"] + cell["measure"]
    bins = int(end / window)
    used = {name: [0.0] * bins for name in quotas}
    for start, status, latency, server, _ in cell["records"]:
        if status != "ok" or server not in quotas:
            continue
        done = start + latency
        begin = done - cost / quotas[server]
        for k in range(max(0, int(begin / window)), min(bins, int(done / window) + 1)):
            overlap = min(done, (k + 1) * window) - max(begin, k * window)
            if overlap > 0:
                used[server][k] += overlap
    return {name: [u / window for u in series] for name, series in used.items()}


def period(series: list[float]) -> float | None:
    """The dominant period (samples) from the first autocorrelation peak after the first zero crossing."""
    mean = statistics.fmean(series)
    x = [v - mean for v in series]
    var = sum(v * v for v in x)
    if not var:
        return None
    ac = [sum(x[i] * x[i + lag] for i in range(len(x) - lag)) / var for lag in range(len(x) // 2)]
    crossed = next((lag for lag, a in enumerate(ac) if a < 0), None)
    if crossed is None:
        return None
    peak = max(range(crossed, len(ac)), key=lambda lag: ac[lag])
    return float(peak) if ac[peak] > 0.1 else None


def describe(cell, phases) -> list[str]:
    names = sorted(cell["quotas"])
    total_q = sum(cell["quotas"].values())
    lines = []
    times = cell["weights"]["time"]
    util1 = utilisation(cell, 1.0)
    for label, (t0, t1) in phases.items():
        idx = [i for i, t in enumerate(times) if t0 <= t < t1]
        parts = []
        for name in names:
            oracle = cell["quotas"][name] / total_q
            shares = [cell["weights"][name][i] / sum(cell["weights"][n][i] for n in names) for i in idx]
            ratio = [s / oracle for s in shares]
            w = [cell["weights"][name][i] for i in idx]
            u = util1[name][int(t0):int(t1)]
            # noise: change between 1 s windows 2 s apart (a pass apart), as the policy estimates it
            du = [abs(u[i] - u[i - 2]) * math.sqrt(math.pi) / 2 for i in range(2, len(u))]
            p = period(shares)
            parts.append(
                f"{name} w {min(w)}-{max(w)} share/oracle {min(ratio):.2f}-{max(ratio):.2f} "
                f"sd {statistics.pstdev(ratio):.2f} period {'-' if p is None else f'{p:.0f}s'}; "
                f"u mean {statistics.fmean(u):.2f} sd(1s) {statistics.pstdev(u):.2f} "
                f"pass-noise {statistics.fmean(du):.2f}"
            )
        lines.append(f"  {label}: " + "\n    ".join(parts))
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", default=DEFAULT)
    parser.add_argument("--scenario", action="append", default=[])
    parser.add_argument("--pattern", default="persistent")
    args = parser.parse_args(argv)
    for file in args.files:
        data = json.load(gzip.open(Path(file)))
        print(file)
        for cell in data["cells"]:
            if cell["pattern"] != args.pattern or (args.scenario and cell["scenario"] not in args.scenario):
                continue
            if cell["scenario"] not in ("light", "grow", "shrink"):
                continue
            end = cell["warmup"] + cell["measure"]
            third = cell["warmup"] + cell["measure"] / 3
            phases = {"before 1/3": (cell["warmup"], third), "after 1/3": (third, end)}
            if cell["scenario"] in ("grow", "shrink"):
                phases = {"first third": (cell["warmup"], third), "middle": (third, third + cell["measure"] / 3),
                          "last": (third + cell["measure"] / 3, end)}
            print(f" {cell['scenario']} {cell['scheduler']} r{cell['repeat']} p99 {cell['summary']['p99']:.0f}")
            print("\n".join(describe(cell, phases)))


if __name__ == "__main__":
    main()
