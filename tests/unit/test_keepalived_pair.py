"""
The director pair's keepalived kit (#17): tap/keepalived-pair.conf passes
keepalived's own config test, and tap/vrrp-notify records the VRRP state.
The pair itself runs in the kernel VM: tests/integration/test_pair.py.
"""

import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

TAP = os.path.join(os.path.dirname(__file__), "..", "..", "tap")
CONFIG = os.path.join(TAP, "keepalived-pair.conf")
NOTIFY = os.path.join(TAP, "vrrp-notify")


class KeepalivedPairConfigTests(SynchronousTestCase):
    def config_test(self, text):
        keepalived = shutil.which("keepalived")
        if keepalived is None:
            raise SkipTest("keepalived is not installed (make deps installs it)")
        path = self.mktemp()
        with open(path, "w") as file:
            file.write(text)
        return subprocess.run([keepalived, "--config-test", "--use-file", path, "--log-console"],
                              capture_output=True, text=True, timeout=60)

    def shipped(self):
        with open(CONFIG) as file:
            return file.read()

    def installed(self):
        """The shipped config as on a director: keepalived refuses a track script it cannot find."""
        return self.shipped().replace("/usr/local/bin/lvsfeedback", shutil.which("true") or "/bin/true")

    def test_the_shipped_config_passes_keepalived_s_config_test(self):
        result = self.config_test(self.installed())
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)

    def test_the_split_brain_guard_tracks_lvs_director_s_guard_file_with_weight_0(self):
        text = self.shipped()
        # Weight 0: any non-zero verdict is a FAULT, not a change of priority.
        [tracked] = re.findall(r'^track_file pair_guard \{\s*file "(\S+)"\s*weight 0\s*\}', text, re.M)
        [instance] = re.findall(r"^vrrp_instance VI_LVS \{\n.*?^\}", text, re.M | re.S)
        self.assertRegex(instance, r"\n\s*track_file \{\s*pair_guard\s*\}")
        # Where lvs-director writes it by default: beside the notify hook's state file.
        self.assertEqual(tracked, "/run/lvsfeedback/pair-guard")
        self.assertNotIn("track_script", text)

    def test_the_config_test_refuses_a_broken_copy(self):
        result = self.config_test(self.installed().replace("advert_int 1", "advert_int x"))
        self.assertNotEqual(result.returncode, 0)

    def test_vrrp_only_with_the_sync_daemon_following_the_instance(self):
        text = self.shipped()
        self.assertIsNone(re.search(r"^\s*virtual_server\b", text, re.M), "lvs-director owns the virtual services")
        self.assertIn("lvs_sync_daemon eth0 VI_LVS", text)
        self.assertIn("vrrp_instance VI_LVS {", text)
        self.assertIn("notify /usr/local/lib/lvsfeedback/vrrp-notify", text)


class VRRPNotifyTests(SynchronousTestCase):
    def test_the_hook_records_the_state_and_priority_of_the_instance(self):
        directory = os.path.abspath(self.mktemp())
        environment = dict(os.environ, LVSFEEDBACK_RUN_DIRECTORY=directory)
        for state in ("BACKUP", "MASTER"):
            subprocess.run(["sh", NOTIFY, "INSTANCE", "VI_LVS", state, "150"], env=environment, check=True, timeout=30)
        with open(os.path.join(directory, "vrrp-VI_LVS")) as file:
            self.assertEqual(file.read(), "MASTER 150\n")
        self.assertEqual(os.listdir(directory), ["vrrp-VI_LVS"], "nothing half-written left behind")
