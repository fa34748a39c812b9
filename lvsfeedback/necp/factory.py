"""
L{NECPFactory}: the settings every NECP connection of one endpoint shares,
including the clock and the random source, so tests drive all timers with
a L{twisted.internet.task.Clock}, and the counters of what its connections
handled and refused. The NE and SE sides subclass it.
"""

from __future__ import annotations

import random as _random
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from lvsfeedback.necp.counters import NECPCounters

KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_JITTER = 1.0
MAX_UNANSWERED_KEEPALIVES = 3
HANDSHAKE_TIMEOUT = 10.0
MESSAGES_PER_TURN = 64
MAX_QUEUED_OUTPUT = 256 * 1024


class NECPFactory(Factory):
    """
    Settings shared by every connection of one NECP endpoint.

    @param clock: runs every timer (keepalives, timeouts).
    @param secret: the shared secret for HMAC-SHA1 credentials, or None.
    @param random: returns a float in [0, 1); jitters keepalives.
    @param keepalive_interval: seconds between keepalives, before jitter.
    @param keepalive_jitter: at most this many seconds are added to each interval.
    @param max_unanswered: keepalives in a row left unanswered before the
        peer is declared dead.
    @param handshake_timeout: seconds from connection to INIT_ACK.
    @param request_timeout: seconds a request other than a keepalive waits
        for its reply; by default as long as it takes to declare a silent
        peer dead.
    @param messages_per_turn: messages of one connection handled before
        the reactor serves the others.
    @param max_queued_output: bytes the kernel's send buffer of a
        connection holds, and bytes a connection may write after its
        transport's buffer filled up (the peer stopped reading) before it
        is aborted.
    @ivar counters: the L{NECPCounters} of every connection of this endpoint.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        secret: bytes | None = None,
        random: Callable[[], float] = _random.random,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_jitter: float = KEEPALIVE_JITTER,
        max_unanswered: int = MAX_UNANSWERED_KEEPALIVES,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        request_timeout: float | None = None,
        messages_per_turn: int = MESSAGES_PER_TURN,
        max_queued_output: int = MAX_QUEUED_OUTPUT,
    ):
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise ValueError("the shared secret must be non-empty bytes")
        if keepalive_interval <= 0 or keepalive_jitter < 0 or handshake_timeout <= 0:
            raise ValueError("keepalive interval and handshake timeout must be positive")
        if max_unanswered < 1:
            raise ValueError("max_unanswered must be at least 1")
        if messages_per_turn < 1 or max_queued_output < 1:
            raise ValueError("messages_per_turn and max_queued_output must be at least 1")
        self.clock = clock
        self.secret = secret
        self.random = random
        self.keepalive_interval = keepalive_interval
        self.keepalive_jitter = keepalive_jitter
        self.max_unanswered = max_unanswered
        self.handshake_timeout = handshake_timeout
        if request_timeout is None:
            request_timeout = max_unanswered * (keepalive_interval + keepalive_jitter)
        self.request_timeout = request_timeout
        self.messages_per_turn = messages_per_turn
        self.max_queued_output = max_queued_output
        self.counters = NECPCounters(clock)

    def stopFactory(self) -> None:
        self.counters.flush()
