"""
The agent's footprint: a real `twistd -n lvs-agent` with the cpu, pressure
and connections metrics sampled every second, reporting to two directors
(NECP listeners in this process, asking its health every 2 s), measured
over a window. Prints its resident memory and its CPU as a share of one core.

    .venv/bin/python bench/agent_footprint.py [--seconds 60]

Targets (issue #4): RSS <= 40 MB, CPU <= 0.5 % of one core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import psutil
from twisted.internet import reactor, task
from zope.interface import implementer

from lvsfeedback.director.events import IAgentEvents
from lvsfeedback.director.factory import NEFactory


@implementer(IAgentEvents)
class CountingEvents:
    def __init__(self):
        self.reports = 0

    def healthReported(self, agent, service, health, when):
        self.reports += 1

    def servicesStarted(self, agent, services):
        return ()

    def __getattr__(self, name):
        return lambda *args: None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--health-interval", type=float, default=2.0, help="how often each director asks (0: keepalives only)")
    args = parser.parse_args()
    events = CountingEvents()
    directors = [NEFactory(events, clock=reactor, health_interval=args.health_interval) for _ in range(2)]
    ports = [reactor.listenTCP(0, director, interface="127.0.0.1") for director in directors]
    for director in directors:
        director.start_asking(first=args.health_interval)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [twistd, "-n", "--pidfile=", "--logfile=/dev/null", "lvs-agent", "--service", "tcp:80",
            "--metric", "cpu", "--metric", "pressure", "--metric", "connections:port=80,high=500"]
    for port in ports:
        argv += ["--director", f"tcp:127.0.0.1:{port.getHost().port}"]
    agent = subprocess.Popen(argv)
    process = psutil.Process(agent.pid)
    measured = {}

    def start_window():
        measured["cpu"] = sum(process.cpu_times()[:2])
        measured["reports"] = events.reports
        measured["started"] = time.monotonic()
        reactor.callLater(args.seconds, end_window)

    def end_window():
        elapsed = time.monotonic() - measured["started"]
        cpu = sum(process.cpu_times()[:2]) - measured["cpu"]
        rss = process.memory_info().rss / 2**20
        reports = events.reports - measured["reports"]
        print(f"agent over {elapsed:.0f} s: RSS {rss:.1f} MB (target <= 40), "
              f"CPU {100 * cpu / elapsed:.2f} % of one core (target <= 0.5), "
              f"{reports} health answers to 2 directors")
        agent.terminate()
        agent.wait()
        reactor.stop()

    # Let it start, connect to both directors and settle before measuring.
    task.deferLater(reactor, 10, start_window)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
