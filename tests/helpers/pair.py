"""
A director pair's peer, faked: the master's /pair/desired.json and a
twisted.web IAgent that answers with it (or never), for the PairFollower's
tests and the pair director's end-to-end tests.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IAgent
from zope.interface import implementer

from tests.helpers.director import RS


def desired(state="MASTER", time=100.0, weights=(60, 30, 10)) -> bytes:
    servers = [{"address": dest.address, "port": dest.port, "weight": weight, "reason": "capacity"}
               for dest, weight in zip(RS, weights)]
    return json.dumps({"vrrp_state": state, "time": time,
                       "services": {"web": {"virtual_service": "TCP 10.0.0.1:80", "servers": servers}}}).encode()


class FakeResponse:
    """A twisted.web response whose body arrives in `chunk`-byte pieces, unless the reader stops it."""

    def __init__(self, code: int, body: bytes, chunk: int = 65536):
        self.code = code
        self.phrase = b"OK" if code == 200 else b"Refused"
        self.body = body
        self.chunk = chunk
        self.transport = StringTransport()

    def deliverBody(self, protocol):
        protocol.makeConnection(self.transport)
        for start in range(0, len(self.body), self.chunk):
            if self.transport.producerState == "stopped":
                return
            protocol.dataReceived(self.body[start:start + self.chunk])
        protocol.connectionLost(Failure(ResponseDone()))


@implementer(IAgent)
class FakeHTTP:
    """An IAgent that answers each request with `answer()`, or never when it is None."""

    def __init__(self):
        self.requests: list[tuple[bytes, bytes, dict]] = []
        self.answer = None
        self.responses: list[FakeResponse] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.requests.append((method, uri, dict(headers.getAllRawHeaders())))
        if self.answer is None:
            return Deferred()
        response = self.answer()
        self.responses.append(response)
        answered: Deferred = Deferred()
        answered.callback(response)
        return answered


class FakeAnnouncements:
    """
    The guard's subscribed rtnetlink socket (director/host_addresses.py):
    `recv` gives what `pending` holds (bytes, or an OSError to raise), then
    would block, as the non-blocking socket does.
    """

    def __init__(self):
        self.pending: list[bytes | OSError] = []
        self.closed = False

    def fileno(self) -> int:
        return -1 if self.closed else 42

    def recv(self, size: int) -> bytes:
        if not self.pending:
            raise BlockingIOError()
        found = self.pending.pop(0)
        if isinstance(found, OSError):
            raise found
        return found

    def close(self) -> None:
        self.closed = True
