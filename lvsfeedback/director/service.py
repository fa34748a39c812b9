"""
The director as one Twisted service: the NECP listener, the registry of
agents, the weight updater and the status listener. On SIGHUP the config is
reread whole and, if good, each child service reconfigures itself from it.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import signal

from twisted.application.service import MultiService, Service
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from lvsfeedback.director.config import ConfigError, DirectorConfig, IReconfigurable, load_config
from lvsfeedback.director.factory import NEFactory
from lvsfeedback.director.listening import MovablePort
from lvsfeedback.director.pair import PairFollower
from lvsfeedback.director.pair_guard import PairGuard
from lvsfeedback.director.protocol import NEProtocol, unmapped
from lvsfeedback.director.registry import Registry
from lvsfeedback.director.updater import WeightUpdater
from lvsfeedback.director.web.listener import StatusListener
from lvsfeedback.ipvs.interfaces import IIPVSTable
from lvsfeedback.necp.counters import ALLOW, MAX_AGENTS

# Connections refused for being one too many are logged as one peer's: the
# limit is the director's, and a reconnect storm of agents over it is no attack.
ANY_HOST = "any host"
# File descriptors the director needs beside its agents' connections: epoll,
# the waker, listeners, netlink, logs and status clients (13 measured with
# 1,000 agents), with room to spare.
DESCRIPTOR_HEADROOM = 256


class CountedNEProtocol(NEProtocol):
    """An agent's session that its factory counts while the connection is open."""

    factory: GuardedNEFactory

    def connectionMade(self) -> None:
        self.factory.open_connections += 1
        super().connectionMade()

    def connectionLost(self, reason=connectionDone) -> None:
        self.factory.open_connections -= 1
        super().connectionLost(reason)


class GuardedNEFactory(NEFactory):
    """
    The NE factory, refusing connections from outside the allowed networks
    and any beyond C{max_agents} open at once: the listener says no at once
    rather than run out of file descriptors, and the status listener and
    the agents already in keep theirs. Each refusal is counted and logged
    in the factory's L{NECPCounters}.
    """

    protocol = CountedNEProtocol
    log = Logger()

    def __init__(self, events, allow, *, max_agents: int, **kwargs):
        super().__init__(events, **kwargs)
        self.allow = allow
        self.max_agents = max_agents
        self.open_connections = 0

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None:
            host = unmapped(host)
        if self.allow and (host is None or not any(ipaddress.ip_address(host) in net for net in self.allow)):
            self.counters.connection_refused(ALLOW, str(host), f"agent connection from {host}: not in [director] allow")
            return None
        if self.open_connections >= self.max_agents:
            self.counters.connection_refused(
                MAX_AGENTS, str(host),
                f"agent connection from {host}: {self.open_connections} open, "
                f"[director] max_agents = {self.max_agents}",
                scope=ANY_HOST,
            )
            return None
        return super().buildProtocol(addr)


def descriptor_shortage(max_agents: int, limit: int) -> str | None:
    """Why a process allowed `limit` open files cannot serve `max_agents` agents; None if it can."""
    needed = max_agents + DESCRIPTOR_HEADROOM
    if limit == resource.RLIM_INFINITY or limit >= needed:
        return None
    return (
        f"[director] max_agents = {max_agents} needs about {needed} file descriptors, but this process "
        f"may open only {limit}: raise LimitNOFILE (ulimit -n) or lower max_agents"
    )


def necp_limits(config: DirectorConfig) -> dict:
    """The [necp] limits, as the NE factory's settings."""
    return {
        "max_exceptions_per_agent": config.necp.max_exceptions_per_agent,
        "max_queued_output": config.necp.max_queued_output,
    }


@implementer(IReconfigurable)
class NECPListener(Service):
    """Where agents connect: [director] listen, with the NE factory's settings from the config."""

    log = Logger()

    def __init__(self, config: DirectorConfig, reactor, registry, **timing):
        super().__init__()
        self.config = config
        self.factory = GuardedNEFactory(
            registry, config.director.allow, max_agents=config.director.max_agents,
            clock=reactor, secret=config.director.secret,
            health_interval=config.director.health_interval, **timing,
            **necp_limits(config),
        )
        self.ports = MovablePort(reactor, self.factory, "the NECP listener")

    def privilegedStartService(self):
        # Before twistd drops privileges (a port below 1024).
        super().privilegedStartService()
        self._listen()

    def startService(self):
        self.check_descriptors()
        super().startService()
        if self.ports.listen is None:  # started without privilegedStartService
            self._listen()

    def _listen(self) -> None:
        """Listen on `[director] listen`, or raise why not: a director agents cannot reach is not worth starting."""
        failed: list = []
        self.ports.listen_on(self.config.director.listen).addErrback(failed.append)
        if failed:
            failed[0].raiseException()

    def stopService(self):
        super().stopService()
        return self.ports.close()

    def check_descriptors(self) -> None:
        """Warn when the process's open-file limit is below what max_agents needs."""
        shortage = descriptor_shortage(self.config.director.max_agents, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if shortage is not None:
            self.log.warn("{shortage}", shortage=shortage)

    def reconfigure(self, config: DirectorConfig) -> None:
        """
        New limits, networks, secret and question rhythm for the agents; a
        new `[director] listen` is listened on, then the old port closed
        (sessions already up carry on).
        """
        before, self.config = self.config.director, config
        if self.running and config.director.listen != self.ports.listen:
            self.ports.move_to(config.director.listen)
        factory = self.factory
        factory.allow = config.director.allow
        factory.max_agents = config.director.max_agents
        factory.secret = config.director.secret
        factory.health_interval = config.director.health_interval
        for name, value in necp_limits(config).items():
            setattr(factory, name, value)
        if config.director.max_agents != before.max_agents:
            self.check_descriptors()


def kernel_table(reactor, observe: bool) -> IIPVSTable:
    """The kernel's table; in observe mode without ip_vs, an empty stand-in."""
    if observe and not os.path.exists("/proc/net/ip_vs"):
        from lvsfeedback.ipvs.memory import MemoryIPVS

        return MemoryIPVS()
    from lvsfeedback.ipvs.netlink import NetlinkIPVS

    return NetlinkIPVS(reactor)


# Health questions go out this long before each pass (at most half the update
# interval): time enough for a thousand agents' answers to be in when it reads;
# with more, the pass waits for the rest (updater.ANSWER_WAIT).
ASK_AHEAD = 0.5


class DirectorService(MultiService):
    log = Logger()

    def __init__(
        self, config: DirectorConfig, reactor, *, observe: bool | None = None, table: IIPVSTable | None = None,
        http=None, **timing
    ):
        super().__init__()
        self.config = config
        self.reactor = reactor
        # The first child, so that a reload reconfigures it before those that read it.
        self.registry = Registry(config, reactor)
        self.registry.setServiceParent(self)
        observing = config.director.observe if observe is None else observe
        self.table = table if table is not None else kernel_table(reactor, observing)
        self.updater = WeightUpdater(config, self.registry, self.table, reactor, observe=observe)
        self.updater.setServiceParent(self)
        # The VRRP state, and while BACKUP the master's weights (`http`: the peer's IAgent).
        self.pair = PairFollower(config, reactor, http)
        self.pair.setServiceParent(self)
        self.updater.followed = self.pair.followed
        # The split-brain guard's verdict, in the file keepalived tracks.
        self.guard = PairGuard(config, reactor, self.pair, http)
        self.guard.setServiceParent(self)
        self.listener = NECPListener(config, reactor, self.registry, **timing)
        self.listener.setServiceParent(self)
        self.factory = self.listener.factory
        # A regular pass waits (bounded) for its round's answers.
        self.updater.answers_pending = self.factory.answers_pending
        self.factory.answered_listeners.append(self.updater.answered)
        self.status = StatusListener(self, reactor)
        self.status.setServiceParent(self)

    def startService(self):
        super().startService()
        self.ask_ahead_of_passes()

    def stopService(self):
        self.factory.stop_asking()
        return super().stopService()

    def ask_ahead_of_passes(self) -> None:
        """
        The rounds of health questions, each just ahead of a pass when the
        intervals match; and a backup's questions to the master, ahead of each pass.
        """
        next_pass = self.updater.next_pass
        if next_pass is None:
            return
        ahead = min(ASK_AHEAD, self.config.director.update_interval / 2)
        first = max(0.0, next_pass - ahead - self.reactor.seconds())
        self.factory.start_asking(first)
        self.pair.start_fetching(first)

    def reload_on_sighup(self) -> None:
        """For the daemon process: SIGHUP rereads the config (in the reactor thread)."""
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def reload(self) -> bool:
        """
        Reread the config file; a bad one is refused and the running one
        stays. A good one goes to each child service that reconfigures
        itself, in order: the registry first.
        """
        try:
            new = load_config(self.config.path)
        except ConfigError as error:
            self.log.error("config reload refused, the running config stays:\n{problems}", problems=str(error))
            return False
        before, self.config = self.config, new
        for child in self:
            if IReconfigurable.providedBy(child):
                child.reconfigure(new)
        rhythm = ("health_interval", "update_interval")
        if any(getattr(new.director, name) != getattr(before.director, name) for name in rhythm):
            # A new rhythm for the questions, or for the passes they go ahead of.
            self.ask_ahead_of_passes()
        self.log.info("config reloaded from {path}: {count} services", path=str(new.path), count=len(new.services))
        return True
