"""
The director as one Twisted service: the NECP listener, the registry of
agents, and the weight updater, reloaded together on SIGHUP.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import signal

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger

from lvsfeedback.director.config import ConfigError, DirectorConfig, load_config
from lvsfeedback.director.factory import NEFactory
from lvsfeedback.director.protocol import NEProtocol, unmapped
from lvsfeedback.director.registry import Registry
from lvsfeedback.director.updater import WeightUpdater
from lvsfeedback.director.web import StatusListener
from lvsfeedback.necp.counters import ALLOW, MAX_AGENTS


def read_secret(config: DirectorConfig) -> bytes | None:
    path = config.director.secret_file
    return None if path is None else path.read_bytes().strip()


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


def kernel_table(reactor, observe: bool):
    """The kernel's table; in observe mode without ip_vs, an empty stand-in."""
    if observe and not os.path.exists("/proc/net/ip_vs"):
        from lvsfeedback.ipvs.memory import MemoryIPVS

        return MemoryIPVS()
    from lvsfeedback.ipvs.netlink import NetlinkIPVS

    return NetlinkIPVS(reactor)


# Health questions go out this long before each pass (at most half the update
# interval): time enough for a thousand agents' answers to be in when it reads.
ASK_AHEAD = 0.5


class DirectorService(MultiService):
    log = Logger()

    def __init__(self, config: DirectorConfig, reactor, *, observe: bool | None = None, table=None, **timing):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.registry = Registry(config, reactor)
        observing = config.director.observe if observe is None else observe
        self.table = table if table is not None else kernel_table(reactor, observing)
        self.updater = WeightUpdater(config, self.registry, self.table, reactor, observe=observe)
        self.updater.setServiceParent(self)
        self.factory = GuardedNEFactory(
            self.registry, config.director.allow, max_agents=config.director.max_agents,
            clock=reactor, secret=read_secret(config),
            health_interval=config.director.health_interval, **timing,
            **necp_limits(config),
        )
        self.listener = strports.service(config.director.listen, self.factory, reactor=reactor)
        self.listener.setServiceParent(self)
        self.status = StatusListener(self, reactor)
        self.status.setServiceParent(self)

    def startService(self):
        self.check_descriptors()
        super().startService()
        self.ask_ahead_of_passes()

    def check_descriptors(self) -> None:
        """Warn when the process's open-file limit is below what max_agents needs."""
        shortage = descriptor_shortage(self.config.director.max_agents, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if shortage is not None:
            self.log.warn("{shortage}", shortage=shortage)

    def stopService(self):
        self.factory.stop_asking()
        return super().stopService()

    def ask_ahead_of_passes(self) -> None:
        """The rounds of health questions, each just ahead of a pass when the intervals match."""
        next_pass = self.updater.next_pass
        if next_pass is None:
            return
        ahead = min(ASK_AHEAD, self.config.director.update_interval / 2)
        self.factory.start_asking(max(0.0, next_pass - ahead - self.reactor.seconds()))

    def reload_on_sighup(self) -> None:
        """For the daemon process: SIGHUP rereads the config (in the reactor thread)."""
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def reload(self) -> bool:
        """Reread the config file; a bad one is refused and the running one stays."""
        try:
            new = load_config(self.config.path)
            secret = read_secret(new)
        except (ConfigError, OSError) as error:
            self.log.error("config reload refused, the running config stays:\n{problems}", problems=str(error))
            return False
        for section, old, changed in (("director", self.config.director.listen, new.director.listen),
                                      ("status", self.config.status.listen, new.status.listen)):
            if changed != old:
                self.log.warn("[{section}] listen changed to {listen}: takes effect on restart",
                              section=section, listen=changed)
        before = self.config.director
        self.factory.allow = new.director.allow
        if new.director.max_agents != before.max_agents:
            self.factory.max_agents = new.director.max_agents
            self.check_descriptors()
        self.factory.secret = secret
        for name, value in necp_limits(new).items():
            setattr(self.factory, name, value)
        self.registry.configure(new)
        self.updater.configure(new)
        self.config = new
        if (before.health_interval, before.update_interval) != (new.director.health_interval, new.director.update_interval):
            # A new rhythm for the questions, or for the passes they go ahead of.
            self.factory.health_interval = new.director.health_interval
            self.ask_ahead_of_passes()
        self.log.info("config reloaded from {path}: {count} services", path=str(new.path), count=len(new.services))
        return True
