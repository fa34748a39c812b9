"""
The experiment's numbers: from a cell's raw records and samples to its
result document, from the results of many cells to the table, `report.md`
and the plots. Pure functions of recorded data (plots aside, which write
PNG files with matplotlib's Agg backend), so a recorded result rebuilds
the whole report on any machine:

    python -m lvsfeedback.lab.report results/experiment/results.json

Definitions used throughout:

- latency counts from each request's scheduled time (open loop); the
  statistics cover the requests scheduled in the measured window, after
  the warm-up;
- a server's CPU utilisation is its cgroup's `usage_usec` growth over the
  measured window divided by the window and its quota (a hog in the group
  counts: it is what the server really spent);
- weights are sampled from the director namespace's IPVS table each second;
- settling, after a change (hog on or off, a server failing or returning):
  each server's final level is the median of its weight over the last
  quarter of the phase (until the next change or the end of the load); the
  weights have settled at the first sample from which every server stays
  within a band of 10% of the largest final level (and stays there at
  least over that last quarter, or it never settled); `exits` counts how
  often a server left that band again after first entering it (0: no
  oscillation). Settling is given in seconds and in update periods.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from lvsfeedback.lab import failover
from lvsfeedback.lab.loadgen import OK, RequestRecord, percentile, summarize
from lvsfeedback.lab.scenarios import SCHEDULERS

SETTLE_BAND = 0.10
# Targets of issue #6, checked where the results hold the cells they need.
HALF = 0.5
NEAR_ORACLE = 1.2
EQUAL_SLACK = 1.05
SETTLE_PERIODS = 3
# A ramp's load step is sustained when its p99 stays under this (ms) and fewer than this share of its requests fail.
SUSTAINED_P99_MS = 1000.0
SUSTAINED_FAILED = 0.001
# A cell in which the VM did not get more than this share of its CPU time
# (steal: the host ran something else) measured the host as much as the lab.
MAX_STEAL = 0.10
# Overload targets (#14), on the highest load sustained, a share of the true capacity.
SUSTAIN_CAPACITY = 0.9
SUSTAIN_OVER_WLC = 1.5
# A cell whose load generator sent arrivals later than this (p99, ms) measured a stalled machine.
DEFAULT_MAX_LATENESS = 50.0
FEEDBACK_PREFIX = "lvsfeedback"


def pack_record(record: RequestRecord) -> list:
    """A record as a short JSON array: [scheduled, outcome, latency, server, error]."""
    latency = None if record.latency is None else round(record.latency, 6)
    return [round(record.scheduled, 6), record.outcome, latency, record.server, record.error]


def unpack_record(packed: list) -> RequestRecord:
    scheduled, outcome, latency, server, error = packed
    return RequestRecord(scheduled, outcome, latency, server, 200 if outcome == OK else None, error)


def _milliseconds(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def measured(records: list[RequestRecord], warmup: float, measure: float) -> list[RequestRecord]:
    """The requests scheduled in the measured window."""
    return [record for record in records if warmup <= record.scheduled < warmup + measure]


def lateness_summary(lateness: list[float]) -> dict[str, float | None]:
    """How late the generator sent its arrivals, in milliseconds."""
    if not lateness:
        return {"mean": None, "p99": None, "max": None}
    ordered = sorted(lateness)
    return {"mean": _milliseconds(statistics.fmean(ordered)), "p99": _milliseconds(percentile(ordered, 99)),
            "max": _milliseconds(ordered[-1])}


def weight_series(samples: list[dict], addresses: dict[str, str]) -> dict[str, list]:
    """{"time": [...], "rs1": [weight or None, ...], ...} from the IPVS samples."""
    series: dict[str, list] = {"time": [sample["time"] for sample in samples]}
    for name, address in addresses.items():
        series[name] = [sample["ipvs"].get(address, {}).get("weight") for sample in samples]
    return series


def cpu_utilisation(samples: list[dict], quotas: dict[str, float], start: float, stop: float) -> dict[str, float | None]:
    """Each server's CPU use between the samples nearest start and stop, as a share of its quota."""
    inside = [sample for sample in samples if start - 1 <= sample["time"] <= stop + 1]
    if len(inside) < 2:
        return {name: None for name in quotas}
    first = min(inside, key=lambda sample: abs(sample["time"] - start))
    last = min(inside, key=lambda sample: abs(sample["time"] - stop))
    elapsed = last["time"] - first["time"]
    if elapsed <= 0:
        return {name: None for name in quotas}
    return {
        name: round((last["usage_usec"][name] - first["usage_usec"][name]) / 1e6 / elapsed / quota, 4)
        for name, quota in quotas.items()
    }


def settling(series: dict[str, list], change: float, phase_end: float, update_interval: float | None) -> dict:
    """How long after `change` the weights settled, and whether they left their band again (see the module doc)."""
    names = [name for name in series if name != "time"]
    points = [(time, {name: series[name][i] or 0 for name in names})
              for i, time in enumerate(series["time"]) if change <= time <= phase_end]
    if len(points) < 4:
        return {"change": change, "seconds": None, "periods": None, "exits": None, "final": None}
    tail_start = phase_end - (phase_end - change) / 4
    tail = [weights for time, weights in points if time >= tail_start] or [points[-1][1]]
    final = {name: statistics.median(weights[name] for weights in tail) for name in names}
    band = max(SETTLE_BAND * max(final.values()), 1.0)
    inside = [all(abs(weights[name] - final[name]) <= band for name in names) for _, weights in points]
    settled_index = len(points)
    for index in range(len(points) - 1, -1, -1):
        if not inside[index]:
            break
        settled_index = index
    # Settled means staying in the band at least over the last quarter, whose median defines the levels.
    if settled_index == len(points) or points[settled_index][0] > tail_start:
        return {"change": change, "seconds": None, "periods": None, "exits": None, "final": final}
    seconds = round(points[settled_index][0] - change, 3)
    first_inside = inside.index(True)
    exits = sum(1 for before, after in zip(inside[first_inside:], inside[first_inside + 1:]) if before and not after)
    periods = None if not update_interval else round(seconds / update_interval, 2)
    return {"change": change, "seconds": seconds, "periods": periods, "exits": exits, "final": final}


def cost_in_cell(samples: list[dict], summary, hog_server: str | None, start: float, stop: float) -> float | None:
    """
    CPU seconds per request the servers without a hog spent in the measured
    window: the cost the cell really had, to set beside the calibration's.
    """
    inside = [sample for sample in samples if start - 1 <= sample["time"] <= stop + 1]
    if len(inside) < 2:
        return None
    first = min(inside, key=lambda sample: abs(sample["time"] - start))
    last = min(inside, key=lambda sample: abs(sample["time"] - stop))
    names = [name for name in summary.servers if name != hog_server]
    served = sum(summary.servers[name] for name in names)
    if not served:
        return None
    used = sum(last["usage_usec"][name] - first["usage_usec"][name] for name in names) / 1e6
    # The requests of the window were served over it: scale to the samples' span.
    return used / (served * (last["time"] - first["time"]) / (stop - start))


def failures_after(records: list[RequestRecord], moment: float, until: float, timeout: float) -> dict[str, int]:
    """
    Failed requests around a failure at `moment`: those scheduled in the
    timeout before it (they may have been in flight when it came), and those
    scheduled after it, until `until`.
    """
    failed = [record for record in records if record.outcome != OK and record.scheduled < until]
    return {
        "in_flight": sum(1 for record in failed if moment - timeout <= record.scheduled < moment),
        "after": sum(1 for record in failed if record.scheduled >= moment),
    }


def ramp_analysis(records: list[RequestRecord], steps: list[dict]) -> list[dict]:
    """Per load step of a ramp: its load, requests, p99 (ms) and share failed, over the requests scheduled in it."""
    analysis = []
    for step in steps:
        inside = [record for record in records if step["start"] <= record.scheduled < step["stop"]]
        latencies = sorted(record.latency for record in inside if record.outcome == OK)
        failed = len(inside) - len(latencies)
        analysis.append({
            "load": step["load"], "requests": len(inside),
            "p99": _milliseconds(percentile(latencies, 99)) if latencies else None,
            "failed_share": round(failed / len(inside), 6) if inside else None,
        })
    return analysis


def sustained_load(analysis: list[dict]) -> float:
    """
    The highest load of the steps sustained from the first one on (p99 under
    L{SUSTAINED_P99_MS}, failures under L{SUSTAINED_FAILED}); 0.0 when the
    first is not. A step passed after one failed does not count: the ramp
    has already broken.
    """
    sustained = 0.0
    for step in analysis:
        if not _step_sustained(step):
            break
        sustained = step["load"]
    return sustained


def _step_sustained(step: dict) -> bool:
    return step["p99"] is not None and step["p99"] < SUSTAINED_P99_MS and step["failed_share"] < SUSTAINED_FAILED


def judged_lateness(lateness: list[float], records: list[RequestRecord], ramp: list[dict] | None,
                    ramp_steps: list[dict] | None) -> list[float]:
    """
    The generator's lateness that can change the cell's verdict: all of it,
    but on a ramp only that of the arrivals before the end of the first step
    not sustained. Beyond that step the ramp has broken and no verdict reads
    its requests, while a generator juggling swamped servers' timeouts falls
    behind (the test VM: 75-163 ms at p99 in every cell, each then run three
    times). `lateness` is per arrival, in the order of `records`.
    """
    broken = next((index for index, step in enumerate(ramp or []) if not _step_sustained(step)), None)
    if broken is None or ramp_steps is None:
        return lateness
    stop = ramp_steps[broken]["stop"]
    return [late for late, record in zip(lateness, records) if record.scheduled < stop]


def steal_share(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    """The share of the machine's CPU time between two readings of /proc/stat that the hypervisor took (steal)."""
    if before is None or after is None or after["total"] <= before["total"]:
        return None
    return round((after["steal"] - before["steal"]) / (after["total"] - before["total"]), 4)


def cell_result(*, scenario: str, scheduler: str, pattern: str, repeat: int, config: dict, warmup: float,
                measure: float, rate: float, static_weights: dict | None, quotas: dict[str, float],
                hog_server: str | None, records: list[list], lateness: list[float], samples: list[dict],
                events: list[dict], director: dict | None, addresses: dict[str, str],
                update_interval: float | None, preroll: float | None = None,
                ramp_steps: list[dict] | None = None,
                cpu_times: tuple[dict, dict] | None = None) -> dict:
    """A cell's result document: its settings, statistics and series, with the raw records."""
    unpacked = [unpack_record(packed) for packed in records]
    summary = summarize(measured(unpacked, warmup, measure), measure)
    series = weight_series(samples, addresses)
    end = warmup + measure
    changes = [event["time"] for event in events]
    settle = []
    if update_interval is not None:
        for index, change in enumerate(changes):
            phase_end = changes[index + 1] if index + 1 < len(changes) else end
            settle.append({"event": events[index]["event"], **settling(series, change, phase_end, update_interval)})
    failed = None
    failing = [event for event in events if "fails" in event["event"]]
    if failing:
        returning = [event["time"] for event in events if "returns" in event["event"]]
        failed = failures_after(unpacked, failing[0]["time"], returning[0] if returning else end, config["timeout"])
    ramp = ramp_analysis(unpacked, ramp_steps) if ramp_steps else None
    return {
        "scenario": scenario,
        "scheduler": scheduler,
        "pattern": pattern,
        "repeat": repeat,
        "rate": round(rate, 3),
        "warmup": warmup,
        "measure": measure,
        "config": config,
        "quotas": quotas,
        "hog_server": hog_server,
        "static_weights": static_weights,
        "summary": {
            key: (_milliseconds(value) if key in ("mean", "p50", "p95", "p99", "p999", "max") else value)
            for key, value in asdict(summary).items()
        },
        "lateness_ms": lateness_summary(judged_lateness(lateness, unpacked, ramp, ramp_steps)),
        # From the load's start to its end, as the guest's /proc/stat counts it.
        "steal": steal_share(*(cpu_times or (None, None))),
        "cpu_utilisation": cpu_utilisation(samples, quotas, warmup, end),
        "cost_ms": _milliseconds(cost_in_cell(samples, summary, hog_server, warmup, end)),
        "weights": series,
        "events": events,
        "settling": settle,
        "failures": failed,
        "director": director,
        "update_interval": update_interval,
        # Seconds lvsfeedback ran before the load (0: a cold start); None: a static scheduler.
        "preroll": preroll,
        "ramp": ramp,
        "sustained": None if ramp is None else sustained_load(ramp),
        "records": records,
    }


# result sets built over several runs ---------------------------------------------------

# The plan settings that shape a cell's numbers: cells measured under
# different values of any of them do not belong in one table.
PLAN_SHAPE = ("warmup", "measure", "load", "work_ms", "seed", "connections", "requests_per_connection", "timeout",
              "feedback", "preroll", "ramp_step")
PLAN_SELECTION = ("scenarios", "schedulers", "patterns")


class ResultsError(Exception):
    """Result sets that cannot be combined, or a results.json that cannot be read; the message says which and why."""


def cell_key(cell: dict) -> tuple[str, str, str, int]:
    """What a cell measured: two cells with the same key answer the same question."""
    return cell["scenario"], cell["pattern"], cell["scheduler"], cell["repeat"]


def plan_differences(stored: dict, plan: dict) -> list[str]:
    """The plan settings (of L{PLAN_SHAPE}) in which two plans differ, as 'knob a vs b'."""
    return [f"{knob} {stored.get(knob)!r} vs {plan.get(knob)!r}"
            for knob in PLAN_SHAPE if stored.get(knob) != plan.get(knob)]


def widen_plan(stored: dict, plan: dict) -> dict:
    """A plan covering both: the union of scenarios, schedulers and patterns, the larger repeat count."""
    widened = dict(stored)
    for key in PLAN_SELECTION:
        widened[key] = list(dict.fromkeys([*stored[key], *plan[key]]))
    widened["repeats"] = max(stored["repeats"], plan["repeats"])
    return widened


def sessions(experiment: dict) -> list[dict]:
    """The runs that measured a result set: recorded by resumed and merged sets, else the one run it had."""
    return experiment.get("sessions") or [
        {"date": experiment["date"], "command": experiment["command"], "machine": experiment["machine"]}]


def merge(documents: list[tuple[str, dict]]) -> tuple[dict, list[str]]:
    """
    One result set from several (name, document) pairs measured with the
    same plan shape: the union of their cells, the first's where two hold
    the same cell. Returns it with a line per cell left out.
    """
    if not documents:
        raise ResultsError("nothing to merge")
    first_name, first = documents[0]
    merged = json.loads(json.dumps(first))
    experiment = merged["experiment"]
    experiment["sessions"] = sessions(experiment)
    held = {cell_key(cell): first_name for cell in merged["cells"]}
    notes = []
    for name, document in documents[1:]:
        other = document["experiment"]
        differences = plan_differences(experiment["plan"], other["plan"])
        if differences:
            raise ResultsError(f"{name} was measured with another plan than {first_name} "
                               f"({'; '.join(differences)}): its cells do not compare")
        experiment["plan"] = widen_plan(experiment["plan"], other["plan"])
        experiment["servers"] = max(experiment["servers"], other["servers"])
        experiment["scenarios"] = {**other.get("scenarios", {}), **experiment.get("scenarios", {})}
        experiment["sessions"] += sessions(other)
        for cell in document["cells"]:
            key = cell_key(cell)
            if key in held:
                notes.append(f"{name} and {held[key]} both hold {'/'.join(map(str, key))}: kept {held[key]}'s")
                continue
            held[key] = name
            merged["cells"].append(cell)
    merged["cells"].sort(key=lambda cell: plan_order(experiment["plan"], cell))
    return merged, notes


def plan_order(plan: dict, cell: dict) -> tuple[int, int, int, int]:
    """Where a cell comes in a run of the plan: scenario, pattern, repeat, then scheduler."""
    return (plan["scenarios"].index(cell["scenario"]), plan["patterns"].index(cell["pattern"]), cell["repeat"],
            plan["schedulers"].index(cell["scheduler"]))


# many cells --------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float] | None:
    values = [value for value in values if value is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per scenario x pattern x scheduler, each statistic as median, min and max over the repeats."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["scenario"], cell["pattern"], cell["scheduler"]), []).append(cell)
    rows = []
    for (scenario, pattern, scheduler), group in groups.items():
        summaries = [cell["summary"] for cell in group]
        names = sorted(group[0]["quotas"])
        row = {
            "scenario": scenario, "pattern": pattern, "scheduler": scheduler, "repeats": len(group),
            "rate": group[0]["rate"],
        }
        for key in ("mean", "p50", "p95", "p99", "p999", "throughput"):
            row[key] = _spread([summary[key] for summary in summaries])
        row["failed"] = _spread([summary["errors"] + summary["timeouts"] for summary in summaries])
        row["shares"] = {name: _spread([summary["shares"].get(name, 0.0) for summary in summaries]) for name in names}
        row["cpu"] = {name: _spread([cell["cpu_utilisation"][name] for cell in group]) for name in names}
        row["lateness_p99"] = _spread([cell["lateness_ms"]["p99"] for cell in group])
        row["steal"] = _spread([cell.get("steal") for cell in group])
        row["reruns"] = sum(len(cell.get("late_attempts", [])) for cell in group)
        row["writes"] = _spread([cell["director"]["writes"] for cell in group if cell["director"]])
        settles = [entry for cell in group for entry in cell["settling"]]
        row["settle_periods"] = _spread([entry["periods"] for entry in settles])
        row["settle_exits"] = _spread([entry["exits"] for entry in settles])
        row["unsettled"] = sum(1 for entry in settles if entry["periods"] is None)
        row["failures_after"] = _spread([cell["failures"]["after"] for cell in group if cell["failures"]])
        row["sustained"] = _spread([cell.get("sustained") for cell in group])
        row["failover"] = failover.aggregate([cell.get("failover") for cell in group])
        rows.append(row)
    return rows


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _cell(spread: dict | None, digits: int = 0) -> str:
    """median, with [min-max] when the repeats differ."""
    if spread is None:
        return "-"
    text = _number(spread["median"], digits)
    if spread["n"] > 1 and spread["min"] != spread["max"]:
        text += f" [{_number(spread['min'], digits)}-{_number(spread['max'], digits)}]"
    return text


TABLE_COLUMNS = ("scenario", "pattern", "scheduler", "rate/s", "p50 ms", "p99 ms", "p99.9 ms", "mean ms",
                 "failed", "shares %", "cpu %", "late p99 ms", "steal %", "writes", "settle (periods)")


def table_rows(rows: list[dict]) -> list[list[str]]:
    lines = []
    for row in rows:
        names = sorted(row["shares"])
        shares = "/".join(_number(None if row["shares"][n] is None else row["shares"][n]["median"] * 100)
                          for n in names)
        cpu = "/".join(_number(None if row["cpu"][n] is None else row["cpu"][n]["median"] * 100) for n in names)
        settle = "-"
        if row["settle_periods"] is not None or row["unsettled"]:
            settle = _cell(row["settle_periods"], 1)
            if row["settle_exits"] is not None and row["settle_exits"]["max"]:
                settle += f", {int(row['settle_exits']['max'])} exits"
            if row["unsettled"]:
                settle += f", {row['unsettled']} unsettled"
        lines.append([
            row["scenario"], row["pattern"], row["scheduler"], _number(row["rate"], 1),
            _cell(row["p50"]), _cell(row["p99"]), _cell(row["p999"]), _cell(row["mean"]),
            _cell(row["failed"]), shares, cpu,
            _cell(row["lateness_p99"], 1) + (f" ({row['reruns']} reruns)" if row.get("reruns") else ""),
            _cell(None if row["steal"] is None else {key: value * 100 if key != "n" else value
                                                     for key, value in row["steal"].items()}, 1),
            _cell(row["writes"]), settle,
        ])
    return lines


def format_table(rows: list[dict]) -> str:
    """The table for a terminal: aligned columns."""
    body = table_rows(rows)
    widths = [max(len(line[i]) for line in [list(TABLE_COLUMNS)] + body) for i in range(len(TABLE_COLUMNS))]
    out = []
    for line in [list(TABLE_COLUMNS)] + body:
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return "\n".join(out)


def markdown_table(rows: list[dict]) -> str:
    body = table_rows(rows)
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def p99_overview(rows: list[dict]) -> str:
    """A markdown grid of p99 latency: a line per scenario and pattern, a column per scheduler, failures noted."""
    schedulers = list(dict.fromkeys(row["scheduler"] for row in rows))
    lines_of: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        text = _cell(row["p99"])
        if row["failed"] is not None and row["failed"]["max"]:
            text += f" ({_cell(row['failed'])} failed)"
        lines_of.setdefault((row["scenario"], row["pattern"]), {})[row["scheduler"]] = text
    lines = ["| scenario, pattern | " + " | ".join(schedulers) + " |", "|" + "---|" * (len(schedulers) + 1)]
    for (scenario, pattern), cells in lines_of.items():
        lines.append(f"| {scenario}, {pattern} | " + " | ".join(cells.get(name, "-") for name in schedulers) + " |")
    return "\n".join(lines)


def sustained_overview(rows: list[dict]) -> str:
    """A markdown grid of the highest load sustained on the ramps (share of true capacity), or '' without ramps."""
    ramps = [row for row in rows if row.get("sustained") is not None]
    if not ramps:
        return ""
    schedulers = list(dict.fromkeys(row["scheduler"] for row in ramps))
    lines_of: dict[tuple[str, str], dict[str, str]] = {}
    for row in ramps:
        lines_of.setdefault((row["scenario"], row["pattern"]), {})[row["scheduler"]] = _cell(row["sustained"], 1)
    lines = ["| scenario, pattern | " + " | ".join(schedulers) + " |", "|" + "---|" * (len(schedulers) + 1)]
    for (scenario, pattern), cells in lines_of.items():
        lines.append(f"| {scenario}, {pattern} | " + " | ".join(cells.get(name, "-") for name in schedulers) + " |")
    return "\n".join(lines)


def _find(rows: list[dict], scenario: str, pattern: str, scheduler: str) -> dict | None:
    for row in rows:
        if (row["scenario"], row["pattern"], row["scheduler"]) == (scenario, pattern, scheduler):
            return row
    return None


def _p99(row: dict | None) -> float | None:
    return None if row is None or row["p99"] is None else row["p99"]["median"]


def _late(row: dict | None, max_lateness: float | None) -> float | None:
    """The row's generator lateness (p99, ms) when it exceeds max_lateness: that cell measured a stalled machine."""
    if row is None or max_lateness is None or row["lateness_p99"] is None:
        return None
    late = row["lateness_p99"]["median"]
    return late if late > max_lateness else None


def _versus(rows: list[dict], scenario: str, pattern: str, ours: str, other: str, limit: float) -> str:
    """Two p99s compared: the medians, with their [min-max] over repeats, and the limit on ours."""
    return (f"{_cell(_find(rows, scenario, pattern, ours)['p99'])} ms vs {other} "
            f"{_cell(_find(rows, scenario, pattern, other)['p99'])} ms (limit {limit:.0f})")


def _sustained(row: dict | None) -> float | None:
    return None if row is None or row.get("sustained") is None else row["sustained"]["median"]


def _sustain_checks(rows: list[dict], scheduler: str) -> list[dict]:
    """On each ramp: the load the scheduler sustains against the true capacity, the oracle's and wlc's."""
    checks = []
    for scenario, pattern in dict.fromkeys((row["scenario"], row["pattern"]) for row in rows
                                           if row.get("sustained") is not None):
        ours = _sustained(_find(rows, scenario, pattern, scheduler))
        if ours is None:
            continue
        mine = _cell(_find(rows, scenario, pattern, scheduler)["sustained"], 1)
        checks.append({
            "schedulers": (scheduler,),
            "target": f"{scenario} {pattern}: {scheduler} sustains at least {SUSTAIN_CAPACITY:.0%} of the true capacity",
            "met": ours >= SUSTAIN_CAPACITY, "numbers": f"sustained {mine}",
        })
        for other, factor, wording in (("oracle", 1.0, "the oracle's"), ("wlc", SUSTAIN_OVER_WLC, "1.5 times wlc's")):
            theirs = _sustained(_find(rows, scenario, pattern, other))
            if theirs is None:
                continue
            checks.append({
                "schedulers": (scheduler, other),
                "target": f"{scenario} {pattern}: {scheduler} sustains at least {wording} load",
                "met": ours >= factor * theirs,
                "numbers": f"sustained {mine} vs {other} {_cell(_find(rows, scenario, pattern, other)['sustained'], 1)} "
                           f"(limit {factor * theirs:.2f})",
            })
    return checks


def check_targets(rows: list[dict], max_lateness: float | None = DEFAULT_MAX_LATENESS) -> list[dict]:
    """
    Issue #6's targets, each met or missed with its numbers, for the cells
    present: a p99 is the median over the repeats (their range beside it).
    A comparison with a cell whose load generator ran late (the machine
    stalled) gets no verdict: C{met} is None.
    """
    checks = []
    feedback = sorted({row["scheduler"] for row in rows if row["scheduler"].startswith(FEEDBACK_PREFIX)})
    for scheduler in feedback:
        for scenario in ("hog", "unequal"):
            for pattern in ("persistent", "short"):
                ours = _p99(_find(rows, scenario, pattern, scheduler))
                wlc = _p99(_find(rows, scenario, pattern, "wlc"))
                oracle = _p99(_find(rows, scenario, pattern, "oracle"))
                if ours is None:
                    continue
                if wlc is not None:
                    limit = HALF * wlc if pattern == "persistent" else wlc
                    checks.append({
                        "schedulers": (scheduler, "wlc"),
                        "target": f"{scenario} {pattern}: {scheduler} p99 <= "
                                  f"{'half of ' if pattern == 'persistent' else ''}wlc's",
                        "met": ours <= limit, "numbers": _versus(rows, scenario, pattern, scheduler, "wlc", limit),
                    })
                if oracle is not None:
                    checks.append({
                        "schedulers": (scheduler, "oracle"),
                        "target": f"{scenario} {pattern}: {scheduler} p99 within 20% of the oracle's",
                        "met": ours <= NEAR_ORACLE * oracle,
                        "numbers": _versus(rows, scenario, pattern, scheduler, "oracle", NEAR_ORACLE * oracle),
                    })
        # Feedback must never do worse than no feedback (#14): in every scenario and pattern.
        # A ramp's p99 mixes its overloaded steps in: it is judged by the load it sustains instead.
        steady = [row for row in rows if row.get("sustained") is None]
        for scenario, pattern in dict.fromkeys((row["scenario"], row["pattern"]) for row in steady):
            ours = _p99(_find(rows, scenario, pattern, scheduler))
            wlc = _p99(_find(rows, scenario, pattern, "wlc"))
            if ours is not None and wlc is not None:
                checks.append({
                    "schedulers": (scheduler, "wlc"),
                    "target": f"{scenario} {pattern}: {scheduler} p99 no worse than wlc's by more than 5%",
                    "met": ours <= EQUAL_SLACK * wlc,
                    "numbers": _versus(rows, scenario, pattern, scheduler, "wlc", EQUAL_SLACK * wlc),
                })
        checks += _sustain_checks(rows, scheduler)
        for pattern in ("persistent", "short"):
            row = _find(rows, "hog-on-off", pattern, scheduler)
            if row is not None and (row["settle_periods"] is not None or row["unsettled"]):
                worst = None if row["settle_periods"] is None else row["settle_periods"]["max"]
                exits = 0 if row["settle_exits"] is None else row["settle_exits"]["max"]
                checks.append({
                    "schedulers": (),
                    "target": f"hog-on-off {pattern}: {scheduler} weights settle within {SETTLE_PERIODS} update "
                              "periods of each change, without oscillating",
                    "met": not row["unsettled"] and worst is not None and worst <= SETTLE_PERIODS and not exits,
                    "numbers": f"worst {_number(worst, 1)} periods, {int(exits)} band exits, "
                               f"{row['unsettled']} changes never settled",
                })
            row = _find(rows, "failure", pattern, scheduler)
            if row is not None and row["failures_after"] is not None:
                after = row["failures_after"]["max"]
                checks.append({
                    "schedulers": (),
                    "target": f"failure {pattern}: {scheduler} fails no request beyond those in flight",
                    "met": after == 0,
                    "numbers": f"{int(after)} requests scheduled after the failure failed (worst repeat)",
                })
    checks += failover.checks(rows)
    for check in checks:
        scenario, pattern = check["target"].split(":")[0].split()
        involved = [_find(rows, scenario, pattern, name) for name in check.pop("schedulers")]
        late = [value for value in (_late(row, max_lateness) for row in involved) if value is not None]
        if late:
            check["met"] = None
            check["numbers"] += f"; the generator ran {max(late):.0f} ms late at p99 in a cell compared"
    return checks


def too_busy(cells: list[dict], max_lateness: float, max_steal: float = MAX_STEAL) -> str | None:
    """
    A plain line when the machine was too busy for the cells to be judged:
    the load generator ran late, or the VM did not get its CPU (steal).
    """
    def cell_name(cell: dict) -> str:
        return f"{cell['scenario']}/{cell['pattern']}/{cell['scheduler']}/{cell['repeat'] + 1}"

    late = [cell for cell in cells if (cell["lateness_ms"]["p99"] or 0) > max_lateness]
    stolen = [cell for cell in cells if (cell.get("steal") or 0) > max_steal]
    reasons = []
    if late:
        worst = max(cell["lateness_ms"]["p99"] for cell in late)
        reasons.append(f"the load generator ran up to {worst:.0f} ms late at p99 (limit {max_lateness:g} ms) in "
                       f"{len(late)} of {len(cells)} cells ({', '.join(map(cell_name, late[:3]))}"
                       f"{', ...' if len(late) > 3 else ''})")
    if stolen:
        worst = max(cell["steal"] for cell in stolen)
        reasons.append(f"the VM did not get up to {worst:.0%} of its CPU time (steal, limit {max_steal:.0%}) in "
                       f"{len(stolen)} of {len(cells)} cells ({', '.join(map(cell_name, stolen[:3]))}"
                       f"{', ...' if len(stolen) > 3 else ''})")
    if not reasons:
        return None
    return "the machine was too busy to judge this run: " + "; ".join(reasons) + "."


def verdicts(document: dict) -> str:
    """What a run concludes, for the end of its output: the targets, and whether the machine was too busy to judge."""
    plan = document["experiment"]["plan"]
    checks = check_targets(aggregate(document["cells"]), plan.get("max_lateness", DEFAULT_MAX_LATENESS))
    lines = ["Targets:", format_checks(checks)] if checks else []
    busy = too_busy(document["cells"], plan.get("max_lateness") or DEFAULT_MAX_LATENESS)
    if busy:
        lines.append(busy)
    return "\n".join(lines)


def format_checks(checks: list[dict]) -> str:
    verdicts = {True: "met", False: "MISSED", None: "NO VERDICT (machine stalled)"}
    return "\n".join(f"- {verdicts[check['met']]}: {check['target']} ({check['numbers']})" for check in checks)


# plots -------------------------------------------------------------------------------


def _pyplot():
    # Its cache goes under the home folder by default, which is read-only in the test VM.
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "lvsfeedback-matplotlib"))
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the plots need matplotlib: pip install -e '.[lab]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def latency_cdf(cells: list[dict], scenario: str, pattern: str, path: Path) -> Path:
    """Latency CDF of every scheduler of one scenario and pattern (repeat 0), log scale."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for cell in cells:
        if (cell["scenario"], cell["pattern"], cell["repeat"]) != (scenario, pattern, 0):
            continue
        records = measured([unpack_record(packed) for packed in cell["records"]], cell["warmup"], cell["measure"])
        latencies = sorted(record.latency * 1000 for record in records if record.outcome == OK)
        if not latencies:
            continue
        fractions = [(index + 1) / len(records) for index in range(len(latencies))]
        # The generator's lateness tells a cell that measured a stalled machine.
        label = f"{cell['scheduler']} (generator late p99 {_number(cell['lateness_ms']['p99'])} ms)"
        axes.plot(latencies, fractions, label=label, drawstyle="steps-post")
    axes.set_xscale("log")
    axes.set_xlabel("latency from scheduled start (ms, log scale)")
    axes.set_ylabel("share of requests answered")
    axes.set_ylim(0, 1.0)
    axes.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    axes.set_title(f"{scenario}, {pattern}: latency CDF per scheduler")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def timeline(cell: dict, path: Path) -> Path:
    """Weights (top) and each server's p99 latency per 2-second bin (bottom) over one cell, with its events."""
    pyplot = _pyplot()
    figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    series = cell["weights"]
    names = sorted(cell["quotas"])
    for name in names:
        top.step(series["time"], [w if w is not None else float("nan") for w in series[name]], where="post", label=name)
    top.set_ylabel("IPVS weight")
    top.legend(loc="upper right")
    records = [unpack_record(packed) for packed in cell["records"]]
    bin_width = 2.0
    for name in names:
        bins: dict[int, list[float]] = {}
        for record in records:
            if record.outcome == OK and record.server == name:
                bins.setdefault(int(record.scheduled // bin_width), []).append(record.latency * 1000)
        times = sorted(bins)
        top_latency = [percentile(sorted(bins[t]), 99) for t in times]
        bottom.plot([t * bin_width for t in times], top_latency, marker=".", linewidth=0.8, label=name)
    failures = sorted(record.scheduled for record in records if record.outcome != OK)
    if failures:
        bottom.plot(failures, [1] * len(failures), "rx", label="failed requests")
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 latency per 2 s (ms)")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend(loc="upper right")
    for axes in (top, bottom):
        axes.axvline(cell["warmup"], color="grey", linestyle="--", linewidth=0.8)
        for event in cell["events"]:
            axes.axvline(event["time"], color="red", linestyle=":", linewidth=1)
        axes.grid(True, alpha=0.3)
    top.set_title(f"{cell['scenario']}, {cell['pattern']}, {cell['scheduler']}"
                  + "".join(f"\n{event['event']} at {event['time']:.0f} s" for event in cell["events"]), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def plots(cells: list[dict], out: Path) -> list[Path]:
    """Every plot of the report: a CDF per scenario and pattern; timelines where the cluster changes or feedback acts."""
    made = []
    for scenario, pattern in sorted({(cell["scenario"], cell["pattern"]) for cell in cells}):
        made.append(latency_cdf(cells, scenario, pattern, out / f"cdf-{scenario}-{pattern}.png"))
    for cell in cells:
        changing = cell["events"] or cell["scheduler"].startswith(FEEDBACK_PREFIX)
        if changing and cell["repeat"] == 0:
            name = f"timeline-{cell['scenario']}-{cell['pattern']}-{cell['scheduler']}.png"
            made.append(timeline(cell, out / name))
    return made


# report.md ---------------------------------------------------------------------------


def _cost_range(cells: list[dict]) -> str:
    costs = [cell["cost_ms"] for cell in cells if cell.get("cost_ms") is not None]
    return f"{min(costs):.1f}-{max(costs):.1f}" if costs else "-"


def _sessions_lines(setup: dict) -> list[str]:
    """The runs that built a resumed or merged result set, one line each."""
    runs = sessions(setup)
    if len(runs) < 2:
        return []
    lines = [f"The cells were measured in {len(runs)} runs:", ""]
    lines += [f"- {run['date']} ({run['machine']['where']}, guest load average at start "
              f"{run['machine']['loadavg_start']}): `{run['command']}`" for run in runs]
    return lines + [""]


def _capped_repeats(plan: dict) -> str:
    capped = [f"`{name}` {SCHEDULERS[name].repeats}" for name in plan["schedulers"]
              if name in SCHEDULERS and SCHEDULERS[name].repeats is not None
              and SCHEDULERS[name].repeats < plan["repeats"]]
    return f" ({', '.join(capped)}: equal weights, one repeat tells all they show)" if capped else ""


def markdown(document: dict, rows: list[dict], checks: list[dict], plot_paths: list[Path]) -> str:
    setup = document["experiment"]
    machine = setup["machine"]
    lines = [
        "# lvsfeedback experiment",
        "",
        f"Run on {setup['date']} ({machine['where']}; kernel {machine['kernel']}, {machine['cpus']} CPUs, "
        f"{machine['cpu_model']}; guest load average at start {machine['loadavg_start']}, at end "
        f"{machine.get('loadavg_end', '-')}). Command: `{setup['command']}`.",
        "",
        *_sessions_lines(setup),
        "## Setup",
        "",
        f"- Cluster: client, director (IPVS NAT, VIP {setup['vip']}:80) and {setup['servers']} real servers (a "
        "scenario with fewer uses the first ones), each in "
        f"its own network namespace and cgroup v2 with a `cpu.max` quota (period {setup['quota_period_ms']:g} ms). "
        f"Each backend spends {setup['plan']['work_ms']:g} ms of CPU (SHA-256) per request, one request at a time.",
        *([line] if (line := failover.setup_line(document["cells"])) else []),
        f"- Calibration: a request costs {setup['calibration']['cost'] * 1000:.1f} ms of CPU in the backend's cgroup "
        f"(measured over {setup['calibration']['requests']} requests); a server's capacity is quota / cost, halved "
        "while a one-worker hog shares its cgroup. The offered load is "
        f"{setup['plan']['load']:.0%} of the cluster's capacity in its weakest state. In the cells themselves a "
        f"request cost {_cost_range(document['cells'])} ms (servers without a hog): where that differs from the "
        "calibration, the real offered load differs from the nominal one in proportion.",
        f"- Load: open-loop Poisson, seed {setup['plan']['seed']} (the same arrivals for every scheduler), "
        f"{setup['plan']['warmup']:g} s warm-up then {setup['plan']['measure']:g} s measured; latency from each "
        f"request's scheduled time; timeout {setup['plan']['timeout']:g} s. `persistent`: "
        f"{setup['plan']['connections']} keep-alive connections, each replaced after "
        f"{setup['plan']['requests_per_connection']} requests; `short`: one request per connection.",
        "- Schedulers: `rr`, `wrr`, `wlc` with static equal weights (an operator who does not know the "
        "capacities); `oracle`: `wlc` with static weights proportional to the true spare capacities; "
        "`lvsfeedback-health` and `lvsfeedback-capacity`: `wlc` with weights set by `lvs-director` from one "
        "`lvs-agent` per server reporting the `cgroup` metric of its server's cgroup. "
        + (f"They start warm: the director and agents run {setup['plan']['preroll']:g} s with the scenario's "
           "condition in place (quotas, a hog from the start) before the load, as a director that has been "
           "running; `lvsfeedback-MODE-cold` starts the load as soon as every agent has reported and slow start "
           "is over." if "preroll" in setup["plan"] else ""),
        f"- Director settings: update_interval {setup['plan']['feedback']['update_interval']:g} s, health_interval "
        f"{setup['plan']['feedback']['health_interval']:g} s, policy "
        + ", ".join(f"{key} = {value}" for key, value in setup['plan']['feedback']['policy'].items()) + ".",
        f"- Repeats: {setup['plan']['repeats']} per cell{_capped_repeats(setup['plan'])}; tables give the median "
        "with [min-max] over repeats. "
        + ("A cell whose load generator ran more than "
           f"{setup['plan']['max_lateness']:g} ms late at p99 (the VM stalled) ran again, at most "
           f"{setup['plan']['retries']} times; the table counts those reruns."
           if setup["plan"].get("max_lateness") else ""),
        "",
        "## Scenarios",
        "",
    ]
    for name, scenario in setup["scenarios"].items():
        lines.append(f"- `{name}` ({scenario['number']}): {scenario['title']}; quotas "
                     f"{', '.join(f'{q:g}' for q in scenario['quotas'])} CPU; offered "
                     f"{scenario['rate']:.1f} requests/s (on average over the measured period); oracle weights "
                     f"{scenario['oracle_weights']}.")
    lines += [
        "",
        "## Results",
        "",
        "p99 latency in ms (median [min-max] over repeats):",
        "",
        p99_overview(rows),
        "",
        *([f"The master director killed (`{failover.SCENARIO}`; before, across and after the kill as defined "
           f"in `lvsfeedback/lab/failover.py`; medians over repeats):", "", failover.overview(rows), ""]
          if failover.overview(rows) else []),
        *([f"Highest load sustained on the ramps, as a share of the true capacity (the last step, from the "
           f"first on, with p99 under {SUSTAINED_P99_MS:g} ms and under {SUSTAINED_FAILED:.1%} failed; 0.0: not even "
           "the first; median [min-max] over repeats):", "", sustained_overview(rows), ""]
          if sustained_overview(rows) else []),
        "All statistics: latencies in ms; `failed` = errors + timeouts; `shares` and `cpu` per server rs1/rs2/...; `cpu` is "
        "the share of each quota used (the hog's use included); `late p99` is how late the load generator sent "
        "its arrivals (on a ramp, those before the end of the first step not sustained); `writes` = the director's "
        "weight writes; `settle` = update periods until the weights "
        "settled after each change (see the definition below).",
        "",
        markdown_table(rows),
        "",
        "## Targets",
        "",
        format_checks(checks) or "- (no cell of this run has a target)",
        "",
        *([busy, ""] if (busy := too_busy(document["cells"], setup["plan"].get("max_lateness")
                                          or DEFAULT_MAX_LATENESS)) else []),
        "## Definitions",
        "",
        __doc__.split("Definitions used throughout:")[1].strip(),
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{path.stem}]({path.name})" for path in plot_paths]
    return "\n".join(lines) + "\n"


def write_report(document: dict, out: Path, with_plots: bool = True) -> tuple[str, list[Path]]:
    """report.md (and the plots) in out; the terminal table and the plots' paths."""
    rows = aggregate(document["cells"])
    checks = check_targets(rows, document["experiment"]["plan"].get("max_lateness", DEFAULT_MAX_LATENESS))
    plot_paths = plots(document["cells"], out) if with_plots else []
    (out / "report.md").write_text(markdown(document, rows, checks, plot_paths))
    terminal = format_table(rows)
    if failover.overview(rows):
        terminal += "\n\nThe master director killed:\n" + failover.overview(rows)
    if sustained_overview(rows):
        terminal += "\n\nHighest load sustained on the ramps (share of the true capacity):\n" + sustained_overview(rows)
    return terminal, plot_paths


def read_results(path: Path) -> dict:
    """A results.json, or a ResultsError saying why it cannot be read."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict) or "cells" not in document \
            or "plan" not in document.get("experiment", {}):
        raise ResultsError(f"{path} is not an experiment's results.json (no plan or no cells)")
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lvsfeedback.lab.report",
        description="Rebuild report.md and the plots from a results.json, or merge several into one.")
    parser.add_argument("results", type=Path, nargs="?", help="a results.json")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS",
                        help="merge these results.json files (same plan shape) into --out/results.json")
    parser.add_argument("--out", type=Path, help="folder for report.md and plots (the results' folder)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if (args.results is None) == (args.merge is None):
        parser.error("give one results.json, or --merge with several")
    if args.merge and args.out is None:
        parser.error("--merge needs --out, the folder of the merged result set")
    try:
        if args.merge:
            document, notes = merge([(str(path), read_results(path)) for path in args.merge])
            for note in notes:
                print(note)
        else:
            document = read_results(args.results)
    except ResultsError as error:
        print(f"lvsfeedback report: {error}", file=sys.stderr)
        return 1
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        (out / "results.json").write_text(json.dumps(document))
    terminal, plot_paths = write_report(document, out, with_plots=not args.no_plots)
    print(terminal)
    print(f"\nreport: {out / 'report.md'}")
    conclusion = verdicts(document)
    if conclusion:
        print()
        print(conclusion)
    return 0


if __name__ == "__main__":
    sys.exit(main())
