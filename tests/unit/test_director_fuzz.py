"""
A stateful fuzz test of the director's end of NECP (#15).

Hypothesis drives a L{GuardedNEFactory} and its L{Registry} on a task.Clock
with arbitrary sequences of steps: legitimate agents (the project's own
L{SEProtocol}, connected in memory) that INIT, START and STOP services,
answer health questions, add, delete and query exceptions, and drop; hostile
connections that send random bytes, truncated, bit-flipped or replayed
copies of what the agents sent, oversize lengths and floods, and may never
read what they are sent; and the clock jumping by any amount. After every
step it checks that:

  - nothing failed unhandled: no failure, error or critical event logged,
    no exception out of C{dataReceived};
  - a connection's misbehaviour reaches only its own servers: what the
    registry and the director hold of every other host is the same before
    and after a hostile step (with a secret: of every host, its own too, as
    it holds no valid credential);
  - every connection's memory stays under its limits: buffered input,
    requests waiting for replies, exceptions installed, output queued for a
    peer that does not read;
  - an agent that behaves keeps its session, whatever else happens;
  - once everyone has left, nothing of them remains, and no timer.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from ipaddress import IPv4Address as IP

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.agent.protocol import SEFactory
from lvsfeedback.director.config import load_config
from lvsfeedback.director.registry import Registry
from lvsfeedback.director.service import GuardedNEFactory, necp_limits
from lvsfeedback.necp.framing import encode
from lvsfeedback.necp.messages import (
    ExceptionAdd,
    ExceptionDel,
    ExceptionQuery,
    ExceptionReset,
    Init,
    Keepalive,
    KeepaliveAck,
    Noop,
    Start,
    Stop,
)
from lvsfeedback.necp.session import RequestFailed
from lvsfeedback.necp.units import Answer, ExceptionRule, InstalledException, Service
from lvsfeedback.necp.wire import HEADER, MAX_MESSAGE_SIZE, Opcode
from lvsfeedback.testing.necp_link import Link
from tests.helpers.necp import SECRET, ConsumerTransport, TableHealth, decode_all

AGENT_HOSTS = ("10.0.0.2", "10.0.0.3", "10.0.0.4")  # one legitimate agent each
STRANGER_HOSTS = ("10.0.9.1", "10.0.9.2")  # 10.0.9.1 is a configured real server
OUTSIDE_HOST = "192.0.2.66"  # not in [director] allow
MAX_AGENTS = 6
MAX_EXCEPTIONS = 4
MAX_QUEUED_OUTPUT = 1024
MESSAGES_PER_TURN = 4
READ_SIZE = 65536  # the most one read from a TCP socket hands the protocol
SOCKET_BUFFER = 4096  # output the transport takes before it pauses the protocol

WEB = Service(3, 6, 80)
WEB_DR = Service(1, 6, 80)
DNS = Service(1, 17, 53)
UNCONFIGURED = Service(3, 6, 8080)
INVALID = Service(9, 6, 80)

CONFIG = """
[director]
max_agents = {max_agents}
allow = ["10.0.0.0/16"]

[necp]
max_exceptions_per_agent = {max_exceptions}
max_queued_output = {max_queued_output}

[[service]]
name = "web"
protocol = "tcp"
address = "192.0.2.1"
port = 80
{reals}
[[service]]
name = "dns"
protocol = "udp"
address = "192.0.2.1"
port = 53
{reals}
"""

services = st.sampled_from([WEB, WEB_DR, DNS, UNCONFIGURED, INVALID])
rules = st.builds(
    ExceptionRule,
    scope=st.integers(0, 3),
    ttl=st.sampled_from([0, 1, 5, 30]),
    source=st.sampled_from([IP("0.0.0.0"), IP("198.51.100.7")]),
    source_prefix=st.sampled_from([0, 24, 32, 33]),
    destination=st.just(IP("0.0.0.0")),
    destination_prefix=st.just(0),
    protocol=st.sampled_from([0, 6, 17]),
    port=st.integers(0, 3),
)
healths = st.integers(0, 100)


def agent_messages():
    """Requests as an agent (or someone posing as one) would send them."""
    request_ids = st.integers(0, 0xFFFF)
    return st.one_of(
        st.builds(Init, request_id=request_ids, authenticate=st.booleans(), receive_sequence=st.integers(0, 2**64 - 1)),
        st.builds(Start, request_id=request_ids, services=st.lists(services, max_size=4).map(tuple)),
        st.builds(Stop, request_id=request_ids, services=st.lists(services, max_size=4).map(tuple)),
        st.builds(Keepalive, request_id=request_ids),
        st.builds(
            KeepaliveAck,
            request_id=st.integers(0, 8),
            answers=st.lists(
                st.builds(Answer, st.just(1), st.sampled_from([6, 17]), st.sampled_from([80, 53]), healths), max_size=3
            ).map(tuple),
        ),
        st.builds(ExceptionAdd, request_id=request_ids, rules=st.lists(rules, max_size=8).map(tuple)),
        st.builds(ExceptionDel, request_id=request_ids, rules=st.lists(rules, max_size=4).map(tuple)),
        st.builds(ExceptionReset, request_id=request_ids),
        st.builds(ExceptionQuery, request_id=request_ids),
        st.builds(Noop, request_id=request_ids),
    )


@dataclass
class Hostile:
    """A connection from someone without the secret, who may never read."""

    protocol: object
    transport: ConsumerTransport
    reads: bool
    inbox: bytearray = field(default_factory=bytearray)  # written, not read by the director yet
    lost: bool = False


class PeerTransport(ConsumerTransport):
    """A socket whose peer may read what the director sends, or not."""

    buffer_size = SOCKET_BUFFER

    def read_everything(self):
        self.clear()
        if self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()


class DirectorFuzz(RuleBasedStateMachine):
    """See the module docstring; C{secret} is the director's, None for none."""

    secret: bytes | None = None

    def __init__(self, config):
        super().__init__()
        self.clock = Clock()
        self.clock.advance(1000)
        self.config = config
        self.registry = Registry(config, self.clock)
        self.director = GuardedNEFactory(
            self.registry,
            config.director.allow,
            max_agents=config.director.max_agents,
            clock=self.clock,
            secret=self.secret,
            random=lambda: 0.5,
            messages_per_turn=MESSAGES_PER_TURN,
            health_interval=config.director.health_interval,
            **necp_limits(config),
        )
        self.director.start_asking(1.0)
        self.links: dict[int, Link] = {}
        self.dropped: set[int] = set()  # agents whose link the test cut or closed
        self.health = {n: TableHealth({(6, 80): 100, (17, 53): 100}) for n in range(len(AGENT_HOSTS))}
        self.all_hostiles: list[Hostile] = []
        self.captured: list[bytes] = []  # every write of every agent, as a sniffer sees them
        self.ports = iter(range(40000, 60000))
        self.problems: list[str] = []
        globalLogPublisher.addObserver(self.observe)

    def observe(self, event):
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.problems.append(formatEvent(event))

    # Driving the world.

    def settle(self):
        """Run everything due now and deliver everything in flight, as the reactor would."""
        for _ in range(1000):
            moved = False
            for hostile in self.all_hostiles:
                moved |= self.deliver(hostile)
            for link in list(self.links.values()):
                moved |= self.pump(link)
            now = self.clock.seconds()
            if any(call.getTime() <= now for call in self.clock.getDelayedCalls()):
                self.clock.advance(0)
                moved = True
            if not moved:
                return
        raise AssertionError("the director never settles")

    def deliver(self, hostile: Hostile) -> bool:
        """Hand the director what a hostile peer wrote, a socket read at a time, while it reads."""
        moved = False
        transport = hostile.transport
        while hostile.inbox and not transport.disconnecting and transport.producerState == "producing":
            chunk = bytes(hostile.inbox[:READ_SIZE])
            del hostile.inbox[:READ_SIZE]
            hostile.protocol.dataReceived(chunk)
            moved = True
        if hostile.reads and transport.value():
            transport.read_everything()
            moved = True
        if transport.disconnecting and not hostile.lost:
            # The reactor reports a closed socket to its protocol.
            hostile.lost = True
            hostile.protocol.connectionLost(Failure(ConnectionDone()))
            moved = True
        return moved

    def pump(self, link: Link) -> bool:
        if link.cut:
            link.flush()  # what was in flight is lost
            return link.pump.pump(advanceClock=False)  # a closed end is still noticed
        return link.pump.flush(advanceClock=False)

    def elapse(self, seconds: float, step: float = 0.5):
        """Let time pass in steps, delivering everything between them."""
        target = self.clock.seconds() + seconds
        while self.clock.seconds() < target:
            self.clock.advance(min(step, target - self.clock.seconds()))
            self.settle()

    def handled(self, deferred):
        """A request of a legitimate agent: it may fail only because its connection went."""
        def unexpected(failure):
            if not failure.check(ConnectionDone, ConnectionLost, RequestFailed):
                self.problems.append(f"agent request failed: {failure.getTraceback()}")

        deferred.addErrback(unexpected)

    def agent(self, n: int):
        """Agent n's protocol if its session is up, else None."""
        link = self.links.get(n)
        if link is None or link.closed or not link.agent.established or link.cut:
            return None
        return link.agent

    # What the director knows, by host.

    def facts(self):
        """By host: its registry session, its servers' facts, its director session and exceptions."""
        facts: dict[str, list] = {}
        for session in self.registry.sessions:
            facts.setdefault(session.address, []).append(
                (session.handle, session.connected_at, dict(session.started), dict(session.health),
                 frozenset(session.stopped))
            )
        for service in self.config.services:
            for real in service.reals:
                facts.setdefault(real.dest_key.address, []).append(self.registry.facts(service, real.dest_key))
        for agent, started in self.director.agents().items():
            facts.setdefault(agent.host, []).append((agent, started, self.director.exceptions.rules(agent)))
        return facts

    def protected(self, host: str) -> set[str]:
        """The hosts a hostile step from C{host} must leave as they were."""
        everyone = set(self.facts()) | set(AGENT_HOSTS) | set(STRANGER_HOSTS)
        return everyone if self.secret is not None else everyone - {host}

    def hostile_step(self, hostile: Hostile, act):
        host = hostile.transport.getPeer().host
        before = self.facts()
        act()
        self.settle()
        after = self.facts()
        for other in sorted(self.protected(host)):
            assert before.get(other) == after.get(other), (
                f"a hostile step from {host} changed what is known of {other}:\n"
                f"before {before.get(other)}\nafter  {after.get(other)}"
            )

    # Legitimate agents.

    @precondition(lambda self: self.director.open_connections < MAX_AGENTS)
    @rule(n=st.integers(0, len(AGENT_HOSTS) - 1), started=st.sets(services, max_size=3))
    def agent_connects(self, n, started):
        link = self.links.get(n)
        if link is not None and not link.closed:
            return
        agent_factory = SEFactory(self.health[n], started, clock=self.clock, secret=self.secret, random=lambda: 0.5)
        link = Link(self.director, agent_factory, self.clock, host=AGENT_HOSTS[n], port=next(self.ports), greet=False)
        original = link.agent_side.write

        def sniffed(data):
            self.captured.append(data)
            original(data)

        link.agent_side.write = sniffed
        self.captured.extend(link.agent_side.stream)  # the INIT, written on connecting
        self.links[n] = link
        self.dropped.discard(n)
        self.settle()

    @rule(
        n=st.integers(0, len(AGENT_HOSTS) - 1),
        requests=st.lists(
            st.one_of(
                st.tuples(st.just("start"), st.lists(services, min_size=1, max_size=3)),
                st.tuples(st.just("stop"), st.lists(services, min_size=1, max_size=3)),
                st.tuples(st.just("add"), st.lists(rules, min_size=1, max_size=6)),
                st.tuples(st.just("delete"), st.lists(rules, min_size=1, max_size=3)),
                st.tuples(st.just("reset"), st.just(())),
                st.tuples(st.just("query"), st.just(())),
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def agent_requests(self, n, requests):
        """One or several requests in a row, before any reply arrives."""
        agent = self.agent(n)
        if agent is None:
            return
        calls = {
            "start": agent.start,
            "stop": agent.stop,
            "add": agent.add_exceptions,
            "delete": agent.delete_exceptions,
            "reset": lambda _: agent.reset_exceptions(),
            "query": lambda _: agent.query_exceptions(),
        }
        for kind, argument in requests:
            self.handled(calls[kind](argument))
        self.settle()

    @rule(n=st.integers(0, len(AGENT_HOSTS) - 1), port=st.sampled_from([(6, 80), (17, 53)]), health=healths)
    def agent_health_changes(self, n, port, health):
        self.health[n].table[port] = health

    @rule(n=st.integers(0, len(AGENT_HOSTS) - 1), silently=st.booleans())
    def agent_drops(self, n, silently):
        link = self.links.get(n)
        if link is None or link.closed:
            return
        self.dropped.add(n)
        if silently:
            link.cut = True  # nothing more gets through; the keepalives tell
        else:
            link.agent.transport.loseConnection()
        self.settle()

    # Hostile connections.

    def hostile(self, pick: int) -> Hostile | None:
        """One of the hostile connections still open, or None."""
        live = [hostile for hostile in self.all_hostiles if not hostile.lost]
        return live[pick % len(live)] if live else None

    def writes(self, hostile: Hostile, data: bytes):
        """A hostile step: C{hostile} writes C{data}, which the director reads as it will."""
        self.hostile_step(hostile, lambda: hostile.inbox.extend(data))

    @rule(
        host=st.sampled_from(AGENT_HOSTS + STRANGER_HOSTS + (OUTSIDE_HOST,)),
        reads=st.booleans(),
        opening=st.one_of(st.none(), st.integers(0, 10**6)),
        started=st.lists(services, max_size=3),
    )
    def hostile_connects(self, host, reads, opening, started):
        """
        Someone connects, and opens with nothing, or with an INIT (without a
        secret, its own and a START; with one, a captured agent's INIT).
        """
        if self.secret is None and host in AGENT_HOSTS:
            # Without a secret, anyone on an agent's host speaks for it by design.
            host = STRANGER_HOSTS[1]
        transport = PeerTransport(host=host, port=next(self.ports))
        before = self.facts()
        protocol = self.director.buildProtocol(transport.getPeer())
        assert self.facts() == before, "a connection changed what the director knows"
        if protocol is None:
            return  # refused at connect
        protocol.makeConnection(transport)
        hostile = Hostile(protocol, transport, reads)
        self.all_hostiles.append(hostile)
        if opening is None:
            return
        inits = [data for data in self.captured if HEADER.unpack_from(data)[3] == Opcode.INIT]
        if self.secret is None:
            self.writes(hostile, encode(Init(request_id=1)) + encode(Start(request_id=2, services=tuple(started))))
        elif inits:
            self.writes(hostile, inits[opening % len(inits)])

    @rule(
        pick=st.integers(0, 100),
        messages=st.lists(agent_messages(), min_size=1, max_size=4),
        wrong_secret=st.booleans(),
        copies=st.sampled_from([1, 1, 2, 50, 500]),
    )
    def hostile_sends_messages(self, pick, messages, wrong_secret, copies):
        """Well-formed requests without a valid credential, or a flood of them in one write."""
        hostile = self.hostile(pick)
        if hostile is None:
            return
        if wrong_secret:
            data = b"".join(encode(m, sequence=2**63 + i, secret=b"a guess") for i, m in enumerate(messages))
        else:
            data = b"".join(encode(m) for m in messages)
        self.writes(hostile, data * copies)

    @rule(pick=st.integers(0, 100), health=healths, extra=st.booleans())
    def hostile_answers(self, pick, health, extra):
        """
        Without a secret: answers the director's questions, perhaps with an
        answer to a question it was not asked.
        """
        hostile = self.hostile(pick)
        if hostile is None or self.secret is not None:
            return
        replies = []
        for message in decode_all(hostile.transport.value()):
            if type(message) is Keepalive:
                answers = [Answer(query.type, query.protocol, query.port, health) for query in message.queries]
                if extra:
                    answers.append(Answer(1, 6, 80, health))
                replies.append(encode(KeepaliveAck(request_id=message.request_id, answers=tuple(answers))))
        hostile.transport.read_everything()
        self.writes(hostile, b"".join(replies))

    @rule(
        pick=st.integers(0, 100),
        picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
        mangle=st.sampled_from(["replay", "truncate", "flip"]),
        where=st.integers(0, 10**6),
        copies=st.sampled_from([1, 1, 30]),
    )
    def hostile_replays(self, pick, picks, mangle, where, copies):
        """Copies of what the agents sent: as captured, cut short, or with a bit flipped."""
        hostile = self.hostile(pick)
        if hostile is None or not self.captured:
            return
        data = bytearray(b"".join(self.captured[n % len(self.captured)] for n in picks))
        if mangle == "truncate":
            del data[where % len(data):]
        elif mangle == "flip":
            data[where // 8 % len(data)] ^= 1 << where % 8
        self.writes(hostile, bytes(data) * copies)

    @rule(pick=st.integers(0, 100), data=st.binary(min_size=1, max_size=300))
    def hostile_sends_garbage(self, pick, data):
        hostile = self.hostile(pick)
        if hostile is not None:
            self.writes(hostile, data)

    @rule(
        pick=st.integers(0, 100),
        length=st.one_of(st.integers(MAX_MESSAGE_SIZE - 40, MAX_MESSAGE_SIZE + 40), st.integers(0, 2**32 - 1)),
        flags=st.integers(0, 0xFFFF),
        opcode=st.integers(0, 0xFF),
    )
    def hostile_claims_a_length(self, pick, length, flags, opcode):
        """A header announcing any payload length, followed by little or nothing."""
        hostile = self.hostile(pick)
        if hostile is not None:
            self.writes(hostile, HEADER.pack(0x414A, flags, 1, opcode, 1, 0, length) + bytes(min(length, 100)))

    @rule(pick=st.integers(0, 100))
    def hostile_reads(self, pick):
        hostile = self.hostile(pick)
        if hostile is not None:
            self.hostile_step(hostile, hostile.transport.read_everything)

    @rule(pick=st.integers(0, 100))
    def hostile_drops(self, pick):
        hostile = self.hostile(pick)
        if hostile is None:
            return

        def drop():
            hostile.lost = True
            hostile.protocol.connectionLost(Failure(ConnectionLost()))

        self.hostile_step(hostile, drop)

    # Time.

    @rule(seconds=st.one_of(st.sampled_from([0.5, 5.5, 10.0, 18.5, 60.0]), st.floats(0, 30)))
    def time_passes(self, seconds):
        self.elapse(seconds)

    # Invariants.

    @invariant()
    def nothing_failed_unhandled(self):
        assert not self.problems, "\n".join(self.problems)

    @invariant()
    def agents_that_behave_keep_their_sessions(self):
        for n, link in self.links.items():
            if n not in self.dropped:
                assert not link.closed, f"agent {n} lost its session: {link.director._closing}"
                assert link.director.agent in self.director.agents(), f"agent {n} is not up"

    @invariant()
    def every_connection_stays_within_its_limits(self):
        sessions = [h.protocol for h in self.all_hostiles if not h.lost]
        sessions += [link.director for link in self.links.values() if not link.closed]
        for session in sessions:
            assert session._decoder.buffered <= READ_SIZE + MAX_MESSAGE_SIZE, session._decoder.buffered
            assert session.state.requests_waiting <= self.director.max_unanswered, session.state.requests_waiting
            assert self.director.exceptions.count(session.agent) <= MAX_EXCEPTIONS
        for hostile in self.all_hostiles:
            queued = len(hostile.transport.value())
            assert queued <= SOCKET_BUFFER + MAX_MESSAGE_SIZE + MAX_QUEUED_OUTPUT, queued

    def teardown(self):
        """Everyone leaves: nothing of them, and no timer, may remain."""
        try:
            for link in self.links.values():
                if not link.closed:
                    link.agent.transport.loseConnection()
            for hostile in self.all_hostiles:
                if not hostile.lost:
                    hostile.lost = True
                    hostile.protocol.connectionLost(Failure(ConnectionDone()))
            self.settle()
            self.director.stop_asking()
            self.director.stopFactory()
            assert self.director.open_connections == 0
            assert self.director.agents() == {}
            assert self.director.exceptions.query(InstalledException()) == ()
            assert self.registry.sessions == []
            assert self.clock.getDelayedCalls() == [], self.clock.getDelayedCalls()
        finally:
            globalLogPublisher.removeObserver(self.observe)


class SecretDirectorFuzz(DirectorFuzz):
    secret = SECRET


# About ten seconds for both on these machines: it runs in every `make test`.
FUZZ = settings(max_examples=75, stateful_step_count=50, deadline=None)


class DirectorFuzzTests(SynchronousTestCase):
    def config(self):
        path = self.mktemp()
        reals = "".join(
            f'[[service.real]]\naddress = "{host}"\n' for host in AGENT_HOSTS + STRANGER_HOSTS[:1]
        )
        with open(path, "w") as file:
            file.write(textwrap.dedent(CONFIG.format(
                max_agents=MAX_AGENTS, max_exceptions=MAX_EXCEPTIONS, max_queued_output=MAX_QUEUED_OUTPUT,
                reals=reals,
            )))
        return load_config(path)

    def test_any_sequence_of_agents_and_strangers_keeps_the_director_sound(self):
        config = self.config()
        run_state_machine_as_test(lambda: DirectorFuzz(config), settings=FUZZ)

    def test_any_sequence_with_a_secret_keeps_the_director_sound(self):
        config = self.config()
        run_state_machine_as_test(lambda: SecretDirectorFuzz(config), settings=FUZZ)
