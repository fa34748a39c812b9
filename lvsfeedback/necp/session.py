"""
The state of one NECP session, either end, apart from the connection that
carries it: the requests waiting for their replies.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from lvsfeedback.necp.codec import Message, opcode_name

MAX_ATTEMPTS = 3  # a request whose reply cannot be verified is sent at most this often


class RequestFailed(Exception):
    """A request got no usable reply: none in time, or none that could be verified."""


class _Pending:
    """A request waiting for its reply."""

    __slots__ = ("message", "deferred", "attempts", "retryable", "timeout")

    def __init__(self, message: Message, retryable: bool, timeout: IDelayedCall | None):
        self.message = message
        self.deferred: Deferred = Deferred()
        self.attempts = 1
        self.retryable = retryable
        self.timeout = timeout

    @property
    def name(self) -> str:
        return opcode_name(self.message.opcode)
