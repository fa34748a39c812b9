"""
An agent connected to a director in memory (twisted.test.iosim), on a
task.Clock: the NECP endpoints' tests and the whole-loop tests share it.
"""

from twisted.internet.address import IPv4Address
from twisted.test import iosim

from lvsfeedback.necp.codec import Decoder

DIRECTOR = IPv4Address("TCP", "10.0.0.1", 3262)


class Link:
    """One agent connected to a director in memory."""

    def __init__(
        self, director, agent_factory, clock, host="10.0.0.2", port=40000, agent=None, greet=True
    ):
        self.director = director.buildProtocol(IPv4Address("TCP", host, port))
        self.agent = agent if agent is not None else agent_factory.buildProtocol(None)
        self.director_side = iosim.FakeTransport(
            self.director, True, DIRECTOR, IPv4Address("TCP", host, port)
        )
        self.agent_side = iosim.FakeTransport(
            self.agent, False, IPv4Address("TCP", host, port), DIRECTOR
        )
        self.pump = iosim.connect(
            self.director, self.director_side, self.agent, self.agent_side, clock=clock, greet=greet
        )
        self.cut = False  # when set, everything in flight is lost, both ways

    def flush(self):
        if self.cut:
            self.director_side.stream.clear()
            self.agent_side.stream.clear()
        else:
            self.pump.flush()

    @property
    def closed(self):
        return self.director_side.disconnected and self.agent_side.disconnected

    def sent_by_director(self):
        """Decode what the director wrote and has not been delivered yet."""
        decoder = Decoder()
        decoder.feed(b"".join(self.director_side.stream))
        found = []
        while (message := decoder.next_message()) is not None:
            found.append(message)
        return found
