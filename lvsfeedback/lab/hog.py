"""
A CPU hog: noise that competes with a real server's backend for the CPU
quota of the cgroup both run in, so that server really has less capacity.

    python -m lvsfeedback.lab.hog [--workers N] [--duty 0.5]

Each worker is a forked process (one process cannot burn more than one CPU
under the GIL) that spins for `duty` of every 100 ms and sleeps the rest.
It prints one line beginning with L{READY_MARKER} and naming the workers'
pids once they run, and runs until SIGTERM or SIGINT, which ends every worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

SLICE_SECONDS = 0.1
READY_MARKER = "lvsfeedback-hog: spinning in pids"


def spin(duty: float) -> None:
    """Burn `duty` of every slice in CPU time, forever."""
    while True:
        started = time.monotonic()
        busy_until = started + duty * SLICE_SECONDS
        while time.monotonic() < busy_until:
            pass
        rest = started + SLICE_SECONDS - time.monotonic()
        if rest > 0:
            time.sleep(rest)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lvsfeedback.lab.hog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="processes spinning in parallel (1)")
    parser.add_argument("--duty", type=float, default=1.0, help="share of each 100 ms spent spinning, 0..1 (1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0 < args.duty <= 1:
        parser.error("--duty must be in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            spin(args.duty)
        children.append(pid)

    def stop(signum, frame):
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{READY_MARKER} {' '.join(map(str, children))}", flush=True)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
