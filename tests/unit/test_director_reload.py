"""
A reload (SIGHUP) gives the new config to every child service of the
director, each of which reconfigures itself; a bad config is refused with
file, key and reason, and the running one stays everywhere.
"""

import errno
import os
import textwrap

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lvsfeedback.director.config import IReconfigurable, load_config
from lvsfeedback.director.events import Agent
from lvsfeedback.director.service import DirectorService
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.necp import units

CONFIG = """
[director]
{director}

[necp]
{necp}

[status]
{status}

[[service]]
name = "web"
protocol = "tcp"
address = "192.0.2.1"
port = 80
"""


@implementer(IReconfigurable)
class RecordingChild(Service):
    """A child service that keeps each config it is given."""

    def __init__(self):
        self.configs = []

    def reconfigure(self, config):
        self.configs.append(config)


class Port:
    """A TCP listening port that says whether it still listens."""

    def __init__(self, port, interface):
        self.address = IPv4Address("TCP", interface or "0.0.0.0", port)
        self.listening = True

    def getHost(self):
        return self.address

    def stopListening(self):
        self.listening = False


class PortsReactor(MemoryReactorClock):
    """A memory reactor whose TCP ports can be seen closed, and which cannot listen on those in `taken`."""

    def __init__(self):
        super().__init__()
        self.ports = {}
        self.taken = set()

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        self.ports[port] = Port(port, interface)
        return self.ports[port]


class DirectorTestCase(SynchronousTestCase):
    """A running director on a memory reactor, its config in a file each test rewrites."""

    def start(self, **sections):
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.path = f"{self.folder}/director.toml"
        self.write(**sections)
        self.reactor = PortsReactor()
        self.director = DirectorService(load_config(self.path), self.reactor, table=MemoryIPVS())
        self.director.startService()
        self.addCleanup(self.director.stopService)

    def write(self, director="", necp="", status="", reals=("10.0.0.1",)):
        text = CONFIG.format(director=director, necp=necp, status=status)
        text += "".join(f'[[service.real]]\naddress = "{address}"\n' for address in reals)
        with open(self.path, "w") as file:
            file.write(textwrap.dedent(text))

    def reload(self) -> tuple[bool, str]:
        with capturedLogs() as events:
            reloaded = self.director.reload()
        return reloaded, "\n".join(formatEvent(event) for event in events)


class ReloadTests(DirectorTestCase):
    def setUp(self):
        self.start(director="max_agents = 3", necp="max_queued_output = 100000")

    def test_the_directors_own_children_reconfigure_themselves(self):
        director = self.director
        for child in (director.registry, director.updater, director.pair, director.guard, director.listener,
                      director.status):
            self.assertIn(child, list(director))
            self.assertTrue(verifyObject(IReconfigurable, child))

    def test_the_registry_is_reconfigured_first(self):
        reconfigured = []
        for child in self.director:
            if IReconfigurable.providedBy(child):
                self.patch(child, "reconfigure", lambda config, child=child: reconfigured.append(child))
        self.assertTrue(self.reload()[0])
        self.assertIs(reconfigured[0], self.director.registry)
        self.assertEqual(len(reconfigured), 6)

    def test_the_registry_takes_the_new_real_servers(self):
        agent, http = Agent("10.0.0.2", 40000, 1), units.Service(forwarding=units.FORWARD_LAYER3, protocol=6, port=80)
        registry = self.director.registry
        registry.agentUp(agent)
        self.assertEqual(registry.servicesStarted(agent, (http,)), [http], "not configured yet")
        self.write(reals=("10.0.0.1", "10.0.0.2"))
        self.assertTrue(self.reload()[0])
        self.assertEqual(registry.servicesStarted(agent, (http,)), [])

    def test_a_reload_gives_the_new_config_to_every_reconfigurable_child(self):
        child = RecordingChild()
        child.setServiceParent(self.director)
        self.write(director="max_agents = 4")
        self.assertTrue(self.reload()[0])
        [config] = child.configs
        self.assertIs(config, self.director.config)
        self.assertEqual(config.director.max_agents, 4)

    def test_each_child_takes_its_part_of_the_new_config(self):
        secret = f"{self.folder}/necp.secret"
        with open(secret, "w") as file:
            file.write("s3cret\n")
        self.write(
            director='max_agents = 5\nsecret_file = "necp.secret"\nallow = ["10.0.0.0/8"]\nupdate_interval = 7',
            necp="max_queued_output = 200000",
        )
        self.assertTrue(self.reload()[0])
        factory = self.director.factory
        self.assertEqual(
            (factory.max_agents, factory.secret, [str(net) for net in factory.allow], factory.max_queued_output),
            (5, b"s3cret", ["10.0.0.0/8"], 200000),
        )
        self.assertEqual(self.director.updater.config.director.update_interval, 7)
        self.assertEqual(self.director.updater.next_pass, 7.0)

    def test_a_bad_config_is_refused_with_file_key_and_reason_and_the_old_one_stays_everywhere(self):
        child = RecordingChild()
        child.setServiceParent(self.director)
        before = self.director.config
        self.write(director="max_agents = 0\nupdate_interval = 7")
        reloaded, logged = self.reload()
        self.assertFalse(reloaded)
        self.assertIn("config reload refused, the running config stays", logged)
        self.assertIn(f"{self.path}: director.max_agents: must be an integer", logged)
        self.assertEqual(child.configs, [])
        self.assertIs(self.director.config, before)
        self.assertIs(self.director.updater.config, before)
        self.assertEqual((self.director.factory.max_agents, self.director.updater.next_pass), (3, 2.0))



class MovingListenerTests:
    """
    A reload that names a new listen address moves that listener there,
    if it can: the same for agents' `[director] listen` and `[status] listen`.
    """

    section: str  # the config table of its `listen`
    child: str  # the director's attribute holding the listener
    what: str  # its name in the log
    FIRST, SECOND = 0, 0

    def listen(self, port: int, **more: str) -> dict[str, str]:
        sections = {self.section: f'listen = "tcp:{port}:interface=127.0.0.1"'}
        for section, text in more.items():
            sections[section] = sections.get(section, "") + "\n" + text
        return sections

    def listening_port(self):
        return getattr(self.director, self.child).ports.port

    def setUp(self):
        self.start(**self.listen(self.FIRST))
        self.first = self.reactor.ports[self.FIRST]

    def test_a_new_listen_address_is_listened_on_and_the_old_one_closed(self):
        self.write(**self.listen(self.SECOND))
        reloaded, logged = self.reload()
        self.assertTrue(reloaded)
        moved = self.reactor.ports[self.SECOND]
        self.assertEqual((self.listening_port(), moved.listening, self.first.listening), (moved, True, False))
        self.assertIn(f"{self.what} on IPv4Address(type='TCP', host='127.0.0.1', port={self.SECOND})", logged)

    def test_the_same_listen_address_is_left_alone(self):
        self.write(**self.listen(self.FIRST, necp="max_queued_output = 100000"))
        self.assertTrue(self.reload()[0])
        self.assertIs(self.listening_port(), self.first)
        self.assertTrue(self.first.listening)

    def test_a_listen_address_that_cannot_be_had_leaves_the_old_one_with_one_line(self):
        self.reactor.taken.add(self.SECOND)
        self.write(**self.listen(self.SECOND))
        reloaded, logged = self.reload()
        self.assertTrue(reloaded)
        self.assertIs(self.listening_port(), self.first)
        self.assertTrue(self.first.listening)
        [line] = [line for line in logged.splitlines() if self.what in line]
        self.assertIn(f"{self.what} cannot listen on tcp:{self.SECOND}:interface=127.0.0.1: ", line)
        self.assertIn(f"; it stays on IPv4Address(type='TCP', host='127.0.0.1', port={self.FIRST})", line)


class NECPListenerReloadTests(MovingListenerTests, DirectorTestCase):
    section, child, what = "director", "listener", "the NECP listener"
    FIRST, SECOND = 3262, 3263

    def test_sessions_already_up_carry_on_when_the_listener_moves(self):
        factory = self.director.factory
        peer = IPv4Address("TCP", "10.0.0.1", 40000)
        transport = StringTransport(peerAddress=peer)
        factory.buildProtocol(peer).makeConnection(transport)
        self.write(**self.listen(self.SECOND))
        self.assertTrue(self.reload()[0])
        self.assertFalse(transport.disconnecting)
        [(port, listening_factory, *_)] = [server for server in self.reactor.tcpServers if server[0] == self.SECOND]
        self.assertIs(listening_factory, factory, "the same factory: its sessions, counters and rounds")


class NECPListenerStartTests(DirectorTestCase):
    def test_a_director_agents_cannot_reach_does_not_start(self):
        folder = self.mktemp()
        os.makedirs(folder)
        self.path = f"{folder}/director.toml"
        self.write()
        reactor = PortsReactor()
        reactor.taken.add(3262)
        director = DirectorService(load_config(self.path), reactor, table=MemoryIPVS())
        error = self.assertRaises(CannotListenError, director.privilegedStartService)
        self.assertIn("Address already in use", str(error))


class StatusListenerReloadTests(MovingListenerTests, DirectorTestCase):
    section, child, what = "status", "status", "the status listener"
    FIRST, SECOND = 9101, 9102

    def test_a_reload_listens_again_where_the_start_could_not(self):
        self.director.stopService()
        self.reactor.taken.add(9101)
        self.director.startService()
        self.assertIsNone(self.director.status.port)
        self.reactor.taken.clear()
        self.write(director="max_agents = 4", status='listen = "tcp:9101:interface=127.0.0.1"')
        self.assertTrue(self.reload()[0])
        self.assertIs(self.director.status.port, self.reactor.ports[9101])
