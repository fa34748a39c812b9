"""
The director's NECP server: L{NEFactory} builds one L{NEProtocol} per agent
connection and holds what its sessions share: the sessions themselves (one
a host), the rounds of questions, the sequence numbers new sessions start
from, and the table of exceptions.
"""

from __future__ import annotations

import itertools
import random as _random
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lvsfeedback.director.events import Agent, GuardedEvents, IAgentEvents
from lvsfeedback.director.exceptions import ExceptionTable
from lvsfeedback.director.protocol import MAX_EXCEPTIONS_PER_AGENT, NEProtocol
from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.factory import NECPFactory
from lvsfeedback.necp.units import ExceptionRule, Service

# A new session's first sequence number: this many messages beyond any other
# session's, with the low half (the count within a second) at least this.
SEQUENCE_SPACING = 1 << 20
UPPER_HALF_OF_A_SECOND = 1 << 31


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
    question standing for that session's next keepalive (while the rounds
    come at least as often as keepalives, a session with services holds no
    keepalive timer of its own); and always on every keepalive. Until
    every session a round asked has answered or gone, L{answers_pending}
    says so (a pass waits for them); then C{answered_listeners} are called.

    @ivar events: the events provider, each call guarded (L{GuardedEvents}).
    @ivar exceptions: the L{ExceptionTable} of all agents.
    @ivar unanswered: the sessions the latest round asked that have neither
        answered nor gone; read it, L{question_answered} changes it.
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
        self.events: IAgentEvents = GuardedEvents(events)
        self.ask_on_start = ask_on_start
        self.health_interval = health_interval
        self.exceptions = ExceptionTable(clock, self._exception_expired)
        self.connection_numbers = itertools.count(1)
        self._sessions: dict[Agent, NEProtocol] = {}
        self._hosts: dict[str, NEProtocol] = {}  # the same sessions by host: one a host
        # Above every sequence number accepted from any session or asked for in an INIT_ACK.
        self._sequence_floor = 0
        self._asking: LoopingCall | None = None
        self._first_round: IDelayedCall | None = None
        self.unanswered: set[NEProtocol] = set()  # the sessions the latest round asked that have not answered
        # Called with no arguments once every session the latest round asked has answered or gone.
        self.answered_listeners: list[Callable[[], object]] = []

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
        for session in self._sessions.values():
            session.resume_keepalives()

    def asking_in_rounds(self) -> bool:
        """Whether rounds of questions run, each before any session's keepalive is due."""
        asking = self._asking
        return asking is not None and asking.running and self.health_interval <= self.keepalive_interval

    def ask_everyone(self) -> None:
        """One round of health questions; a session that fails to ask is logged and skipped."""
        unanswered = self.unanswered = set()
        for session in list(self._sessions.values()):
            if session.services:
                try:
                    session.ask_health()
                except Exception:
                    self.log.failure("asking {agent} for its health failed", agent=session.agent)
                else:
                    unanswered.add(session)

    def answers_pending(self) -> bool:
        """Whether a session the latest round asked has neither answered nor gone."""
        return bool(self.unanswered)

    def question_answered(self, session: NEProtocol) -> None:
        """C{session} answered a question (or went): once all the round asked have, tell the listeners."""
        unanswered = self.unanswered
        if session in unanswered:
            unanswered.discard(session)
            if not unanswered:
                for listener in self.answered_listeners:
                    listener()

    def agents(self) -> dict[Agent, tuple[Service, ...]]:
        """The agents with a session now, and the services each has started."""
        return {agent: tuple(session.services) for agent, session in self._sessions.items()}

    def session(self, agent: Agent) -> NEProtocol | None:
        return self._sessions.get(agent)

    def agent_up(self, session: NEProtocol) -> None:
        older = self._hosts.get(session.agent.host)
        if older is not None:
            self._forget(older, f"replaced by session {session.agent} from the same host")
            older.close(f"replaced by session {session.agent}")
        self._sessions[session.agent] = self._hosts[session.agent.host] = session
        self.events.agentUp(session.agent)

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
        del self._sessions[session.agent], self._hosts[session.agent.host]
        self.question_answered(session)  # it will not
        self.exceptions.reset(session.agent)
        self.log.info("agent {agent} lost: {reason}", agent=session.agent, reason=reason)
        self.events.agentLost(session.agent, reason)

    def _exception_expired(self, agent: Agent, rule: ExceptionRule) -> None:
        self.events.exceptionRemoved(agent, rule)
