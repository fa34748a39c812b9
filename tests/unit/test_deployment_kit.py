"""
The deployment kit in tap/ works as shipped: each .tac file and each systemd
unit's command lines start real daemons that find each other, reload, and
drain. Paths in the units are rewritten to this venv and temporary files;
nothing else is changed.
"""

import configparser
import os
import re
import shlex
import signal
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.config import DEFAULT_MAX_AGENTS
from lvsfeedback.director.service import descriptor_shortage
from lvsfeedback.testing.daemon import Daemon, free_port

TAP = os.path.join(os.path.dirname(__file__), "..", "..", "tap")
BIN = os.path.dirname(sys.executable)

DIRECTOR_CONFIG = """
[director]
listen = "tcp:{port}:interface=127.0.0.1"
observe = true
update_interval = 0.5
[status]
listen = "tcp:{status_port}:interface=127.0.0.1"
[policy]
mode = "health"  # these tests assert base x health weights
slow_start = 0
[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80
[[service.real]]
address = "127.0.0.1"
{more}
"""

AGENT_CONFIG = """
[agent]
directors = ["tcp:127.0.0.1:{port}"]
interval = 0.5
drain_timeout = 5
[[service]]
protocol = "tcp"
port = 80
forwarding = "nat"
metrics = ["command:cmd=echo 40"]  # load 40 of 100: health 60
"""


def unit_commands(name: str, replacements: dict[str, str]) -> dict[str, list[str]]:
    """The Exec* command lines of a systemd unit, with paths replaced."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(TAP, name))
    commands = {}
    for key, value in parser["Service"].items():
        if key.startswith("exec"):
            for old, new in replacements.items():
                value = value.replace(old, new)
            commands[key] = shlex.split(value)
    return commands


class DeploymentKitTests(SynchronousTestCase):
    def setUp(self):
        self.port = free_port()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.director_toml = os.path.join(folder, "director.toml")
        self.agent_toml = os.path.join(folder, "agent.toml")
        self.write_director_config()
        with open(self.agent_toml, "w") as file:
            file.write(AGENT_CONFIG.format(port=self.port))
        self.replacements = {
            "/usr/local/bin/": BIN + "/",
            "/etc/lvsfeedback/director.toml": self.director_toml,
            "/etc/lvsfeedback/agent.toml": self.agent_toml,
        }
        self.env = {**os.environ, "LVSFEEDBACK_DIRECTOR_CONFIG": self.director_toml,
                    "LVSFEEDBACK_AGENT_CONFIG": self.agent_toml}
        self.cwd = folder

    def write_director_config(self, more="", text=None):
        with open(self.director_toml, "w") as file:
            file.write(text if text is not None else
                       DIRECTOR_CONFIG.format(port=self.port, status_port=free_port(), more=more))

    def start(self, argv):
        daemon = Daemon(argv, env=self.env, cwd=self.cwd)
        self.addCleanup(daemon.stop)
        return daemon

    def assertAgentReportsAndDrains(self, director, agent):
        director.wait_for(r"agent 127\.0\.0\.1 up", 30)
        director.wait_for(r"observe: TCP 10\.0\.0\.1:80 127\.0\.0\.1:80: desired weight \S+ -> 60 \(health: health 60", 30)
        agent.signal(signal.SIGTERM)
        agent.wait_for(r"draining: STOP sent to 1 directors", 10)
        director.wait_for(r"agent 127\.0\.0\.1 stopped 6/80", 10)
        # twistd shuts down cleanly, then exits by the signal it got, as systemd expects.
        self.assertEqual(agent.stop(), -signal.SIGTERM, agent.tail())
        self.assertIn("Server Shut Down.", agent.lines[-1])
        self.assertFalse([line for line in agent.lines if "Traceback" in line], agent.tail())

    def test_tac_files_start_a_director_and_an_agent_that_report_and_drain(self):
        director = self.start([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "-y", os.path.join(TAP, "director.tac")])
        director.wait_for(rf"starting on {self.port}", 30)
        agent = self.start([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "-y", os.path.join(TAP, "agent.tac")])
        self.assertAgentReportsAndDrains(director, agent)

    def test_systemd_units_start_reload_and_stop(self):
        director_unit = unit_commands("lvs-director.service", self.replacements)
        agent_unit = unit_commands("lvs-agent.service", self.replacements)
        if "execstartpre" in director_unit:
            check = subprocess.run(director_unit["execstartpre"], capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stderr)
        director = self.start(director_unit["execstart"])
        director.wait_for(rf"starting on {self.port}", 30)
        agent = self.start(agent_unit["execstart"])
        director.wait_for(r"agent 127\.0\.0\.1 up", 30)

        reload = [part.replace("$MAINPID", str(director.process.pid)) for part in director_unit["execreload"]]
        self.write_director_config(text="[director]\nlisten = 3262\n")
        mark = len(director.lines)
        subprocess.run(reload, check=True)
        director.wait_for(r"config reload refused, the running config stays", 10, after=mark)
        self.write_director_config(more='[[service.real]]\naddress = "127.0.0.2"\n')
        subprocess.run(reload, check=True)
        director.wait_for(r"config reloaded from .*: 1 services", 10, after=mark)
        director.wait_for(r"observe: TCP 10\.0\.0\.1:80 127\.0\.0\.2:80: desired weight none -> 100", 10, after=mark)

        reload = [part.replace("$MAINPID", str(agent.process.pid)) for part in agent_unit["execreload"]]
        with open(self.agent_toml, "w") as file:
            file.write(AGENT_CONFIG.format(port=self.port).replace("drain_timeout = 5", "drain_timeout = -5"))
        mark = len(agent.lines)
        subprocess.run(reload, check=True)
        agent.wait_for(r"config reload refused, the running config stays", 10, after=mark)
        agent.wait_for(r"agent\.drain_timeout: must be a number at least 0", 10, after=mark)
        with open(self.agent_toml, "w") as file:
            file.write(AGENT_CONFIG.format(port=self.port).replace("drain_timeout = 5", "drain_timeout = 4"))
        subprocess.run(reload, check=True)
        agent.wait_for(r"config reloaded", 10, after=mark)
        self.assertAgentReportsAndDrains(director, agent)


def unit_setting(name: str, key: str, section: str = "Service") -> str | None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(TAP, name))
    return parser[section].get(key)


class UnitLimitTests(SynchronousTestCase):
    def test_the_director_unit_opens_enough_files_for_max_agents(self):
        # The default 1,024 ran out at about a thousand agents.
        limit = unit_setting("lvs-director.service", "LimitNOFILE")
        self.assertIsNotNone(limit, "the director unit sets no LimitNOFILE: 1,024 files")
        self.assertIsNone(descriptor_shortage(DEFAULT_MAX_AGENTS, int(limit)))

    def test_the_agent_unit_raises_its_open_file_limit(self):
        limit = unit_setting("lvs-agent.service", "LimitNOFILE")
        self.assertIsNotNone(limit, "the agent unit sets no LimitNOFILE: 1,024 files")
        self.assertGreater(int(limit), 1024)


class PairOrderingTests(SynchronousTestCase):
    def test_the_director_starts_before_keepalived_can_bring_the_address(self):
        before = unit_setting("lvs-director.service", "Before", section="Unit") or ""
        self.assertIn("keepalived.service", before.split())
        # Ordering, not a dependency: a lone director needs no keepalived.
        for key in ("Requires", "Wants", "BindsTo"):
            self.assertNotIn("keepalived", unit_setting("lvs-director.service", key, section="Unit") or "")


    def test_after_any_exit_the_unit_removes_the_guard_file_keepalived_tracks(self):
        # A crashed lvs-director must not leave "stand down" behind (README "Running a pair").
        removed = shlex.split(unit_setting("lvs-director.service", "ExecStopPost") or "")
        with open(os.path.join(TAP, "keepalived-pair.conf")) as file:
            [tracked] = re.findall(r'^track_file pair_guard \{\s*file "(\S+)"', file.read(), re.M)
        self.assertEqual(removed, ["/bin/rm", "-f", tracked])
        self.assertEqual(unit_setting("lvs-director.service", "RuntimeDirectory"), os.path.basename(os.path.dirname(tracked)))
        self.assertEqual(unit_setting("lvs-director.service", "RuntimeDirectoryPreserve"), "yes")


class JSONLogTests(SynchronousTestCase):
    def test_twistd_logger_option_gives_one_json_event_per_line(self):
        import json

        config = os.path.abspath(self.mktemp())
        with open(config, "w") as file:
            file.write(DIRECTOR_CONFIG.format(port=free_port(), status_port=free_port(), more=""))
        director = Daemon([os.path.join(BIN, "twistd"), "--logger=lvsfeedback.logs.json_stdout", "-n", "--pidfile=",
                           "lvs-director", "--config", config])
        self.addCleanup(director.stop)
        line = director.wait_for(r'"log_format": "observe: \{service\}', 30).string
        event = json.loads(line.lstrip("\x1e"))
        self.assertEqual(event["log_namespace"], "lvsfeedback.director.updater.WeightUpdater")
        self.assertEqual((event["service"], event["dest"], event["new"]), ("TCP 10.0.0.1:80", "127.0.0.1:80", 100))
