"""
The twistd taps build everything from the reactor they are given, and the
.tac files go through them.
"""

import gc
import os
import runpy
import sys

import twisted.internet
from twisted.application.service import Service
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent import tap as agent_tap
from lvsfeedback.director import tap as director_tap

TAP = os.path.join(os.path.dirname(__file__), "..", "..", "tap")

DIRECTOR_CONFIG = """
[director]
observe = true

[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80

[[service.real]]
address = "10.1.0.1"
"""


class UnusableReactor:
    """Stands in for the global reactor: any use of it fails the test."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AssertionError(f"the global reactor was used: reactor.{name}")


class MakeServiceReactorTests(SynchronousTestCase):
    def setUp(self):
        unusable = UnusableReactor()
        # `from twisted.internet import reactor` finds either of these.
        if hasattr(twisted.internet, "reactor"):
            self.patch(twisted.internet, "reactor", unusable)
        installed = sys.modules.get("twisted.internet.reactor")
        sys.modules["twisted.internet.reactor"] = unusable
        self.addCleanup(self.restore, installed)
        self.reactor = MemoryReactorClock()

    @staticmethod
    def restore(installed):
        if installed is None:
            del sys.modules["twisted.internet.reactor"]
        else:
            sys.modules["twisted.internet.reactor"] = installed

    def test_the_agent_options_and_service_use_only_the_reactor_given(self):
        options = agent_tap.Options()
        options.parseOptions(["-d", "tcp:192.0.2.1:3262", "-s", "tcp:80", "-m", "probe:port=8080"])
        agent = agent_tap.makeService(options, reactor=self.reactor)
        agent.startService()
        self.reactor.advance(options.settings.interval)
        # The first sample, on the clock given, probes through the reactor given.
        self.assertEqual([(host, port) for host, port, *_ in self.reactor.tcpClients], [("127.0.0.1", 8080)])

    def test_the_director_service_uses_only_the_reactor_given(self):
        path = self.mktemp()
        with open(path, "w") as file:
            file.write(DIRECTOR_CONFIG)
        options = director_tap.Options()
        options.parseOptions(["--config", path])
        director = director_tap.makeService(options, reactor=self.reactor)
        director.startService()
        self.addCleanup(director.stopService)
        self.assertEqual(sorted(port for port, *_ in self.reactor.tcpServers), [3262, 9101])
        self.assertTrue(self.reactor.getDelayedCalls())

    def test_the_director_process_collects_young_objects_less_often(self):
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        gc.set_threshold(700, 10, 10)
        path = self.mktemp()
        with open(path, "w") as file:
            file.write(DIRECTOR_CONFIG)
        options = director_tap.Options()
        options.parseOptions(["--config", path])
        director_tap.makeService(options, reactor=self.reactor)
        self.assertEqual(gc.get_threshold(), director_tap.GC_THRESHOLDS)
        self.assertGreater(director_tap.GC_THRESHOLDS[0], 700)


class TacFileTests(SynchronousTestCase):
    def run_tac(self, name, variable, tap):
        made = []

        def makeService(options, reactor=None):
            made.append((options, reactor))
            return Service()

        self.patch(tap, "makeService", makeService)
        self.patch(os, "environ", {**os.environ, variable: "/etc/test/config.toml"})
        self.patch(tap.Options, "postOptions", lambda options: None)
        application = runpy.run_path(os.path.join(TAP, name))["application"]
        self.assertEqual([(options["config"], reactor) for options, reactor in made], [("/etc/test/config.toml", None)])
        return application

    def test_the_director_tac_goes_through_the_taps_makeService(self):
        self.run_tac("director.tac", "LVSFEEDBACK_DIRECTOR_CONFIG", director_tap)

    def test_the_agent_tac_goes_through_the_taps_makeService(self):
        self.run_tac("agent.tac", "LVSFEEDBACK_AGENT_CONFIG", agent_tap)
