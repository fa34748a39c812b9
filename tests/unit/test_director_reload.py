"""
A reload (SIGHUP) gives the new config to every child service of the
director, each of which reconfigures itself; a bad config is refused with
file, key and reason, and the running one stays everywhere.
"""

import os
import textwrap

from twisted.application.service import Service
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lvsfeedback.director.config import IReconfigurable, load_config
from lvsfeedback.director.service import DirectorService
from lvsfeedback.ipvs.memory import MemoryIPVS

CONFIG = """
[director]
{director}

[necp]
{necp}

[[service]]
name = "web"
protocol = "tcp"
address = "192.0.2.1"
port = 80
[[service.real]]
address = "10.0.0.1"
"""


@implementer(IReconfigurable)
class RecordingChild(Service):
    """A child service that keeps each config it is given."""

    def __init__(self):
        self.configs = []

    def reconfigure(self, config):
        self.configs.append(config)


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.path = f"{self.folder}/director.toml"
        self.write(director="max_agents = 3", necp="max_queued_output = 100000")
        self.reactor = MemoryReactorClock()
        self.director = DirectorService(load_config(self.path), self.reactor, table=MemoryIPVS())
        self.director.startService()
        self.addCleanup(self.director.stopService)

    def write(self, director="", necp=""):
        with open(self.path, "w") as file:
            file.write(textwrap.dedent(CONFIG.format(director=director, necp=necp)))

    def reload(self) -> tuple[bool, str]:
        with capturedLogs() as events:
            reloaded = self.director.reload()
        return reloaded, "\n".join(formatEvent(event) for event in events)

    def test_the_directors_own_children_reconfigure_themselves(self):
        for child in (self.director.updater, self.director.listener):
            self.assertTrue(verifyObject(IReconfigurable, child))

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

    def test_a_new_listen_address_is_said_to_take_effect_on_restart(self):
        self.write(director='max_agents = 3\nlisten = "tcp:3263"')
        reloaded, logged = self.reload()
        self.assertTrue(reloaded)
        self.assertIn("[director] listen changed to tcp:3263: takes effect on restart", logged)
