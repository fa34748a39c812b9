"""
The agent as one Twisted service: the sampler measuring load, the links to
every director answering health queries from it, and optionally the HAProxy
agent-check listener.

The agent connects to its directors once its first sample is in, so its
first answer is a measurement. Draining sends STOP for every service to every director and waits (bounded)
for their STOP_ACKs; while drained every health answer is 0. Stopping the
service (SIGTERM under twistd) drains first, so a real server leaves the
pool before its agent goes away.

A reload (SIGHUP) rereads the settings and leaves the drain state alone: a
bad file is refused and the running settings stay; `drain_timeout` and the
secret (for sessions opened from then on) change at once, and a change to
anything else is logged as taking effect on restart.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Callable

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import Clock
from twisted.logger import Logger

from lvsfeedback.agent.capacity import capacity_source
from lvsfeedback.agent.config import FORWARDING_CODES, AgentConfigError, AgentSettings
from lvsfeedback.agent.haproxy import HAProxyAgentFactory
from lvsfeedback.agent.metrics.combine import Combination
from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricSpecError
from lvsfeedback.agent.metrics.spec import MetricRegistry
from lvsfeedback.agent.protocol import DirectorLinks
from lvsfeedback.agent.sampler import Sampler, ServiceMetrics
from lvsfeedback.ipvs.model import PROTOCOLS
from lvsfeedback.necp.units import Service as ServiceUnit

# What a reload changes in a running agent; the rest is built once, at start.
RELOADED = ("drain_timeout", "secret_file")


def read_secret(settings: AgentSettings) -> bytes | None:
    path = settings.secret_file
    if path is None:
        return None
    secret = path.read_bytes().strip()
    if not secret:
        raise AgentConfigError([f"{path}: the secret file is empty"])
    return secret


def check_metrics(settings: AgentSettings, registry: MetricRegistry) -> list[str]:
    """
    What is wrong with the metric specs, before the agent has its reactor:
    each spec is built on a throwaway clock and thrown away. A clock, not
    nothing: a metric may take a first reading, and its time, when built
    (the cgroup metric does).
    """
    environment = MetricEnvironment(reactor=Clock())
    problems = []
    for spec in dict.fromkeys(spec for service in settings.services for spec in service.metrics):
        try:
            registry.build(spec, environment)
        except MetricSpecError as error:
            problems.append(str(error))
    return problems


def build_sampler(settings: AgentSettings, reactor, registry: MetricRegistry | None = None) -> Sampler:
    """The sampler for these settings; MetricSpecError (a ValueError) names a bad spec."""
    registry = registry or MetricRegistry.discover()
    environment = MetricEnvironment(reactor)
    services = [
        ServiceMetrics(
            service.protocol,
            service.port,
            tuple(registry.build(spec, environment) for spec in service.metrics),
            Combination(service.combine),
        )
        for service in settings.services
    ]
    return Sampler(services, reactor, settings.interval, settings.smoothing)


class AgentService(MultiService):
    log = Logger()

    def __init__(self, settings: AgentSettings, reactor, sampler: Sampler | None = None, endpoints=None, **timing):
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.sampler = sampler or build_sampler(settings, reactor)
        self.sampler.setServiceParent(self)
        self.units = tuple(
            ServiceUnit(FORWARDING_CODES[s.forwarding], PROTOCOLS[s.protocol], s.port) for s in settings.services
        )
        secret = read_secret(settings)
        if endpoints is None:
            endpoints = [clientFromString(reactor, director) for director in settings.directors]
        capacity = capacity_source(settings.capacity, self.sampler)
        self.links = DirectorLinks(
            endpoints, self.sampler, self.units, clock=reactor, secret=secret, capacity=capacity, **timing
        )
        self.links.setServiceParent(self)
        if settings.haproxy_agent:
            first = settings.services[0]
            protocol, port = (settings.haproxy_service or first.name).split(":")
            factory = HAProxyAgentFactory(self.sampler, protocol, int(port))
            strports.service(settings.haproxy_agent, factory, reactor=reactor).setServiceParent(self)

    def startService(self):
        # Everything but the director links: an agent that STARTs before its
        # first sample would answer health 0 and have a healthy server
        # quiesced, so it connects once it can answer.
        Service.startService(self)
        for child in self:
            if child is not self.links:
                child.startService()
        self.sampler.when_sampled().addCallback(self._connect)

    def _connect(self, _) -> None:
        if self.running and not self.links.running:
            self.links.startService()

    @property
    def drained(self) -> bool:
        return self.sampler.drained

    def drain(self) -> defer.Deferred:
        """STOP everything everywhere; fires when every director acknowledged or the timeout passed."""
        self.sampler.drained = True
        self.log.info("draining: STOP sent to {count} directors", count=len(self.links.sessions()))
        stopping = self.links.stop_services(self.units)
        stopping.addTimeout(self.settings.drain_timeout, self.reactor)
        stopping.addErrback(lambda failure: self.log.warn(
            "drain: not every director acknowledged STOP within {timeout} s ({reason})",
            timeout=self.settings.drain_timeout, reason=failure.getErrorMessage(),
        ))
        return stopping

    def undrain(self) -> defer.Deferred:
        self.sampler.drained = False
        self.log.info("undrained: START sent to {count} directors", count=len(self.links.sessions()))
        return self.links.start_services(self.units)

    def reload(self, read_settings: Callable[[], AgentSettings]) -> bool:
        """Take the settings read_settings rereads; a bad one is refused and the running one stays."""
        try:
            new = read_settings()
            secret = read_secret(new)
        except (AgentConfigError, OSError) as error:
            self.log.error("config reload refused, the running config stays:\n{problems}", problems=str(error))
            return False
        on_restart = [f.name for f in fields(AgentSettings)
                      if f.name not in RELOADED and getattr(new, f.name) != getattr(self.settings, f.name)]
        if on_restart:
            self.log.warn("{keys} changed: takes effect on restart", keys=", ".join(on_restart))
        for factory in self.links.factories:
            factory.secret = secret
        self.settings = replace(self.settings, **{name: getattr(new, name) for name in RELOADED})
        self.log.info("config reloaded{drained}", drained=" (still drained)" if self.drained else "")
        return True

    def stopService(self):
        draining = self.drain() if self.running else defer.succeed(None)
        draining.addBoth(lambda _: MultiService.stopService(self))
        return draining
