"""
The server element's end of NECP: the agent talking to its directors.

L{SEProtocol} opens a session (INIT, authenticated when the agent holds a
secret), STARTs the agent's services, answers the director's health queries
from the L{IHealthSource} it is given (it measures nothing itself), and,
when it is given an L{ICapacitySource}, announces in its INIT that it
answers the project's capacity queries and answers them from it. It sends
its own keepalives, and offers START/STOP and exception requests as
Deferreds.

L{DirectorLinks} keeps one such session with each of several directors, each
through Twisted's L{ClientService}, reconnecting with L{JitteredBackoff}:
exponential from 1 to 256 seconds, jittered, counting failed handshakes as
well as failed connections.
"""

from __future__ import annotations

import random as _random
from typing import Callable, Iterable

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from lvsfeedback.agent.interfaces import ICapacitySource, IHealthSource
from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.factory import NECPFactory
from lvsfeedback.necp.messages import (
    ErrorReply,
    ExceptionAdd,
    ExceptionDel,
    ExceptionQuery,
    ExceptionReset,
    Init,
    InitAck,
    Keepalive,
    KeepaliveAck,
    Message,
    Start,
    Stop,
)
from lvsfeedback.necp.protocol import NECPProtocol
from lvsfeedback.necp.units import (
    CAPACITY_QUERY,
    HEALTH_QUERY,
    MAX_CAPACITY,
    MAX_HEALTH,
    Answer,
    ExceptionRule,
    InstalledException,
    Query,
    Service,
)
from lvsfeedback.necp.wire import Opcode, describe_flags

MIN_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 256.0
# The query types an agent answers, without and with a capacity source.
HEALTH_ONLY = frozenset({HEALTH_QUERY})
ANSWERED_TYPES = frozenset({HEALTH_QUERY, CAPACITY_QUERY})


class JitteredBackoff:
    """
    A L{ClientService} retry policy: exponential backoff from C{initial} to
    C{maximum} seconds with "equal jitter" (each delay drawn from the upper
    half of its step), so that many agents do not reconnect in lockstep.

    L{ClientService} counts failed connection attempts and forgets them once
    a TCP connection is made; a connection whose NECP handshake fails must
    still make the next wait longer, so handshake failures are counted here
    and reset only by a successful handshake.
    """

    def __init__(
        self,
        random: Callable[[], float] = _random.random,
        initial: float = MIN_RETRY_DELAY,
        maximum: float = MAX_RETRY_DELAY,
        factor: float = 2.0,
    ):
        self._random = random
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failed_handshakes = 0

    def __call__(self, attempt: int) -> float:
        """Seconds to wait before attempt C{attempt} + 1 (C{attempt} counts from 1)."""
        steps = min(attempt - 1 + self.failed_handshakes, 64)
        ceiling = min(self.maximum, self.initial * self.factor**steps)
        return max(self.initial, ceiling * (0.5 + 0.5 * self._random()))

    def handshake_failed(self) -> None:
        self.failed_handshakes += 1

    def handshake_succeeded(self) -> None:
        self.failed_handshakes = 0


def _rejected(reply: Message) -> tuple:
    """The units a reply says failed: none for a plain ACK."""
    return reply.units if type(reply) is ErrorReply else ()


class SEProtocol(NECPProtocol):
    """One agent session with one director."""

    factory: SEFactory
    log = Logger()

    def make_authenticator(self) -> Authenticator | None:
        secret = self.factory.secret
        return Authenticator(secret) if secret is not None else None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._unanswerable: set[tuple[int, int, int]] = set()  # (query type, protocol, port)
        answers_capacity = self.factory.capacity is not None
        self._answered_types = ANSWERED_TYPES if answers_capacity else HEALTH_ONLY
        authenticator = self.authenticator
        if authenticator is None:
            init = Init(answers_capacity=answers_capacity)
        else:
            first = authenticator.initial_sequence(self.factory.clock.seconds())
            authenticator.start_receiving(first)
            self.signing = True
            init = Init(authenticate=True, receive_sequence=first, answers_capacity=answers_capacity)
        sent = self.send_request(init, retryable=False)
        sent.addCallbacks(self._init_answered, self.request_abandoned)

    def _init_answered(self, reply: InitAck | ErrorReply) -> None:
        if type(reply) is ErrorReply:
            self.close(f"director refused INIT ({describe_flags(reply.flags)})")
            return
        if self.authenticator is not None:
            self.authenticator.start_sending(reply.receive_sequence)
        self.establish()

    def session_established(self) -> None:
        self.log.info("session with director {peer} up", peer=self.peer)
        self.factory.session_established(self)
        services = tuple(self.factory.services)
        if services:
            self.start(services).addCallbacks(self._started, self.request_abandoned)

    def _started(self, rejected: tuple[Service, ...]) -> None:
        if rejected:
            self.log.warn(
                "director {peer} refused services {services}", peer=self.peer, services=rejected
            )

    def session_ended(self, reason: str, was_established: bool) -> None:
        self.factory.session_ended(self, reason, was_established)

    def keepalive_received(self, request: Keepalive) -> Message:
        answered = self._answered_types
        unknown = tuple(query for query in request.queries if query.type not in answered)
        if unknown:
            return ErrorReply(opcode=Opcode.KEEPALIVE_ACK, units=unknown)
        return KeepaliveAck(answers=tuple(self._answer(query) for query in request.queries))

    def _answer(self, query: Query) -> Answer:
        if query.type == CAPACITY_QUERY:
            what, read = "capacity", self._milli_cpus
        else:
            what, read = "health", self._health
        key = (query.type, query.protocol, query.port)
        try:
            value = read(query.protocol, query.port)
        except Exception as error:
            # An agent that cannot tell answers 0: for health, send it no
            # work; for capacity, unknown.
            if key not in self._unanswerable:
                self._unanswerable.add(key)
                self.log.warn(
                    "answering {what} 0 for protocol {protocol} port {port}: {error}",
                    what=what,
                    protocol=query.protocol,
                    port=query.port,
                    error=error,
                )
            value = 0
        else:
            self._unanswerable.discard(key)
        return Answer(query.type, query.protocol, query.port, value)

    def _health(self, protocol: int, port: int) -> int:
        health = self.factory.health.health(protocol, port)
        if not isinstance(health, int) or not 0 <= health <= MAX_HEALTH:
            raise ValueError(f"health {health!r} is not an integer 0..{MAX_HEALTH}")
        return health

    def _milli_cpus(self, protocol: int, port: int) -> int:
        cpus = self.factory.capacity.capacity(protocol, port)
        if cpus is None:
            return 0
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus < float("inf"):
            raise ValueError(f"capacity {cpus!r} is not a number of CPUs above 0")
        # At least one milli-CPU: 0 would say "unknown".
        return min(max(round(cpus * 1000), 1), MAX_CAPACITY)

    # Requests to the director. Each Deferred fires on the director's reply.

    def start(self, services: Iterable[Service]) -> Deferred:
        """START C{services}; fires with the services the director refused."""
        return self.send_request(Start(services=tuple(services))).addCallback(_rejected)

    def stop(self, services: Iterable[Service]) -> Deferred:
        """STOP C{services}; fires on STOP_ACK with the services that could not be stopped."""
        return self.send_request(Stop(services=tuple(services))).addCallback(_rejected)

    def add_exceptions(self, rules: Iterable[ExceptionRule]) -> Deferred:
        """Install C{rules}; fires with the rules the director refused."""
        return self.send_request(ExceptionAdd(rules=tuple(rules))).addCallback(_rejected)

    def delete_exceptions(self, rules: Iterable[ExceptionRule]) -> Deferred:
        """Remove C{rules}; fires with the rules the director did not hold for us."""
        return self.send_request(ExceptionDel(rules=tuple(rules))).addCallback(_rejected)

    def reset_exceptions(self) -> Deferred:
        """Remove all our exceptions; fires with () once done."""
        return self.send_request(ExceptionReset()).addCallback(_rejected)

    def query_exceptions(self, pattern: InstalledException = InstalledException()) -> Deferred:
        """
        The director's exceptions matching C{pattern} (zero fields match
        anything); fires with a tuple of L{InstalledException}.
        """
        return self.send_request(ExceptionQuery(filter=pattern)).addCallback(
            lambda reply: reply.entries if type(reply) is not ErrorReply else ()
        )


class SEFactory(NECPFactory):
    """
    Sessions with one director: builds L{SEProtocol}s for a L{ClientService}.

    @ivar health: the L{IHealthSource} answering health queries.
    @ivar capacity: the L{ICapacitySource} answering capacity queries, or
        None: the agent then does not announce them (as a draft-only SE).
    @ivar services: the services STARTed at every handshake (the set may be
        shared with other factories and changed at any time).
    @ivar session: the established session, or None.
    @ivar retry_policy: the L{JitteredBackoff} to give the L{ClientService}.
    """

    protocol = SEProtocol
    log = Logger()

    def __init__(
        self,
        health: IHealthSource,
        services: set[Service] | Iterable[Service] = (),
        *,
        clock: IReactorTime,
        secret: bytes | None = None,
        random: Callable[[], float] = _random.random,
        capacity: ICapacitySource | None = None,
        **timing: float,
    ):
        super().__init__(clock=clock, secret=secret, random=random, **timing)
        self.health = health
        self.capacity = capacity
        self.services = services if isinstance(services, set) else set(services)
        self.session: SEProtocol | None = None
        self.retry_policy = JitteredBackoff(random)

    def session_established(self, session: SEProtocol) -> None:
        self.session = session
        self.retry_policy.handshake_succeeded()

    def session_ended(self, session: SEProtocol, reason: str, was_established: bool) -> None:
        if self.session is session:
            self.session = None
        if was_established:
            self.log.info(
                "session with director {peer} ended: {reason}", peer=session.peer, reason=reason
            )
        else:
            self.retry_policy.handshake_failed()


def _all_settled(requests: list[Deferred]) -> Deferred:
    """
    Fires once every one of C{requests} has: with their results in order, or
    with the first failure. One director's lost session must not cut short
    the wait for the others' acknowledgements.
    """

    def settled(outcomes):
        for succeeded, result in outcomes:
            if not succeeded:
                return result
        return [result for _, result in outcomes]

    return DeferredList(requests, consumeErrors=True).addCallback(settled)


class DirectorLinks(MultiService):
    """
    The agent's sessions with all its directors, one L{ClientService} each,
    kept up with jittered exponential backoff (1..256 s).

    @ivar announced: the services STARTed on every director at each handshake.
    """

    def __init__(
        self,
        endpoints: Iterable[IStreamClientEndpoint],
        health: IHealthSource,
        services: Iterable[Service] = (),
        *,
        clock: IReactorTime,
        secret: bytes | None = None,
        random: Callable[[], float] = _random.random,
        capacity: ICapacitySource | None = None,
        **timing: float,
    ):
        super().__init__()
        self.announced = set(services)
        self.factories: list[SEFactory] = []
        for endpoint in endpoints:
            factory = SEFactory(
                health,
                self.announced,
                clock=clock,
                secret=secret,
                random=random,
                capacity=capacity,
                **timing,
            )
            link = ClientService(endpoint, factory, retryPolicy=factory.retry_policy, clock=clock)
            link.setServiceParent(self)
            self.factories.append(factory)

    def sessions(self) -> list[SEProtocol]:
        """The established sessions, one per director that is up."""
        return [factory.session for factory in self.factories if factory.session is not None]

    def start_services(self, services: Iterable[Service]) -> Deferred:
        """
        Announce C{services} to every director now and at every later
        handshake. Fires with a list, per established session, of the
        services that director refused.
        """
        services = tuple(services)
        self.announced.update(services)
        return _all_settled([session.start(services) for session in self.sessions()])

    def stop_services(self, services: Iterable[Service]) -> Deferred:
        """
        STOP C{services} on every established session and announce them no
        more. Fires once every director acknowledged, with a list, per
        session, of the services it could not stop; fails, once every
        session has answered or failed, if one failed.
        """
        services = tuple(services)
        self.announced.difference_update(services)
        return _all_settled([session.stop(services) for session in self.sessions()])
