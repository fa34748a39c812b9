"""
The `lvsfeedback` command against a real director status listener on
127.0.0.1 (port 0) in the same process: the reactor serves while the
command, which blocks, runs in a thread or as a child process.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import lvsfeedback
from lvsfeedback import cli
from lvsfeedback.director.policy import DRAINED, Pinned
from lvsfeedback.director.service import DirectorService
from lvsfeedback.ipvs.memory import MemoryIPVS
from tests.helpers.director import RS, WEB, connect, write_config

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*argv: str):
    """`lvsfeedback ARGV` in a thread: a Deferred of (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def run():
        return cli.main(list(argv), out, err), out.getvalue(), err.getvalue()

    return deferToThread(run)


def run_process(*argv: str):
    """`python -m lvsfeedback.cli ARGV` as a child process: (stdout, stderr, exit status)."""
    return getProcessOutputAndValue(sys.executable, ["-m", "lvsfeedback.cli", *argv], env=dict(os.environ), path=PROJECT)


class LiveDirectorCase(TestCase):
    """A director with an in-memory IPVS table, its status listener on 127.0.0.1."""

    observe = None
    token = False

    def setUp(self):
        self.table = MemoryIPVS()
        # Passes are run by the tests; the loop's own would only race them.
        config = write_config(self, token=self.token, update_interval=3600)
        self.director = DirectorService(config, reactor, table=self.table, observe=self.observe)
        self.director.startService()
        self.addCleanup(self.director.stopService)
        self.url = f"http://127.0.0.1:{self.director.status.port.getHost().port}"

    def run_pass(self):
        return self.director.updater.run_pass()


def server_line(output: str, server: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(f"  -> {server} ")]
    return line


class StatusCommandTests(LiveDirectorCase):
    @inlineCallbacks
    def test_status_is_a_table_with_weights_health_agent_state_and_reason(self):
        connect(self.director, 1, health=40)
        yield self.run_pass()
        code, out, err = yield run_cli("status", "--url", self.url)
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], f"lvsfeedback director {lvsfeedback.__version__} at {self.url} (live)")
        self.assertIn("Prot LocalAddress:Port Scheduler Flags", lines)
        self.assertEqual(
            lines[3].split(),
            ["->", "RemoteAddress:Port", "Forward", "Weight", "Want", "Base", "Health", "Agent",
             "ActiveConn", "InActConn", "Reason"],
        )
        self.assertIn("TCP 10.0.0.1:80 wlc health  [web]", lines)
        self.assertRegex(
            server_line(out, "10.1.0.1:80"),
            r"^  -> 10\.1\.0\.1:80 +Masq +40 +40 +100 +40 \(\d+\.\ds\) +connected \d+\.\ds +0 +0 +"
            r"health: health 40 \(smoothed 40\.0\)$",
        )
        self.assertRegex(
            server_line(out, "10.1.0.3:80"),
            r"^  -> 10\.1\.0\.3:80 +Masq +50 +50 +50 +- +never-seen +0 +0 +static: agent never seen$",
        )
        # The columns line up: every server's weight ends where the header's does.
        header_end = lines[3].index("Weight") + len("Weight")
        self.assertEqual(server_line(out, "10.1.0.1:80")[header_end - 2:header_end], "40")
        self.assertEqual(server_line(out, "10.1.0.3:80")[header_end - 2:header_end], "50")

    @inlineCallbacks
    def test_status_json_is_the_directors_status_document(self):
        code, out, _ = yield run_cli("status", "--json", "--url", self.url)
        self.assertEqual(code, 0)
        document = json.loads(out)
        self.assertEqual([service["name"] for service in document["services"]], ["web", "dns"])
        self.assertFalse(document["director"]["observe"])

    @inlineCallbacks
    def test_status_runs_as_a_command(self):
        out, err, code = yield run_process("status", "--url", self.url)
        self.assertEqual((code, err), (0, b""))
        self.assertIn(b"  -> 10.1.0.2:80 ", out)


class ObservingStatusCommandTests(LiveDirectorCase):
    observe = True

    @inlineCallbacks
    def test_observe_mode_is_said_and_unwritten_weights_are_starred(self):
        connect(self.director, 2, health=30)
        yield self.run_pass()
        code, out, _ = yield run_cli("status", "--url", self.url)
        self.assertEqual(code, 0)
        self.assertIn("(observe mode: weights are computed, never written)", out.splitlines()[0])
        self.assertRegex(server_line(out, "10.1.0.2:80"), r"^  -> 10\.1\.0\.2:80 +Masq +- +30\* +100 ")
        self.assertIn("* the kernel does not have this weight yet", out)


class ControlCommandTests(LiveDirectorCase):
    @inlineCallbacks
    def test_drain_takes_effect_on_the_next_pass(self):
        connect(self.director, 1, health=90)
        yield self.run_pass()
        code, out, err = yield run_cli("drain", "web", "10.1.0.1:80", "--url", self.url)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out, "10.1.0.1:80 of web (TCP 10.0.0.1:80): drained, on the next weight update pass (every 3600s)\n"
        )
        self.assertIs(self.director.updater.overrides[WEB, RS[0]], DRAINED)
        yield self.run_pass()
        _, status, _ = yield run_cli("status", "--url", self.url)
        self.assertRegex(server_line(status, "10.1.0.1:80"), r"Masq +0 +0 +100 .* drained: drained by the operator$")

    @inlineCallbacks
    def test_pin_then_undrain(self):
        code, out, _ = yield run_cli("pin", "TCP 10.0.0.1:80", "10.1.0.2", "7", "--url", self.url)
        self.assertEqual(code, 0)
        self.assertIn("pinned 7", out)
        self.assertEqual(self.director.updater.overrides[WEB, RS[1]], Pinned(7))
        code, out, _ = yield run_cli("undrain", "web", "10.1.0.2:80", "--url", self.url)
        self.assertEqual(code, 0)
        self.assertIn(": following feedback,", out)
        self.assertEqual(self.director.updater.overrides, {})

    @inlineCallbacks
    def test_an_unknown_server_fails_with_the_directors_reason(self):
        code, out, err = yield run_cli("drain", "web", "10.9.9.9:80", "--url", self.url)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            "lvsfeedback drain: the director refused: no real server '10.9.9.9:80' in service web "
            "(TCP 10.0.0.1:80) (HTTP 404)\n",
        )

    @inlineCallbacks
    def test_a_weight_that_is_not_a_number_is_a_usage_error(self):
        out, err, code = yield run_process("pin", "web", "10.1.0.1", "heavy", "--url", self.url)
        self.assertEqual(code, 2)
        self.assertIn(b"not an integer: 'heavy'", err)
        self.assertEqual(self.director.updater.overrides, {})


class TokenCommandTests(LiveDirectorCase):
    token = True

    @inlineCallbacks
    def test_control_without_the_token_is_refused(self):
        code, _, err = yield run_cli("drain", "web", "10.1.0.1:80", "--url", self.url)
        self.assertEqual(code, 1)
        self.assertIn("the director refused: control needs a token", err)
        self.assertIn("(HTTP 401)", err)
        self.assertEqual(self.director.updater.overrides, {})

    @inlineCallbacks
    def test_control_with_the_token_file_is_obeyed(self):
        token_file = str(self.director.config.status.token_file)
        code, _, err = yield run_cli("drain", "web", "10.1.0.1:80", "--url", self.url, "--token-file", token_file)
        self.assertEqual((code, err), (0, ""))
        self.assertIs(self.director.updater.overrides[WEB, RS[0]], DRAINED)

    @inlineCallbacks
    def test_an_unreadable_token_file_is_said_in_one_line(self):
        missing = self.mktemp()
        code, _, err = yield run_cli("drain", "web", "10.1.0.1:80", "--url", self.url, "--token-file", missing)
        self.assertEqual(code, 1)
        self.assertEqual(err, f"lvsfeedback drain: cannot read the token file {missing}: No such file or directory\n")


class UnreachableDirectorTests(TestCase):
    @inlineCallbacks
    def closed_port_url(self):
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        return f"http://127.0.0.1:{number}"

    @inlineCallbacks
    def test_connection_refused_is_one_clear_line(self):
        url = yield self.closed_port_url()
        code, out, err = yield run_cli("status", "--url", url)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"lvsfeedback status: cannot reach the director at {url}: connection refused\n")

    @inlineCallbacks
    def test_the_command_exits_non_zero_without_a_traceback(self):
        url = yield self.closed_port_url()
        out, err, code = yield run_process("drain", "web", "10.1.0.1:80", "--url", url)
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err.decode(), f"lvsfeedback drain: cannot reach the director at {url}: connection refused\n")

    @inlineCallbacks
    def test_a_url_that_is_not_http_is_refused(self):
        code, _, err = yield run_cli("status", "--url", "127.0.0.1:9101")
        self.assertEqual(code, 1)
        self.assertIn("the director's URL must look like http://127.0.0.1:9101, got '127.0.0.1:9101'", err)


class CheckConfigTests(TestCase):
    def test_a_good_file_is_ok(self):
        path = str(write_config(self).path)
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["check-config", path], out, err), 0)
        self.assertEqual((out.getvalue(), err.getvalue()), (f"{path}: ok\n", ""))

    def test_every_problem_of_a_bad_file_goes_to_stderr(self):
        path = self.mktemp()
        with open(path, "w") as file:
            file.write('[director]\nupdate_interval = -1\nobserv = true\n\n'
                       '[[service]]\nname = "web"\nprotocol = "tcp"\naddress = "10.0.0.1"\nport = 80\n'
                       '[[service.real]]\naddress = "10.1.0.1"\nweight = "ten"\n')
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["check-config", path], out, err), 1)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(
            err.getvalue().splitlines(),
            [
                f"{path}: director.update_interval: must be a number of seconds > 0, got -1",
                f'{path}: director.observ: unknown key; did you mean "observe"?',
                f'{path}: service[0].real[0].weight: must be an integer 1..65535, got "ten"',
            ],
        )

    def test_a_missing_file_is_a_problem_too(self):
        path = self.mktemp()
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["check-config", path], out, err), 1)
        self.assertEqual(err.getvalue(), f"{path}: cannot read: No such file or directory\n")


class VersionTests(TestCase):
    def test_version_prints_the_package_version(self):
        out = io.StringIO()
        self.assertEqual(cli.main(["version"], out, io.StringIO()), 0)
        self.assertEqual(out.getvalue(), f"lvsfeedback {lvsfeedback.__version__}\n")
        self.assertTrue(re.fullmatch(r"\d+\.\d+\.\d+", lvsfeedback.__version__))


class ExperimentCommandTests(TestCase):
    def test_without_the_lab_the_experiment_says_it_runs_from_the_source_tree(self):
        # As in an installed wheel, which leaves the lab out.
        name = "lvsfeedback.lab.experiment"
        before = sys.modules.get(name)
        sys.modules[name] = None
        self.addCleanup(lambda: sys.modules.__setitem__(name, before) if before else sys.modules.pop(name))
        err = io.StringIO()
        self.assertEqual(cli.main(["experiment", "--quick"], io.StringIO(), err), 2)
        self.assertIn("lvsfeedback experiment: runs from the project's source tree (make deps)", err.getvalue())
