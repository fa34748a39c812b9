"""
The split-brain guard's reading of this host's addresses, per round (#17):
CPU time (this process's plus its children's) of `--rounds` readings the
old way, a fork of `ip -json address show` through the reactor as the guard
did every round until #17, and the new way, `HostAddresses` over rtnetlink:
a round with nothing announced (the steady state), and a dump (a round after
an announcement, or every SAFETY_REREAD seconds).

    nice -n 19 .venv/bin/python bench/pair_guard_addresses.py [--rounds 200]

The guard's fetch from its peer is the same either way and not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from typing import Callable

from twisted.internet import defer, reactor, task
from twisted.internet.utils import getProcessOutputAndValue

from lvsfeedback.director.host_addresses import SAFETY_REREAD, HostAddresses

GUARD_INTERVAL = 0.5  # [pair] guard_interval's default


def cpu() -> float:
    """Seconds of CPU, this process's and its waited-for children's (getrusage: microseconds, not clock ticks)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def forked_rounds(rounds: int) -> float:
    start = cpu()
    for _ in range(rounds):
        out, err, code = await getProcessOutputAndValue("ip", ["-json", "address", "show"], env=os.environ,
                                                        reactor=reactor)
        assert code == 0, err
        json.loads(out)
    return (cpu() - start) / rounds


def in_process_rounds(rounds: int, read: Callable[[], object]) -> float:
    start = cpu()
    for _ in range(rounds):
        read()
    return (cpu() - start) / rounds


async def main(rounds: int) -> None:
    forked = await forked_rounds(rounds)
    addresses = HostAddresses(reactor)
    addresses.start()
    addresses.current()
    steady = in_process_rounds(rounds, addresses.current)
    dumped = in_process_rounds(rounds, addresses.dump)
    addresses.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    amortized = steady + dumped * GUARD_INTERVAL / SAFETY_REREAD
    print(f"{rounds} rounds each, this process {rss:.0f} MB resident")
    print(f"fork of ip -json address show: {forked * 1000:.3f} ms CPU a round")
    print(f"rtnetlink, nothing announced:   {steady * 1000:.4f} ms CPU a round")
    print(f"rtnetlink dump (after a change): {dumped * 1000:.3f} ms CPU")
    print(f"steady state with the {SAFETY_REREAD:g} s safety dump: {amortized * 1000:.4f} ms CPU a round "
          f"({forked / amortized:.0f}x less)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=200)
    options = parser.parse_args()
    task.react(lambda _: defer.ensureDeferred(main(options.rounds)))
