"""
The director under attack (issue #15): one row per attack.

A real `twistd lvs-director` (observe mode, on the host) with a secret file,
a control token, agents allowed from 127.0.1.0/24 only, health mode without
smoothing, hysteresis or slow start (a weight is base x health / 100 at the
next pass), and one service whose two real servers, 127.0.1.1 and
127.0.1.2, have legitimate authenticated agents reporting health 30 and 80
(bench/director_scale.py's agents' process). Each attack comes from an
attacker that speaks NECP with the project's sans-IO codec over plain
sockets, or HTTP to the status listener. During each attack and for a
moment after, /status.json is polled every 0.5 s and the director's RSS
sampled every 0.1 s.

Target per row: the director alive; both legitimate servers at weights 30
and 80 for reason "health", their reports never older than stale_after and
their sessions never replaced or lost; RSS never above twice its value
before the attack; no "Unhandled Error" or traceback in the director's log;
each offending connection closed or refused within 1 s of its offence,
where that applies; no more than max_queued_output queued in the
director's socket for a peer that does not read.

    .venv/bin/python bench/director_abuse.py [--attack NAME]... [--list] [--markdown]

Before each attack the bench checks the legitimate weights and, when an
earlier attack broke them, starts the agents (or the director) again.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import re
import resource
import select
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.director_scale import (  # noqa: E402
    AgentsProcess,
    agent_address,
    director_toml,
    listening,
    raise_file_limit,
    tail,
    wait_for,
)
from lvsfeedback.necp.auth import Authenticator  # noqa: E402
from lvsfeedback.necp.factory import HANDSHAKE_TIMEOUT, MAX_QUEUED_OUTPUT  # noqa: E402
from lvsfeedback.necp.framing import Decoder, encode  # noqa: E402
from lvsfeedback.necp.messages import (  # noqa: E402
    ErrorReply,
    ExceptionAdd,
    ExceptionQuery,
    Init,
    InitAck,
    Keepalive,
    Message,
    Start,
)
from lvsfeedback.necp.units import FORWARD_LAYER3, ExceptionRule, Service  # noqa: E402
from lvsfeedback.necp.wire import (  # noqa: E402
    CREDENTIAL_SIZE,
    HEADER,
    HEADER_SIZE,
    PROTOCOL_ID,
    Flag,
    NECPError,
    Opcode,
    describe_flags,
)
from lvsfeedback.testing.daemon import free_port  # noqa: E402

# The legitimate real servers, agent_address(0) and agent_address(1), and their health.
LEGITIMATE_HEALTH = (30, 80)
BASE_WEIGHT = 100  # director_toml's
ALLOW = "127.0.1.0/24"
ATTACKER = "127.0.1.50"  # allowed and authenticated, but no configured real server
STRANGER = "127.0.2.1"  # outside ALLOW
STALE_AFTER = 3.0  # [policy] stale_after: the director's own word for "too old"
UPDATE_INTERVAL = 1.0
HEALTH_INTERVAL = 1.0
POLL_INTERVAL = 0.5
RSS_INTERVAL = 0.1
AGENTS_UP_WITHIN = 15.0
AFTERMATH = 2.0  # seconds watched after an attack: its effects show at the next passes
CLOSE_WITHIN = 1.0  # an offending connection closed or refused within this long of its offence
RSS_FACTOR = 2.0
STATUS_TIMEOUT = 2.0
LOG_ERRORS = re.compile(r"Unhandled Error|Traceback")
SECRET = b"abuse-bench-shared-secret"
TOKEN = "abuse-bench-control-token"
# systemd's soft open-file limit for a service whose unit sets no LimitNOFILE.
SYSTEMD_DEFAULT_NOFILE = 1024


# The verdict: pure, from what was recorded ------------------------------------


@dataclass(frozen=True)
class ServerView:
    """One legitimate real server in one /status.json answer."""

    weight: int | None
    reason: str | None
    health_age: float | None  # seconds since its report; None: no report
    since: float | None  # when its agent's session began (a new session: replaced or lost)


@dataclass(frozen=True)
class Poll:
    at: float  # seconds since the attack began
    servers: dict[str, ServerView] | None  # None: /status.json did not answer


@dataclass
class Outcome:
    """What the attack itself saw."""

    what: str
    # Seconds from the offence to the connection's close or refusal; None where that does not apply.
    closed_in: float | None = None
    failure: str | None = None  # what the attack found wrong, in words


@dataclass
class Observation:
    polls: list[Poll]
    rss_kb: tuple[int, int, int]  # before, peak, after
    log_errors: int
    alive: bool
    log_lines: int = 0  # lines the director logged meanwhile


def legitimate_problems(polls: list[Poll], expected: dict[str, int], sessions: dict[str, float | None]) -> list[str]:
    """
    What went wrong for the legitimate servers, first occurrence of each
    kind: unanswered polls, a weight or reason other than expected, a
    report older than STALE_AFTER, a session other than the one before.
    """
    if not polls:
        return ["no /status.json poll during the attack"]
    problems: list[str] = []
    unanswered = [poll for poll in polls if poll.servers is None]
    if unanswered:
        problems.append(f"/status.json unanswered {len(unanswered)} of {len(polls)} polls "
                        f"(first at +{unanswered[0].at:.1f} s)")
    seen: set[tuple[str, str]] = set()

    def once(server: str, kind: str, text: str) -> None:
        if (server, kind) not in seen:
            seen.add((server, kind))
            problems.append(text)

    for poll in polls:
        if poll.servers is None:
            continue
        for server, weight in expected.items():
            view = poll.servers.get(server)
            if view is None:
                once(server, "missing", f"{server} missing at +{poll.at:.1f} s")
                continue
            if view.weight != weight or view.reason != "health":
                once(server, "weight", f"{server} weight {view.weight} ({view.reason}) at +{poll.at:.1f} s, not {weight}")
            if view.health_age is None or view.health_age > STALE_AFTER:
                age = "no report" if view.health_age is None else f"report {view.health_age:.1f} s old"
                once(server, "stale", f"{server} {age} at +{poll.at:.1f} s")
            if view.since != sessions.get(server):
                once(server, "session", f"{server} session replaced or lost at +{poll.at:.1f} s")
    return problems


def verdict(outcome: Outcome, observation: Observation, expected: dict[str, int],
            sessions: dict[str, float | None]) -> tuple[bool, str]:
    """Pass, or fail with every reason, for one attack."""
    reasons: list[str] = []
    if not observation.alive:
        reasons.append("director died")
    if outcome.failure:
        reasons.append(outcome.failure)
    if outcome.closed_in is not None and outcome.closed_in > CLOSE_WITHIN:
        reasons.append(f"closed or refused {outcome.closed_in:.1f} s after the offence (> {CLOSE_WITHIN:g} s)")
    reasons += legitimate_problems(observation.polls, expected, sessions)
    before, peak, _ = observation.rss_kb
    if before and peak > RSS_FACTOR * before:
        reasons.append(f"RSS peak {peak / 1024:.0f} MB > {RSS_FACTOR:g} x {before / 1024:.0f} MB")
    if observation.log_errors:
        reasons.append(f"{observation.log_errors} Unhandled Error/Traceback lines in the log")
    return (not reasons, "pass" if not reasons else "FAIL: " + "; ".join(reasons))


# The director and the legitimate agents ------------------------------------------


def legitimate_servers() -> dict[str, int]:
    """Server ("127.0.1.1:80") -> the weight its health should give."""
    return {f"{agent_address(number)}:80": BASE_WEIGHT * health // 100
            for number, health in enumerate(LEGITIMATE_HEALTH)}


def unit_file_limit() -> int:
    """The soft open-file limit the shipped systemd unit gives the director."""
    unit = (ROOT / "tap" / "lvs-director.service").read_text()
    match = re.search(r"^LimitNOFILE=(\d+)", unit, re.M)
    return int(match.group(1)) if match else SYSTEMD_DEFAULT_NOFILE


def abuse_config(necp_port: int, status_port: int) -> str:
    policy = (f'mode = "health"\nsmoothing_half_life = 0.0\nhysteresis = 0.0\nslow_start = 0.0\n'
              f"stale_after = {STALE_AFTER}\n")
    return director_toml(
        f"tcp:{necp_port}:interface=127.0.0.1:backlog=1024", 1, len(LEGITIMATE_HEALTH), observe=True,
        health_interval=HEALTH_INTERVAL, update_interval=UPDATE_INTERVAL, policy=policy,
        director=f'secret_file = "necp.secret"\nallow = ["{ALLOW}"]',
        # The shipped [status] listen's backlog (DEFAULT_STATUS_LISTEN), on a port of its own.
        status=f'listen = "tcp:{status_port}:interface=127.0.0.1:backlog=1024"\ntoken_file = "status.token"',
    )


class Director:
    """`twistd lvs-director` in observe mode, logging to a file of its own (never rotated)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        (workdir / "necp.secret").write_bytes(SECRET + b"\n")
        (workdir / "status.token").write_text(TOKEN + "\n")
        self.necp_port, self.status_port = free_port(), free_port()
        self.config = workdir / "director.toml"
        self.config.write_text(abuse_config(self.necp_port, self.status_port))
        self.log = workdir / f"director-{self.necp_port}.log"
        twistd = Path(sys.executable).parent / "twistd"
        limit = unit_file_limit()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.process = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "--logfile=-", "lvs-director", "--config", str(self.config), "--observe"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard)),
        )
        try:
            wait_for(lambda: self.process.poll() is not None or listening(self.status_port), 60,
                     "the director's status listener")
        except RuntimeError as error:
            raise RuntimeError(f"{error}; its log ends:\n{tail(self.log)}") from None
        if self.process.poll() is not None:
            raise RuntimeError(f"the director exited with status {self.process.returncode}:\n{tail(self.log)}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kb(self) -> int:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_lines_since(self, offset: int) -> list[str]:
        with open(self.log, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def read_status(port: int, timeout: float = STATUS_TIMEOUT) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=timeout) as answer:
            return json.load(answer)
    except (OSError, ValueError):
        return None


def server_views(document: dict) -> dict[str, ServerView]:
    views = {}
    for service in document["services"]:
        for server in service["servers"]:
            health = server["health"]
            views[server["server"]] = ServerView(
                server["desired_weight"], server["reason"], None if health is None else health["age"],
                server["agent"]["since"],
            )
    return views


class Cluster:
    """The director and the two legitimate agents, started again whenever an attack broke them."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.director: Director | None = None
        self.agents: AgentsProcess | None = None
        self.restarts = 0

    def agents_up(self) -> None:
        director = self.director
        self.agents = AgentsProcess(f"127.0.0.1:{director.necp_port}", 0, len(LEGITIMATE_HEALTH), 1, 5.0, 1.0, 100,
                                    self.workdir / "agents.log", secret_file=self.workdir / "necp.secret")
        # The agents connect once and never again: a director too busy to
        # answer their INIT in time leaves them waiting for nothing.
        if not select.select([self.agents.process.stdout], [], [], AGENTS_UP_WITHIN)[0]:
            raise RuntimeError(f"the legitimate agents were not up within {AGENTS_UP_WITHIN:g} s")
        self.agents.expect("up")
        for number, health in enumerate(LEGITIMATE_HEALTH):
            self.agents.ask(f"set {health} {number}", "set")

    def steady(self, timeout: float) -> dict[str, float | None] | None:
        """The legitimate sessions once both weights are as expected; None if not within timeout."""
        expected = legitimate_servers()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = read_status(self.director.status_port)
            if document is not None:
                views = server_views(document)
                poll = Poll(0.0, views)
                sessions = {server: views[server].since for server in expected if server in views}
                if not legitimate_problems([poll], expected, sessions):
                    return sessions
            time.sleep(POLL_INTERVAL)
        return None

    def ready(self) -> dict[str, float | None]:
        """
        Steady legitimate sessions: as they are, or with the agents started
        again, or (when the director is gone, or too busy to answer its
        status) with the director started again too.
        """
        director = self.director
        if director is not None and director.alive() and read_status(director.status_port) is not None:
            sessions = self.steady(3.0)
            if sessions is not None:
                return sessions
            self.restarts += 1
            self.stop_agents()
            try:
                self.agents_up()
                sessions = self.steady(15.0)
            except RuntimeError:
                sessions = None
            if sessions is not None:
                return sessions
        if self.director is not None:
            self.restarts += 1
        self.stop()
        self.director = Director(self.workdir)
        self.agents_up()
        sessions = self.steady(20.0)
        if sessions is None:
            raise RuntimeError(f"the legitimate weights never settled; the director's log ends:\n{tail(self.director.log)}")
        return sessions

    def stop_agents(self) -> None:
        if self.agents is not None:
            self.agents.stop()
            self.agents = None

    def stop(self) -> None:
        self.stop_agents()
        if self.director is not None:
            self.director.stop()
            self.director = None


class Watch:
    """Polls /status.json and samples the director's RSS from two threads while an attack runs."""

    def __init__(self, director: Director):
        self.director = director
        self.started = time.monotonic()
        self.polls: list[Poll] = []
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            document = read_status(self.director.status_port)
            self.polls.append(Poll(asked - self.started, None if document is None else server_views(document)))
            self._stop.wait(max(0.0, POLL_INTERVAL - (time.monotonic() - asked)))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss.append(self.director.rss_kb())
            self._stop.wait(RSS_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


# NECP from the attacker's side: the project's codec over plain sockets ------------


def connect(port: int, source: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """When the peer closed (reading and dropping what it sends); None if not within timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic()
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
        except socket.timeout:
            return None
    return None


def with_version(data: bytes, version: int, secret: bytes) -> bytes:
    """A signed message's bytes with another version byte, the credential computed anew."""
    header = bytearray(data[:HEADER_SIZE])
    header[4] = version  # HEADER: protocol id (2), flags (2), version (1), ...
    signed = bytes(header) + data[HEADER_SIZE:-CREDENTIAL_SIZE]
    return signed + Authenticator(secret).credential(signed)


class Session:
    """An authenticated NECP session the attacker opened, as an agent would."""

    def __init__(self, port: int, source: str = ATTACKER, secret: bytes = SECRET):
        self.sock = connect(port, source)
        self.secret = secret
        self.auth = Authenticator(secret)
        first = self.auth.initial_sequence(time.time())
        self.auth.start_receiving(first)
        self.decoder = Decoder(self.auth)
        self.request_id = 0
        self.sock.sendall(encode(Init(request_id=self._next_id(), authenticate=True, receive_sequence=first),
                                 sequence=self.auth.next_sequence(time.time()), secret=secret))
        reply = self.reply(Opcode.INIT_ACK, 5.0)
        if type(reply) is not InitAck:
            raise RuntimeError(f"the director refused the attacker's INIT: {reply}")
        self.auth.start_sending(reply.receive_sequence)

    def _next_id(self) -> int:
        self.request_id = self.request_id % 0xFFFF + 1
        return self.request_id

    def signed(self, message: Message) -> bytes:
        """The bytes of `message` with a fresh request id, the next sequence number and a credential."""
        return self.auth.encode(dataclasses.replace(message, request_id=self._next_id()), time.time())

    def send(self, message: Message) -> int:
        """Send `message`; its request id."""
        self.sock.sendall(self.signed(message))
        return self.request_id

    def messages(self, timeout: float):
        """Messages from the director until `timeout` passes without one; stops at the close."""
        while True:
            while (message := self._next_decoded()) is not None:
                yield message
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(1 << 20)
            except (socket.timeout, BlockingIOError):  # a timeout of 0 makes the socket non-blocking
                return
            except ConnectionResetError:
                data = b""
            if not data:
                raise ConnectionResetError("the director closed the session")
            self.decoder.feed(data)

    def _next_decoded(self) -> Message | None:
        try:
            return self.decoder.next_message()
        except NECPError as error:  # a refused reply is still a reply: keep its flags in view
            return ErrorReply(opcode=getattr(error, "opcode", 0), flags=getattr(error, "flags", 0))

    def reply(self, opcode: int, timeout: float) -> Message | None:
        """The director's next message with `opcode` (its error replies too); None if none within timeout."""
        deadline = time.monotonic() + timeout
        for message in self.messages(timeout):
            if message.opcode == opcode:
                return message
            if time.monotonic() > deadline:
                break
        return None

    def close(self) -> None:
        self.sock.close()


# The attacks -----------------------------------------------------------------------


@dataclass
class Target:
    necp_port: int
    status_port: int
    director: Director


@dataclass(frozen=True)
class Attack:
    name: str
    description: str
    run: Callable[[Target], Outcome]
    being_fixed: bool = False  # the findings other branches fix


ATTACKS: dict[str, Attack] = {}


def attack(name: str, description: str, *, being_fixed: bool = False):
    def register(function: Callable[[Target], Outcome]):
        ATTACKS[name] = Attack(name, description, function, being_fixed)
        return function

    return register


def handshake_offence(target: Target, send: Callable[[socket.socket], None]) -> Outcome:
    """A connection that never finishes INIT: closed at the handshake timeout, at the latest."""
    sock = connect(target.necp_port, ATTACKER)
    opened = time.monotonic()
    try:
        send(sock)
        closed = wait_closed(sock, HANDSHAKE_TIMEOUT + 3.0 - (time.monotonic() - opened))
    finally:
        sock.close()
    if closed is None:
        return Outcome(f"still open after {HANDSHAKE_TIMEOUT + 3.0:g} s",
                       failure=f"not closed at the {HANDSHAKE_TIMEOUT:g} s handshake timeout")
    return Outcome(f"closed after {closed - opened:.1f} s", closed_in=max(0.0, closed - opened - HANDSHAKE_TIMEOUT))


def closed_after_sending(target: Target, data: bytes, source: str = ATTACKER) -> Outcome:
    """Send `data` on a fresh connection: it must be closed within CLOSE_WITHIN of it."""
    sock = connect(target.necp_port, source)
    try:
        sent = time.monotonic()
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return Outcome("closed while sending", closed_in=time.monotonic() - sent)
        closed = wait_closed(sock, 5.0)
    finally:
        sock.close()
    if closed is None:
        return Outcome("still open 5 s later", failure="not closed")
    return Outcome(f"closed after {closed - sent:.2f} s", closed_in=closed - sent)


def agent_init(secret: bytes = SECRET) -> bytes:
    """An authenticated INIT, as an agent's first message."""
    auth = Authenticator(secret)
    first = auth.initial_sequence(time.time())
    return auth.encode(Init(request_id=1, authenticate=True, receive_sequence=first), time.time())


@attack("silent", "connect, send nothing (pre-INIT timeout)")
def silent(target: Target) -> Outcome:
    return handshake_offence(target, lambda sock: None)


@attack("slowloris", "an INIT one byte every 0.2 s")
def slowloris(target: Target) -> Outcome:
    def trickle(sock: socket.socket) -> None:
        for byte in agent_init():
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.2)

    # The trickle (76 bytes, 15 s) outlasts the handshake timeout: it runs
    # beside wait_closed, which sees the close that interrupts it.
    return handshake_offence(target, lambda sock: threading.Thread(target=trickle, args=(sock,), daemon=True).start())


@attack("garbage", "4 KiB of random bytes instead of a header")
def garbage(target: Target) -> Outcome:
    data = bytearray(os.urandom(4096))
    if int.from_bytes(data[:2], "big") == PROTOCOL_ID:
        data[0] ^= 0xFF
    return closed_after_sending(target, bytes(data))


@attack("oversize", "a header announcing a 4 GiB payload")
def oversize(target: Target) -> Outcome:
    header = HEADER.pack(PROTOCOL_ID, int(Flag.BASIC_PAYLOAD), 1, Opcode.INIT, 1, 0, 0xFFFFFFFF)
    return closed_after_sending(target, header)


@attack("bad-version", "an authenticated INIT of NECP version 2")
def bad_version(target: Target) -> Outcome:
    return closed_after_sending(target, with_version(agent_init(), 2, SECRET))


@attack("wrong-secret", "an INIT signed with another secret")
def wrong_secret(target: Target) -> Outcome:
    return closed_after_sending(target, agent_init(b"not the director's secret"))


@attack("stranger", f"a valid INIT from {STRANGER}, outside allow {ALLOW}")
def stranger(target: Target) -> Outcome:
    return closed_after_sending(target, agent_init(), source=STRANGER)


def refused_in_session(target: Target, offend: Callable[[Session], bytes], expected_flag: Flag) -> Outcome:
    """
    An authenticated session sends one offending message: the director must
    answer it with an error carrying `expected_flag` (or close), and a
    well-formed KEEPALIVE afterwards still be answered.
    """
    session = Session(target.necp_port)
    try:
        session.send(Keepalive())
        if session.reply(Opcode.KEEPALIVE_ACK, 2.0) is None:
            return Outcome("no answer to a first KEEPALIVE", failure="the session did not work")
        data = offend(session)
        sent = time.monotonic()
        session.sock.sendall(data)
        try:
            reply = session.reply(Opcode.KEEPALIVE_ACK, 2.0)
        except ConnectionResetError:
            return Outcome(f"closed after {time.monotonic() - sent:.2f} s", closed_in=time.monotonic() - sent)
        answered = time.monotonic() - sent
        if reply is None:
            return Outcome("no answer in 2 s", failure="neither refused nor closed")
        if type(reply) is not ErrorReply:
            return Outcome("answered KEEPALIVE_ACK", failure="the offending message was accepted")
        flags = describe_flags(reply.flags)
        if not reply.flags & expected_flag:
            return Outcome(f"refused ({flags})", closed_in=answered,
                           failure=f"refused without {describe_flags(expected_flag)}")
        session.send(Keepalive())
        goes_on = session.reply(Opcode.KEEPALIVE_ACK, 2.0) is not None
        return Outcome(f"refused ({flags}) in {answered:.3f} s; session {'goes on' if goes_on else 'ended'}",
                       closed_in=answered)
    finally:
        session.close()


@attack("replay", "a KEEPALIVE sent again byte for byte in a live session")
def replay(target: Target) -> Outcome:
    def offend(session: Session) -> bytes:
        data = session.signed(Keepalive())
        session.sock.sendall(data)
        session.reply(Opcode.KEEPALIVE_ACK, 2.0)
        return data

    return refused_in_session(target, offend, Flag.BAD_SEQUENCE)


@attack("lower-sequence", "a KEEPALIVE signed with a sequence number below the last one")
def lower_sequence(target: Target) -> Outcome:
    def offend(session: Session) -> bytes:
        ahead = session.auth.next_sequence(time.time()) + 10
        session.sock.sendall(encode(Keepalive(request_id=session._next_id()), sequence=ahead, secret=SECRET))
        session.reply(Opcode.KEEPALIVE_ACK, 2.0)
        return encode(Keepalive(request_id=session._next_id()), sequence=ahead - 5, secret=SECRET)

    return refused_in_session(target, offend, Flag.BAD_SEQUENCE)


@attack("cleared-auth", "a KEEPALIVE without credential in an authenticated session")
def cleared_auth(target: Target) -> Outcome:
    return refused_in_session(target, lambda session: encode(Keepalive(request_id=session._next_id())),
                              Flag.AUTH_REQUIRED)


@attack("keepalive-flood", "10,000 KEEPALIVEs a second for 3 s, answers read")
def keepalive_flood(target: Target) -> Outcome:
    rate, seconds, batch = 10_000, 3.0, 100
    session = Session(target.necp_port)
    sent = answered = refused = 0
    # Signed beforehand, so that the bench's own Python keeps the rate.
    batches = [b"".join(session.signed(Keepalive()) for _ in range(batch)) for _ in range(int(rate * seconds) // batch)]
    try:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds and batches:
            if sent < rate * elapsed:
                session.sock.settimeout(2.0)
                session.sock.sendall(batches.pop(0))
                sent += batch
            for message in session.messages(0.0):
                answered += message.opcode == Opcode.KEEPALIVE_ACK
                refused += type(message) is ErrorReply
        for message in session.messages(2.0):
            answered += message.opcode == Opcode.KEEPALIVE_ACK
            refused += type(message) is ErrorReply
            if answered >= sent:
                break
    except ConnectionResetError:
        return Outcome(f"closed after {sent:,} sent, {answered:,} answered")
    finally:
        session.close()
    return Outcome(f"{sent:,} sent ({sent / seconds:,.0f}/s), {answered:,} answered ({refused:,} refused)")


@attack("status-flood", "1,000 concurrent GET /status.json")
def status_flood(target: Target) -> Outcome:
    count, timeout = 1000, 15.0
    selector = selectors.DefaultSelector()
    request = f"GET /status.json HTTP/1.0\r\nHost: 127.0.0.1:{target.status_port}\r\n\r\n".encode()
    answers: dict[socket.socket, bytearray] = {}
    failed = 0
    started = time.monotonic()
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", target.status_port))
        selector.register(sock, selectors.EVENT_WRITE)
        answers[sock] = bytearray()
    done = 0
    while done < count and time.monotonic() - started < timeout:
        for key, events in selector.select(0.5):
            sock = key.fileobj
            try:
                if events & selectors.EVENT_WRITE:
                    sock.send(request)
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(1 << 16)
            except OSError:
                data, failed = b"", failed + 1
            if data:
                answers[sock] += data
            else:
                selector.unregister(sock)
                done += 1
    ok = sum(1 for answer in answers.values() if answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"))
    elapsed = time.monotonic() - started
    for sock in answers:
        sock.close()
    what = f"answered {ok:,} of {count:,} in {elapsed:.1f} s"
    return Outcome(what, failure=None if ok == count else f"{count - ok:,} requests unanswered")


@attack("replayed-init", "a captured agent INIT replayed from 127.0.1.1 every 2 s, 3 times", being_fixed=True)
def replayed_init(target: Target) -> Outcome:
    captured = captured_agent_init()
    sockets, acks = [], 0
    try:
        for round_ in range(3):
            if round_:
                time.sleep(2.0)
            sock = connect(target.necp_port, agent_address(0))
            sockets.append(sock)
            sock.sendall(captured)
            # The director answers with its own sequence numbers: accept any.
            decoder = Decoder(Authenticator(SECRET))
            sock.settimeout(1.0)
            try:
                decoder.feed(sock.recv(65536))
                acks += type(decoder.next_message()) is InitAck
            except (OSError, NECPError):
                pass
        time.sleep(1.0)
    finally:
        for sock in sockets:
            sock.close()
    return Outcome(f"INIT_ACK to {acks} of 3 replays")


def captured_agent_init() -> bytes:
    """
    The first bytes a real agent (the project's SEProtocol, with the shared
    secret) sends a director: what an eavesdropper on the agent's network
    would capture.
    """
    from twisted.internet.address import IPv4Address as TwistedAddress
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from lvsfeedback.agent.protocol import SEFactory

    class Health:
        def health(self, protocol, port):
            return LEGITIMATE_HEALTH[0]

    clock = Clock()
    clock.advance(time.time())
    factory = SEFactory(Health(), {Service(FORWARD_LAYER3, socket.IPPROTO_TCP, 80)}, clock=clock, secret=SECRET)
    agent = factory.buildProtocol(TwistedAddress("TCP", "127.0.0.1", 3262))
    transport = StringTransport(hostAddress=TwistedAddress("TCP", agent_address(0), 40000),
                                peerAddress=TwistedAddress("TCP", "127.0.0.1", 3262))
    agent.makeConnection(transport)
    return transport.value()


def exception_rules(count: int, offset: int = 0) -> list[ExceptionRule]:
    """`count` distinct exceptions: one source address each."""
    return [ExceptionRule(source=IPv4Address(0x0A000000 + offset + n), source_prefix=32) for n in range(count)]


@attack("exception-query-flood", "2,000 exceptions, then 1,000 EXCEPTION_QUERY in one write, answers never read",
        being_fixed=True)
def exception_query_flood(target: Target) -> Outcome:
    # What counts is what the director holds while the attacker does not
    # read: its socket's send queue (RSS covers its own buffers). Once the
    # attacker reads, the director goes on answering: that output is paced
    # by the reader, not queued.
    hold = 5.0
    session = Session(target.necp_port)
    try:
        rules = exception_rules(2000)
        session.send(ExceptionAdd(rules=tuple(rules)))
        reply = session.reply(Opcode.EXCEPTION_ADD_ACK, 5.0)
        refused = len(reply.units) if type(reply) is ErrorReply else 0 if reply is not None else len(rules)
        session.sock.sendall(b"".join(session.signed(ExceptionQuery()) for _ in range(1000)))
        time.sleep(hold)
        queued = director_send_queue(Path("/proc/net/tcp").read_text(), target.necp_port,
                                     session.sock.getsockname())
        unread = struct.unpack("i", fcntl.ioctl(session.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        received, closed = drain(session.sock, 100 << 20, 5.0)
    finally:
        session.close()
    if queued is None:
        return Outcome("the director's socket was not found in /proc/net/tcp", failure="the attack could not measure")
    what = (f"{len(rules) - refused:,} of {len(rules):,} exceptions installed; after {hold:g} s unread, "
            f"{queued / 1024:,.0f} KiB queued at the director ({unread / 1024:,.0f} KiB in the attacker's "
            f"receive buffer); then {received / 2**20:.1f} MB of answers as it read, "
            f"{'then closed' if closed else 'still open'}")
    failure = (f"output unbounded: {queued / 1024:,.0f} KiB queued at the director "
               f"(max_queued_output {MAX_QUEUED_OUTPUT / 1024:,.0f} KiB)" if queued > MAX_QUEUED_OUTPUT else None)
    return Outcome(what, failure=failure)


def director_send_queue(table: str, port: int, peer: tuple[str, int]) -> int | None:
    """
    The bytes the director's socket on `port` holds for `peer` (host, port),
    written and not yet acknowledged, from the text of /proc/net/tcp; None
    when no such socket is listed.
    """
    def address(host: str, number: int) -> str:
        return f"{int.from_bytes(IPv4Address(host).packed, 'little'):08X}:{number:04X}"

    local, remote = address("127.0.0.1", port), address(*peer)
    for line in table.splitlines()[1:]:
        fields = line.split()
        if fields[1:3] == [local, remote]:
            return int(fields[4].split(":")[0], 16)
    return None


def drain(sock: socket.socket, most: int, timeout: float) -> tuple[int, bool]:
    """Read up to `most` bytes until `timeout` passes without data: (bytes read, closed by the peer)."""
    received = 0
    sock.settimeout(1.0)
    deadline = time.monotonic() + timeout
    while received < most and time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            return received, False
        except ConnectionResetError:
            return received, True
        if not data:
            return received, True
        received += len(data)
    return received, False


@attack("exceptions-50k", "50,000 exceptions from one agent, 2,000 a message", being_fixed=True)
def exceptions_50k(target: Target) -> Outcome:
    total, per_message = 50_000, 2000
    session = Session(target.necp_port)
    accepted = refused = 0
    try:
        for offset in range(0, total, per_message):
            session.send(ExceptionAdd(rules=tuple(exception_rules(per_message, offset))))
            reply = session.reply(Opcode.EXCEPTION_ADD_ACK, 5.0)
            if reply is None:
                return Outcome(f"no answer after {accepted:,} accepted", failure="an EXCEPTION_ADD went unanswered")
            failed = len(reply.units) if type(reply) is ErrorReply else 0
            if type(reply) is ErrorReply and not reply.units:
                failed = per_message
            accepted += per_message - failed
            refused += failed
    except ConnectionResetError:
        return Outcome(f"closed after {accepted:,} accepted, {refused:,} refused")
    finally:
        session.close()
    what = f"{accepted:,} accepted, {refused:,} refused"
    return Outcome(what, failure=None if refused else f"all {total:,} accepted: no limit")


@attack("idle-connections", "2,000 idle connections at 1,000/s, held 3 s", being_fixed=True)
def idle_connections(target: Target) -> Outcome:
    count, rate, hold = 2000, 1000, 3.0
    sockets: list[socket.socket] = []
    refused = 0
    started = time.monotonic()
    try:
        for number in range(count):
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                sockets.append(connect(target.necp_port, ATTACKER, timeout=1.0))
            except OSError:
                refused += 1
        # Meanwhile a newcomer with the secret must still get its session.
        probe = time.monotonic()
        try:
            Session(target.necp_port, source="127.0.1.60").close()
            newcomer = f"a new agent's INIT answered in {time.monotonic() - probe:.2f} s"
            failure = None
        except (OSError, RuntimeError, ConnectionResetError) as error:
            newcomer, failure = f"a new agent refused ({error})", "a legitimate newcomer was refused"
        time.sleep(hold)
        closed_by_director = sum(1 for sock in sockets if is_closed(sock))
    finally:
        for sock in sockets:
            sock.close()
    return Outcome(f"{len(sockets):,} opened, {refused:,} refused at connect, {closed_by_director:,} closed by "
                   f"the director; {newcomer}", failure=failure)


def is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@attack("refused-start", "a START of 2,000 services no real server here provides", being_fixed=True)
def refused_start(target: Target) -> Outcome:
    most_lines = 3
    session = Session(target.necp_port)
    try:
        session.send(Keepalive())
        session.reply(Opcode.KEEPALIVE_ACK, 2.0)
        time.sleep(0.5)  # the session's own lines ("agent ... up") are in before counting
        offset = target.director.log_size()
        session.send(Start(services=tuple(Service(FORWARD_LAYER3, socket.IPPROTO_TCP, 1000 + n) for n in range(2000))))
        reply = session.reply(Opcode.START_ACK, 5.0)
        time.sleep(0.5)
        added = len(target.director.log_lines_since(offset))
    finally:
        session.close()
    refused = len(reply.units) if type(reply) is ErrorReply else 0
    what = f"{refused:,} of 2,000 refused; the log grew by {added:,} lines"
    return Outcome(what, failure=f"the log grew by {added:,} lines (> {most_lines})" if added > most_lines else None)


def post_drain(target: Target, token: str | None) -> Outcome:
    """POST 50 MB to /control/drain: the answer must come on the headers, before the body is read."""
    size, chunk = 50 << 20, b"\0" * (1 << 16)
    sock = socket.create_connection(("127.0.0.1", target.status_port), timeout=5.0)
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (f"POST /control/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n{authorization}\r\n").encode()
    answer = bytearray()
    sent = 0
    try:
        sock.sendall(head)
        headers_sent = time.monotonic()
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = headers_sent + 20.0
        answered_at = None
        while time.monotonic() < deadline and answered_at is None:
            events = selector.select(0.5)
            if not events and sent >= size:
                continue
            for _, mask in events:
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    answer += data
                    answered_at = time.monotonic()
                    break
                if mask & selectors.EVENT_WRITE and sent < size:
                    try:
                        sent += sock.send(chunk[: size - sent])
                    except OSError:
                        answered_at = time.monotonic()
                        break
            if sent >= size:
                selector.modify(sock, selectors.EVENT_READ)
    finally:
        sock.close()
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "connection closed"
    if answered_at is None:
        return Outcome(f"no answer in 20 s ({sent / 2**20:.0f} MB sent)", failure="no answer")
    delay = answered_at - headers_sent
    what = f"{status} after {delay:.2f} s, {sent / 2**20:.1f} of {size >> 20} MB sent"
    failure = "answered only after the whole body" if sent >= size else None
    return Outcome(what, closed_in=delay, failure=failure)


@attack("drain-50mb", "POST /control/drain with a 50 MB body, no token", being_fixed=True)
def drain_50mb(target: Target) -> Outcome:
    return post_drain(target, None)


@attack("drain-50mb-token", "POST /control/drain with a 50 MB body and the right token", being_fixed=True)
def drain_50mb_token(target: Target) -> Outcome:
    return post_drain(target, TOKEN)


# Running and reporting -------------------------------------------------------------


@dataclass
class Row:
    attack: Attack
    outcome: Outcome
    observation: Observation
    sessions: dict[str, float | None]  # the legitimate sessions before the attack
    passed: bool
    verdict: str
    seconds: float


def run_attack(cluster: Cluster, chosen: Attack) -> Row:
    sessions = cluster.ready()
    director = cluster.director
    target = Target(director.necp_port, director.status_port, director)
    offset = director.log_size()
    before = director.rss_kb()
    started = time.monotonic()
    watch = Watch(director)
    try:
        outcome = chosen.run(target)
    except Exception as error:  # the attack could not be carried out: a row that says so
        outcome = Outcome(f"attack failed: {type(error).__name__}: {error}", failure="the attack could not run")
    time.sleep(AFTERMATH)
    watch.stop()
    seconds = time.monotonic() - started
    logged = director.log_lines_since(offset)
    errors = sum(1 for line in logged if LOG_ERRORS.search(line))
    observation = Observation(watch.polls, (before, max(watch.rss + [before]), director.rss_kb()), errors,
                              director.alive(), len(logged))
    passed, text = verdict(outcome, observation, legitimate_servers(), sessions)
    return Row(chosen, outcome, observation, sessions, passed, text, seconds)


COLUMNS = ("attack", "what happened", "alive", "legitimate 30/80", "RSS MB before/peak/after",
           "errors in log (lines logged)",
           "closed/refused in", "verdict")


def row_cells(row: Row) -> list[str]:
    observation = row.observation
    broken = legitimate_problems(observation.polls, legitimate_servers(), row.sessions)
    before, peak, after = observation.rss_kb
    closed = row.outcome.closed_in
    return [
        row.attack.name,
        row.outcome.what,
        "yes" if observation.alive else "NO",
        f"held ({len(observation.polls)} polls)" if not broken else "BROKEN",
        f"{before / 1024:.0f}/{peak / 1024:.0f}/{after / 1024:.0f}",
        f"{observation.log_errors} ({observation.log_lines:,})",
        "-" if closed is None else f"{closed:.2f} s",
        row.verdict,
    ]


def print_table(rows: list[Row], markdown: bool) -> None:
    table = [list(COLUMNS)] + [row_cells(row) for row in rows]
    if markdown:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for cells in table[1:]:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return
    for cells in table[1:]:
        print()
        for name, cell in zip(COLUMNS, cells):
            print(f"  {name:>26}: {cell}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", action="append", choices=list(ATTACKS), help="repeatable; default: all")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for chosen in ATTACKS.values():
            print(f"{chosen.name:24} {chosen.description}{' (being fixed, #15)' if chosen.being_fixed else ''}")
        return 0
    raise_file_limit()
    workdir = Path(tempfile.mkdtemp(prefix="lvsbench-abuse-"))
    cluster = Cluster(workdir)
    rows: list[Row] = []
    started = time.monotonic()
    print(f"director_abuse: {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.uname().release}, "
          f"load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}; "
          f"director open-file limit {unit_file_limit()} (tap/lvs-director.service); work in {workdir}", flush=True)
    try:
        for name in args.attack or list(ATTACKS):
            row = run_attack(cluster, ATTACKS[name])
            rows.append(row)
            print(f"{name}: {row.verdict} ({row.seconds:.1f} s)", file=sys.stderr, flush=True)
    finally:
        cluster.stop()
    print_table(rows, args.markdown)
    passed = sum(row.passed for row in rows)
    print(f"\n{passed} of {len(rows)} attacks pass; {time.monotonic() - started:.0f} s; "
          f"the legitimate agents (or the director too) started again {cluster.restarts} times")
    if passed == len(rows):
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"the logs are kept in {workdir}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
