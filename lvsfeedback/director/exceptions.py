"""
The exceptions agents install on the director (NECP EXCEPTION_ADD, _DEL,
_RESET, _QUERY): which rules are valid, and the table of installed ones,
each kept until its TTL runs out. IPVS has nothing to apply them to; the
director keeps and answers them as NECP asks.
"""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address
from operator import itemgetter
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from lvsfeedback.director.events import Agent
from lvsfeedback.necp.messages import ExceptionResp
from lvsfeedback.necp.units import ANY_ADDRESS, SCOPE_NOT_TO_FARM, ExceptionRule, InstalledException, pack_unit


def valid_rule(rule: ExceptionRule) -> bool:
    return (
        rule.scope <= SCOPE_NOT_TO_FARM and rule.source_prefix <= 32 and rule.destination_prefix <= 32
    )


def installer_address(agent: Agent) -> IPv4Address:
    """The agent's IPv4 address as an EXCEPTION_RESP carries it (0.0.0.0 if it has none)."""
    try:
        address = ip_address(agent.host)
    except ValueError:
        return ANY_ADDRESS
    return address if isinstance(address, IPv4Address) else ANY_ADDRESS


class ExceptionTable:
    """
    Exceptions installed by agents, each kept until its TTL runs out on the
    injected clock (TTL 0: until deleted). Plain object, no I/O.

    A query costs one comparison per installed exception, none when its
    filter matches everything: the entries in the RESP layout, and their
    bytes, are made once per change, not once per query.

    @param expired: called with (agent, rule) when a TTL runs out.
    """

    def __init__(self, clock: IReactorTime, expired: Callable[[Agent, ExceptionRule], None]):
        self._clock = clock
        self._expired = expired
        self._entries: dict[Agent, dict[ExceptionRule, tuple[ExceptionRule, IDelayedCall | None]]] = {}
        self._installed: tuple[InstalledException, ...] | None = None  # None: to be built again
        self._packed: tuple[bytes, ...] = ()  # the bytes of each of _installed
        self._packed_all = b""

    def add(self, agent: Agent, rule: ExceptionRule) -> None:
        """Install C{rule}; installing an existing one again restarts its TTL."""
        entries = self._entries.setdefault(agent, {})
        key = rule.key
        previous = entries.get(key)
        if previous is None:
            self._installed = None
        elif previous[1] is not None and previous[1].active():
            previous[1].cancel()
        expiry = self._clock.callLater(rule.ttl, self._expire, agent, key) if rule.ttl else None
        entries[key] = (rule, expiry)

    def remove(self, agent: Agent, rule: ExceptionRule) -> ExceptionRule | None:
        """Remove C{agent}'s rule matching C{rule} (TTL aside); the removed rule, or None."""
        entries = self._entries.get(agent, {})
        found = entries.pop(rule.key, None)
        if found is None:
            return None
        self._installed = None
        if found[1] is not None and found[1].active():
            found[1].cancel()
        return found[0]

    def reset(self, agent: Agent) -> list[ExceptionRule]:
        """Remove all of C{agent}'s rules; those removed."""
        entries = self._entries.pop(agent, {})
        if entries:
            self._installed = None
        for _, expiry in entries.values():
            if expiry is not None and expiry.active():
                expiry.cancel()
        return [rule for rule, _ in entries.values()]

    def rules(self, agent: Agent) -> tuple[ExceptionRule, ...]:
        return tuple(rule for rule, _ in self._entries.get(agent, {}).values())

    def count(self, agent: Agent) -> int:
        """How many rules C{agent} has installed."""
        return len(self._entries.get(agent, ()))

    def holds(self, agent: Agent, rule: ExceptionRule) -> bool:
        """Whether C{agent} has installed C{rule} (TTL aside)."""
        return rule.key in self._entries.get(agent, ())

    def query(self, pattern: InstalledException) -> tuple[InstalledException, ...]:
        """Every installed exception matching C{pattern}, in the RESP layout."""
        return self.answer(pattern).entries

    def answer(self, pattern: InstalledException) -> ExceptionResp:
        """The EXCEPTION_RESP to a query for C{pattern}, its entries packed."""
        if self._installed is None:
            self._build()
        installed, packed = self._installed, self._packed
        # Every non-zero field of the pattern (addresses included) must match.
        fields = [index for index, wanted in enumerate(pattern) if int(wanted)]
        if not fields:
            return ExceptionResp(entries=installed, packed=self._packed_all)
        pick = itemgetter(*fields)
        wanted = pick(pattern)
        matching = [index for index, entry in enumerate(installed) if pick(entry) == wanted]
        return ExceptionResp(
            entries=tuple(installed[index] for index in matching),
            packed=b"".join(packed[index] for index in matching),
        )

    def _build(self) -> None:
        found = []
        for agent, entries in sorted(self._entries.items()):
            installer = installer_address(agent)
            found.extend(
                InstalledException(
                    rule.scope,
                    installer,
                    rule.source,
                    rule.source_prefix,
                    rule.destination,
                    rule.destination_prefix,
                    rule.protocol,
                    rule.port,
                )
                for rule, _ in entries.values()
            )
        self._installed = tuple(found)
        self._packed = tuple(pack_unit(entry) for entry in found)
        self._packed_all = b"".join(self._packed)

    def _expire(self, agent: Agent, key: ExceptionRule) -> None:
        rule, _ = self._entries[agent].pop(key)
        if not self._entries[agent]:
            del self._entries[agent]
        self._installed = None
        self._expired(agent, rule)
