"""
The two questions an agent answers about a service, and who answers them:
L{IHealthSource} (the agent's L{lvsfeedback.agent.sampler.Sampler}) and
L{ICapacitySource} (lvsfeedback.agent.capacity). The NECP side,
lvsfeedback.agent.protocol, asks them and measures nothing itself.
"""

from __future__ import annotations

from zope.interface import Interface


class IHealthSource(Interface):
    """Where the agent's health answers come from."""

    def health(protocol, port):
        """
        The health index 0..100 of a service now (100 best, 0: send it no
        work), without waiting: it is asked on every keepalive.

        @param protocol: IP protocol number (6 TCP, 17 UDP, 132 SCTP).
        @param port: the service's port.
        @raise LookupError: the source knows no such service.
        """


class ICapacitySource(Interface):
    """Where the agent's capacity answers come from."""

    def capacity(protocol, port):
        """
        The CPUs a service may use now (a float above 0), or None when
        unknown.

        @param protocol: IP protocol number (6 TCP, 17 UDP, 132 SCTP).
        @param port: the service's port.
        @raise Exception: anything reading it raised; answered as unknown.
        """
