"""Reactors for tests that drive a daemon's signal handlers."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock


class CallingFromThreadReactor(MemoryReactorClock):
    """A MemoryReactorClock whose callFromThread calls at once, as the reactor thread would soon."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)
