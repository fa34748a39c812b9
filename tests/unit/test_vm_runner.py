"""
The kernel-VM runner: how it finds a kernel, and how each of its failures is
one line with a non-zero status instead of a hang or a traceback.
"""

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.testing import vm


def run_runner(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lvsfeedback.testing.vm", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )


class KernelDiscoveryTests(SynchronousTestCase):
    def makeKernels(self, versions_with_ipvs, versions_without=()):
        root = self.mktemp()
        boot, modules = os.path.join(root, "boot"), os.path.join(root, "modules")
        os.makedirs(boot)
        for version in (*versions_with_ipvs, *versions_without):
            open(os.path.join(boot, f"vmlinuz-{version}"), "w").close()
            folder = os.path.join(modules, version, "kernel/net/netfilter/ipvs")
            os.makedirs(folder)
            if version in versions_with_ipvs:
                open(os.path.join(folder, "ip_vs.ko.xz"), "w").close()
        return boot, modules

    def test_newest_kernel_with_ip_vs_is_chosen(self):
        boot, modules = self.makeKernels(["6.1.0-9-amd64", "6.1.0-56-amd64"], ["6.12.0-1-amd64"])
        self.assertEqual(vm.find_kernel(boot, modules), os.path.join(boot, "vmlinuz-6.1.0-56-amd64"))

    def test_no_kernel_with_ip_vs_names_the_package_to_install(self):
        boot, modules = self.makeKernels([], ["6.1.0-56-amd64"])
        error = self.assertRaises(vm.RunnerError, vm.find_kernel, boot, modules)
        self.assertIn("apt-get install linux-image-amd64", str(error))


class RunnerFailureTests(SynchronousTestCase):
    """Each failure provoked for real, through the command line."""

    def assertOneLineFailure(self, result, status, text):
        self.assertEqual(result.returncode, status, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("lvsfeedback-vm: "), lines[0])
        self.assertIn(text, lines[0])

    def test_missing_kernel_package_is_one_line_and_status_2(self):
        empty = self.mktemp()
        os.makedirs(empty)
        result = run_runner("--native", "never", "--boot-dir", empty, "--", "true")
        self.assertOneLineFailure(result, vm.EXIT_RUNNER_ERROR, "no kernel with an ip_vs module in " + empty)

    def test_missing_qemu_is_one_line_and_status_2(self):
        result = run_runner("--native", "never", "--", "true", env={**os.environ, "PATH": "/nonexistent"})
        self.assertOneLineFailure(result, vm.EXIT_RUNNER_ERROR, "qemu-system-x86_64 not found")

    def test_boot_timeout_is_named_and_status_124(self):
        result = run_runner("--native", "never", "--boot-timeout", "1", "--", "true")
        self.assertOneLineFailure(result, vm.EXIT_BOOT_TIMEOUT, "VM boot timed out after 1 s")

    def test_command_timeout_is_named_and_status_125(self):
        # A real boot: the guest becomes ready, then the command overstays.
        result = run_runner("--native", "never", "--timeout", "2", "--", "sleep", "120")
        self.assertOneLineFailure(result, vm.EXIT_COMMAND_TIMEOUT, "command timed out after 2 s")

    def test_a_writable_folder_that_cannot_be_created_is_one_line_before_any_boot(self):
        blocker = os.path.abspath(self.mktemp())
        open(blocker, "w").close()
        # --boot-dir empty too: had the runner gone on to boot, it would name the kernel instead.
        result = run_runner("--native", "never", "--boot-dir", blocker, "--rwdir", os.path.join(blocker, "results"),
                            "--", "true")
        self.assertOneLineFailure(result, vm.EXIT_RUNNER_ERROR,
                                  f"cannot create the writable folder {blocker}/results: Not a directory")

    def test_guest_command_status_and_output_come_back(self):
        # One boot for the whole round trip. The working folder (a cached
        # tree) holds the writable folder, as the project holds results/,
        # and that folder does not exist yet, as results/ on a fresh clone.
        writable = os.path.join(os.path.abspath(self.mktemp()), "results")
        self.assertFalse(os.path.exists(writable))
        script = (f"echo from-guest; grep -c ip_vs /proc/modules; grep ' {sys.prefix} ' /proc/mounts; "
                  f"echo written > {writable}/from-guest; exit 7")
        result = run_runner("--native", "never", "--rwdir", writable, "--", "sh", "-c", script)
        self.assertEqual(result.returncode, 7, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertIn("from-guest", lines)
        self.assertGreaterEqual(int(lines[lines.index("from-guest") + 1]), 1)
        venv_mount = lines[lines.index("from-guest") + 2].split()
        self.assertIn("loose", venv_mount[3].split(","), "the venv is mounted with 9p caching")
        with open(os.path.join(writable, "from-guest")) as file:
            self.assertEqual(file.read(), "written\n")


class WritableFolderTests(SynchronousTestCase):
    def test_missing_writable_folders_are_created_with_their_parents(self):
        root = os.path.abspath(self.mktemp())
        existing = os.path.join(root, "existing")
        os.makedirs(existing)
        missing = os.path.join(root, "fresh", "results")
        vm.make_writable_folders(vm.Plan(command=["true"], cwd=root, rwdirs=[existing, missing]))
        self.assertTrue(os.path.isdir(missing))
        self.assertTrue(os.path.isdir(existing))

    def test_a_file_in_the_way_is_refused_with_the_folder_named(self):
        blocker = os.path.abspath(self.mktemp())
        open(blocker, "w").close()
        plan = vm.Plan(command=["true"], cwd="/", rwdirs=[blocker])
        error = self.assertRaises(vm.RunnerError, vm.make_writable_folders, plan)
        self.assertEqual(str(error), f"cannot create the writable folder {blocker}: File exists")


class CachedTreeTests(SynchronousTestCase):
    def test_nested_candidates_and_the_root_collapse_to_the_outermost(self):
        self.assertEqual(vm.cached_trees(["/opt/py", "/work/p/.venv", "/work/p", "/", "/work/p"], []),
                         ["/opt/py", "/work/p"])

    def test_a_tree_inside_or_equal_to_a_writable_folder_is_not_cached(self):
        self.assertEqual(vm.cached_trees(["/opt/py", "/work/p"], ["/work/p"]), ["/opt/py"])
        self.assertEqual(vm.cached_trees(["/opt/py", "/work/p/.venv"], ["/work"]), ["/opt/py"])

    def test_writable_folders_a_tree_hides_are_mounted_again_after_it(self):
        plan = vm.Plan(command=["true"], cwd="/work/p", rwdirs=["/work/p/results"], cached_trees=["/work/p"])
        steps = vm.remount_script(plan).split("; ")
        tree = next(i for i, step in enumerate(steps) if step.startswith("mount") and " /work/p " in step + " ")
        results = next(i for i, step in enumerate(steps) if step.startswith("mount") and "/work/p/results" in step)
        self.assertLess(tree, results)
        self.assertIn("cache=loose,ro virtme.initmount1 /work/p", steps[tree])
        self.assertIn("virtme.initmount0 /work/p/results", steps[results])
        self.assertNotIn("cache=loose", steps[results])


class InterruptedRunnerTests(SynchronousTestCase):
    def test_an_interrupted_runner_leaves_no_vm_behind(self):
        started = []
        popen = subprocess.Popen

        def recording(*args, **kwargs):
            started.append(popen(*args, **kwargs))
            return started[-1]

        class Interrupted:
            def register(self, *args):
                pass

            def select(self, timeout):
                raise KeyboardInterrupt()

        self.patch(vm.subprocess, "Popen", recording)
        self.patch(vm.selectors, "DefaultSelector", Interrupted)
        plan = vm.Plan(command=["true"], cwd="/")
        self.assertRaises(KeyboardInterrupt, vm.supervise, ["sleep", "60"], plan, None, dict(os.environ), "/")
        self.assertEqual(started[0].returncode, -9)
