"""
NECP codec throughput: encode + decode of KEEPALIVE / KEEPALIVE_ACK pairs,
each carrying four health queries (answers), with and without the
HMAC-SHA1 credential. One message is fed to the decoder at a time, as on a
live connection. Prints messages per second on one core.

    .venv/bin/python bench/necp_codec.py [--pairs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import time

from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.framing import Decoder, encode
from lvsfeedback.necp.messages import Keepalive, KeepaliveAck
from lvsfeedback.necp.units import Answer, Query

SERVICES = ((6, 80), (6, 443), (17, 53), (6, 8080))


def _messages():
    queries = tuple(Query.health(protocol, port) for protocol, port in SERVICES)
    answers = tuple(Answer(query.type, query.protocol, query.port, 75) for query in queries)
    return queries, answers


def run_plain(pairs: int) -> float:
    """Seconds taken to encode and decode C{pairs} pairs without authentication."""
    queries, answers = _messages()
    at_agent, at_director = Decoder(), Decoder()
    started = time.perf_counter()
    for request_id in range(pairs):
        request_id &= 0xFFFF
        at_agent.feed(encode(Keepalive(request_id=request_id, queries=queries)))
        request = at_agent.next_message()
        at_director.feed(encode(KeepaliveAck(request_id=request.request_id, answers=answers)))
        reply = at_director.next_message()
    elapsed = time.perf_counter() - started
    assert reply.answers == answers
    return elapsed


def run_authenticated(pairs: int) -> float:
    """Seconds taken to encode and decode C{pairs} pairs, each message signed and checked."""
    queries, answers = _messages()
    secret = b"benchmark shared secret"
    director_sends, agent_receives = Authenticator(secret), Authenticator(secret)
    agent_sends, director_receives = Authenticator(secret), Authenticator(secret)
    for sender, receiver in ((director_sends, agent_receives), (agent_sends, director_receives)):
        first = Authenticator.initial_sequence(time.time())
        sender.start_sending(first)
        receiver.start_receiving(first)
    at_agent, at_director = Decoder(agent_receives), Decoder(director_receives)
    now = time.time
    started = time.perf_counter()
    for request_id in range(pairs):
        request_id &= 0xFFFF
        at_agent.feed(director_sends.encode(Keepalive(request_id=request_id, queries=queries), now()))
        request = at_agent.next_message()
        reply = KeepaliveAck(request_id=request.request_id, answers=answers)
        at_director.feed(agent_sends.encode(reply, now()))
        reply = at_director.next_message()
    elapsed = time.perf_counter() - started
    assert reply.answers == answers
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50_000, help="pairs per round")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    options = parser.parse_args()
    for name, run in (("plain", run_plain), ("authenticated", run_authenticated)):
        best = min(run(options.pairs) for _ in range(options.rounds))
        messages = 2 * options.pairs
        print(
            f"{name:>13}: {messages / best:>9,.0f} messages/s "
            f"({best / messages * 1e6:.2f} us per message encoded and decoded)"
        )


if __name__ == "__main__":
    main()
