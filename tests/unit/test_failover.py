"""The failover scenario (#17): its plan, the split of its records at the kill, its figures and its targets."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.config import load_config
from lvsfeedback.lab import failover, report
from lvsfeedback.lab.experiment import FULL, parse_args, plan_from_args
from lvsfeedback.lab.loadgen import ERROR, OK, TIMEOUT, RequestRecord
from lvsfeedback.lab.scenarios import (
    DR_SITE,
    SCENARIOS,
    SCHEDULERS,
    FeedbackSettings,
    Scenario,
    agent_arguments,
    director_config,
    ipvsadm_restore,
)


class FailoverPlanTests(SynchronousTestCase):
    def test_it_is_scenario_twos_cluster_behind_a_pair_in_dr(self):
        failover_scenario, hog = SCENARIOS["failover"], SCENARIOS["hog"]
        self.assertEqual((failover_scenario.quotas, failover_scenario.hog_server, failover_scenario.hog_window),
                         (hog.quotas, hog.hog_server, hog.hog_window))
        self.assertTrue(failover_scenario.pair)
        self.assertFalse(hog.pair)
        self.assertEqual((failover_scenario.site, hog.site.forwarding), (DR_SITE, "nat"))

    def test_the_master_dies_at_half_the_measured_time_and_nothing_else_happens(self):
        (kill,) = SCENARIOS["failover"].events(warmup=20.0, measure=60.0, feedback=True)
        self.assertEqual((kill.at, kill.kind, kill.server), (50.0, "director-kill", None))

    def test_a_kill_outside_the_measured_period_is_refused(self):
        for moment in (0.0, 1.0, 1.5):
            with self.assertRaises(ValueError):
                Scenario(99, "bad", "bad", (0.3,), director_kill=moment)

    def test_it_compares_only_the_lvsfeedback_pair_and_the_static_pair(self):
        plan = plan_from_args(parse_args(["--scenario", "failover", "--repeats", "1"]))
        self.assertEqual(plan.cells(), [("failover", pattern, scheduler, 0) for pattern in ("persistent", "short")
                                        for scheduler in ("wlc", "lvsfeedback-capacity")])

    def test_the_full_matrix_holds_it_beside_the_other_scenarios_unchanged(self):
        cells = FULL.cells()
        self.assertEqual({cell[2] for cell in cells if cell[0] == "failover"}, {"wlc", "lvsfeedback-capacity"})
        self.assertEqual({cell[2] for cell in cells if cell[0] == "hog"}, set(FULL.schedulers))


class PairConfigurationTests(SynchronousTestCase):
    def test_the_pairs_director_config_is_one_the_director_accepts(self):
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        token = folder / "status.token"
        token.write_text("lab-token\n")
        path = folder / "director1.toml"
        path.write_text(director_config(
            "10.200.0.1", "10.200.0.3", SCHEDULERS["lvsfeedback-capacity"], 3, FeedbackSettings(), DR_SITE,
            pair={"vrrp_state_file": str(folder / "vrrp-VI_LVS"), "peer": "http://10.200.0.4:9101",
                  "peer_token_file": str(token)},
            token_file=str(token)))
        config = load_config(path)
        (service,) = config.services
        self.assertEqual([str(real.dest_key) for real in service.reals],
                         ["10.200.0.11:80", "10.200.0.12:80", "10.200.0.13:80"])
        self.assertEqual({real.forwarding for real in service.reals}, {"dr"})
        assert config.pair is not None
        self.assertEqual((config.pair.peer, config.pair.peer_token), ("http://10.200.0.4:9101", b"lab-token"))
        # The peer fetches this director's status on its segment address, with the token.
        self.assertEqual((config.status.listen, config.status.token_file), ("tcp:9101", token))

    def test_the_static_pair_gets_the_same_dr_table_on_both_directors(self):
        self.assertEqual(ipvsadm_restore("10.200.0.1", "wlc", [100, 100], DR_SITE), (
            "-C\n"
            "-A -t 10.200.0.1:80 -s wlc\n"
            "-a -t 10.200.0.1:80 -r 10.200.0.11:80 -g -w 100\n"
            "-a -t 10.200.0.1:80 -r 10.200.0.12:80 -g -w 100\n"
        ))

    def test_an_agent_reports_to_both_directors(self):
        self.assertEqual(agent_arguments(["10.200.0.3", "10.200.0.4"], "/sys/fs/cgroup/lab/rs1", DR_SITE), [
            "--director", "tcp:10.200.0.3:3262", "--director", "tcp:10.200.0.4:3262",
            "--service", "tcp:80:dr", "--metric", "cgroup:path=/sys/fs/cgroup/lab/rs1",
        ])


def spread(start: float, stop: float, count: int, latency: float, outcome: str = OK) -> list[RequestRecord]:
    """count requests evenly scheduled in [start, stop)."""
    return [RequestRecord(start + (stop - start) * index / count, outcome, latency if outcome == OK else None,
                          "rs2" if outcome == OK else None) for index in range(count)]


class SplitTests(SynchronousTestCase):
    def test_each_request_falls_in_the_part_its_scheduled_time_is_in(self):
        # Measured 20..80 s, the kill at 50: before 20..49, across 49..55, after 55..80.
        records = [RequestRecord(moment, OK, 0.01) for moment in (10.0, 20.0, 48.99, 49.0, 54.99, 55.0, 79.99, 80.0)]
        parts = failover.split(records, warmup=20.0, measure=60.0, killed=50.0)
        self.assertEqual({phase: [record.scheduled for record in part] for phase, part in parts.items()},
                         {"before": [20.0, 48.99], "across": [49.0, 54.99], "after": [55.0, 79.99]})

    def test_figures_give_each_parts_p99_and_failures_and_the_takeover(self):
        records = (spread(20, 49, 100, 0.050) + spread(49, 55, 20, 0.900) + spread(50, 51, 3, 0, TIMEOUT)
                   + spread(55, 80, 100, 0.060) + [RequestRecord(60.0, ERROR, error="reset")])
        found = failover.figures(records, warmup=20.0, measure=60.0, killed=50.0, takeover=0.6312)
        self.assertEqual(found["before"], {"p99": 50.0, "failed": 0, "requests": 100})
        self.assertEqual(found["across"], {"p99": 900.0, "failed": 3, "requests": 23})
        self.assertEqual(found["after"], {"p99": 60.0, "failed": 1, "requests": 101})
        self.assertEqual((found["failed"], found["takeover"], found["killed"]), (4, 0.631, 50.0))

    def test_a_takeover_never_seen_and_a_part_without_success_are_none(self):
        records = spread(20, 49, 10, 0.05) + spread(49, 80, 10, 0, TIMEOUT)
        found = failover.figures(records, warmup=20.0, measure=60.0, killed=50.0, takeover=None)
        self.assertEqual((found["takeover"], found["after"]["p99"], found["after"]["failed"]), (None, None, 8))


def figures(before: float, across: float, after: float, failed: int = 0, takeover: float | None = 0.6) -> dict:
    return {"killed": 50.0, "takeover": takeover, "failed": failed,
            "before": {"p99": before, "failed": 0, "requests": 100},
            "across": {"p99": across, "failed": failed, "requests": 20},
            "after": {"p99": after, "failed": 0, "requests": 100}}


def failover_row(pattern: str, scheduler: str, *repeats: dict) -> dict:
    p99 = {"median": 100.0, "min": 100.0, "max": 100.0, "n": 1}
    return {"scenario": "failover", "pattern": pattern, "scheduler": scheduler, "p99": p99,
            "lateness_p99": {"median": 5.0, "min": 5.0, "max": 5.0, "n": 1}, "settle_periods": None,
            "settle_exits": None, "unsettled": 0, "failures_after": None,
            "failover": failover.aggregate(list(repeats))}


class AggregateTests(SynchronousTestCase):
    def test_each_figure_is_the_median_over_the_repeats(self):
        found = failover.aggregate([figures(100, 900, 110, 2, 0.5), figures(120, 700, 100, 6, 0.7),
                                    figures(300, 800, 130, 4, 0.6)])
        self.assertEqual((found["before"]["p99"], found["across"]["p99"], found["after"]["p99"]), (120, 800, 110))
        self.assertEqual((found["failed"], found["across"]["failed"], found["takeover"]), (4, 4, 0.6))

    def test_a_repeat_without_a_takeover_leaves_the_rows_takeover_unknown(self):
        self.assertIsNone(failover.aggregate([figures(100, 900, 110), figures(100, 900, 110, takeover=None)])
                          ["takeover"])

    def test_cells_of_other_scenarios_have_no_failover_figures(self):
        self.assertIsNone(failover.aggregate([None, None]))


class FailoverTargetTests(SynchronousTestCase):
    def verdicts(self, ours: dict, static: dict, max_lateness: float = 50.0) -> dict[str, bool | None]:
        rows = [failover_row("short", "wlc", static), failover_row("short", "lvsfeedback-capacity", ours)]
        return {check["target"]: check["met"] for check in report.check_targets(rows, max_lateness)
                if check["target"].startswith("failover short: every") or "takeover" in check["target"]}

    WITHIN = "failover short: lvsfeedback-capacity pair's p99 after the takeover within 20% of its p99 before"
    BETTER = "failover short: every figure of the lvsfeedback-capacity pair better than the static wlc pair's"

    def test_met_when_after_is_within_20_percent_of_before_and_every_figure_beats_the_static_pair(self):
        self.assertEqual(self.verdicts(figures(100, 400, 120, 0, 0.6), figures(500, 900, 600, 0, 0.6)),
                         {self.WITHIN: True, self.BETTER: True})

    def test_after_more_than_20_percent_above_before_misses(self):
        self.assertEqual(self.verdicts(figures(100, 400, 121), figures(500, 900, 600))[self.WITHIN], False)

    def test_any_figure_worse_than_the_static_pairs_misses(self):
        static = figures(500, 900, 600, 3, 0.6)
        for ours in (figures(500, 400, 110, 0), figures(100, 901, 110, 0), figures(100, 400, 600, 0),
                     figures(100, 400, 110, 4), figures(100, 400, 110, 0, takeover=0.81),
                     figures(100, 400, 110, 0, takeover=None)):
            self.assertEqual(self.verdicts(ours, static)[self.BETTER], False, ours)

    def test_a_takeover_within_the_probes_resolution_of_the_static_pairs_is_as_good(self):
        self.assertTrue(self.verdicts(figures(100, 400, 110, 0, 0.79), figures(500, 900, 600, 0, 0.6))[self.BETTER])

    def test_no_verdict_when_the_generator_ran_late(self):
        rows = [failover_row("short", "wlc", figures(500, 900, 600)),
                {**failover_row("short", "lvsfeedback-capacity", figures(100, 400, 110)),
                 "lateness_p99": {"median": 90.0, "min": 90.0, "max": 90.0, "n": 1}}]
        met = {check["target"]: check["met"] for check in report.check_targets(rows, 50.0)}
        self.assertEqual((met[self.WITHIN], met[self.BETTER]), (None, None))

    def test_the_report_shows_the_failover_table(self):
        rows = [failover_row("short", "wlc", figures(500, 900, 600, 3, 0.6)),
                failover_row("short", "lvsfeedback-capacity", figures(100, 400, 110, 0, 0.58))]
        self.assertEqual(failover.overview(rows).splitlines()[2:], [
            "| short | wlc | 500 ms | 900 ms | 600 ms | 0/3/0 | 0.60 s |",
            "| short | lvsfeedback-capacity | 100 ms | 400 ms | 110 ms | 0/0/0 | 0.58 s |",
        ])
        self.assertEqual(failover.overview([replace_scenario(row) for row in rows]), "")


def replace_scenario(row: dict) -> dict:
    return {**row, "scenario": "hog", "failover": None}



class SetupLineTests(SynchronousTestCase):
    def test_the_report_says_how_the_failover_lab_differs(self):
        cells = [{"scenario": "failover", "pair": {"advert_int": 0.2, "sync": True}}, {"scenario": "hog"}]
        line = failover.setup_line(cells)
        assert line is not None
        self.assertIn("advert_int 0.2 s", line)
        self.assertIn("1 s before to 5 s after", line)
        self.assertIsNone(failover.setup_line(cells[1:]))
