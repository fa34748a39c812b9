"""
The C{command} metric: a site's script prints a load figure on stdout.

The script runs through C{reactor.spawnProcess}, never blocking the reactor,
with no shell and no stdin; it is killed when it outlives its timeout.
"""

from __future__ import annotations

import math
import shlex
import shutil

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric
from lvsfeedback.agent.metrics.scale import HealthScale

#: Output kept from each stream; a figure needs a few bytes, and this bounds
#: what a chatty script costs.
OUTPUT_LIMIT = 4096


def _shown(output: bytes) -> str:
    """Output as it goes in a one-line message."""
    text = output.decode("utf-8", "replace").strip().replace("\n", " | ")
    return text if len(text) <= 80 else text[:77] + "..."


class _CommandRun(ProcessProtocol):
    """One run of the script: collects its output, kills it when asked."""

    def __init__(self, command: str, timeout: float):
        self.command = command
        self.timeout = timeout
        self.finished: Deferred[bytes] = Deferred(self._cancel)
        self.stdout = b""
        self.stderr = b""
        self.timed_out = False
        self.timer = None

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout = (self.stdout + data)[:OUTPUT_LIMIT]

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-OUTPUT_LIMIT:]

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def time_out(self) -> None:
        self.timed_out = True
        self.kill()

    def _cancel(self, finished: Deferred) -> None:
        self.kill()

    def processEnded(self, reason: Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.finished.called:  # cancelled: the Deferred has failed already
            return
        if self.timed_out:
            self.finished.errback(
                MetricReadError(f"{self.command} killed after its {self.timeout:g} s timeout")
            )
        elif reason.check(ProcessDone):
            self.finished.callback(self.stdout)
        else:
            status = reason.value.exitCode
            if status is None:
                status = f"signal {reason.value.signal}"
            self.finished.errback(
                MetricReadError(f"{self.command} failed ({status}): {_shown(self.stderr)}")
            )


@implementer(ILoadMetric)
class CommandMetric:
    """Runs C{argv} and scales the number it prints."""

    def __init__(self, reactor, argv: list[str], timeout: float, scale: HealthScale):
        self._reactor = reactor
        self.argv = argv
        self.timeout = timeout
        self.scale = scale

    def reading(self) -> Deferred[float]:
        """A Deferred firing with the number the command printed."""
        run = _CommandRun(self.argv[0], self.timeout)
        self._reactor.spawnProcess(run, self.argv[0], self.argv, env=None)
        run.timer = self._reactor.callLater(self.timeout, run.time_out)
        return run.finished.addCallback(self._parse)

    def _parse(self, output: bytes) -> float:
        try:
            number = float(output.strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise MetricReadError(f"{self.argv[0]} printed {_shown(output)!r}, not a number")
        return number

    def sample(self) -> Deferred[float]:
        return self.reading().addCallback(self.scale.health)


def build(options, environment) -> CommandMetric:
    """
    C{command:cmd=PROGRAM ARGS...[,timeout=2,low=0,high=100]}; C{cmd} is
    split like a shell would (quotes work) but run without a shell.
    """
    command = options.text("cmd")
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise options.error(f"key 'cmd' cannot be split into words: {error}") from None
    if not argv:
        raise options.error("key 'cmd' names no program")
    executable = shutil.which(argv[0])
    if executable is None:
        raise options.error(f"key 'cmd': {argv[0]!r} is not an executable program")
    return CommandMetric(
        environment.reactor,
        [executable, *argv[1:]],
        options.number("timeout", 2.0, positive=True),
        options.scale(0.0, 100.0),
    )
