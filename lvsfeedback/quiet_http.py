"""
An HTTP client that does not log each connection's life: the agent's HTTP
metric and the pair's requests to the peer director each open a connection
a second or more, and Twisted's stock client factory logs two lines for each.
"""

from __future__ import annotations

from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class _QuietConnectionPool(HTTPConnectionPool):
    """A non-persistent pool whose connections do not log their lives."""

    # Twisted has no public way to choose a pool's factory: this is the
    # attribute it reads.
    _factory = _QuietClientFactory

    def __init__(self, reactor):
        super().__init__(reactor, persistent=False)


def quiet_agent(reactor, **options) -> Agent:
    """A twisted.web Agent on `reactor` (`options` as Agent takes them) with a new connection per request, unlogged."""
    return Agent(reactor, pool=_QuietConnectionPool(reactor), **options)
