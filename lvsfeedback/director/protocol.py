"""
The network element's end of NECP: the director accepting agents.

L{NEFactory} listens (TCP 3262 by convention); each L{NEProtocol} runs one
agent's session: INIT -> INIT_ACK (refusing agents that do not authenticate
when the director holds a secret), START/STOP of services, a health query for
every started service on every keepalive, and exceptions with their TTLs.
An agent whose INIT announces capacity answers (a project extension) is
also asked each started service's capacity in the same rounds (a quota
changed on a server is then seen as soon as its health would be); a
draft-only agent never is.

Events out, not policy in: what happens is reported to the L{IAgentEvents}
provider the factory is given (the registry). Nothing here decides weights.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from lvsfeedback.director.events import Agent
from lvsfeedback.director.exceptions import valid_rule
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
    Init,
    InitAck,
    KeepaliveAck,
    Message,
    Start,
    StartAck,
    Stop,
    StopAck,
)
from lvsfeedback.necp.protocol import NECPProtocol
from lvsfeedback.necp.units import CAPACITY_QUERY, HEALTH_QUERY, Answer, Query, Service
from lvsfeedback.necp.wire import MAX_SEQUENCE, MAX_UNITS, Flag, Opcode

if TYPE_CHECKING:
    from lvsfeedback.director.factory import NEFactory

# IP protocols IPVS balances.
BALANCED_PROTOCOLS = frozenset({6, 17, 132})
MAX_EXCEPTIONS_PER_AGENT = 1024


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
        self._queries: tuple[Query, ...] = ()  # health, and capacity if answered, of the started services
        # The started services each (protocol, port) answers for.
        self._answering: dict[tuple[int, int], tuple[Service, ...]] = {}
        self.answers_capacity = False
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
        candidates, over_limit = self._within_port_limit(
            dict.fromkeys(
                service
                for service in request.services
                if valid_service(service) and service not in self.services
            )
        )
        refused: set[Service] = set()
        if candidates:
            refused = set(self.factory.events.servicesStarted(self.agent, tuple(candidates)) or ())
        for service in candidates:
            if service not in refused:
                self.services[service] = None
        self._services_changed()
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
        if over_limit:
            self.refuse(
                LIMIT,
                f"START of {len(over_limit)} services beyond the {MAX_UNITS} ports one session answers for: "
                f"{summarise_services(over_limit)}",
            )
        failed = invalid + not_allowed + over_limit
        started = [service for service in candidates if service not in refused]
        if started and self.factory.ask_on_start:
            # Ask now rather than at the next keepalive (up to 6 s away): a
            # new server, or every server after a director restart, gets its
            # feedback weight one round trip after START. After the ACK.
            self.factory.clock.callLater(0, self.ask_health, started)
        if failed:
            return ErrorReply(opcode=Opcode.START_ACK, units=tuple(failed))
        return StartAck()

    def _within_port_limit(self, services) -> tuple[list[Service], list[Service]]:
        """
        C{services} split into those this session may start and those on
        ports beyond L{MAX_UNITS}: a round asks one health question per
        port, and one KEEPALIVE holds at most that many.
        """
        ports = set(self._answering)
        within, beyond = [], []
        for service in services:
            port = (service.protocol, service.port)
            if port in ports or len(ports) < MAX_UNITS:
                ports.add(port)
                within.append(service)
            else:
                beyond.append(service)
        return within, beyond

    def _services_changed(self) -> None:
        self._queries = self._questions(self.services)
        answering: dict[tuple[int, int], list[Service]] = {}
        for service in self.services:
            answering.setdefault((service.protocol, service.port), []).append(service)
        self._answering = {port: tuple(services) for port, services in answering.items()}

    def ask_health(self, services=None) -> None:
        """
        A KEEPALIVE carrying health queries for these services (by default
        every started one) now: it stands for the next regular keepalive.
        """
        if not self.connected:
            return
        if services is not None and self.state.keepalives_unanswered:
            # A question is on its way: the next one asks these too. Each
            # question counts toward declaring the agent dead, and a burst
            # of STARTs within one round trip is no silence.
            return
        self.send_keepalive(self._queries if services is None else self._questions(services))

    def _questions(self, services) -> tuple[Query, ...]:
        """
        What a round asks of C{services}: their health, and their capacity
        when the agent answers it, as far as one KEEPALIVE holds (beyond
        half the ports a session may start, the last ones' capacity stays
        unknown). Built when the services change, so the same tuple round
        after round is packed once.
        """
        health = health_queries(services)
        if not self.answers_capacity:
            return health
        return health + capacity_queries(services)[: MAX_UNITS - len(health)]

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
        self._services_changed()
        if not self.services:
            self.resume_keepalives()
        if stopped:
            self.factory.events.servicesStopped(self.agent, tuple(stopped))
        if failed:
            return ErrorReply(opcode=Opcode.STOP_ACK, units=tuple(failed))
        return StopAck()

    def keepalive_queries(self) -> tuple[Query, ...]:
        return self._queries

    def keepalive_timer_needed(self) -> bool:
        # The next round asks a session with services before its keepalive is due.
        return not (self.services and self.factory.asking_in_rounds())

    def keepalive_needed(self) -> bool:
        # Even when the agent's keepalives show it alive: ours ask its health.
        return super().keepalive_needed() or bool(self.services)

    def keepalive_answered(self, reply: KeepaliveAck | ErrorReply) -> None:
        factory = self.factory
        if type(reply) is ErrorReply:
            self._not_answered(reply)
        else:
            when = factory.clock.seconds()
            for answer in reply.answers:
                self._report(answer, when)
        if self in factory.unanswered:  # after the reports: a pass may be waiting for them
            factory.question_answered(self)

    def _not_answered(self, reply: ErrorReply) -> None:
        if self.answers_capacity and reply.units and all(unit.type == CAPACITY_QUERY for unit in reply.units):
            self._capacity_refused()
            return
        self.log.warn(
            "agent {agent} could not answer {queries}",
            agent=self.agent,
            queries=reply.units,
        )

    def _capacity_refused(self) -> None:
        """
        The agent announced capacity answers, then refused a capacity query
        (which takes the round's health answers with it): ask it no more
        capacity, and its health again at once, so that only that answer
        is lost.
        """
        self.answers_capacity = False
        self._services_changed()
        self.log.warn(
            "agent {agent} announced capacity answers but refused a capacity query; asking it no more",
            agent=self.agent,
        )
        if self.services:
            self.ask_health()

    def _report(self, answer: Answer, when: float) -> None:
        events = self.factory.events
        if answer.type == HEALTH_QUERY:
            reported = events.healthReported
        elif answer.type == CAPACITY_QUERY:
            reported = events.capacityReported
        else:
            return
        for service in self._answering.get((answer.protocol, answer.port), ()):
            reported(self.agent, service, answer.value, when)

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
            self.factory.events.exceptionAdded(self.agent, rule)
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
                self.factory.events.exceptionRemoved(self.agent, removed)
        if failed:
            return ErrorReply(opcode=Opcode.EXCEPTION_DEL_ACK, units=tuple(failed))
        return ExceptionDelAck()

    def exception_reset_received(self, request: ExceptionReset) -> Message:
        self.factory.exceptions.reset(self.agent)
        self.factory.events.exceptionsReset(self.agent)
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
