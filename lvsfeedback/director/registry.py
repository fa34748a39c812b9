"""
What the director knows about its agents: facts, no decisions.

The NE protocol reports events here (an agent came up, started or stopped
services, answered a health or capacity query, was lost). The registry
keeps, per agent address, the services it started and its latest health and
capacity per service, and answers the updater's one question: what is known
about real server D of virtual service S? It also decides nothing about
weights; the policy does.

An agent speaks only for its own address: a START for a service that no
configured real server at that address provides (and no auto_join network
admits) is refused; the NE protocol counts and logs the refusal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from lvsfeedback.director.config import IReconfigurable, OnLeave
from lvsfeedback.director.events import IAgentEvents
from lvsfeedback.director.policy import Agent, AgentState, HealthReport
from lvsfeedback.director.protocol import summarise_services
from lvsfeedback.ipvs.model import IPVS_FORWARDING, PROTOCOLS, DestKey, RealServer, ServiceKey

ServicePort = tuple[int, int]  # (IP protocol number, port), as NECP names a service

# An agent STARTs its services right after INIT. Until it does, or this long
# after INIT, what was known of its servers stands: a pass that lands between
# the two messages must not quiesce a healthy server (it would then climb
# back through a whole slow start).
START_GRACE = 10.0


@dataclass
class AgentSession:
    """One connected agent: what it started and what it last reported."""

    handle: object
    address: str
    connected_at: float
    started: dict[ServicePort, str] = field(default_factory=dict)  # -> forwarding name
    health: dict[ServicePort, HealthReport] = field(default_factory=dict)
    capacity: dict[ServicePort, float] = field(default_factory=dict)  # CPUs, when the agent knows them
    stopped: set[ServicePort] = field(default_factory=set)  # STOPped in this session

    def __post_init__(self) -> None:
        # What the policy is told of this agent while it stays connected:
        # built once per session, not once per server and pass.
        self.connected_agent = Agent(AgentState.CONNECTED, self.connected_at)
        self.stopped_agent = Agent(AgentState.STOPPED, self.connected_at)


class ServerFacts(NamedTuple):
    """
    What the registry knows of one real server, in the policy's terms. A
    named tuple: one is built per server and pass, at half a frozen dataclass's cost.
    """

    agent: Agent
    report: HealthReport | None
    capacity: float | None = None  # CPUs, as its agent last reported them

    @property
    def stopped(self) -> bool:
        """Its agent is connected but has not started (or has stopped) the service."""
        return self.agent.state is AgentState.STOPPED


@implementer(IAgentEvents, IReconfigurable)
class Registry(Service):
    """
    A child service of the director only to be reconfigured with the others
    on reload: it has nothing to start or stop.
    """

    log = Logger()

    def __init__(self, config, clock):
        self._clock = clock
        self._sessions: dict[object, AgentSession] = {}
        self._by_address: dict[str, AgentSession] = {}
        self._lost_at: dict[str, float] = {}
        self.auto_joined: dict[ServiceKey, dict[DestKey, RealServer]] = {}
        # Called with no arguments once a lost agent is forgotten (the updater
        # reweights its server at once rather than at its next tick).
        self.lost_listeners: list[Callable[[], object]] = []
        # Called with no arguments when a report moved by early_pass_change
        # or more from the same server's previous one.
        self.change_listeners: list[Callable[[], object]] = []
        self.reconfigure(config)

    def reconfigure(self, config) -> None:
        """IReconfigurable: take a (re)loaded config; what agents said so far still stands."""
        self._config = config
        # The configured real servers by address: a START looks up its own
        # few rather than every server of every service (with 10,000 agents
        # starting, that scan was 10^8 comparisons).
        self._reals_at: dict[str, list[tuple[object, DestKey]]] = {}
        for service in config.services:
            for real in service.reals:
                self._reals_at.setdefault(real.dest_key.address, []).append((service, real.dest_key))
        self.auto_joined = {
            service.key: self.auto_joined.get(service.key, {}) for service in config.services if service.auto_join
        }

    # Events from the NE protocol.

    def agentUp(self, agent) -> None:
        # The NE factory keeps one session a host: an older one from this
        # address was lost before (see IAgentEvents.agentUp).
        address = _address_of(agent)
        self._sessions[agent] = self._by_address[address] = AgentSession(agent, address, self._clock.seconds())
        # The one line an agent coming up costs: thousands come up at once.
        self.log.info("agent {address} up (session {agent})", address=address, agent=agent)

    def servicesStarted(self, agent, services) -> list:
        session = self._sessions.get(agent)
        if session is None:
            return list(services)
        refused = []
        for unit in services:
            port = (unit.protocol, unit.port)
            if self._serves(session.address, port) or self._auto_join(session.address, port) or self._kernel_may_have(port):
                session.started[port] = IPVS_FORWARDING.get(unit.forwarding, "")
                session.stopped.discard(port)
                self._lost_at.pop(session.address, None)
            else:
                refused.append(unit)
        return refused

    def servicesStopped(self, agent, services) -> list:
        session = self._sessions.get(agent)
        if session is not None:
            self.log.info("agent {address} stopped {services}", address=session.address,
                          services=summarise_services(services))
            for unit in services:
                port = (unit.protocol, unit.port)
                session.started.pop(port, None)
                session.health.pop(port, None)
                session.capacity.pop(port, None)
                session.stopped.add(port)
            self._forget_auto_joined(session.address, session.started)
        return []

    def healthReported(self, agent, service, health: int, when: float) -> None:
        session = self._sessions.get(agent)
        port = (service.protocol, service.port)
        if session is None or port not in session.started:
            return
        previous = session.health.get(port)
        session.health[port] = HealthReport(health, when)
        significant = self._config.director.early_pass_change
        if previous is not None and significant and abs(health - previous.value) >= significant:
            for listener in self.change_listeners:
                listener()

    def capacityReported(self, agent, service, milli_cpus: int, when: float) -> None:
        session = self._sessions.get(agent)
        port = (service.protocol, service.port)
        if session is None or port not in session.started:
            return
        if not milli_cpus:
            session.capacity.pop(port, None)
            return
        cpus = milli_cpus / 1000
        previous = session.capacity.get(port)
        if previous == cpus:
            return
        session.capacity[port] = cpus
        # Logged on change only (asked every round): an operator sees what
        # the capacity-mode priors start from.
        self.log.info(
            "agent {address} {service}: capacity {change} CPUs",
            address=session.address,
            service=summarise_services((service,)),
            change=f"{cpus:g}" if previous is None else f"{previous:g} -> {cpus:g}",
        )
        if previous is not None:
            # A new quota is known before the traffic shows it: act on it soon.
            for listener in self.change_listeners:
                listener()

    def agentLost(self, agent, reason) -> None:
        session = self._sessions.pop(agent, None)
        if session is None:
            return
        del self._by_address[session.address]
        self._lost_at[session.address] = self._clock.seconds()
        self._forget_auto_joined(session.address, ())
        self.log.warn("agent {address} lost: {reason}", address=session.address, reason=reason)
        for listener in self.lost_listeners:
            listener()

    # Exceptions are kept by the NE protocol; IPVS has nothing to apply them to.

    def exceptionAdded(self, agent, rule) -> None:
        pass

    def exceptionRemoved(self, agent, rule) -> None:
        pass

    def exceptionsReset(self, agent) -> None:
        pass

    # Queries.

    @property
    def sessions(self) -> list[AgentSession]:
        return list(self._sessions.values())

    def facts(self, service, dest: DestKey) -> ServerFacts:
        # Asked for every server in every pass (and history sample): the
        # usual case, one started port, goes first and builds little.
        session = self._by_address.get(dest.address)
        if session is not None and len(session.started) == 1:
            (port,) = session.started
            if _port_matches(service, dest, port):
                return ServerFacts(session.connected_agent, session.health.get(port), session.capacity.get(port))
        ports = [port for port in session.started if _port_matches(service, dest, port)] if session else ()
        if len(ports) == 1:
            port = ports[0]
            return ServerFacts(session.connected_agent, session.health.get(port), session.capacity.get(port))
        if session is None or (not ports and self._awaiting_start(session, service, dest)):
            lost_at = self._lost_at.get(dest.address)
            if lost_at is None:
                return ServerFacts(Agent(AgentState.NEVER_SEEN), None)
            return ServerFacts(Agent(AgentState.LOST, lost_at), None)
        if not ports:
            return ServerFacts(session.stopped_agent, None)
        agent = session.connected_agent
        reported = [port for port in ports if port in session.health]
        if not reported:
            return ServerFacts(agent, None)
        # A fwmark service may gather several ports: the worst one speaks,
        # for its health and its capacity.
        worst = min(reported, key=lambda port: (session.health[port].value, -session.health[port].time))
        return ServerFacts(agent, session.health[worst], session.capacity.get(worst))

    # Internals.

    def _awaiting_start(self, session: AgentSession, service, dest: DestKey) -> bool:
        """Up for less than START_GRACE and not a word yet (START or STOP) of this server's service."""
        return (
            self._clock.seconds() - session.connected_at < START_GRACE
            and not any(_port_matches(service, dest, port) for port in (*session.started, *session.stopped))
        )

    def _serves(self, address: str, port: ServicePort) -> bool:
        return any(_port_matches(service, dest, port) for service, dest in self._reals_at.get(address, ()))

    def _kernel_may_have(self, port: ServicePort) -> bool:
        """
        With weights_only the real servers are whatever the kernel holds (put
        there by keepalived or ipvsadm), not the config's: an agent's START
        is taken for any configured protocol, and matched to kernel servers
        by its address and port.
        """
        return self._config.director.weights_only and any(
            service.key.is_fwmark or PROTOCOLS[service.key.protocol] == port[0] for service in self._config.services
        )

    def _auto_join(self, address: str, port: ServicePort) -> bool:
        """A START of a service's own port (or one its mark gathers) joins it, at the agent's address."""
        joined = False
        for service in self._config.services:
            if not any(ipaddress.ip_address(address) in network for network in service.auto_join):
                continue
            dest = DestKey.of(address, service.key.port)
            if not _port_matches(service, dest, port):
                continue
            members = self.auto_joined.setdefault(service.key, {})
            if dest not in members:
                members[dest] = RealServer(dest, service.auto_join_weight, service.forwarding)
                self.log.info("{dest} joins {service}", dest=str(dest), service=str(service.key))
            joined = True
        return joined

    def _forget_auto_joined(self, address: str, started: Iterable[ServicePort]) -> None:
        """
        An auto-joined server of a service whose on_leave is `remove` leaves
        it once its agent has started none of the ports that made it join.
        """
        started = tuple(started)
        for service in self._config.services:
            members = self.auto_joined.get(service.key, {})
            if service.on_leave != OnLeave.REMOVE:
                continue
            for dest in list(members):
                if dest.address == address and not any(_port_matches(service, dest, port) for port in started):
                    del members[dest]
                    self.log.info("{dest} leaves {service}", dest=str(dest), service=str(service.key))


def _port_matches(service, dest: DestKey, port: ServicePort) -> bool:
    """Does the agent's (protocol, port) describe this real server of this service?"""
    protocol, number = port
    key = service.key
    if key.is_fwmark:
        mark = service.mark
        return (
            mark is not None
            and PROTOCOLS.get(mark.protocol) == protocol
            and (not mark.ports or number in mark.ports or (dest.port and number == dest.port))
        )
    return PROTOCOLS[key.protocol] == protocol and number == (dest.port or key.port)


def _address_of(agent) -> str:
    return str(ipaddress.ip_address(agent.host))
