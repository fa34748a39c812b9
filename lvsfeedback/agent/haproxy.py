"""
HAProxy agent-check responder: the agent's health, for a second consumer.

HAProxy's `agent-check` opens a TCP connection, reads one line and closes.
The line says what HAProxy should do with the server: `drain` (weight 0,
existing sessions continue), `down` (the service itself does not answer), or
`ready up 75%` (back in service, at 75% of the weight configured in
haproxy.cfg; `ready` and `up` undo an earlier drain or down).
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol

from lvsfeedback.ipvs.model import PROTOCOLS


class HAProxyAgentCheck(Protocol):
    def connectionMade(self):
        self.transport.write(self.factory.reply().encode("ascii"))
        self.transport.loseConnection()


class HAProxyAgentFactory(Factory):
    protocol = HAProxyAgentCheck

    def __init__(self, sampler, protocol: str, port: int):
        self.sampler = sampler
        self.service = (PROTOCOLS[protocol], port)

    def reply(self) -> str:
        if self.sampler.drained:
            return "drain\n"
        if "probe" in self.sampler.failing(*self.service):
            return "down\n"
        return f"ready up {self.sampler.health(*self.service)}%\n"
