"""The experiment's plan, scenarios and capacity model, its IPVS reading, forked processes and load timing (host, no root)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import threading
from dataclasses import replace
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.config import load_config
from lvsfeedback.director.policy import Mode, PolicySettings
from lvsfeedback.lab import experiment, report
from lvsfeedback.lab.backend import Backend
from lvsfeedback.lab.experiment import (
    QUICK,
    ExperimentError,
    ForkedProcess,
    ScheduledLoadRun,
    parse_args,
    parse_ip_vs,
    plan_from_args,
)
from lvsfeedback.lab.loadgen import OK, LoadConfig
from lvsfeedback.lab.scenarios import (
    SCENARIOS,
    SCHEDULERS,
    FeedbackSettings,
    agent_arguments,
    director_config,
    ipvsadm_restore,
    static_weights,
)
from lvsfeedback.lab.topology import TopologyPlan

# /proc/net/ip_vs of a director with the lab's service (as the kernel writes it).
IP_VS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0AC80001:0050 wlc
  -> 0AC9000D:1F90      Masq    100    3          41
  -> 0AC9000C:1F90      Masq    100    2          40
  -> 0AC9000B:1F90      Masq    50     0          12
"""


class CapacityModelTests(SynchronousTestCase):
    def test_a_hog_halves_its_servers_capacity(self):
        hog = SCENARIOS["hog"]
        self.assertEqual(hog.capacities(0.01, hogged=0, down=None), [15.0, 30.0, 30.0])
        self.assertAlmostEqual(hog.worst_capacity(0.01), 75.0)
        self.assertEqual(static_weights(SCHEDULERS["oracle"], hog, 0.01), [50, 100, 100])

    def test_unequal_quotas_give_proportional_oracle_weights(self):
        self.assertEqual(static_weights(SCHEDULERS["oracle"], SCENARIOS["unequal"], 0.02), [25, 50, 100])
        self.assertEqual(static_weights(SCHEDULERS["wlc"], SCENARIOS["unequal"], 0.02), [100, 100, 100])

    def test_the_load_is_a_share_of_the_weakest_state(self):
        # A hog part of the time: its phase counts; a failure: the two servers left count.
        self.assertAlmostEqual(SCENARIOS["hog-on-off"].worst_capacity(0.01), 75.0)
        self.assertAlmostEqual(SCENARIOS["failure"].worst_capacity(0.01), 60.0)
        # The static oracle of a changing cluster knows its normal state only.
        self.assertEqual(static_weights(SCHEDULERS["oracle"], SCENARIOS["hog-on-off"], 0.01), [100, 100, 100])

    def test_feedback_schedulers_have_no_static_weights(self):
        with self.assertRaises(ValueError):
            static_weights(SCHEDULERS["lvsfeedback-health"], SCENARIOS["equal"], 0.01)


class WarmAndColdStartTests(SynchronousTestCase):
    def test_every_feedback_mode_has_a_warm_and_a_cold_scheduler_alike_but_for_the_start(self):
        for mode in ("health", "capacity"):
            warm, cold = SCHEDULERS[f"lvsfeedback-{mode}"], SCHEDULERS[f"lvsfeedback-{mode}-cold"]
            self.assertEqual((warm.cold, cold.cold), (False, True))
            self.assertEqual(replace(cold, name=warm.name, cold=False), warm)
            self.assertTrue(cold.feedback)

    def test_the_full_matrix_has_the_cold_start_of_the_default_mode_only(self):
        default = str(PolicySettings().mode)
        cold = [name for name in experiment.FULL.schedulers if SCHEDULERS[name].cold]
        self.assertEqual(cold, [f"lvsfeedback-{default}-cold"])
        self.assertEqual(experiment.FULL.schedulers,
                         tuple(name for name in SCHEDULERS if not SCHEDULERS[name].cold or name in cold))

    def test_the_demo_and_the_default_feedback_cells_start_warm_after_a_preroll(self):
        self.assertEqual(QUICK.preroll, 20.0)
        self.assertFalse(any(SCHEDULERS[name].cold for name in QUICK.schedulers))
        self.assertEqual(plan_from_args(parse_args(["--quick", "--preroll", "40"])).preroll, 40.0)

    def test_a_result_set_with_another_preroll_is_not_resumed(self):
        folder = Path(self.mktemp())
        folder.mkdir()
        session = {"date": "-", "command": "-", "machine": {}}
        document = experiment.open_result_set(folder / "results.json", QUICK, session, fresh=False)
        (folder / "results.json").write_text(json.dumps(document))
        with self.assertRaises(ExperimentError) as raised:
            experiment.open_result_set(folder / "results.json", replace(QUICK, preroll=5.0), session, fresh=False)
        self.assertIn("preroll 20.0 vs 5.0", str(raised.exception))


class UntunedScenarioTests(SynchronousTestCase):
    """The scenarios nobody tuned for (#14): a load that rises, capacities that change, five servers."""

    def test_light_load_offers_40_percent_until_a_third_of_the_measured_period_then_70(self):
        light = SCENARIOS["light"]
        self.assertEqual(light.quotas, SCENARIOS["unequal"].quotas)
        self.assertEqual(light.load_schedule(0.7, warmup=20.0, measure=60.0), [(0.0, 0.4), (40.0, 0.7)])
        # Over the measured 60 s: 20 s at 40 %, 40 s at 70 %.
        self.assertAlmostEqual(light.mean_load(0.7, 20.0, 60.0), 0.6)
        (rise,) = light.events(20.0, 60.0, feedback=True)
        self.assertEqual((rise.at, rise.kind, rise.value), (40.0, "load", 0.7))

    def test_a_cells_arrivals_follow_the_scenarios_load_over_its_capacity(self):
        plan = replace(QUICK, warmup=20.0, measure=60.0)
        # unequal 1:2:4 at 10 ms a request: 105 requests/s.
        config = experiment.cell_load(plan, SCENARIOS["light"], "short", 0.01)
        self.assertAlmostEqual(config.rate, 42.0)
        ((moment, rate),) = config.rate_changes
        self.assertEqual(moment, 40.0)
        self.assertAlmostEqual(rate, 73.5)
        self.assertEqual((config.duration, config.pattern, config.seed), (80.0, "short", plan.seed))
        steady = experiment.cell_load(plan, SCENARIOS["unequal"], "persistent", 0.01)
        self.assertEqual((steady.rate_changes, steady.connections), ((), plan.connections))
        self.assertAlmostEqual(steady.rate, 73.5)

    def test_a_scenario_without_load_steps_offers_the_plans_load(self):
        self.assertEqual(SCENARIOS["hog"].load_schedule(0.7, 20.0, 60.0), [(0.0, 0.7)])
        self.assertAlmostEqual(SCENARIOS["hog"].mean_load(0.7, 20.0, 60.0), 0.7)

    def test_load_steps_must_start_at_zero_and_rise(self):
        from lvsfeedback.lab.scenarios import LoadStep, Scenario
        for steps in ((LoadStep(0.2, 0.4),), (LoadStep(0.0, 0.4), LoadStep(0.0, 0.7)),
                      (LoadStep(0.0, 0.4), LoadStep(1.0, 0.7))):
            self.assertRaises(ValueError, Scenario, 99, "bad", "bad", (0.1,), load_steps=steps)

    def test_the_largest_server_halves_and_the_load_is_a_share_of_that_weakest_state(self):
        shrink = SCENARIOS["shrink"]
        self.assertEqual(shrink.quotas, (0.15, 0.3, 0.6))
        # Weakest: rs3 at 0.3 CPU, so 0.15 + 0.3 + 0.3 = 0.75 CPU at 10 ms a request.
        self.assertAlmostEqual(shrink.worst_capacity(0.01), 75.0)
        # The static oracle knows the normal state only.
        self.assertEqual(static_weights(SCHEDULERS["oracle"], shrink, 0.01), [25, 50, 100])
        events = shrink.events(20.0, 60.0, feedback=False)
        self.assertEqual([(event.at, event.kind, event.server, event.value) for event in events],
                         [(40.0, "quota", 2, 0.3), (60.0, "quota", 2, 0.6)])
        self.assertEqual(events[0].text, "rs3's quota 0.6 -> 0.3 CPU")

    def test_the_smallest_server_grows_and_the_weakest_state_is_the_normal_one(self):
        grow = SCENARIOS["grow"]
        self.assertAlmostEqual(grow.worst_capacity(0.01), 105.0)
        self.assertEqual([(event.kind, event.server, event.value) for event in grow.events(20.0, 60.0, True)],
                         [("quota", 0, 0.3), ("quota", 0, 0.15)])

    def test_five_servers_fit_the_lab_and_the_vm(self):
        five = SCENARIOS["five"]
        self.assertEqual(five.servers, 5)
        self.assertLessEqual(sum(five.quotas), 1.0)
        self.assertEqual(static_weights(SCHEDULERS["oracle"], five, 0.01), [25, 25, 50, 50, 100])
        self.assertEqual(TopologyPlan("lab", five.servers, Path("/sys/fs/cgroup")).real_servers[-1].name, "rs5")
        self.assertEqual(five.server_names(), ["rs1", "rs2", "rs3", "rs4", "rs5"])

    def test_the_events_of_the_first_scenarios_are_as_before(self):
        self.assertEqual([(event.at, event.kind, event.text) for event in SCENARIOS["hog-on-off"].events(15, 45, True)],
                         [(30.0, "hog-on", "hog starts on rs1"), (45.0, "hog-off", "hog stops on rs1")])
        self.assertEqual([event.text for event in SCENARIOS["failure"].events(15, 45, True)],
                         ["rs1 fails (backend and agent killed)", "rs1 returns (backend and agent restarted)"])
        self.assertEqual([event.text for event in SCENARIOS["failure"].events(15, 45, False)],
                         ["rs1 fails (backend killed)", "rs1 returns (backend restarted)"])
        self.assertEqual(SCENARIOS["equal"].events(15, 45, True), [])


class RampTests(SynchronousTestCase):
    """Overload: load rising step by step from 50% to 130% of the true capacity, in scenario 2's and 3's conditions."""

    def test_the_ramps_run_in_scenario_2s_and_3s_conditions(self):
        for name, like in (("ramp-hog", "hog"), ("ramp-unequal", "unequal")):
            ramp, base = SCENARIOS[name], SCENARIOS[like]
            self.assertEqual((ramp.quotas, ramp.hog_server, ramp.ramp), (base.quotas, base.hog_server, True))
            self.assertEqual([step.load for step in ramp.load_steps],
                             [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])

    def test_a_ramp_measures_its_steps_end_to_end_and_says_where_each_is(self):
        ramp = SCENARIOS["ramp-hog"]
        self.assertEqual(ramp.measured(60.0, 15.0), 135.0)
        self.assertEqual(SCENARIOS["hog"].measured(60.0, 15.0), 60.0)
        steps = ramp.ramp_steps(20.0, 135.0)
        self.assertEqual(len(steps), 9)
        self.assertEqual(steps[0], {"start": 20.0, "stop": 35.0, "load": 0.5})
        self.assertAlmostEqual(steps[-1]["start"], 140.0)
        self.assertEqual((steps[-1]["stop"], steps[-1]["load"]), (155.0, 1.3))
        self.assertEqual(SCENARIOS["hog"].ramp_steps(20.0, 60.0), [])
        # Its steps are the analysis, not events to settle after.
        self.assertEqual(ramp.events(20.0, 135.0, feedback=True), [])

    def test_a_ramp_cells_arrivals_rise_every_step_from_its_warm_up_at_the_first(self):
        plan = replace(QUICK, warmup=20.0, ramp_step=10.0)
        # The hog halves rs1: 0.75 CPU at 10 ms a request, 75 requests/s.
        config = experiment.cell_load(plan, SCENARIOS["ramp-hog"], "short", 0.01)
        self.assertEqual(config.duration, 110.0)
        self.assertAlmostEqual(config.rate, 37.5)
        self.assertEqual(len(config.rate_changes), 8)
        self.assertAlmostEqual(config.rate_changes[0][0], 30.0)
        self.assertAlmostEqual(config.rate_changes[-1][1], 97.5)
        self.assertAlmostEqual(SCENARIOS["ramp-hog"].mean_load(0.7, 20.0, 90.0), 0.9)

    def test_the_ramp_step_is_part_of_the_plans_shape(self):
        self.assertIn("ramp_step", report.PLAN_SHAPE)
        self.assertEqual(plan_from_args(parse_args(["--ramp-step", "20"])).ramp_step, 20.0)


class GeneratedConfigurationTests(SynchronousTestCase):
    def test_the_director_config_is_one_the_director_accepts(self):
        path = Path(self.mktemp())
        settings = FeedbackSettings(update_interval=1.5, policy={"smoothing_half_life": 3.0, "hysteresis": 0.2})
        path.write_text(director_config("10.200.0.1", "10.201.0.1", SCHEDULERS["lvsfeedback-capacity"], 3, settings))
        config = load_config(path)
        self.assertEqual(config.director.update_interval, 1.5)
        self.assertEqual(config.director.listen, "tcp:3262:interface=10.201.0.1")
        (service,) = config.services
        self.assertEqual((service.scheduler, str(service.policy.mode), service.policy.hysteresis), ("wlc", "capacity", 0.2))
        self.assertEqual([str(real.dest_key) for real in service.reals],
                         ["10.201.0.11:8080", "10.201.0.12:8080", "10.201.0.13:8080"])
        self.assertEqual({real.forwarding for real in service.reals}, {"nat"})

    def test_the_lab_runs_the_directors_default_policy(self):
        path = Path(self.mktemp())
        path.write_text(director_config("10.200.0.1", "10.201.0.1", SCHEDULERS["lvsfeedback-health"], 3,
                                        FeedbackSettings()))
        (service,) = load_config(path).services
        self.assertEqual(service.policy, replace(PolicySettings(), mode=Mode.HEALTH))

    def test_ipvsadm_input_clears_then_builds_the_service(self):
        self.assertEqual(ipvsadm_restore("10.200.0.1", "wrr", [50, 100]), (
            "-C\n"
            "-A -t 10.200.0.1:80 -s wrr\n"
            "-a -t 10.200.0.1:80 -r 10.201.0.11:8080 -m -w 50\n"
            "-a -t 10.200.0.1:80 -r 10.201.0.12:8080 -m -w 100\n"
        ))

    def test_an_agent_reports_its_servers_cgroup(self):
        self.assertEqual(agent_arguments(["10.201.0.1"], "/sys/fs/cgroup/lab/rs2"), [
            "--director", "tcp:10.201.0.1:3262", "--service", "tcp:8080:nat",
            "--metric", "cgroup:path=/sys/fs/cgroup/lab/rs2",
        ])


class PlanTests(SynchronousTestCase):
    def test_quick_is_the_demo(self):
        plan = plan_from_args(parse_args(["--quick"]))
        self.assertEqual(plan, QUICK)
        self.assertEqual(plan.cells(), [("hog", "persistent", scheduler, 0)
                                        for scheduler in ("wlc", "lvsfeedback-capacity", "oracle")])

    def test_options_narrow_the_full_matrix_and_set_the_policy(self):
        plan = plan_from_args(parse_args([
            "--scenario", "equal", "--scenario", "failure", "--pattern", "short", "--repeats", "2",
            "--measure", "30", "--policy", "hysteresis=0.2", "--policy", "lost_agent=static",
            "--update-interval", "1",
        ]))
        self.assertEqual((plan.scenarios, plan.patterns, plan.repeats, plan.measure),
                         (("equal", "failure"), ("short",), 2, 30.0))
        # rr and wrr run once, the others twice, in each scenario and pattern.
        schedulers = experiment.FULL.schedulers
        self.assertEqual(len(plan.cells()), 2 * 1 * (2 * len(schedulers) - 2))
        # Within one scenario, pattern and repeat every scheduler runs back to back: same conditions.
        self.assertEqual([cell[2] for cell in plan.cells()[:len(schedulers)]], list(schedulers))
        self.assertEqual((plan.feedback.policy["hysteresis"], plan.feedback.policy["lost_agent"]), (0.2, "static"))
        self.assertEqual(plan.feedback.update_interval, 1.0)

    def test_rr_and_wrr_run_one_repeat_where_the_others_run_three(self):
        plan = plan_from_args(parse_args(["--scenario", "hog", "--pattern", "short"]))
        self.assertEqual(plan.repeats, 3)
        repeats = {name: [cell[3] for cell in plan.cells() if cell[2] == name] for name in plan.schedulers}
        self.assertEqual((repeats["rr"], repeats["wrr"]), ([0], [0]))
        self.assertEqual(repeats["wlc"], [0, 1, 2])
        self.assertEqual(repeats["lvsfeedback-capacity"], [0, 1, 2])

    def test_late_cells_run_again_unless_told_not_to(self):
        self.assertEqual((QUICK.max_lateness, QUICK.retries), (50.0, 1))
        self.assertEqual(plan_from_args(parse_args([])).retries, 2)
        plan = plan_from_args(parse_args(["--quick", "--max-lateness", "0"]))
        self.assertIsNone(plan.max_lateness)
        plan = plan_from_args(parse_args(["--quick", "--max-lateness", "20", "--retries", "1"]))
        self.assertEqual((plan.max_lateness, plan.retries), (20.0, 1))

    def test_a_policy_setting_without_a_value_is_refused(self):
        with self.assertRaises(ExperimentError):
            plan_from_args(parse_args(["--policy", "hysteresis"]))


def measured_cell(scenario: str, pattern: str, scheduler: str, repeat: int) -> dict:
    """The fields of a cell that result sets look at."""
    return {"scenario": scenario, "pattern": pattern, "scheduler": scheduler, "repeat": repeat}


class ResultSetTests(SynchronousTestCase):
    """A result set built over several runs: what a run resumes, skips and refuses."""

    SESSION = {"date": "2026-11-28 10:00 UTC", "command": "lvsfeedback experiment", "machine": {"where": "here"}}
    PLAN = replace(QUICK, schedulers=("wlc", "oracle"), repeats=2)

    def results(self, document: dict | None = None) -> Path:
        folder = Path(self.mktemp())
        folder.mkdir()
        path = folder / "results.json"
        if document is not None:
            path.write_text(json.dumps(document))
        return path

    def stored(self, plan, cells) -> dict:
        document = experiment.open_result_set(self.results(), plan, dict(self.SESSION), fresh=False)
        document["cells"] = cells
        document["experiment"]["calibration"] = {"cost": 0.03}
        return document

    def test_a_new_result_set_holds_the_plan_and_this_run(self):
        document = experiment.open_result_set(self.results(), self.PLAN, dict(self.SESSION), fresh=False)
        self.assertEqual(document["cells"], [])
        self.assertEqual(document["experiment"]["plan"]["schedulers"], ["wlc", "oracle"])
        self.assertEqual(document["experiment"]["sessions"], [self.SESSION])
        self.assertEqual(experiment.cells_to_run(self.PLAN, document), self.PLAN.cells())

    def test_a_resumed_run_skips_the_cells_measured_and_adds_its_session(self):
        done = [measured_cell("hog", "persistent", "wlc", 0), measured_cell("hog", "persistent", "oracle", 0)]
        path = self.results(self.stored(self.PLAN, done))
        later = dict(self.SESSION, date="2026-11-28 13:00 UTC")
        document = experiment.open_result_set(path, self.PLAN, later, fresh=False)
        self.assertEqual(document["cells"], done)
        self.assertEqual(document["experiment"]["calibration"], {"cost": 0.03})
        self.assertEqual([run["date"] for run in document["experiment"]["sessions"]],
                         ["2026-11-28 10:00 UTC", "2026-11-28 13:00 UTC"])
        self.assertEqual(experiment.cells_to_run(self.PLAN, document),
                         [("hog", "persistent", "wlc", 1), ("hog", "persistent", "oracle", 1)])

    def test_a_resumed_run_may_add_scenarios_schedulers_and_repeats(self):
        path = self.results(self.stored(self.PLAN, [measured_cell("hog", "persistent", "wlc", 0)]))
        wider = replace(self.PLAN, scenarios=("hog", "equal"), schedulers=("wlc", "rr"), repeats=3)
        document = experiment.open_result_set(path, wider, dict(self.SESSION), fresh=False)
        plan = document["experiment"]["plan"]
        self.assertEqual((plan["scenarios"], plan["schedulers"], plan["repeats"]),
                         (["hog", "equal"], ["wlc", "oracle", "rr"], 3))
        self.assertNotIn(("hog", "persistent", "wlc", 0), experiment.cells_to_run(wider, document))
        self.assertIn(("equal", "persistent", "rr", 0), experiment.cells_to_run(wider, document))

    def test_a_result_set_of_another_plan_shape_is_refused_in_one_line(self):
        path = self.results(self.stored(self.PLAN, [measured_cell("hog", "persistent", "wlc", 0)]))
        for other in (replace(self.PLAN, warmup=40.0), replace(self.PLAN, work_ms=10.0),
                      replace(self.PLAN, feedback=FeedbackSettings(update_interval=1.0))):
            with self.assertRaises(ExperimentError) as raised:
                experiment.open_result_set(path, other, dict(self.SESSION), fresh=False)
            message = str(raised.exception)
            self.assertNotIn("\n", message)
            self.assertIn("another plan", message)
            self.assertIn("--fresh", message)
        self.assertIn("warmup 15.0 vs 40.0", str(self.assertRaises(
            ExperimentError, experiment.open_result_set, path, replace(self.PLAN, warmup=40.0), self.SESSION, False)))

    def test_fresh_starts_again_whatever_the_folder_holds(self):
        path = self.results(self.stored(self.PLAN, [measured_cell("hog", "persistent", "wlc", 0)]))
        document = experiment.open_result_set(path, replace(self.PLAN, warmup=40.0), dict(self.SESSION), fresh=True)
        self.assertEqual((document["cells"], document["experiment"]["plan"]["warmup"]), ([], 40.0))

    def test_an_unreadable_results_json_is_refused_not_overwritten(self):
        path = self.results()
        path.write_text("{not json")
        with self.assertRaises(ExperimentError) as raised:
            experiment.open_result_set(path, self.PLAN, dict(self.SESSION), fresh=False)
        self.assertIn("--fresh", str(raised.exception))
        self.assertEqual(path.read_text(), "{not json")

    def test_fresh_and_resume_are_options_of_the_command_line(self):
        self.assertTrue(parse_args(["--fresh"]).fresh)
        self.assertFalse(parse_args([]).fresh)


class IPVSTableTests(SynchronousTestCase):
    def test_real_servers_are_read_with_dotted_addresses(self):
        self.assertEqual(parse_ip_vs(IP_VS), {
            "10.201.0.13:8080": {"weight": 100, "active": 3, "inactive": 41},
            "10.201.0.12:8080": {"weight": 100, "active": 2, "inactive": 40},
            "10.201.0.11:8080": {"weight": 50, "active": 0, "inactive": 12},
        })

    def test_an_empty_table_has_no_servers(self):
        self.assertEqual(parse_ip_vs(IP_VS.split("TCP")[0]), {})


class ForkedProcessTests(SynchronousTestCase):
    def log(self) -> Path:
        return Path(self.mktemp())

    def test_a_forked_function_logs_and_exits_with_its_status(self):
        def work():
            print("ready to go", flush=True)
            return 3

        child = ForkedProcess.start("work", work, self.log())
        child.wait_for_log("ready to go", 30)
        self.assertEqual(child.wait(30), 3)

    def test_an_exception_in_the_child_is_logged_and_fails_it(self):
        def broken():
            raise RuntimeError("no such thing")

        child = ForkedProcess.start("broken", broken, self.log())
        self.assertEqual(child.wait(30), 1)
        self.assertIn("RuntimeError: no such thing", child.log_tail())

    def test_stop_ends_the_childs_whole_process_group(self):
        def parent_of_a_sleeper():
            sleeper = os.fork()
            if sleeper == 0:
                os.execvp("sleep", ["sleep", "60"])
            print(f"sleeper {sleeper}", flush=True)
            os.waitpid(sleeper, 0)

        child = ForkedProcess.start("sleepers", parent_of_a_sleeper, self.log())
        child.wait_for_log("sleeper ", 30)
        sleeper = int(child.log_path.read_text().split()[1])
        self.assertEqual(child.stop(timeout=10), -signal.SIGTERM)
        # The grandchild got the signal too: it ends, though on a busy host
        # not always before stop() returns. Wait for its end, bounded.
        try:
            ended = os.pidfd_open(sleeper)
        except ProcessLookupError:
            return
        try:
            readable, _, _ = select.select([ended], [], [], 30)
        finally:
            os.close(ended)
        self.assertTrue(readable, f"sleeper {sleeper} outlived the stop of its process group by 30 s")

    def test_waiting_for_a_marker_a_process_never_prints_names_it(self):
        child = ForkedProcess.start("quiet", lambda: 0, self.log())
        with self.assertRaises(ExperimentError) as raised:
            child.wait_for_log("never said", 30)
        self.assertIn("never said", str(raised.exception))
        self.assertIn("quiet exited", str(raised.exception))


class ScheduledLoadRunTests(SynchronousTestCase):
    def test_the_run_starts_at_the_set_moment_and_notes_every_arrivals_lateness(self):
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        server_holder = {}

        def serve():
            asyncio.set_event_loop(loop)
            server_holder["server"] = loop.run_until_complete(Backend("rs1", 0.0).listen("127.0.0.1", 0))
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        ready.wait(30)
        port = server_holder["server"].sockets[0].getsockname()[1]

        def stop_server():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()

        self.addCleanup(stop_server)
        config = LoadConfig("127.0.0.1", port, rate=100, duration=0.5, seed=3, pattern="persistent", connections=2)
        start_at = experiment.time.monotonic() + 0.2
        run = ScheduledLoadRun(config, start_at)
        records = asyncio.run(run.run())
        self.assertEqual(len(run.lateness), len(records))
        self.assertTrue(all(record.outcome == OK for record in records))
        # Never early: each arrival leaves at or after its moment.
        self.assertGreaterEqual(min(run.lateness), 0.0)
        self.assertEqual(run._start, start_at)
