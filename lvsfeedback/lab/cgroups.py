"""
cgroup v2 groups for the lab's real servers: one group per server under a
parent the lab owns, each with a C{cpu.max} quota that can change while the
experiment runs, and C{cpu.stat} to read what the server really used.

Everything goes through plain files under a root folder (C{/sys/fs/cgroup}
by default), so the unit tests drive the same code against a fake tree in a
temporary folder.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lvsfeedback.agent.metrics.cgroup import CpuStat, parse_cpu_stat
from lvsfeedback.agent.metrics.errors import MetricReadError

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PERIOD_USEC = 100_000
# How long removal waits for killed processes to leave a group.
REMOVE_TIMEOUT = 10.0


class CgroupError(Exception):
    """A cgroup could not be set up, changed or removed; the message says which file and why."""


def format_cpu_max(cpus: float | None, period_usec: int = DEFAULT_PERIOD_USEC) -> str:
    """
    A share of CPUs as C{cpu.max} text: 0.5 → C{"50000 100000"}; None → no limit
    (C{"max 100000"}). The kernel refuses quotas under 1 ms, so neither do we.
    """
    if cpus is None:
        return f"max {period_usec}"
    quota = round(cpus * period_usec)
    if quota < 1000:
        raise CgroupError(f"a CPU share of {cpus} gives a quota of {quota} us; the kernel's minimum is 1000 us")
    return f"{quota} {period_usec}"


def parse_cpu_max(text: str) -> float | None:
    """C{cpu.max} text → the share of CPUs it allows, None for no limit."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max":
        return None
    return int(quota) / int(period)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise CgroupError(f"cannot write {text!r} to {path}: {error.strerror or error}") from error


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise CgroupError(f"cannot read {path}: {error.strerror or error}") from error


def _enable_cpu_controller(group: Path) -> None:
    """Delegate the cpu controller to group's children (a no-op when it already is)."""
    _write(group / "cgroup.subtree_control", "+cpu")


@dataclass(frozen=True)
class Cgroup:
    """One leaf group: a real server's processes and its CPU quota."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def procs_file(self) -> Path:
        """The file a process writes its pid to in order to join this group."""
        return self.path / "cgroup.procs"

    def set_cpus(self, cpus: float | None, period_usec: int = DEFAULT_PERIOD_USEC) -> None:
        """Limit the group to this many CPUs (0.5 = half a CPU); None lifts the limit."""
        _write(self.path / "cpu.max", format_cpu_max(cpus, period_usec))

    def cpus(self) -> float | None:
        """The current limit in CPUs, None when unlimited."""
        return parse_cpu_max(_read(self.path / "cpu.max"))

    def add_process(self, pid: int) -> None:
        _write(self.procs_file, str(pid))

    def pids(self) -> list[int]:
        return [int(line) for line in _read(self.procs_file).split()]

    def cpu_stat(self) -> CpuStat:
        path = self.path / "cpu.stat"
        try:
            return parse_cpu_stat(_read(path), str(path))
        except MetricReadError as error:
            raise CgroupError(str(error)) from None

    def kill(self) -> None:
        """SIGKILL every process in the group (cgroup.kill where the kernel has it, 5.14+)."""
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            _write(kill_file, "1")
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self, timeout: float = REMOVE_TIMEOUT) -> None:
        """Kill what is left in the group and remove it; a group already gone is fine."""
        if not self.path.exists():
            return
        self.kill()
        _rmdir_when_empty(self.path, timeout)


def _rmdir_when_empty(path: Path, timeout: float) -> None:
    # Killed processes leave the group a moment after the signal; until
    # then rmdir answers EBUSY.
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove {path}: {error.strerror}") from error
        time.sleep(0.05)


class CgroupTree:
    """
    The lab's own parent group (e.g. C{/sys/fs/cgroup/lvsfeedback-lab-1a2b3c})
    with one child per real server. L{create} checks that the root is cgroup
    v2 with the cpu controller, and delegates that controller down to the
    children so each can have a C{cpu.max}.
    """

    def __init__(self, name: str, root: Path = CGROUP_ROOT):
        if not name or "/" in name or name in (".", ".."):
            raise CgroupError(f"{name!r} is not a usable cgroup name")
        self.root = Path(root)
        self.path = self.root / name
        self.children: dict[str, Cgroup] = {}

    def create(self) -> CgroupTree:
        controllers = self.root / "cgroup.controllers"
        if not controllers.exists():
            raise CgroupError(f"{self.root} is not a cgroup v2 hierarchy (no cgroup.controllers)")
        if "cpu" not in _read(controllers).split():
            raise CgroupError(f"the cpu controller is not available in {self.root} (cgroup.controllers lists no cpu)")
        _enable_cpu_controller(self.root)
        try:
            self.path.mkdir()
        except FileExistsError:
            raise CgroupError(f"{self.path} already exists: another lab run uses this name") from None
        except OSError as error:
            raise CgroupError(f"cannot create {self.path}: {error.strerror}") from error
        _enable_cpu_controller(self.path)
        return self

    def child(self, name: str, cpus: float | None = None) -> Cgroup:
        """A new group under the parent, limited to cpus CPUs (None: unlimited)."""
        group = Cgroup(self.path / name)
        try:
            group.path.mkdir()
        except OSError as error:
            raise CgroupError(f"cannot create {group.path}: {error.strerror}") from error
        self.children[name] = group
        if cpus is not None:
            group.set_cpus(cpus)
        return group

    def remove(self, timeout: float = REMOVE_TIMEOUT) -> None:
        """Kill every process in the children, remove them and the parent. Safe to call twice."""
        if not self.path.exists():
            return
        for child in sorted(path for path in self.path.iterdir() if path.is_dir()):
            Cgroup(child).remove(timeout)
        self.children.clear()
        _rmdir_when_empty(self.path, timeout)
