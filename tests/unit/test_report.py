"""The experiment's report: cell statistics, settling, the table and targets, report.md and plots from a recorded run."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.lab import experiment, report
from lvsfeedback.lab.loadgen import ERROR, OK, TIMEOUT, RequestRecord

RECORDED = Path(__file__).parent / "fixtures" / "experiment-hog-quick.json"
ADDRESSES = {"rs1": "10.201.0.11:8080", "rs2": "10.201.0.12:8080"}


def series(times, **weights):
    return {"time": list(times), **{name: list(values) for name, values in weights.items()}}


class RecordPackingTests(SynchronousTestCase):
    def test_a_record_survives_packing(self):
        for record in (RequestRecord(1.25, OK, 0.031, "rs2", 200), RequestRecord(2.5, ERROR, error="reset"),
                       RequestRecord(3.0, TIMEOUT, error="no answer before the deadline")):
            packed = json.loads(json.dumps(report.pack_record(record)))
            unpacked = report.unpack_record(packed)
            self.assertEqual((unpacked.scheduled, unpacked.outcome, unpacked.latency, unpacked.server, unpacked.error),
                             (record.scheduled, record.outcome, record.latency, record.server, record.error))


class SettlingTests(SynchronousTestCase):
    def test_a_step_settles_at_the_first_sample_inside_the_band_for_good(self):
        # The change at t=10; rs1 falls from 100 to 50 over three samples, rs2 stays.
        weights = series(range(10, 31), rs1=[100, 90, 70, 52] + [50] * 17, rs2=[100] * 21)
        found = report.settling(weights, change=10, phase_end=30, update_interval=2.0)
        # Band: 10% of the largest final level (100) = 10; 52 is inside, 70 is not.
        self.assertEqual(found["seconds"], 3)
        self.assertEqual(found["periods"], 1.5)
        self.assertEqual(found["exits"], 0)
        self.assertEqual(found["final"], {"rs1": 50, "rs2": 100})

    def test_leaving_the_band_again_counts_as_an_oscillation_and_delays_settling(self):
        weights = series(range(0, 20), rs1=[50, 50, 80, 50, 20, 50] + [50] * 14, rs2=[100] * 20)
        found = report.settling(weights, change=0, phase_end=19, update_interval=1.0)
        self.assertEqual(found["seconds"], 5)
        self.assertEqual(found["exits"], 2)

    def test_weights_that_never_settle_say_so(self):
        weights = series(range(0, 12), rs1=[100, 0] * 6, rs2=[100] * 12)
        found = report.settling(weights, change=0, phase_end=11, update_interval=1.0)
        self.assertIsNone(found["seconds"])

    def test_a_server_missing_from_the_table_counts_as_weight_zero(self):
        weights = series(range(0, 10), rs1=[100, None, None] + [0] * 7, rs2=[100] * 10)
        found = report.settling(weights, change=0, phase_end=9, update_interval=1.0)
        self.assertEqual((found["seconds"], found["final"]["rs1"]), (1, 0))


class CellStatisticsTests(SynchronousTestCase):
    def test_cpu_utilisation_is_usage_growth_over_the_window_and_quota(self):
        samples = [
            {"time": 0.0, "usage_usec": {"rs1": 0, "rs2": 0}},
            {"time": 10.0, "usage_usec": {"rs1": 1_000_000, "rs2": 2_000_000}},
            {"time": 20.0, "usage_usec": {"rs1": 2_500_000, "rs2": 2_000_000}},
        ]
        self.assertEqual(report.cpu_utilisation(samples, {"rs1": 0.5, "rs2": 0.25}, 10.0, 20.0),
                         {"rs1": 0.3, "rs2": 0.0})

    def test_failures_are_split_at_the_failure(self):
        records = [RequestRecord(9.0, ERROR, error="reset"), RequestRecord(2.0, TIMEOUT),
                   RequestRecord(10.5, ERROR, error="refused"), RequestRecord(11.0, OK, 0.01, "rs2"),
                   RequestRecord(25.0, ERROR, error="after the return")]
        self.assertEqual(report.failures_after(records, moment=10.0, until=20.0, timeout=5.0),
                         {"in_flight": 1, "after": 1})

    def test_a_cell_counts_only_its_measured_window(self):
        records = [report.pack_record(RequestRecord(t, OK, 0.010 * (1 + t % 3), "rs1" if t % 2 else "rs2", 200))
                   for t in range(0, 30)]
        samples = [{"time": float(t), "ipvs": {ADDRESSES["rs1"]: {"weight": 100, "active": 0, "inactive": 0},
                                               ADDRESSES["rs2"]: {"weight": 50, "active": 0, "inactive": 0}},
                    "usage_usec": {"rs1": t * 100_000, "rs2": t * 50_000}} for t in range(0, 31)]
        cell = report.cell_result(
            scenario="equal", scheduler="wlc", pattern="short", repeat=0, config={"timeout": 5.0}, warmup=10,
            measure=20, rate=1.0, static_weights={"rs1": 100, "rs2": 50}, quotas={"rs1": 0.5, "rs2": 0.5},
            hog_server=None, records=records, lateness=[0.001, 0.002, 0.004], samples=samples, events=[],
            director=None, addresses=ADDRESSES, update_interval=None,
        )
        summary = cell["summary"]
        self.assertEqual((summary["requests"], summary["ok"], summary["throughput"]), (20, 20, 1.0))
        self.assertEqual(summary["servers"], {"rs1": 10, "rs2": 10})
        self.assertEqual(summary["p50"], 20.0)  # milliseconds
        self.assertEqual(cell["cpu_utilisation"], {"rs1": 0.2, "rs2": 0.1})
        # 3 CPU seconds over the 20 requests of the window.
        self.assertEqual(cell["cost_ms"], 150.0)
        self.assertEqual(cell["lateness_ms"], {"mean": 2.333, "p99": 4.0, "max": 4.0})
        self.assertEqual(cell["weights"]["rs2"][:2], [50, 50])
        self.assertEqual((cell["settling"], cell["failures"]), ([], None))


class RecordedRunTests(SynchronousTestCase):
    """The report of a quick run recorded in the test VM (its records thinned to every fourth)."""

    def setUp(self):
        self.document = json.loads(RECORDED.read_text())
        self.rows = report.aggregate(self.document["cells"])

    def test_one_row_per_scheduler_with_the_recorded_statistics(self):
        self.assertEqual([row["scheduler"] for row in self.rows], ["wlc", "lvsfeedback-health", "oracle"])
        for row, cell in zip(self.rows, self.document["cells"]):
            self.assertEqual(row["p99"], {"median": cell["summary"]["p99"], "min": cell["summary"]["p99"],
                                          "max": cell["summary"]["p99"], "n": 1})
        self.assertEqual(self.rows[1]["writes"]["median"], self.document["cells"][1]["director"]["writes"])
        self.assertIsNone(self.rows[0]["writes"])

    def test_repeats_give_a_median_and_a_spread(self):
        first = self.document["cells"][0]
        again = json.loads(json.dumps(first))
        again["repeat"] = 1
        again["summary"]["p99"] = first["summary"]["p99"] + 100
        third = json.loads(json.dumps(again))
        third["repeat"] = 2
        third["summary"]["p99"] = first["summary"]["p99"] - 50
        row = report.aggregate([first, again, third])[0]
        self.assertEqual(row["p99"]["median"], first["summary"]["p99"])
        self.assertEqual((row["p99"]["min"], row["p99"]["max"], row["p99"]["n"]),
                         (first["summary"]["p99"] - 50, first["summary"]["p99"] + 100, 3))
        self.assertIn(f"[{first['summary']['p99'] - 50:.0f}-{first['summary']['p99'] + 100:.0f}]",
                      report.format_table([row]))

    def test_the_targets_are_checked_against_the_recorded_numbers(self):
        checks = report.check_targets(self.rows, max_lateness=None)
        targets = {check["target"]: check["met"] for check in checks}
        wlc, ours, oracle = (row["p99"]["median"] for row in self.rows)
        self.assertEqual(targets, {
            "hog persistent: lvsfeedback-health p99 <= half of wlc's": ours <= wlc / 2,
            "hog persistent: lvsfeedback-health p99 within 20% of the oracle's": ours <= 1.2 * oracle,
            "hog persistent: lvsfeedback-health p99 no worse than wlc's by more than 5%": ours <= 1.05 * wlc,
        })

    def test_a_comparison_with_a_cell_whose_generator_ran_late_gets_no_verdict(self):
        # In the recording the generator ran 60 ms late (p99) in the feedback cell, 53 ms in the oracle's.
        checks = report.check_targets(self.rows, max_lateness=55.0)
        self.assertEqual([check["met"] for check in checks], [None, None, None])
        self.assertIn("60 ms late", checks[0]["numbers"])
        self.assertIn("NO VERDICT", report.format_checks(checks))
        later = report.check_targets(self.rows, max_lateness=61.0)
        self.assertNotIn(None, [check["met"] for check in later])

    def test_a_verdict_compares_medians_and_shows_their_range(self):
        rows = json.loads(json.dumps(self.rows))
        rows[1]["p99"] = {"median": 600.0, "min": 500.0, "max": 1900.0, "n": 3}
        rows[0]["p99"] = {"median": 1300.0, "min": 1100.0, "max": 1400.0, "n": 3}
        (half,) = [check for check in report.check_targets(rows, max_lateness=None) if "half" in check["target"]]
        self.assertTrue(half["met"])
        self.assertTrue(half["numbers"].startswith("600 [500-1900] ms vs wlc 1300 [1100-1400] ms (limit 650)"))

    def test_a_missed_target_is_reported_with_its_numbers(self):
        rows = json.loads(json.dumps(self.rows))
        rows[1]["p99"]["median"] = rows[0]["p99"]["median"]  # feedback as slow as wlc: misses "half of wlc"
        missed = [check for check in report.check_targets(rows, max_lateness=None) if check["met"] is False]
        self.assertIn("half of wlc's", missed[0]["target"])
        self.assertIn(f"{rows[0]['p99']['median']:.0f} ms vs wlc", report.format_checks(missed))
        self.assertTrue(report.format_checks(missed).startswith("- MISSED: "))

    def test_the_p99_overview_has_a_line_per_scenario_and_pattern_and_a_column_per_scheduler(self):
        rows = json.loads(json.dumps(self.rows))
        rows[0]["failed"] = {"median": 3, "min": 3, "max": 3, "n": 1}
        lines = report.p99_overview(rows).splitlines()
        self.assertEqual(lines[0], "| scenario, pattern | wlc | lvsfeedback-health | oracle |")
        wlc, ours, oracle = (row["p99"]["median"] for row in rows)
        self.assertEqual(lines[2], f"| hog, persistent | {wlc:.0f} (3 failed) | {ours:.0f} | {oracle:.0f} |")
        self.assertEqual(len(lines), 3)

    def test_report_md_plots_and_table_are_written(self):
        out = Path(self.mktemp())
        out.mkdir()
        terminal, plot_paths = report.write_report(self.document, out)
        self.assertEqual(sorted(path.name for path in plot_paths),
                         ["cdf-hog-persistent.png", "timeline-hog-persistent-lvsfeedback-health.png"])
        for path in plot_paths:
            self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        text = (out / "report.md").read_text()
        for expected in ("## Setup", "## Results", "## Targets", "## Definitions", "QEMU TCG CPU",
                         self.document["experiment"]["date"], "![cdf-hog-persistent](cdf-hog-persistent.png)",
                         "| hog | persistent | oracle |"):
            self.assertIn(expected, text)
        self.assertIn("scheduler", terminal.splitlines()[0])
        self.assertIn("steal %", terminal.splitlines()[0])

    def test_the_report_command_rebuilds_from_results_json(self):
        out = Path(self.mktemp())
        out.mkdir()
        results = out / "results.json"
        results.write_text(RECORDED.read_text())
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(report.main([str(results), "--no-plots"]), 0)
        self.assertIn("## Results", (out / "report.md").read_text())


class MergeTests(SynchronousTestCase):
    """Several results.json measured with one plan shape become one result set."""

    def setUp(self):
        self.first = json.loads(RECORDED.read_text())
        self.second = json.loads(RECORDED.read_text())
        self.second["experiment"]["date"] = "2026-11-27 09:00 UTC"
        for cell in self.second["cells"]:
            cell["repeat"] = 1
            cell["summary"]["p99"] += 100
        self.second["experiment"]["plan"]["repeats"] = 2

    def test_the_union_of_the_cells_in_plan_order_with_every_session(self):
        merged, notes = report.merge([("a.json", self.first), ("b.json", self.second)])
        self.assertEqual(notes, [])
        self.assertEqual([(cell["scheduler"], cell["repeat"]) for cell in merged["cells"]],
                         [("wlc", 0), ("lvsfeedback-health", 0), ("oracle", 0),
                          ("wlc", 1), ("lvsfeedback-health", 1), ("oracle", 1)])
        self.assertEqual([run["date"] for run in merged["experiment"]["sessions"]],
                         ["2026-11-26 11:05 UTC", "2026-11-27 09:00 UTC"])
        self.assertEqual(merged["experiment"]["plan"]["repeats"], 2)
        # The report is built from the union: each row has both repeats.
        rows = report.aggregate(merged["cells"])
        self.assertEqual([row["repeats"] for row in rows], [2, 2, 2])
        # The inputs are left as they were.
        self.assertNotIn("sessions", self.first["experiment"])

    def test_a_cell_held_twice_is_taken_from_the_first_set_and_named(self):
        self.second["cells"][0]["repeat"] = 0
        merged, notes = report.merge([("a.json", self.first), ("b.json", self.second)])
        self.assertEqual(len(merged["cells"]), 5)
        wlc = [cell for cell in merged["cells"] if cell["scheduler"] == "wlc"]
        self.assertEqual([cell["summary"]["p99"] for cell in wlc], [self.first["cells"][0]["summary"]["p99"]])
        self.assertEqual(notes, ["b.json and a.json both hold hog/persistent/wlc/0: kept a.json's"])

    def test_result_sets_of_another_plan_shape_are_refused(self):
        self.second["experiment"]["plan"]["measure"] = 60.0
        with self.assertRaises(report.ResultsError) as raised:
            report.merge([("a.json", self.first), ("b.json", self.second)])
        self.assertEqual(str(raised.exception), "b.json was measured with another plan than a.json "
                                                "(measure 45.0 vs 60.0): its cells do not compare")

    def test_the_merge_command_writes_the_merged_set_and_its_report(self):
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "a.json").write_text(json.dumps(self.first))
        (folder / "b.json").write_text(json.dumps(self.second))
        self.patch(sys, "stdout", io.StringIO())
        out = folder / "merged"
        self.assertEqual(report.main(["--merge", str(folder / "a.json"), str(folder / "b.json"), "--out", str(out),
                                      "--no-plots"]), 0)
        self.assertEqual(len(json.loads((out / "results.json").read_text())["cells"]), 6)
        text = (out / "report.md").read_text()
        self.assertIn("The cells were measured in 2 runs:", text)
        self.assertIn("- Repeats: 2 per cell", text)

    def test_the_merge_command_refuses_in_one_line_and_writes_nothing(self):
        folder = Path(self.mktemp())
        folder.mkdir()
        self.second["experiment"]["plan"]["work_ms"] = 25.0
        (folder / "a.json").write_text(json.dumps(self.first))
        (folder / "b.json").write_text(json.dumps(self.second))
        (folder / "c.json").write_text("[]")
        for inputs in (["a.json", "b.json"], ["a.json", "c.json"], ["a.json", "missing.json"]):
            errors = io.StringIO()
            self.patch(sys, "stderr", errors)
            out = folder / "merged"
            arguments = ["--merge", *(str(folder / name) for name in inputs), "--out", str(out), "--no-plots"]
            self.assertEqual(report.main(arguments), 1)
            self.assertEqual(len(errors.getvalue().strip().splitlines()), 1)
            self.assertTrue(errors.getvalue().startswith("lvsfeedback report: "))
            self.assertFalse(out.exists())


def row(scenario: str, pattern: str, scheduler: str, p99: float, **more) -> dict:
    """An aggregated row with what check_targets reads: one repeat, a generator on time."""
    return {"scenario": scenario, "pattern": pattern, "scheduler": scheduler,
            "p99": {"median": p99, "min": p99, "max": p99, "n": 1},
            "lateness_p99": {"median": 5.0, "min": 5.0, "max": 5.0, "n": 1},
            "settle_periods": None, "settle_exits": None, "unsettled": 0, "failures_after": None, **more}


class NeverWorseThanWlcTests(SynchronousTestCase):
    """Feedback must never do worse than no feedback: p99 within 5% of wlc's in every scenario and pattern."""

    def verdicts(self, rows):
        return {check["target"]: check["met"] for check in report.check_targets(rows, max_lateness=50.0)
                if "no worse than wlc" in check["target"]}

    def test_every_scenario_and_pattern_is_checked_for_every_feedback_scheduler(self):
        rows = [row("light", "short", "wlc", 400), row("light", "short", "lvsfeedback-capacity", 420),
                row("shrink", "persistent", "wlc", 1000), row("shrink", "persistent", "lvsfeedback-capacity", 1051),
                row("shrink", "persistent", "lvsfeedback-capacity-cold", 900),
                row("five", "short", "wlc", 300), row("five", "short", "oracle", 200)]
        self.assertEqual(self.verdicts(rows), {
            "light short: lvsfeedback-capacity p99 no worse than wlc's by more than 5%": True,
            "shrink persistent: lvsfeedback-capacity p99 no worse than wlc's by more than 5%": False,
            "shrink persistent: lvsfeedback-capacity-cold p99 no worse than wlc's by more than 5%": True,
        })

    def test_the_old_targets_stay_beside_it(self):
        rows = [row("unequal", "persistent", "wlc", 4000), row("unequal", "persistent", "oracle", 700),
                row("unequal", "persistent", "lvsfeedback-capacity", 1300)]
        targets = {check["target"]: check["met"] for check in report.check_targets(rows, max_lateness=50.0)}
        self.assertEqual(targets, {
            "unequal persistent: lvsfeedback-capacity p99 <= half of wlc's": True,
            "unequal persistent: lvsfeedback-capacity p99 within 20% of the oracle's": False,
            "unequal persistent: lvsfeedback-capacity p99 no worse than wlc's by more than 5%": True,
        })

    def test_no_verdict_when_the_generator_ran_late_in_a_compared_cell(self):
        late = row("grow", "short", "wlc", 300, lateness_p99={"median": 80.0, "min": 80.0, "max": 80.0, "n": 1})
        rows = [late, row("grow", "short", "lvsfeedback-capacity", 900)]
        self.assertEqual(list(self.verdicts(rows).values()), [None])


def step_records(start: float, count: int, latency: float, failed: int = 0) -> list[RequestRecord]:
    """count requests spread over a 10 s step from start, `failed` of them timing out."""
    records = [RequestRecord(start + 10 * index / count, OK, latency, "rs1", 200) for index in range(count - failed)]
    records += [RequestRecord(start + 9.99, TIMEOUT) for _ in range(failed)]
    return records


STEPS = [{"start": 10.0 * index, "stop": 10.0 * (index + 1), "load": round(0.5 + 0.1 * index, 1)}
         for index in range(4)]


def lateness_cell(records: list[RequestRecord], lateness: list[float], ramp_steps: list[dict] | None) -> dict:
    """A cell of `records` over 0-30 s with the generator's `lateness` per arrival; a ramp with `ramp_steps`."""
    return report.cell_result(
        scenario="ramp-hog" if ramp_steps else "hog", scheduler="wlc", pattern="short", repeat=0,
        config={"timeout": 5.0}, warmup=0, measure=30, rate=1.0, static_weights=None, quotas={"rs1": 0.3},
        hog_server="rs1", records=[report.pack_record(record) for record in records], lateness=lateness, samples=[],
        events=[], director=None, addresses={"rs1": ADDRESSES["rs1"]}, update_interval=None, ramp_steps=ramp_steps)


class RampAnalysisTests(SynchronousTestCase):
    def test_each_step_has_its_requests_p99_and_failed_share(self):
        records = step_records(0, 100, 0.2) + step_records(10, 200, 0.4, failed=1) + step_records(20, 300, 1.5)
        analysis = report.ramp_analysis(records, STEPS[:3])
        self.assertEqual(analysis, [
            {"load": 0.5, "requests": 100, "p99": 200.0, "failed_share": 0.0},
            {"load": 0.6, "requests": 200, "p99": 400.0, "failed_share": 0.005},
            {"load": 0.7, "requests": 300, "p99": 1500.0, "failed_share": 0.0},
        ])

    def test_the_sustained_load_is_the_last_step_passed_from_the_first_on(self):
        def step(load, p99, failed=0.0):
            return {"load": load, "requests": 1000, "p99": p99, "failed_share": failed}

        self.assertEqual(report.sustained_load([step(0.5, 300), step(0.6, 900), step(0.7, 1000), step(0.8, 400)]), 0.6)
        # A failed request in a thousand is the limit: not sustained.
        self.assertEqual(report.sustained_load([step(0.5, 300), step(0.6, 300, failed=0.001)]), 0.5)
        self.assertEqual(report.sustained_load([step(0.5, 300), step(0.6, 300, failed=0.0009)]), 0.6)
        self.assertEqual(report.sustained_load([step(0.5, 1200), step(0.6, 300)]), 0.0)
        # Nothing answered: no p99, not sustained.
        self.assertEqual(report.sustained_load([step(0.5, None, failed=1.0)]), 0.0)

    def test_a_ramp_cell_carries_its_steps_and_the_load_it_sustained(self):
        records = step_records(0, 50, 0.1) + step_records(10, 50, 0.3) + step_records(20, 50, 0.6) \
            + step_records(30, 50, 3.0, failed=10)
        cell = report.cell_result(
            scenario="ramp-hog", scheduler="wlc", pattern="short", repeat=0, config={"timeout": 5.0}, warmup=10,
            measure=30, rate=1.0, static_weights=None, quotas={"rs1": 0.3}, hog_server="rs1",
            records=[report.pack_record(record) for record in records], lateness=[0.001], samples=[], events=[],
            director=None, addresses={"rs1": ADDRESSES["rs1"]}, update_interval=None, ramp_steps=STEPS[1:])
        self.assertEqual([step["load"] for step in cell["ramp"]], [0.6, 0.7, 0.8])
        self.assertEqual(cell["sustained"], 0.7)
        (row,) = report.aggregate([cell])
        self.assertEqual(row["sustained"], {"median": 0.7, "min": 0.7, "max": 0.7, "n": 1})

    def test_a_ramp_judges_the_generator_late_only_up_to_the_end_of_the_first_step_not_sustained(self):
        # Sustained at 0.6 and 0.7, broken at 0.8 (10-20 s): the generator
        # falls behind in the 0.9 step only, which no verdict reads.
        records = step_records(0, 50, 0.1) + step_records(10, 50, 3.0, failed=10) + step_records(20, 50, 3.0)
        lateness = [0.002] * 100 + [0.4] * 50
        cell = lateness_cell(records, lateness, STEPS[:3])
        self.assertEqual(cell["sustained"], 0.5)
        self.assertEqual(cell["lateness_ms"]["max"], 2.0)
        # Late within the step that broke: that counts.
        lateness[60] = 0.4
        cell = lateness_cell(records, lateness, STEPS[:3])
        self.assertEqual(cell["lateness_ms"]["max"], 400.0)

    def test_a_steady_cell_judges_all_its_lateness(self):
        records = step_records(0, 50, 3.0, failed=10)
        cell = lateness_cell(records, [0.002] * 49 + [0.4], None)
        self.assertEqual(cell["lateness_ms"]["max"], 400.0)

    def test_a_steady_cell_has_no_ramp(self):
        cell = json.loads(RECORDED.read_text())["cells"][0]
        self.assertIsNone(report.aggregate([cell])[0]["sustained"])


class SustainTargetTests(SynchronousTestCase):
    def ramp(self, scheduler, sustained, p99=5000.0, scenario="ramp-hog"):
        return row(scenario, "persistent", scheduler, p99,
                   sustained={"median": sustained, "min": sustained, "max": sustained, "n": 1})

    def test_feedback_must_sustain_90_percent_the_oracles_load_and_half_again_wlcs(self):
        rows = [self.ramp("wlc", 0.6), self.ramp("oracle", 0.9), self.ramp("lvsfeedback-capacity", 1.0)]
        checks = report.check_targets(rows, max_lateness=50.0)
        self.assertEqual({check["target"]: check["met"] for check in checks}, {
            "ramp-hog persistent: lvsfeedback-capacity sustains at least 90% of the true capacity": True,
            "ramp-hog persistent: lvsfeedback-capacity sustains at least the oracle's load": True,
            "ramp-hog persistent: lvsfeedback-capacity sustains at least 1.5 times wlc's load": True,
        })
        self.assertIn("sustained 1.0 vs wlc 0.6 (limit 0.90)", report.format_checks(checks))

    def test_each_overload_target_can_be_missed(self):
        rows = [self.ramp("wlc", 0.6), self.ramp("oracle", 1.0), self.ramp("lvsfeedback-capacity", 0.8)]
        self.assertEqual([check["met"] for check in report.check_targets(rows, max_lateness=50.0)],
                         [False, False, False])

    def test_a_ramps_p99_over_all_its_steps_is_not_held_against_wlcs(self):
        rows = [self.ramp("wlc", 0.6, p99=900.0), self.ramp("lvsfeedback-capacity", 1.0, p99=2000.0)]
        targets = [check["target"] for check in report.check_targets(rows, max_lateness=50.0)]
        self.assertFalse([target for target in targets if "no worse than wlc" in target])

    def test_the_report_shows_the_sustained_load_per_scheduler(self):
        rows = [self.ramp("wlc", 0.6), self.ramp("lvsfeedback-capacity", 1.0),
                self.ramp("wlc", 0.5, scenario="ramp-unequal"), row("hog", "persistent", "wlc", 700)]
        self.assertEqual(report.sustained_overview(rows).splitlines(), [
            "| scenario, pattern | wlc | lvsfeedback-capacity |", "|---|---|---|",
            "| ramp-hog, persistent | 0.6 | 1.0 |", "| ramp-unequal, persistent | 0.5 | - |"])
        self.assertEqual(report.sustained_overview(rows[3:]), "")


class TooBusyToJudgeTests(SynchronousTestCase):
    """A run says plainly when the machine was too busy: its generator ran late, or the VM's CPU was stolen."""

    def cells(self, late=(5.0, 5.0), steal=(0.0, 0.0)):
        return [{"scenario": "hog", "pattern": "persistent", "scheduler": name, "repeat": 0,
                 "lateness_ms": {"p99": lateness}, "steal": stolen}
                for name, lateness, stolen in zip(("wlc", "oracle"), late, steal)]

    def test_a_quiet_machine_says_nothing(self):
        self.assertIsNone(report.too_busy(self.cells(), max_lateness=50.0))

    def test_a_late_generator_is_named_with_its_cells(self):
        line = report.too_busy(self.cells(late=(120.0, 5.0)), max_lateness=50.0)
        self.assertEqual(line, "the machine was too busy to judge this run: the load generator ran up to 120 ms "
                               "late at p99 (limit 50 ms) in 1 of 2 cells (hog/persistent/wlc/1).")

    def test_stolen_cpu_is_named_with_its_cells(self):
        line = report.too_busy(self.cells(steal=(0.02, 0.25)), max_lateness=50.0)
        self.assertEqual(line, "the machine was too busy to judge this run: the VM did not get up to 25% of its "
                               "CPU time (steal, limit 10%) in 1 of 2 cells (hog/persistent/oracle/1).")

    def test_cells_recorded_before_steal_was_read_count_as_none_stolen(self):
        cells = self.cells()
        for cell in cells:
            del cell["steal"]
        self.assertIsNone(report.too_busy(cells, max_lateness=50.0))

    def test_the_steal_share_is_steal_over_all_cpu_time_between_two_readings(self):
        before = experiment.parse_cpu_times(PROC_STAT)
        after = {"total": before["total"] + 1000, "steal": before["steal"] + 150}
        self.assertEqual(report.steal_share(before, after), 0.15)
        self.assertIsNone(report.steal_share(before, before))
        self.assertIsNone(report.steal_share(None, after))

    def test_a_cell_records_its_steal_and_the_table_shows_it(self):
        document = json.loads(RECORDED.read_text())
        cell = document["cells"][0]
        self.assertNotIn("steal", cell)
        cell["steal"] = 0.125
        (row,) = report.aggregate([cell])
        self.assertEqual(row["steal"]["median"], 0.125)
        header, line = report.format_table([row]).splitlines()
        self.assertEqual(line[header.index("steal %"):].split()[0], "12.5")

    def test_verdicts_end_with_the_busy_line_in_the_terminal_and_in_report_md(self):
        document = json.loads(RECORDED.read_text())
        document["cells"][2]["steal"] = 0.3
        conclusion = report.verdicts(document).splitlines()
        self.assertEqual(conclusion[0], "Targets:")
        self.assertTrue(conclusion[-1].startswith("the machine was too busy to judge this run: "))
        self.assertIn("30% of its CPU time", conclusion[-1])
        out = Path(self.mktemp())
        out.mkdir()
        report.write_report(document, out, with_plots=False)
        self.assertIn(conclusion[-1], (out / "report.md").read_text())


# /proc/stat of a two-CPU guest (user nice system idle iowait irq softirq steal guest guest_nice).
PROC_STAT = """\
cpu  4705 150 1120 16250 520 0 35 410 0 0
cpu0 2352 75 560 8125 260 0 17 205 0 0
cpu1 2353 75 560 8125 260 0 18 205 0 0
intr 1234 0 0
ctxt 5678
"""


class CpuTimesTests(SynchronousTestCase):
    def test_total_and_steal_come_from_the_machines_cpu_line(self):
        self.assertEqual(experiment.parse_cpu_times(PROC_STAT),
                         {"total": 4705 + 150 + 1120 + 16250 + 520 + 0 + 35 + 410, "steal": 410})

    def test_a_kernel_without_a_steal_column_reads_as_none_stolen(self):
        self.assertEqual(experiment.parse_cpu_times("cpu  10 0 5 100 1 0 2\n"), {"total": 118, "steal": 0})

    def test_a_proc_stat_without_a_cpu_line_is_an_error(self):
        self.assertRaises(experiment.ExperimentError, experiment.parse_cpu_times, "intr 1\n")


class ExperimentOutputTests(SynchronousTestCase):
    def test_the_verdicts_and_the_busy_line_are_the_last_lines_a_run_prints(self):
        document = json.loads(RECORDED.read_text())
        document["cells"][0]["lateness_ms"]["p99"] = 400.0
        self.patch(experiment, "run_experiment", lambda *args, **kwargs: document)
        printed = io.StringIO()
        self.patch(sys, "stdout", printed)
        out = Path(self.mktemp())
        out.mkdir()  # run_experiment makes it
        self.assertEqual(experiment.main(["--quick", "--out", str(out)]), 0)
        lines = printed.getvalue().rstrip().splitlines()
        self.assertTrue(lines[-1].startswith("the machine was too busy to judge this run: the load generator ran "
                                             "up to 400 ms late"))
        self.assertEqual(lines[-5:-1], report.verdicts(document).splitlines()[:4])
        self.assertLess(lines.index(f"report: {out / 'report.md'}"), lines.index("Targets:"))
