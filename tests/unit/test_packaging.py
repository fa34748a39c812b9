"""
The package installs as twistd expects: both daemons listed by `twistd
--help`, and each daemon's --help cheap (no pyroute2, no iptc imported). An
installed package holds the daemons and the CLI only, and needs only what
they need.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from email.parser import Parser

from twisted.trial.unittest import SynchronousTestCase

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Parse a daemon's options the way `twistd NAME --help` does, then report
# which heavy modules that imported.
PROBE = """
import sys
from twisted.scripts.twistd import ServerOptions
options = ServerOptions()
try:
    options.parseOptions([sys.argv[1], "--help"])
except SystemExit:
    pass
print("HEAVY:" + ",".join(sorted(m for m in ("pyroute2", "iptc", "psutil") if m in sys.modules)))
"""


class InstalledPluginTests(SynchronousTestCase):
    def assertPluginsListed(self, twistd, env):
        listing = subprocess.run([twistd, "--help"], capture_output=True, text=True, env=env, cwd="/", check=True).stdout
        self.assertIn("lvs-agent", listing)
        self.assertIn("lvs-director", listing)

    def assertDaemonHelpIsLight(self, python, env):
        for daemon, option in (("lvs-agent", "--director"), ("lvs-director", "--config")):
            result = subprocess.run([python, "-c", PROBE, daemon], capture_output=True, text=True, env=env, cwd="/")
            self.assertIn(option, result.stdout, result.stderr)
            self.assertIn("HEAVY:\n", result.stdout, f"{daemon} --help imported heavy modules")

    def source_copy(self) -> str:
        """
        What a build reads, copied: a build in the tree itself would reuse its
        build/lib, where files of packages since left out linger.
        """
        copy = os.path.abspath(self.mktemp())
        os.makedirs(copy)
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy2(os.path.join(PROJECT, name), copy)
        for folder in ("lvsfeedback", "twisted"):
            shutil.copytree(os.path.join(PROJECT, folder), os.path.join(copy, folder),
                            ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
        return copy

    def assertRuntimeOnly(self, target: str) -> None:
        """The daemons and the CLI, without the lab or the test helpers; requiring only what they need."""
        for package in ("agent", "director", "ipvs", "necp"):
            self.assertTrue(os.path.isdir(os.path.join(target, "lvsfeedback", package)), package)
        for left_out in (("lvsfeedback", "lab"), ("lvsfeedback", "testing"), ("tests",)):
            self.assertFalse(os.path.exists(os.path.join(target, *left_out)), os.path.join(*left_out))
        [info] = [name for name in os.listdir(target) if name.startswith("lvsfeedback-") and name.endswith(".dist-info")]
        with open(os.path.join(target, info, "METADATA")) as file:
            requires = Parser().parse(file).get_all("Requires-Dist")
        always = sorted(requirement.split(">")[0] for requirement in requires if "extra ==" not in requirement)
        self.assertEqual(always, ["prometheus-client", "psutil", "twisted"])
        self.assertIn('python-iptables>=1.0; extra == "fwmark"', requires)
        self.assertIn('pyroute2>=0.9; extra == "test"', requires)

    def test_development_install_lists_both_daemons(self):
        bin_dir = os.path.dirname(sys.executable)
        self.assertPluginsListed(os.path.join(bin_dir, "twistd"), dict(os.environ))
        self.assertDaemonHelpIsLight(sys.executable, dict(os.environ))

    def test_plain_install_into_a_new_venv_lists_both_daemons(self):
        venv = os.path.abspath(self.mktemp())
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        # The dependencies come from this venv's site-packages through
        # PYTHONPATH, which (unlike a site dir) runs no .pth file, so the
        # development install's path to the source tree is not inherited.
        deps = sysconfig.get_paths()["purelib"]
        target = subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        build = os.path.abspath(self.mktemp())
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
             "--target", target, "--upgrade", self.source_copy()],
            check=True, capture_output=True, env={**os.environ, "TMPDIR": os.path.dirname(build)},
        )
        self.assertRuntimeOnly(target)
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")))
        self.assertTrue(os.path.exists(os.path.join(target, "twisted", "plugins", "lvsfeedback_plugins.py")))
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": deps}
        python = os.path.join(venv, "bin", "python")
        twistd = os.path.join(venv, "bin", "twistd")
        with open(twistd, "w") as script:
            script.write(f"#!{python}\nfrom twisted.scripts.twistd import run\nrun()\n")
        os.chmod(twistd, 0o755)
        located = subprocess.run([python, "-c", "import lvsfeedback; print(lvsfeedback.__file__)"],
                                 capture_output=True, text=True, env=env, cwd="/", check=True).stdout
        self.assertTrue(located.startswith(target), located)
        self.assertPluginsListed(twistd, env)
        self.assertDaemonHelpIsLight(python, env)
