"""
The director's NECP path alone, per agent per round: one round of health
questions to N agents (NEFactory's rounds: build, encode, write, timers) and
their answers read back (decode, dispatch, report), in one process on
StringTransports: no sockets, no policy, a registry that does nothing.
The answers are encoded outside the timed part, as the agents would.
Prints the CPU microseconds per agent in the quickest round of all (the
machine is shared), how that splits between asking and reading, and the
median round. With --capacity, agents that announce capacity answers (as
lvs-agent does by default: each round then asks and answers two units, not
one) are measured too, alternating with draft-only ones, and the ratio given.

    .venv/bin/python bench/necp_director_round.py [--agents N] [--rounds R] [--repeat K] [--secret] [--capacity]
"""

from __future__ import annotations

import argparse
import hmac
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.selectreactor import SelectReactor  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from lvsfeedback.director.factory import NEFactory  # noqa: E402
from lvsfeedback.necp.auth import Authenticator  # noqa: E402
from lvsfeedback.necp.framing import Decoder, encode  # noqa: E402
from lvsfeedback.necp.messages import Init, Start  # noqa: E402
from lvsfeedback.necp.units import CAPACITY_QUERY, HEALTH_QUERY, Service  # noqa: E402
from lvsfeedback.necp.wire import CREDENTIAL_SIZE, HEADER, HEADER_SIZE, PROTOCOL_ID, UNIT, VERSION, Flag, Opcode  # noqa: E402

SECRET = b"benchmark shared secret"
SERVICE = Service(3, 6, 80)


class Quiet:
    """An events provider that takes every event and does nothing."""

    def agentUp(self, agent):
        pass

    def servicesStarted(self, agent, services):
        return ()

    def servicesStopped(self, agent, services):
        pass

    def healthReported(self, agent, service, health, when):
        pass

    def capacityReported(self, agent, service, milli_cpus, when):
        pass

    def exceptionAdded(self, agent, rule):
        pass

    def exceptionRemoved(self, agent, rule):
        pass

    def exceptionsReset(self, agent):
        pass

    def agentLost(self, agent, reason):
        pass


class ManualReactor(SelectReactor):
    """
    A real reactor's timers (its heap, its purge of cancelled calls) on a
    clock moved by hand, never run: task.Clock sorts every call on each
    callLater, which would swamp the figures with thousands of sessions.
    """

    now = 0.0

    def seconds(self) -> float:
        return self.now

    def advance(self, amount: float) -> None:
        self.now += amount
        self.runUntilCurrent()


class FakeAgent:
    """The agent's side of one session: what it sends, encoded, and what it reads of the director's."""

    def __init__(self, factory: NEFactory, number: int, secret: bytes | None, clock: ManualReactor, capacity: bool):
        host = f"127.0.{1 + number // 100}.{1 + number % 100}"
        self.session = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.session.makeConnection(self.transport)
        self.clock = clock
        self.sending = self.receiving = None
        self.capacity = capacity
        if secret is not None:
            self.sending, self.receiving = Authenticator(secret), Authenticator(secret)
            first = Authenticator.initial_sequence(clock.seconds())
            self.receiving.start_receiving(first)
            init = Init(request_id=1, authenticate=True, receive_sequence=first, answers_capacity=capacity)
            self.session.dataReceived(self.sending.encode(init, clock.seconds()))
        else:
            self.session.dataReceived(encode(Init(request_id=1, answers_capacity=capacity)))
        self.decoder = Decoder(self.receiving)
        (init_ack,) = self.read()
        if secret is not None:
            self.sending.start_sending(init_ack.receive_sequence)
        self.session.dataReceived(self.encode(Start(request_id=2, services=(SERVICE,))))
        clock.advance(0)  # the question asked on START
        self.answers(75)

    def encode(self, message) -> bytes:
        if self.sending is None:
            return encode(message)
        return self.sending.encode(message, self.clock.seconds())

    def read(self) -> list:
        self.decoder.feed(self.transport.value())
        self.transport.clear()
        found = []
        while (message := self.decoder.next_message()) is not None:
            found.append(message)
        return found

    def answers(self, health: int) -> bytes:
        """
        The answers to every question the director sent since the last
        read, made with struct and hmac alone: the figures are the
        director's, not the bench agent's use of the codec.
        """
        data, found = self.transport.value(), []
        self.transport.clear()
        offset = 0
        while offset < len(data):
            _, _, _, opcode, request_id, _, length = HEADER.unpack_from(data, offset)
            offset += HEADER_SIZE + length
            if opcode == Opcode.KEEPALIVE:
                found.append(self.answer(request_id, health))
        return b"".join(found)

    def answer(self, request_id: int, health: int) -> bytes:
        payload = UNIT.pack(HEALTH_QUERY, SERVICE.protocol, SERVICE.port, health, 0, 0, 0, 0)
        if self.capacity:  # half a CPU
            payload += UNIT.pack(CAPACITY_QUERY, SERVICE.protocol, SERVICE.port, 500, 0, 0, 0, 0)
        flags, length, sequence = Flag.BASIC_PAYLOAD, len(payload), 0
        if self.sending is not None:
            flags, length = flags | Flag.CREDENTIAL, length + CREDENTIAL_SIZE
            sequence = self.sending.next_sequence(self.clock.seconds())
        signed = HEADER.pack(PROTOCOL_ID, flags, VERSION, Opcode.KEEPALIVE_ACK, request_id, sequence, length) + payload
        return signed if self.sending is None else signed + hmac.digest(self.sending.secret, signed, "sha1")


def run(agents: int, rounds: int, secret: bytes | None, capacity: bool) -> list[tuple[float, float]]:
    """CPU seconds spent asking and reading, in each of C{rounds} rounds to C{agents} agents."""
    clock = ManualReactor()
    factory = NEFactory(Quiet(), clock=clock, secret=secret, health_interval=2.0)
    fleet = [FakeAgent(factory, number, secret, clock, capacity) for number in range(agents)]
    factory.start_asking(2.0)
    spent = []
    for round_number in range(rounds):
        started = time.process_time()
        clock.advance(2.0)  # the round, and any timer due
        asking = time.process_time() - started
        replies = [(agent.session, agent.answers(50 + round_number % 2)) for agent in fleet]
        started = time.process_time()
        for session, data in replies:
            session.dataReceived(data)
        spent.append((asking, time.process_time() - started))
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--secret", action="store_true", help="authenticated sessions")
    parser.add_argument("--capacity", action="store_true",
                        help="also agents that answer capacity, alternating with draft-only ones")
    options = parser.parse_args()
    secret = SECRET if options.secret else None
    kinds = (False, True) if options.capacity else (False,)
    spent: dict[bool, list] = {kind: [] for kind in kinds}
    for _ in range(options.repeat):
        for kind in kinds:
            spent[kind].extend(run(options.agents, options.rounds, secret, kind))
    per = 1e6 / options.agents
    best = {}
    for kind in kinds:
        rounds = sorted(spent[kind], key=sum)
        # The machine is shared: the quickest round is the least disturbed one; the median says how typical it is.
        fastest, median = rounds[0], rounds[len(rounds) // 2]
        best[kind] = sum(fastest)
        print(
            f"{'authenticated' if secret else 'plain'}{', answering capacity' if kind else ''}: "
            f"{sum(fastest) * per:.1f} us per agent per round at best "
            f"(asking {fastest[0] * per:.1f}, reading {fastest[1] * per:.1f}), median {sum(median) * per:.1f}; "
            f"{options.agents} agents, {len(rounds)} rounds"
        )
    if options.capacity:
        print(f"answering capacity costs {best[True] / best[False]:.2f}x the draft-only round at best")


if __name__ == "__main__":
    main()
