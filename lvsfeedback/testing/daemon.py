"""
Real daemon processes for tests: start one, wait (bounded) for a line in its
log, signal it, stop it. Waiting reads the process's output as it comes, so
no test sleeps for a guessed time.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Daemon:
    def __init__(self, argv: list[str], env: dict | None = None, cwd: str | None = None):
        self.argv = argv
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
        self.lines: list[str] = []
        self.terminated = False  # SIGTERM sent: a second one would cut twistd's shutdown short
        self._pending = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)

    def _read(self, timeout: float) -> bool:
        """Read what is there within timeout; False at end of output."""
        if not self._selector.select(timeout):
            return True
        chunk = os.read(self.process.stdout.fileno(), 65536)
        if not chunk:
            return False
        self._pending += chunk
        *complete, self._pending = self._pending.split(b"\n")
        self.lines += [line.decode(errors="replace") for line in complete]
        return True

    def wait_for(self, pattern: str, timeout: float, after: int = 0, where=lambda match: True) -> re.Match:
        """
        The first line from index `after` on that matches (and satisfies
        `where`, given the match); AssertionError with the log otherwise.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = after
        while True:
            for index in range(checked, len(self.lines)):
                match = regex.search(self.lines[index])
                if match and where(match):
                    return match
            checked = max(checked, len(self.lines))
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(min(remaining, 0.5)):
                state = "exited" if self.process.poll() is not None else f"no match within {timeout:g} s"
                raise AssertionError(f"{self.argv[0]}: {state} waiting for /{pattern}/; log:\n" + self.tail())

    def tail(self, count: int = 40) -> str:
        return "\n".join(self.lines[-count:])

    def signal(self, signum: int) -> None:
        self.terminated = self.terminated or signum == signal.SIGTERM
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (once), then wait for the exit (reading its last words); SIGKILL after timeout."""
        if self.process.poll() is None and not self.terminated:
            self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        while self._read(0.2):
            pass
        return self.process.wait()
