"""
What the director learns from its agents: the L{Agent} a session is, the
L{IAgentEvents} the NE protocol reports to (the registry provides it), and
L{GuardedEvents}, through which it does.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import Interface, implementer

from lvsfeedback.addresses import host_port


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
        return f"{host_port(self.host, self.port)}#{self.connection}"


class IAgentEvents(Interface):
    """
    What the director learns from its agents, as it happens. The NE protocol
    calls these and decides nothing itself. An exception raised here is
    logged and does not end the session.
    """

    def agentUp(agent):
        """
        C{agent} (an L{Agent}) finished INIT; none of its services is started
        yet. Sessions are one a host: an older session from the same host
        was lost first (L{agentLost}).
        """

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


@implementer(IAgentEvents)
class GuardedEvents:
    """
    Passes each event to C{provider}: what the provider raises is logged and
    goes no further, so that no session ends for it. A START the provider
    fails on refuses every service it carried.
    """

    log = Logger()

    def __init__(self, provider: IAgentEvents):
        self.provider = provider

    def _failed(self, event: str) -> None:
        self.log.failure("agent event handler {event} failed", event=event)

    def agentUp(self, agent):
        try:
            self.provider.agentUp(agent)
        except Exception:
            self._failed("agentUp")

    def servicesStarted(self, agent, services):
        try:
            return self.provider.servicesStarted(agent, services)
        except Exception:
            self._failed("servicesStarted")
            return services

    def servicesStopped(self, agent, services):
        try:
            self.provider.servicesStopped(agent, services)
        except Exception:
            self._failed("servicesStopped")

    def healthReported(self, agent, service, health, when):
        try:
            self.provider.healthReported(agent, service, health, when)
        except Exception:
            self._failed("healthReported")

    def capacityReported(self, agent, service, milli_cpus, when):
        try:
            self.provider.capacityReported(agent, service, milli_cpus, when)
        except Exception:
            self._failed("capacityReported")

    def exceptionAdded(self, agent, rule):
        try:
            self.provider.exceptionAdded(agent, rule)
        except Exception:
            self._failed("exceptionAdded")

    def exceptionRemoved(self, agent, rule):
        try:
            self.provider.exceptionRemoved(agent, rule)
        except Exception:
            self._failed("exceptionRemoved")

    def exceptionsReset(self, agent):
        try:
            self.provider.exceptionsReset(agent)
        except Exception:
            self._failed("exceptionsReset")

    def agentLost(self, agent, reason):
        try:
            self.provider.agentLost(agent, reason)
        except Exception:
            self._failed("agentLost")
