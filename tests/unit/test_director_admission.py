"""
Which agent connections the director lets in: at most [director] max_agents
open at once, the next one refused at connect (the listener closes it),
counted, and logged once a minute, so that it never runs out of file
descriptors; and connections from outside [director] allow are refused.
"""

import textwrap

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.config import load_config
from lvsfeedback.director.service import (
    DESCRIPTOR_HEADROOM,
    DirectorService,
    descriptor_shortage,
)
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.necp.counters import LOG_WINDOW
from tests.helpers.director import accept, director_config, write_director_config

CONFIG = """
[director]
listen = "tcp:3262"
{more}
[[service]]
name = "web"
protocol = "tcp"
address = "192.0.2.1"
port = 80
[[service.real]]
address = "10.0.0.1"
"""


class MaxAgentsTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.path = write_director_config(self, CONFIG.format(more="max_agents = 3"))
        self.director = DirectorService(load_config(self.path), self.reactor, table=MemoryIPVS())
        self.director.startService()
        self.addCleanup(self.director.stopService)
        [self.factory] = [factory for port, factory, _, _ in self.reactor.tcpServers if port == 3262]
        self.connections = {}

    def write(self, more: str) -> None:
        with open(self.path, "w") as file:
            file.write(textwrap.dedent(CONFIG.format(more=more)))

    def connect(self, n: int) -> bool:
        """Agent 10.0.0.N connects as the listener would connect it; False if it is refused."""
        protocol = accept(self.factory, f"10.0.0.{n}")
        if protocol is None:
            return False
        self.connections[n] = (protocol, protocol.transport)
        return True

    def disconnect(self, n: int) -> None:
        protocol, _ = self.connections.pop(n)
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_the_connection_beyond_max_agents_is_refused_and_the_others_stay(self):
        self.assertEqual([self.connect(n) for n in (1, 2, 3, 4)], [True, True, True, False])
        self.assertEqual(sorted(self.connections), [1, 2, 3])
        self.assertFalse(any(transport.disconnecting for _, transport in self.connections.values()))

    def test_a_closed_connection_makes_room_for_the_next(self):
        for n in (1, 2, 3):
            self.connect(n)
        self.disconnect(2)
        self.assertTrue(self.connect(4))
        self.assertFalse(self.connect(5))

    def test_connections_count_before_they_say_init(self):
        # Idle connections hold descriptors as much as agents do.
        for n in (1, 2, 3):
            self.connect(n)
        self.assertEqual(self.factory.agents(), {})
        self.assertFalse(self.connect(4))

    def test_refusals_from_every_host_cost_one_line_a_minute_and_a_summary(self):
        # The limit is the director's: agents over it are one class, whoever they are.
        for n in (1, 2, 3):
            self.connect(n)
        with capturedLogs() as events:
            for n in range(10, 15):
                self.connect(n)
            self.reactor.advance(LOG_WINDOW)
            self.connect(20)
        lines = [line for line in map(formatEvent, events) if "max_agents" in line]
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("10.0.0.10: 3 open, [director] max_agents = 3", lines[0])
        self.assertIn("and 4 more max_agents refusals from any host in the last 60 s", lines[1])
        self.assertIn("10.0.0.20", lines[2])
        self.assertEqual(self.factory.counters.connections_refused["max_agents"], 6)

    def test_a_reload_sets_the_new_limit(self):
        for n in (1, 2, 3):
            self.connect(n)
        self.write("max_agents = 4")
        self.assertTrue(self.director.reload())
        self.assertEqual([self.connect(n) for n in (4, 5)], [True, False])



class ListenBacklogTests(SynchronousTestCase):
    def backlog_of(self, listening_port: int) -> int:
        """The listen backlog the director with the default config asks for on `listening_port`."""
        reactor = MemoryReactorClock()
        director = DirectorService(director_config(self, ""), reactor, table=MemoryIPVS())
        director.startService()
        self.addCleanup(director.stopService)
        [backlog] = [backlog for port, _, backlog, _ in reactor.tcpServers if port == listening_port]
        return backlog

    def test_the_default_listen_backlog_is_above_twisteds_fifty(self):
        # A thousand agents reconnecting at once after a restart must not
        # have their SYNs dropped.
        self.assertEqual(self.backlog_of(3262), 1024)

    def test_the_default_status_listen_backlog_is_above_twisteds_fifty_too(self):
        # A thousand concurrent /status.json had SYNs dropped, retried for
        # seconds, and the operator's own poll among them (#15's status flood).
        self.assertEqual(self.backlog_of(9101), 1024)


class DescriptorLimitTests(SynchronousTestCase):
    def test_a_limit_below_max_agents_and_headroom_is_a_warning_naming_both(self):
        shortage = descriptor_shortage(10_000, 1024)
        self.assertIn("max_agents = 10000 needs about", shortage)
        self.assertIn("may open only 1024", shortage)
        self.assertIn("LimitNOFILE", shortage)

    def test_a_limit_with_room_for_the_headroom_is_enough(self):
        self.assertIsNone(descriptor_shortage(10_000, 10_000 + DESCRIPTOR_HEADROOM))
        self.assertIsNotNone(descriptor_shortage(10_000, 10_000 + DESCRIPTOR_HEADROOM - 1))
