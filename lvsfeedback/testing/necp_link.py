"""
An agent connected to a director in memory (twisted.test.iosim), on a
task.Clock: the NECP endpoints' tests and the whole-loop tests share it.
"""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.test import iosim

from lvsfeedback.necp.framing import Decoder

DIRECTOR = IPv4Address("TCP", "10.0.0.1", 3262)


def peer_address(host: str, port: int) -> IPv4Address | IPv6Address:
    """The agent's address as a listener of its family reports it."""
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class Link:
    """One agent connected to a director in memory."""

    def __init__(
        self, director, agent_factory, clock, host="10.0.0.2", port=40000, agent=None, greet=True
    ):
        agent_address = peer_address(host, port)
        self.director = director.buildProtocol(agent_address)
        self.agent = agent if agent is not None else agent_factory.buildProtocol(None)
        self.director_side = iosim.FakeTransport(self.director, True, DIRECTOR, agent_address)
        self.agent_side = iosim.FakeTransport(self.agent, False, agent_address, DIRECTOR)
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
