"""
The network element's end of NECP: the director accepting agents.

L{NEFactory} listens (TCP 3262 by convention); each L{NEProtocol} runs one
agent's session: INIT -> INIT_ACK (refusing agents that do not authenticate
when the director holds a secret), START/STOP of services, a health query for
every started service on every keepalive, and exceptions with their TTLs.
An agent whose INIT announces capacity answers (a project extension) is
also asked each started service's capacity: with the first round after
its START, then at most every L{CAPACITY_INTERVAL} seconds; a draft-only
agent never is.

Events out, not policy in: what happens is reported to the L{IAgentEvents}
provider the factory is given (the registry). Nothing here decides weights.
"""

from __future__ import annotations

import itertools
from operator import itemgetter
import random as _random
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface

from lvsfeedback.ipvs.model import IPVS_FORWARDING
from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.counters import BAD_CREDENTIAL, BAD_SEQUENCE, LIMIT, MALFORMED, NOT_ALLOWED, UNEXPECTED
from lvsfeedback.necp.messages import (
    ErrorReply,
    ExceptionAdd,
    ExceptionAddAck,
    ExceptionDel,
    ExceptionDelAck,
    ExceptionQuery,
    ExceptionReset,
    ExceptionResetAck,
    ExceptionResp,
    Init,
    InitAck,
    KeepaliveAck,
    Message,
    Start,
    StartAck,
    Stop,
    StopAck,
)
from lvsfeedback.necp.protocol import NECPFactory, NECPProtocol
from lvsfeedback.necp.units import (
    ANY_ADDRESS,
    CAPACITY_QUERY,
    HEALTH_QUERY,
    SCOPE_NOT_TO_FARM,
    Answer,
    ExceptionRule,
    InstalledException,
    Query,
    Service,
    pack_unit,
)
from lvsfeedback.necp.wire import MAX_SEQUENCE, MAX_UNITS, Flag, Opcode

# IP protocols IPVS balances.
BALANCED_PROTOCOLS = frozenset({6, 17, 132})
MAX_EXCEPTIONS_PER_AGENT = 1024
# Seconds between two rounds of capacity questions to one agent: capacity
# changes rarely, and every question costs the director at 10,000 agents.
CAPACITY_INTERVAL = 30.0
# A new session's first sequence number: this many messages beyond any other
# session's, with the low half (the count within a second) at least this.
SEQUENCE_SPACING = 1 << 20
UPPER_HALF_OF_A_SECOND = 1 << 31


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


def valid_service(service: Service) -> bool:
    """A forwarding method NECP defines, a protocol IPVS balances, a real port."""
    return (
        service.forwarding in IPVS_FORWARDING
        and service.protocol in BALANCED_PROTOCOLS
        and 0 < service.port
    )


def summarise_services(services, examples: int = 3) -> str:
    """A few of C{services} as protocol/port, and how many more: one short log line for any number."""
    shown = ", ".join(f"{unit.protocol}/{unit.port}" for unit in services[:examples])
    more = len(services) - examples
    return f"{shown} and {more} more" if more > 0 else shown


def health_queries(services) -> tuple[Query, ...]:
    """One health query per (protocol, port): it answers for every forwarding method."""
    return tuple(Query.health(p, port) for p, port in dict.fromkeys((s.protocol, s.port) for s in services))


def capacity_queries(services) -> tuple[Query, ...]:
    """One capacity query per (protocol, port), like L{health_queries}."""
    return tuple(Query.capacity(p, port) for p, port in dict.fromkeys((s.protocol, s.port) for s in services))


def valid_rule(rule: ExceptionRule) -> bool:
    return (
        rule.scope <= SCOPE_NOT_TO_FARM and rule.source_prefix <= 32 and rule.destination_prefix <= 32
    )


def unmapped(host: str) -> str:
    """
    C{host}, or for an IPv4-mapped IPv6 address (how a dual-stack C{tcp6:}
    listener sees an IPv4 agent) the IPv4 address it stands for: the address
    allow-lists and real servers name.
    """
    try:
        address = ip_address(host)
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return host if mapped is None else str(mapped)


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


class NEProtocol(NECPProtocol):
    """
    One agent's session on the director.

    @ivar agent: the L{Agent} this session is.
    @ivar services: the services the agent has started, in order.
    @ivar answers_capacity: the agent's INIT announced capacity answers,
        and it has not refused a capacity query since.
    @ivar proving: an authenticated session between its INIT_ACK and the
        agent's first verified message: an INIT may be a replay, so the
        session replaces nothing and reports nothing until then.
    """

    factory: NEFactory
    log = Logger()

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.agent = Agent(
            unmapped(str(getattr(peer, "host", peer))),
            getattr(peer, "port", 0),
            next(self.factory.connection_numbers),
        )
        self.services: dict[Service, None] = {}
        self._queries: tuple[Query, ...] = ()  # of the started services, asked every round
        self.answers_capacity = False
        self._capacity_queries: tuple[Query, ...] = ()  # of the started services, asked now and then
        self._capacity_asked_at: float | None = None  # when they last were
        self._capacity_due: dict[Service, None] = {}  # started since, to be asked in the next round
        self.forgotten = False
        self.proving = False
        self._first_sequence: int | None = None  # what the INIT_ACK asked for
        self._proof_call: IDelayedCall | None = None
        super().connectionMade()
        self.peer_host = self.agent.host

    def make_authenticator(self) -> Authenticator | None:
        secret = self.factory.secret
        return Authenticator(secret, required=True) if secret is not None else None

    def init_received(self, request: Init) -> Message | None:
        if self.established:
            self.close("INIT on an established session", refused=UNEXPECTED)
            return None
        authenticator = self.authenticator
        if authenticator is not None and not request.authenticate:
            return self._refuse_init(
                request, "agent does not authenticate; this director requires it", BAD_CREDENTIAL
            )
        if authenticator is None and request.authenticate:
            return self._refuse_init(
                request, "agent asks for authentication; this director has no secret", BAD_CREDENTIAL
            )
        self.answers_capacity = request.answers_capacity
        if authenticator is None:
            reply = InitAck()
        else:
            # Reply with exactly the number the agent asked for, then expect
            # ours: one no message sent on another session can carry.
            first = self.factory.fresh_sequence()
            if first > MAX_SEQUENCE:
                return self._refuse_init(request, "sequence numbers are exhausted", BAD_SEQUENCE)
            self._first_sequence = first
            authenticator.start_sending(request.receive_sequence)
            authenticator.start_receiving(first)
            self.signing = True
            reply = InitAck(receive_sequence=first)
        self.establish()
        return reply

    def _refuse_init(self, request: Init, reason: str, refused: str) -> None:
        self.send_message(
            ErrorReply(
                opcode=Opcode.INIT_ACK,
                request_id=request.request_id,
                flags=Flag.ERROR | Flag.AUTH_REQUIRED,
            )
        )
        self.close(f"INIT refused: {reason}", refused=refused)
        return None

    def session_established(self) -> None:
        if self.authenticator is None:
            self.factory.agent_up(self)
            return
        self.proving = True
        clock = self.factory.clock
        self._proof_call = clock.callLater(self.factory.handshake_timeout, self._not_proven)
        # An agent with no service to START proves itself by answering this.
        clock.callLater(0, self.ask_health)

    def message_received(self, message: Message) -> None:
        floor = self.authenticator.receive_floor if self.authenticator is not None else None
        if floor is None:
            return
        self.factory.sequence_accepted(floor)
        if self.proving:
            if floor - 1 != self._first_sequence:
                self.close(
                    f"first message after INIT_ACK carries sequence number {floor - 1}, "
                    f"not {self._first_sequence}: a replay"
                )
                return
            self.proving = False
            self._cancel(self._proof_call)
            self.factory.agent_up(self)

    def _not_proven(self) -> None:
        self._proof_call = None
        self.close(
            f"no verified message within {self.factory.handshake_timeout} s of INIT_ACK", refused=LIMIT
        )

    def session_ended(self, reason: str, was_established: bool) -> None:
        self._cancel(self._proof_call)
        if was_established and not self.proving:
            self.factory.agent_gone(self, reason)

    def start_received(self, request: Start) -> Message:
        invalid = [service for service in request.services if not valid_service(service)]
        candidates = list(
            dict.fromkeys(
                service
                for service in request.services
                if valid_service(service) and service not in self.services
            )
        )
        refused: set[Service] = set()
        if candidates:
            answer = self.factory.notify(
                "servicesStarted", self.agent, tuple(candidates), failed=candidates
            )
            refused = set(answer or ())
        for service in candidates:
            if service not in refused:
                self.services[service] = None
                if self.answers_capacity:
                    self._capacity_due[service] = None
        self._queries = health_queries(self.services)
        if self.answers_capacity:
            self._capacity_queries = capacity_queries(self.services)
        not_allowed = [service for service in candidates if service in refused]
        if invalid:
            self.refuse(
                MALFORMED, f"START of services NECP or IPVS does not define: {summarise_services(invalid)}"
            )
        if not_allowed:
            self.refuse(
                NOT_ALLOWED,
                f"START of {len(not_allowed)} services no configured real server at its address provides: "
                f"{summarise_services(not_allowed)}",
            )
        failed = invalid + not_allowed
        started = [service for service in candidates if service not in refused]
        if started and self.factory.ask_on_start:
            # Ask now rather than at the next keepalive (up to 6 s away): a
            # new server, or every server after a director restart, gets its
            # feedback weight one round trip after START. After the ACK.
            self.factory.clock.callLater(0, self.ask_health, started)
        if failed:
            return ErrorReply(opcode=Opcode.START_ACK, units=tuple(failed))
        return StartAck()

    def ask_health(self, services=None) -> None:
        """
        A KEEPALIVE carrying health queries for these services (by default
        every started one) now: it stands for the next regular keepalive.
        """
        if not self.connected:
            return
        if services is not None and self.keepalives_unanswered:
            # A question is on its way: the next one asks these too. Each
            # question counts toward declaring the agent dead, and a burst
            # of STARTs within one round trip is no silence.
            return
        queries = self._queries if services is None else health_queries(services)
        self.send_keepalive(queries + self._capacity_questions() if self.answers_capacity else queries)

    def _capacity_questions(self) -> tuple[Query, ...]:
        """
        The capacity questions due in this round: every started service's
        once per L{CAPACITY_INTERVAL}, and in between those of services
        started since.
        """
        now = self.factory.clock.seconds()
        asked = self._capacity_asked_at
        if asked is None or now - asked >= CAPACITY_INTERVAL:
            if not self._capacity_queries:
                return ()
            self._capacity_asked_at = now
            self._capacity_due.clear()
            return self._capacity_queries
        if not self._capacity_due:
            return ()
        due, self._capacity_due = self._capacity_due, {}
        return capacity_queries(due)

    def stop_received(self, request: Stop) -> Message:
        # Stopping a service that is not started already holds: that makes a
        # STOP sent again (after an unverifiable STOP_ACK) harmless.
        failed = [service for service in request.services if not valid_service(service)]
        if failed:
            self.refuse(
                MALFORMED, f"STOP of services NECP or IPVS does not define: {summarise_services(failed)}"
            )
        stopped = list(dict.fromkeys(s for s in request.services if s in self.services))
        for service in stopped:
            del self.services[service]
            self._capacity_due.pop(service, None)
        self._queries = health_queries(self.services)
        if self.answers_capacity:
            self._capacity_queries = capacity_queries(self.services)
        if stopped:
            self.factory.notify("servicesStopped", self.agent, tuple(stopped))
        if failed:
            return ErrorReply(opcode=Opcode.STOP_ACK, units=tuple(failed))
        return StopAck()

    def keepalive_queries(self) -> tuple[Query, ...]:
        if self.answers_capacity:
            return self._queries + self._capacity_questions()
        return self._queries

    def keepalive_needed(self) -> bool:
        # Even when the agent's keepalives show it alive: ours ask its health.
        return super().keepalive_needed() or bool(self.services)

    def keepalive_answered(self, reply: KeepaliveAck | ErrorReply) -> None:
        if type(reply) is ErrorReply:
            if self.answers_capacity and reply.units and all(unit.type == CAPACITY_QUERY for unit in reply.units):
                self._capacity_refused()
                return
            self.log.warn(
                "agent {agent} could not answer {queries}",
                agent=self.agent,
                queries=reply.units,
            )
            return
        when = self.factory.clock.seconds()
        for answer in reply.answers:
            self._report(answer, when)

    def _capacity_refused(self) -> None:
        """
        The agent announced capacity answers, then refused a capacity query
        (which takes the round's health answers with it): ask it no more
        capacity, and its health again at once, so that only that answer
        is lost.
        """
        self.answers_capacity = False
        self._capacity_queries = ()
        self._capacity_due.clear()
        self.log.warn(
            "agent {agent} announced capacity answers but refused a capacity query; asking it no more",
            agent=self.agent,
        )
        if self.services:
            self.ask_health()

    def _report(self, answer: Answer, when: float) -> None:
        if answer.type == HEALTH_QUERY:
            event = "healthReported"
        elif answer.type == CAPACITY_QUERY:
            event = "capacityReported"
        else:
            return
        for service in self.services:
            if (service.protocol, service.port) == (answer.protocol, answer.port):
                self.factory.notify(event, self.agent, service, answer.value, when)

    def exception_add_received(self, request: ExceptionAdd) -> Message:
        exceptions, limit = self.factory.exceptions, self.factory.max_exceptions_per_agent
        failed = []
        invalid = over_limit = 0
        for rule in request.rules:
            if not valid_rule(rule):
                failed.append(rule)
                invalid += 1
                continue
            if exceptions.count(self.agent) >= limit and not exceptions.holds(self.agent, rule):
                failed.append(rule)
                over_limit += 1
                continue
            exceptions.add(self.agent, rule)
            self.factory.notify("exceptionAdded", self.agent, rule)
        if invalid:
            self.refuse(
                MALFORMED,
                f"EXCEPTION_ADD: {invalid} exception rules with a scope or prefix NECP does not define",
            )
        if over_limit:
            self.refuse(
                LIMIT, f"EXCEPTION_ADD: {over_limit} exception rules over the limit of {limit} per agent"
            )
        if failed:
            return ErrorReply(opcode=Opcode.EXCEPTION_ADD_ACK, units=tuple(failed))
        return ExceptionAddAck()

    def exception_del_received(self, request: ExceptionDel) -> Message:
        failed = []
        for rule in request.rules:
            removed = self.factory.exceptions.remove(self.agent, rule)
            if removed is None:
                failed.append(rule)
            else:
                self.factory.notify("exceptionRemoved", self.agent, removed)
        if failed:
            return ErrorReply(opcode=Opcode.EXCEPTION_DEL_ACK, units=tuple(failed))
        return ExceptionDelAck()

    def exception_reset_received(self, request: ExceptionReset) -> Message:
        self.factory.exceptions.reset(self.agent)
        self.factory.notify("exceptionsReset", self.agent)
        return ExceptionResetAck()

    def exception_query_received(self, request: ExceptionQuery) -> Message:
        answer = self.factory.exceptions.answer(request.filter)
        if len(answer.entries) > MAX_UNITS:
            # One EXCEPTION_RESP answers one query; a narrower filter fits.
            self.refuse(
                LIMIT,
                f"EXCEPTION_QUERY: an exception query matching {len(answer.entries)} entries, "
                f"over the {MAX_UNITS} one answer holds",
            )
            return ErrorReply(opcode=Opcode.EXCEPTION_RESP, units=(request.filter,))
        return answer


class NEFactory(NECPFactory):
    """
    The director's NECP server: builds one L{NEProtocol} per agent
    connection and reports what agents do to C{events}.

    With a C{secret}, only agents that authenticate with it are accepted.
    On INIT, any older session from the same host is dropped: the director
    forgets everything it held for that agent (NECP's rule for INIT). With
    a secret, not on INIT but on the newcomer's first verified message after
    its INIT_ACK, which must carry exactly the sequence number the INIT_ACK
    asked for, one no other session sends (see L{fresh_sequence}): neither a
    replayed INIT nor messages replayed from another session, captured
    before or after, can take a session over or bring one up.
    With C{ask_on_start}, newly started services are asked for their health
    at once; with a C{health_interval}, every agent is asked every that many
    seconds, all in one round from one timer (see L{start_asking}), each
    question standing for that session's next keepalive; and always on every
    keepalive.

    @ivar exceptions: the L{ExceptionTable} of all agents.
    @ivar max_exceptions_per_agent: rules one agent may install; more are
        refused (copies in the error EXCEPTION_ADD_ACK).
    """

    protocol = NEProtocol
    log = Logger()

    def __init__(
        self,
        events: IAgentEvents,
        *,
        clock: IReactorTime,
        secret: bytes | None = None,
        random: Callable[[], float] = _random.random,
        ask_on_start: bool = True,
        health_interval: float = 0.0,
        max_exceptions_per_agent: int = MAX_EXCEPTIONS_PER_AGENT,
        **timing: float,
    ):
        super().__init__(clock=clock, secret=secret, random=random, **timing)
        self.max_exceptions_per_agent = max_exceptions_per_agent
        self.events = events
        self.ask_on_start = ask_on_start
        self.health_interval = health_interval
        self.exceptions = ExceptionTable(clock, self._exception_expired)
        self.connection_numbers = itertools.count(1)
        self._sessions: dict[Agent, NEProtocol] = {}
        # Above every sequence number accepted from any session or asked for in an INIT_ACK.
        self._sequence_floor = 0
        self._asking: LoopingCall | None = None
        self._first_round: IDelayedCall | None = None

    def start_asking(self, first: float) -> None:
        """
        With a C{health_interval}: a round of health questions to every
        agent with a started service C{first} seconds from now, then every
        C{health_interval}. One timer for all: the reactor wakes once per
        round instead of once per agent. Starting again restarts the rhythm.
        """
        self.stop_asking()
        if self.health_interval > 0:
            self._asking = LoopingCall(self.ask_everyone)
            self._asking.clock = self.clock
            self._first_round = self.clock.callLater(first, self._asking.start, self.health_interval)

    def stop_asking(self) -> None:
        if self._first_round is not None and self._first_round.active():
            self._first_round.cancel()
        if self._asking is not None and self._asking.running:
            self._asking.stop()
        self._asking = self._first_round = None

    def ask_everyone(self) -> None:
        """One round of health questions; a session that fails to ask is logged and skipped."""
        for session in list(self._sessions.values()):
            if session.services:
                try:
                    session.ask_health()
                except Exception:
                    self.log.failure("asking {agent} for its health failed", agent=session.agent)

    def agents(self) -> dict[Agent, tuple[Service, ...]]:
        """The agents with a session now, and the services each has started."""
        return {agent: tuple(session.services) for agent, session in self._sessions.items()}

    def session(self, agent: Agent) -> NEProtocol | None:
        return self._sessions.get(agent)

    def notify(self, event: str, *arguments: object, failed: object = None) -> object:
        """Call C{event} on the events provider; if it raises, log and return C{failed}."""
        try:
            return getattr(self.events, event)(*arguments)
        except Exception:
            self.log.failure("agent event handler {event} failed", event=event)
            return failed

    def agent_up(self, session: NEProtocol) -> None:
        for older in [s for s in self._sessions.values() if s.agent.host == session.agent.host]:
            self._forget(older, f"replaced by session {session.agent} from the same host")
            older.close(f"replaced by session {session.agent}")
        self._sessions[session.agent] = session
        self.log.info("agent {agent} up", agent=session.agent)
        self.notify("agentUp", session.agent)

    def fresh_sequence(self) -> int:
        """
        The sequence number a new session must send first, unique to it:
        above the clock's start, at least L{SEQUENCE_SPACING} above every
        number accepted or asked for so far, and in the upper half of its
        second. Another session's numbers count up by one from its own
        first, or jump to the start of a second (see L{Authenticator}): none
        comes to this one, so no message captured from another session,
        before or after, carries it.
        """
        start = Authenticator.initial_sequence(self.clock.seconds())
        first = max(start, self._sequence_floor + SEQUENCE_SPACING) | UPPER_HALF_OF_A_SECOND
        self._sequence_floor = first + 1
        return first

    def sequence_accepted(self, floor: int) -> None:
        """A session accepted a message; a new session's number will be above C{floor}."""
        if floor > self._sequence_floor:
            self._sequence_floor = floor

    def agent_gone(self, session: NEProtocol, reason: str) -> None:
        if not session.forgotten:
            self._forget(session, reason)

    def _forget(self, session: NEProtocol, reason: str) -> None:
        session.forgotten = True
        del self._sessions[session.agent]
        self.exceptions.reset(session.agent)
        self.log.info("agent {agent} lost: {reason}", agent=session.agent, reason=reason)
        self.notify("agentLost", session.agent, reason)

    def _exception_expired(self, agent: Agent, rule: ExceptionRule) -> None:
        self.notify("exceptionRemoved", agent, rule)
