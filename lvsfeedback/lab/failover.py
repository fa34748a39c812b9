"""
The failover scenario's figures (issue #17): a pair of directors in DR whose
master is killed at half time, lvsfeedback's pair (C{lvsfeedback-capacity},
the backup following the master's weights) against a keepalived pair with
static equal weights (C{wlc}). Pure functions of recorded data, as in
L{lvsfeedback.lab.report}; the cells are run by L{lvsfeedback.lab.failover_cells}.

The measured period is split at the kill, C{K} seconds from the load's start
(when the master's link went down), by each request's scheduled time:

- before: from the measured period's start to C{K - ACROSS_BEFORE};
- across: C{K - ACROSS_BEFORE} to C{K + ACROSS_AFTER}, the requests that
  may have been in flight at the kill and those the takeover delays (VRRP's
  master-down interval, then a lost SYN's retransmission a second later);
- after: from there to the measured period's end.

Each part's p99 is over its successful requests (as every p99 of the
experiment); its failed requests are errors and timeouts. The takeover time
is from the kill to the first new connection through the VIP that the
runner's own probe completes (connect() returns: a real server answered the
SYN the new master forwarded).
"""

from __future__ import annotations

import statistics

from lvsfeedback.lab.loadgen import RequestRecord, summarize

SCENARIO = "failover"
PAIR = "lvsfeedback-capacity"
STATIC = "wlc"
ACROSS_BEFORE = 1.0
ACROSS_AFTER = 5.0
PHASES = ("before", "across", "after")
# Target: the pair's p99 after the takeover at most this much of its p99 before.
AFTER_WITHIN = 1.2
# The probe tries a new connection this often: a takeover time's resolution.
PROBE_ATTEMPT = 0.2


def phase_bounds(warmup: float, measure: float, killed: float) -> dict[str, tuple[float, float]]:
    """Each part's [start, stop) in seconds from the load's start."""
    return {
        "before": (warmup, killed - ACROSS_BEFORE),
        "across": (killed - ACROSS_BEFORE, killed + ACROSS_AFTER),
        "after": (killed + ACROSS_AFTER, warmup + measure),
    }


def split(records: list[RequestRecord], warmup: float, measure: float,
          killed: float) -> dict[str, list[RequestRecord]]:
    """The measured requests by part, by their scheduled time."""
    return {phase: [record for record in records if start <= record.scheduled < stop]
            for phase, (start, stop) in phase_bounds(warmup, measure, killed).items()}


def figures(records: list[RequestRecord], warmup: float, measure: float, killed: float,
            takeover: float | None) -> dict:
    """A cell's failover figures: each part's p99 (ms), failed and requests, the takeover (s; None: never)."""
    parts = {}
    for phase, part in split(records, warmup, measure, killed).items():
        start, stop = phase_bounds(warmup, measure, killed)[phase]
        summary = summarize(part, stop - start)
        parts[phase] = {"p99": None if summary.p99 is None else round(summary.p99 * 1000, 3),
                        "failed": summary.errors + summary.timeouts, "requests": summary.requests}
    return {"killed": round(killed, 3), "takeover": None if takeover is None else round(takeover, 3), **parts,
            "failed": sum(parts[phase]["failed"] for phase in PHASES)}


def _median(values: list[float | None]) -> float | None:
    """The median over repeats; None if any repeat has none (a takeover never seen, a part without success)."""
    if not values or any(value is None for value in values):
        return None
    return statistics.median(values)


def aggregate(cells_figures: list[dict | None]) -> dict | None:
    """The median of each figure over a row's repeats; None for a row of another scenario."""
    held = [each for each in cells_figures if each is not None]
    if not held:
        return None
    row: dict = {phase: {key: _median([each[phase][key] for each in held]) for key in ("p99", "failed")}
                 for phase in PHASES}
    row["failed"] = _median([each["failed"] for each in held])
    row["takeover"] = _median([each["takeover"] for each in held])
    return row


def _row(rows: list[dict], pattern: str, scheduler: str) -> dict | None:
    for row in rows:
        if (row["scenario"], row["pattern"], row["scheduler"]) == (SCENARIO, pattern, scheduler) \
                and row.get("failover"):
            return row["failover"]
    return None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _better(ours: float | None, static: float | None, strictly: bool) -> bool:
    if ours is None or static is None:
        return False
    return ours < static if strictly else ours <= static


def checks(rows: list[dict]) -> list[dict]:
    """
    The failover targets, per pattern, in L{lvsfeedback.lab.report.check_targets}'
    form: the pair's p99 after the takeover within 20 % of its p99 before,
    and every figure better than the static pair's: each part's p99 lower,
    no more failed requests (none is as good as it gets), a takeover no
    later than the static pair's by more than the probe's resolution (both
    pairs' VRRP is the same keepalived: lvsfeedback must not slow it).
    """
    found = []
    for pattern in dict.fromkeys(row["pattern"] for row in rows if row["scenario"] == SCENARIO):
        ours, static = _row(rows, pattern, PAIR), _row(rows, pattern, STATIC)
        if ours is None:
            continue
        before, after = ours["before"]["p99"], ours["after"]["p99"]
        found.append({
            "schedulers": (PAIR,),
            "target": f"{SCENARIO} {pattern}: {PAIR} pair's p99 after the takeover within "
                      f"{AFTER_WITHIN - 1:.0%} of its p99 before",
            "met": before is not None and after is not None and after <= AFTER_WITHIN * before,
            "numbers": f"{_ms(after)} after vs {_ms(before)} before (limit "
                       f"{_ms(None if before is None else AFTER_WITHIN * before)})",
        })
        if static is None:
            continue
        comparisons = [(f"p99 {phase}", _ms(ours[phase]["p99"]), _ms(static[phase]["p99"]),
                        _better(ours[phase]["p99"], static[phase]["p99"], strictly=True)) for phase in PHASES]
        comparisons.append(("failed", f"{ours['failed']:g}", f"{static['failed']:g}",
                            _better(ours["failed"], static["failed"], strictly=False)))
        slack = None if static["takeover"] is None else static["takeover"] + PROBE_ATTEMPT
        comparisons.append(("takeover", _seconds(ours["takeover"]), _seconds(static["takeover"]),
                            _better(ours["takeover"], slack, strictly=False)))
        found.append({
            "schedulers": (PAIR, STATIC),
            "target": f"{SCENARIO} {pattern}: every figure of the {PAIR} pair better than the static {STATIC} pair's",
            "met": all(better for *_, better in comparisons),
            "numbers": "; ".join(f"{name} {mine} vs {theirs}{'' if better else ' (not better)'}"
                                 for name, mine, theirs, better in comparisons),
        })
    return found


def setup_line(cells: list[dict]) -> str | None:
    """How the failover cells' lab differs from the others', for the report's setup; None without one."""
    pairs = [cell["pair"] for cell in cells if cell["scenario"] == SCENARIO and cell.get("pair")]
    if not pairs:
        return None
    advert = "/".join(sorted({f"{pair['advert_int']:g}" for pair in pairs}))
    return (f"- `{SCENARIO}`: instead of the NAT director, two directors in DR on the clients' segment "
            f"(`lvsfeedback/lab/pair.py`), keepalived VRRP moving the VIP (advert_int {advert} s, nopreempt) "
            "with its IPVS sync daemon; `lvsfeedback-capacity` runs `lvs-director` with `[pair]` on both "
            "(the backup follows the master's weights), each agent reporting to both; `wlc` is the same static "
            "equal weights on both, no agents. The master dies (link down, keepalived and lvs-director "
            f"SIGKILL) at half the measured time; across = {ACROSS_BEFORE:g} s before to {ACROSS_AFTER:g} s "
            "after it; takeover = from the kill to the first new connection through the VIP.")


def overview(rows: list[dict]) -> str:
    """The failover rows as a markdown table; "" when there is none."""
    held = [row for row in rows if row["scenario"] == SCENARIO and row.get("failover")]
    if not held:
        return ""
    lines = ["| pattern | pair | p99 before | p99 across | p99 after | failed before/across/after | takeover |",
             "|---|---|---|---|---|---|---|"]
    for row in held:
        figure = row["failover"]
        failed = "/".join("-" if figure[phase]["failed"] is None else f"{figure[phase]['failed']:g}"
                          for phase in PHASES)
        lines.append(f"| {row['pattern']} | {row['scheduler']} | {_ms(figure['before']['p99'])} | "
                     f"{_ms(figure['across']['p99'])} | {_ms(figure['after']['p99'])} | {failed} | "
                     f"{_seconds(figure['takeover'])} |")
    return "\n".join(lines)
