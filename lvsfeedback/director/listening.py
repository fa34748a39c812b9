"""
A listening port that a reload can move (`[director] listen`, `[status]
listen`): the new endpoint is listened on first, and the old port closed only
once the new one listens, so a reload naming an endpoint that cannot be had
leaves the old one serving. Connections already accepted are not touched
either way: agents' sessions and status clients carry on.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure


class MovablePort:
    """
    Where `factory` listens: one port at a time, on the endpoint description
    `listen`. `what` names it in the log ("the status listener").
    """

    log = Logger()

    def __init__(self, reactor, factory: Factory, what: str):
        self.reactor = reactor
        self.factory = factory
        self.what = what
        self.port: IListeningPort | None = None
        self.listen: str | None = None  # the description `port` listens on
        self._closed = False

    def listen_on(self, description: str) -> Deferred:
        """
        Listen on `description`, then close the old port. Fires with the new
        port, or fails with why it cannot listen (the old port stays).
        """
        self._closed = False
        listening = serverFromString(self.reactor, description).listen(self.factory)
        listening.addCallback(self._listening, description)
        return listening

    def move_to(self, description: str) -> Deferred:
        """A reload's `listen_on`: a failure is logged in one line, and the old port serves on."""
        moving = self.listen_on(description)
        moving.addErrback(self._cannot_move, description)
        return moving

    def close(self) -> Deferred | None:
        """Stop listening; a listen still under way is closed when it lands."""
        self._closed = True
        port, self.port, self.listen = self.port, None, None
        return port.stopListening() if port is not None else None

    def _listening(self, port: IListeningPort, description: str) -> IListeningPort | None:
        if self._closed:
            port.stopListening()
            return None
        before, self.port, self.listen = self.port, port, description
        self.log.info("{what} on {address}", what=self.what, address=str(port.getHost()))
        if before is not None:
            before.stopListening()
        return port

    def _cannot_move(self, failure: Failure, description: str) -> None:
        where = f"it stays on {self.port.getHost()}" if self.port is not None else "it is not listening"
        self.log.error(
            "{what} cannot listen on {listen}: {reason}; {where}",
            what=self.what, listen=description, reason=failure.getErrorMessage(), where=where,
        )
