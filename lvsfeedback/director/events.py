"""
What the director learns from its agents: the L{Agent} a session is, and
the L{IAgentEvents} the NE protocol reports to (the registry provides it).
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Interface


@dataclass(frozen=True, order=True)
class Agent:
    """
    One agent session as the director sees it: the peer's address and a
    connection number unique within the factory. A reconnecting agent is a
    new L{Agent}.
    """

    host: str
    port: int
    connection: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}#{self.connection}"


class IAgentEvents(Interface):
    """
    What the director learns from its agents, as it happens. The NE protocol
    calls these and decides nothing itself. An exception raised here is
    logged and does not end the session.
    """

    def agentUp(agent):
        """C{agent} (an L{Agent}) finished INIT; none of its services is started yet."""

    def servicesStarted(agent, services):
        """
        C{agent} is ready for new flows of C{services} (a tuple of L{Service},
        none already started on this session).

        @return: an iterable of the services refused (empty to accept all):
            those the agent may not offer. Their units go back to the agent
            in an error START_ACK, and the protocol counts and logs the
            refusal (as C{not_allowed}).
        """

    def servicesStopped(agent, services):
        """C{agent} wants no new flows of C{services} (each one it had started)."""

    def healthReported(agent, service, health, when):
        """
        C{agent} answered a keepalive: C{service} (a started L{Service}) has
        C{health} 0..100 (0: send it no work) at C{when} (the clock's seconds).
        """

    def capacityReported(agent, service, milli_cpus, when):
        """
        C{agent} answered a capacity query (project extension): C{service}
        (a started L{Service}) may use C{milli_cpus} thousandths of a CPU
        (0: unknown), at C{when}.
        """

    def exceptionAdded(agent, rule):
        """C{agent} installed C{rule} (an L{ExceptionRule}), or refreshed its TTL."""

    def exceptionRemoved(agent, rule):
        """C{rule} of C{agent} is gone: deleted by the agent, or its TTL ran out."""

    def exceptionsReset(agent):
        """C{agent} dropped all its exceptions."""

    def agentLost(agent, reason):
        """
        The session of C{agent} ended, for C{reason} (a readable string).
        Nothing of it remains: its services and exceptions are gone with it.
        """
