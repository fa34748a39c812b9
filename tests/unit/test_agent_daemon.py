"""
twistd lvs-agent: its options and config file, the HAProxy agent-check
answers, and draining.
"""

import os
import signal

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.config import AgentConfigError, ServiceSettings, load_agent_config, parse_service
from lvsfeedback.agent.haproxy import HAProxyAgentFactory
from lvsfeedback.agent.tap import Options, makeService
from tests.helpers.reactor import CallingFromThreadReactor

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "tap", "agent.toml")


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionTests(SynchronousTestCase):
    def test_flags_alone_make_a_complete_agent(self):
        options = parse("--director", "tcp:10.0.0.1:3262", "--director", "tcp:10.0.0.2:3262",
                        "--service", "tcp:80", "--service", "udp:53:nat", "--metric", "cpu", "--metric", "loadavg")
        settings = options.settings
        self.assertEqual(settings.directors, ("tcp:10.0.0.1:3262", "tcp:10.0.0.2:3262"))
        self.assertEqual(
            settings.services,
            (ServiceSettings("tcp", 80, "dr", "worst", ("cpu", "loadavg")),
             ServiceSettings("udp", 53, "nat", "worst", ("cpu", "loadavg"))),
        )

    def test_a_metric_that_reads_at_build_is_checked_before_there_is_a_reactor(self):
        # The cgroup metric takes its first CPU reading, and the time, when
        # built: checking the spec must not need the agent's reactor.
        cgroup = FilePath(self.mktemp())
        cgroup.makedirs()
        cgroup.child("cpu.stat").setContent(b"usage_usec 1000\nuser_usec 600\nsystem_usec 400\n")
        options = parse("-d", "tcp:10.0.0.1:3262", "-s", "tcp:80", "-m", f"cgroup:path={cgroup.path}")
        self.assertEqual(options.settings.services[0].metrics, (f"cgroup:path={cgroup.path}",))

    def test_missing_director_and_metric_are_named(self):
        error = self.assertRaises(usage.UsageError, parse, "--service", "tcp:80")
        self.assertIn("no director", str(error))
        self.assertIn("service tcp:80 has no metric", str(error))

    def test_bad_service_is_refused_in_one_line(self):
        for text, reason in (("tcp", "expected PROTO:PORT"), ("icmp:80", "protocol must be"),
                             ("tcp:0", "port must be 1..65535"), ("tcp:80:masq", "forwarding must be")):
            error = self.assertRaises(usage.UsageError, parse, "-d", "tcp:h:3262", "-s", text, "-m", "cpu")
            self.assertIn(reason, str(error))
            self.assertEqual(len(str(error).splitlines()), 1)

    def test_unknown_metric_lists_the_known_ones(self):
        error = self.assertRaises(usage.UsageError, parse, "-d", "tcp:h:3262", "-s", "tcp:80", "-m", "cpux")
        self.assertIn("unknown metric 'cpux'", str(error))
        self.assertIn("loadavg", str(error))

    def test_same_service_twice_is_a_contradiction(self):
        error = self.assertRaises(usage.UsageError, parse, "-d", "tcp:h:3262", "-s", "tcp:80", "-s", "tcp:80:nat", "-m", "cpu")
        self.assertIn("given twice", str(error))

    def test_a_number_flag_out_of_range_is_refused_as_the_file_key_would_be(self):
        flags = ("-d", "tcp:h:3262", "-s", "tcp:80", "-m", "cpu", "--smoothing", "0")
        error = self.assertRaises(usage.UsageError, parse, *flags)
        self.assertEqual(str(error), "--smoothing: must be a number above 0 and at most 1, got 0.0")

    def test_a_number_flag_that_is_no_number_is_named(self):
        flags = ("-d", "tcp:h:3262", "-s", "tcp:80", "-m", "cpu", "--interval", "x")
        error = self.assertRaises(usage.UsageError, parse, *flags)
        self.assertEqual(str(error), "--interval: must be a number, got 'x'")

    def test_sample_config_loads_and_flags_override_it(self):
        from_file = parse("--config", SAMPLE).settings
        self.assertTrue(from_file.directors and from_file.services)
        overridden = parse("--config", SAMPLE, "--director", "tcp:192.0.2.9:3262", "--metric", "loadavg").settings
        self.assertEqual(overridden.directors, ("tcp:192.0.2.9:3262",))
        self.assertEqual({service.metrics for service in overridden.services}, {("loadavg",)})
        self.assertEqual([s.port for s in overridden.services], [s.port for s in from_file.services])

    def test_config_file_problems_name_file_and_key(self):
        path = self.mktemp()
        with open(path, "w") as file:
            file.write('[agent]\ndirectors = "tcp:x:1"\nintervall = 2\n[[service]]\nport = 80\ncombine = "best"\n')
        error = self.assertRaises(AgentConfigError, load_agent_config, path)
        problems = "\n".join(error.problems)
        self.assertIn(f"{path}: agent.directors: must be a list", problems)
        self.assertIn(f"{path}: agent.intervall: unknown key", problems)
        self.assertIn(f"{path}: service[0].combine: must be one of worst, mean", problems)

    def test_toml_syntax_error_is_one_clear_problem(self):
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("[agent\n")
        error = self.assertRaises(AgentConfigError, load_agent_config, path)
        self.assertIn(f"{path}: not valid TOML", str(error))

    def test_parse_service_defaults_to_direct_routing(self):
        self.assertEqual(parse_service("tcp:443"), ServiceSettings("tcp", 443, "dr"))


class FakeSampler:
    def __init__(self, health=75, failing=(), drained=False):
        self._health, self._failing, self.drained = health, list(failing), drained

    def health(self, protocol, port):
        return self._health

    def failing(self, protocol, port):
        return self._failing


class HAProxyAgentCheckTests(SynchronousTestCase):
    def answer(self, sampler):
        factory = HAProxyAgentFactory(sampler, "tcp", 80)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting, "an agent-check answer is one line, then close")
        return transport.value()

    def test_health_is_a_weight_percentage_that_also_lifts_drain_and_down(self):
        self.assertEqual(self.answer(FakeSampler(75)), b"ready up 75%\n")

    def test_drained_agent_says_drain(self):
        self.assertEqual(self.answer(FakeSampler(75, drained=True)), b"drain\n")

    def test_failing_probe_says_down(self):
        self.assertEqual(self.answer(FakeSampler(0, failing=["probe"])), b"down\n")

    def test_other_failing_metrics_do_not_mark_the_server_down(self):
        self.assertEqual(self.answer(FakeSampler(40, failing=["http"])), b"ready up 40%\n")


class ConnectAfterFirstSampleTests(SynchronousTestCase):
    def test_agent_connects_to_its_directors_only_once_it_has_a_sample(self):
        from twisted.internet.defer import Deferred

        from lvsfeedback.agent.config import AgentSettings
        from lvsfeedback.agent.service import AgentService

        class FirstSampleLater(FakeSampler):
            sampled = Deferred()

            def when_sampled(self):
                return self.sampled

            def setServiceParent(self, parent):
                pass

        reactor = MemoryReactorClock()
        settings = AgentSettings(directors=("tcp:192.0.2.1:3262",), services=(ServiceSettings("tcp", 80),))
        sampler = FirstSampleLater()
        agent = AgentService(settings, reactor, sampler=sampler)
        agent.startService()
        self.assertEqual(reactor.tcpClients, [], "no connection before the first sample")
        sampler.sampled.callback(None)
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients], [("192.0.2.1", 3262)])


AGENT_CONFIG = """
[agent]
directors = ["tcp:192.0.2.1:3262"]
secret_file = "necp.secret"
drain_timeout = {drain_timeout}
{more}
[[service]]
protocol = "tcp"
port = 80
metrics = ["cpu"]
"""


class SignalTests(SynchronousTestCase):
    """What each signal does to a running agent (the handlers are called as the signal would)."""

    def setUp(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.path = os.path.join(folder, "agent.toml")
        self.secret = os.path.join(folder, "necp.secret")
        self.write_secret(b"first secret\n")
        self.write_config()
        self.events = []
        reactor = CallingFromThreadReactor()
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        self.agent = makeService(parse("--config", self.path), reactor=reactor)
        self.agent.log = Logger(observer=self.events.append)
        for hook, args, kwargs in reactor.whenRunningHooks:
            hook(*args, **kwargs)

    def write_config(self, drain_timeout=10, more=""):
        with open(self.path, "w") as file:
            file.write(AGENT_CONFIG.format(drain_timeout=drain_timeout, more=more))

    def write_secret(self, secret):
        with open(self.secret, "wb") as file:
            file.write(secret)

    def send(self, signum):
        signal.getsignal(signum)(signum, None)

    def logged(self):
        return "\n".join(formatEvent(event) for event in self.events)

    def test_sighup_rereads_the_config_and_a_drained_agent_stays_drained(self):
        self.send(signal.SIGUSR2)
        self.assertTrue(self.agent.drained)
        self.write_config(drain_timeout=3)
        self.send(signal.SIGHUP)
        self.assertTrue(self.agent.drained)
        self.assertEqual(self.agent.settings.drain_timeout, 3)
        self.assertIn("config reloaded (still drained)", self.logged())

    def test_sighup_gives_sessions_opened_from_then_on_the_new_secret(self):
        self.write_secret(b"second secret\n")
        self.send(signal.SIGHUP)
        self.assertEqual([factory.secret for factory in self.agent.links.factories], [b"second secret"])

    def test_a_bad_config_on_reload_is_refused_with_file_key_and_reason_and_the_old_one_stays(self):
        before = self.agent.settings
        self.write_config(drain_timeout=-1, more="intervall = 2")
        self.send(signal.SIGHUP)
        self.assertEqual(self.agent.settings, before)
        logged = self.logged()
        self.assertIn("config reload refused, the running config stays", logged)
        self.assertIn(f"{self.path}: agent.intervall: unknown key", logged)
        self.assertIn(f"{self.path}: agent.drain_timeout: must be a number at least 0, got -1", logged)

    def test_an_empty_secret_on_reload_is_refused(self):
        self.write_secret(b"\n")
        self.send(signal.SIGHUP)
        self.assertEqual([factory.secret for factory in self.agent.links.factories], [b"first secret"])
        self.assertIn(f"{self.secret}: the secret file is empty", self.logged())

    def test_a_change_that_needs_a_restart_is_said_so_and_not_half_applied(self):
        self.write_config(drain_timeout=4, more="interval = 5")
        self.send(signal.SIGHUP)
        self.assertEqual((self.agent.settings.interval, self.agent.settings.drain_timeout), (1.0, 4))
        self.assertIn("interval changed: takes effect on restart", self.logged())

    def test_sigusr1_undrains(self):
        self.send(signal.SIGUSR2)
        self.assertEqual(self.agent.links.announced, set(), "a drained agent announces nothing")
        self.send(signal.SIGUSR1)
        self.assertFalse(self.agent.drained)
        self.assertEqual(self.agent.links.announced, set(self.agent.units), "START again at every handshake")
