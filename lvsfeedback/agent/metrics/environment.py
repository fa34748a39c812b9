"""What metrics read from: the reactor and the roots of /proc and cgroupfs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _online_cpus() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class MetricEnvironment:
    """
    Everything a metric may touch outside itself, injected so that tests can
    hand in a L{task.Clock} or a memory reactor and fake /proc and
    /sys/fs/cgroup trees.

    @ivar reactor: provides C{IReactorTime}; asynchronous metrics also need
        C{IReactorProcess} (command) and C{IReactorTCP} (http, probe).
    @ivar proc_root: where procfs is mounted.
    @ivar cgroup_root: where the cgroup v2 hierarchy is mounted; relative
        cgroup paths in specs are taken from here.
    @ivar cpu_count: how many CPUs the host has (normalises load averages and
        unlimited cgroups).
    """

    reactor: Any
    proc_root: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    cpu_count: int = field(default_factory=_online_cpus)
