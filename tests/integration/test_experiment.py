"""
The experiment for a few seconds on a real kernel: requests flow through
IPVS to every real server, and the result document is complete.
"""

import json
from pathlib import Path

from twisted.trial.unittest import TestCase

from lvsfeedback.lab import report
from lvsfeedback.lab.experiment import Plan, run_experiment
from tests.integration import require_ipvs

# Static wlc only: the feedback daemons fork from a process without a
# reactor, and trial has one; scripts/demo runs them.
PLAN = Plan(scenarios=("equal",), schedulers=("wlc",), patterns=("short",), repeats=1, warmup=2.0, measure=6.0)
SERVERS = {"rs1", "rs2", "rs3"}


class ExperimentTests(TestCase):
    timeout = 300

    def test_a_short_run_reaches_every_server_and_records_everything(self):
        require_ipvs()
        out = Path(self.mktemp())
        document = run_experiment(PLAN, out, "integration test", "the test VM", say=lambda line: None)
        self.assertEqual(json.loads((out / "results.json").read_text()), json.loads(json.dumps(document)))

        setup = document["experiment"]
        self.assertGreater(setup["calibration"]["cost"], 0)
        self.assertGreater(setup["scenarios"]["equal"]["rate"], 0)
        (cell,) = document["cells"]
        summary = cell["summary"]
        self.assertGreater(summary["ok"], 0)
        self.assertEqual((summary["errors"], summary["timeouts"]), (0, 0))
        # Through the VIP to every real server, each its fair share give or take.
        self.assertEqual(set(summary["servers"]), SERVERS)
        for share in summary["shares"].values():
            self.assertGreater(share, 0.15)
        for utilisation in cell["cpu_utilisation"].values():
            self.assertGreater(utilisation, 0)
        # IPVS sampled every second with the static weights.
        self.assertGreaterEqual(len(cell["weights"]["time"]), PLAN.warmup + PLAN.measure - 1)
        for name in SERVERS:
            self.assertEqual(set(cell["weights"][name]), {100})
        self.assertEqual(len(cell["records"]), summary["requests"] + sum(
            1 for packed in cell["records"] if not PLAN.warmup <= packed[0] < PLAN.warmup + PLAN.measure))
        self.assertIsNotNone(cell["lateness_ms"]["p99"])

        terminal, plots = report.write_report(document, out, with_plots=False)
        self.assertIn("| equal | short | wlc |", (out / "report.md").read_text())
        self.assertIn("wlc", terminal)
