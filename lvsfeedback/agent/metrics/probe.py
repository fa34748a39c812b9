"""
The C{probe} metric: is the local service accepting TCP connections?

Health is 100 when a connection opens within the timeout. Otherwise the
reading fails, and a failing probe counts as health 0 by default
(C{on_error=zero}): a service that does not answer gets no work.
"""

from __future__ import annotations

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric
from lvsfeedback.agent.metrics.scale import HEALTH_MAX


class _ProbeFactory(Factory):
    # A default factory logs two lines per connection: one probe a second.
    noisy = False
    protocol = Protocol


@implementer(ILoadMetric)
class ProbeMetric:
    """Opens and closes one TCP connection to C{host}:C{port}."""

    def __init__(self, reactor, host: str, port: int, timeout: float):
        endpoint_type = TCP6ClientEndpoint if isIPv6Address(host) else TCP4ClientEndpoint
        self._endpoint = endpoint_type(reactor, host, port, timeout=timeout)
        self.host = host
        self.port = port
        self.timeout = timeout

    def sample(self) -> Deferred[float]:
        connecting = self._endpoint.connect(_ProbeFactory())
        connecting.addCallbacks(self._connected, self._failed)
        return connecting

    def _connected(self, protocol: Protocol) -> float:
        protocol.transport.loseConnection()
        return HEALTH_MAX

    def _failed(self, reason: Failure) -> Failure:
        return Failure(
            MetricReadError(
                f"cannot connect to {self.host} port {self.port}: {reason.getErrorMessage()}"
            )
        )


def build(options, environment) -> ProbeMetric:
    """C{probe:port=P[,host=127.0.0.1,timeout=1]}."""
    port = options.integer("port", minimum=1, maximum=65535)
    host = options.text("host", "127.0.0.1")
    if not (isIPAddress(host) or isIPv6Address(host)):
        raise options.error(f"key 'host' must be an IP address, got {host!r}")
    timeout = options.number("timeout", 1.0, positive=True)
    return ProbeMetric(environment.reactor, host, port, timeout)
