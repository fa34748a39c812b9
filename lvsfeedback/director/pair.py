"""
A director in a pair: its VRRP state, and while it stands by, the master's
weights to follow.

keepalived moves the virtual address and calls tap/vrrp-notify on each
change, which writes ``STATE PRIORITY`` to ``[pair] vrrp_state_file``
(written aside, then renamed). Both directors run the policy and write their
own kernel, so the backup's table is warm; but capacity mode learns from the
kernel's packet counters, and the backup sees no packets. So while it
stands by (BACKUP, or FAULT: the pair's guard against split brain,
director/pair_guard.py, holds a director that does not have the address in
FAULT while its peer has it) a director follows the master: `PairFollower`
fetches the master's
``/pair/desired.json`` (`desired_document`) once per update interval, just
ahead of the pass, and the updater hands each weight to the policy as
`ServerInput.followed`. The weights are those the master's kernel holds,
not those its policy wanted: hysteresis keeps the two apart by up to a
tenth, and a backup whose table held the wanted ones would move the traffic
at the takeover (in the simulator, two equal servers' weights then swung
apart by 12 % at the median, #17). The policy remembers each as capacity
mode's target, so the first pass after a takeover starts from the old
master's table. Any other state (MASTER, STOP, or no readable file: unknown)
runs the director's own policy, as does a director standing by whose peer's
answers fail, go stale, or come from a peer that stands by too (two
backups following each other would freeze the weights).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer

from lvsfeedback.director.config import IReconfigurable, PairSettings
from lvsfeedback.director.vrrp import STANDING_BY, VRRPReading, VRRPState, read_vrrp_state
from lvsfeedback.ipvs.model import MAX_WEIGHT, DestKey
from lvsfeedback.quiet_http import quiet_agent

DESIRED_PATH = "/pair/desired.json"
# A thousand services of ten thousand servers take about 1 MiB of JSON.
MAX_DESIRED_BODY = 4 * 1024 * 1024


# The peer endpoint's document ---------------------------------------------------


def desired_document(last, vrrp_state: VRRPState) -> dict[str, Any]:
    """
    /pair/desired.json: the weight every real server the last pass (a
    `PassResult`, or None) decided on has in this director's kernel after
    that pass's writes (the one it decided when the kernel does not have
    the server: a refused write; 0 when removed), with the reason, by service
    name, for a backup to follow.
    """
    services: dict[str, Any] = {}
    if last is not None:
        for service_pass in last.services.values():
            if service_pass.decision is None:
                continue
            services[service_pass.service.name] = {
                "virtual_service": str(service_pass.service.key),
                "servers": [
                    {
                        "address": dest.address,
                        "port": dest.port,
                        "weight": 0 if decision.remove else service_pass.written.get(dest, decision.weight),
                        "reason": str(decision.reason),
                    }
                    for dest, decision in service_pass.decision.servers.items()
                ],
            }
    return {"vrrp_state": str(vrrp_state), "time": None if last is None else last.time, "services": services}


@dataclass(frozen=True)
class Desired:
    """A peer's answer, checked: its state, its pass's time, and the weights by (service name, server)."""

    vrrp_state: str
    time: float
    weights: Mapping[tuple[str, DestKey], int]


def parse_desired(body: bytes) -> Desired:
    """The peer's /pair/desired.json, every value checked; ValueError naming the first wrong one."""
    document = json.loads(body)
    _expect(isinstance(document, dict), "the document is not a JSON object")
    state, time, services = document.get("vrrp_state"), document.get("time"), document.get("services")
    _expect(isinstance(state, str), '"vrrp_state" is not a string')
    _expect(_is_number(time), '"time" is not a number (has the peer made a pass yet?)')
    _expect(isinstance(services, dict), '"services" is not an object')
    weights: dict[tuple[str, DestKey], int] = {}
    for name, service in services.items():
        servers = service.get("servers") if isinstance(service, dict) else None
        _expect(isinstance(servers, list), f"service {name!r}: \"servers\" is not a list")
        for server in servers:
            _expect(isinstance(server, dict), f"service {name!r}: a server is not an object")
            address, port, weight = server.get("address"), server.get("port"), server.get("weight")
            _expect(_is_integer(port, 0, 65535), f"service {name!r}: port {port!r} is not 0..65535")
            _expect(_is_integer(weight, 0, MAX_WEIGHT), f"service {name!r}: weight {weight!r} is not 0..{MAX_WEIGHT}")
            try:
                dest = DestKey.of(str(ipaddress.ip_address(address)), port)
            except ValueError:
                raise ValueError(f"service {name!r}: {address!r} is not an address") from None
            weights[name, dest] = weight
    return Desired(state, float(time), weights)


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def _is_integer(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


# Following ----------------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


class _BoundedBody(Protocol):
    """A response body, read into memory up to `limit` bytes; beyond it, the connection is dropped."""

    def __init__(self, finished: Deferred, limit: int):
        self.finished = finished
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            self.finished.errback(BodyTooLarge(f"the answer is larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def get_from_peer(http, clock, settings: PairSettings, path: str, limit: int, timeout: float, setting: str) -> Deferred:
    """
    The body of the peer's `path` (its status listener, with the token),
    read up to `limit` bytes within `timeout` seconds (the setting named
    `setting`); fails on any error, refusal, timeout or larger body (see
    `peer_error` for what to say of it). `http` is a twisted.web IAgent.
    """
    headers = Headers({b"user-agent": [b"lvsfeedback-director"]})
    if settings.peer_token is not None:
        headers.addRawHeader(b"authorization", b"Bearer " + settings.peer_token)
    asking = http.request(b"GET", (settings.peer + path).encode("ascii"), headers, None)
    asking.addCallback(_read_body, limit)
    # Cancelled by the timeout, twisted.web fails with whatever it was doing
    # (a connection attempt cancelled, a response never received): all of
    # them are this timeout, and the operator reads it as one.
    asking.addTimeout(timeout, clock, onTimeoutCancel=lambda result, after: Failure(
        TimeoutError(f"no answer within {after:g}s ({setting})")))
    return asking


def peer_error(failure: Failure) -> str:
    """What a failed `get_from_peer` says to an operator, in one line."""
    reasons = getattr(failure.value, "reasons", None)  # ResponseFailed and its kin: a list of Failures
    if isinstance(reasons, list) and reasons:
        return "; ".join(reason.getErrorMessage() or reason.type.__name__ for reason in reasons)
    return failure.getErrorMessage() or failure.type.__name__


def _read_body(response, limit: int) -> Deferred:
    reader: _BoundedBody
    # Cancelled (the timeout): stop reading, drop the connection.
    finished: Deferred = Deferred(lambda _: reader.transport.stopProducing())
    reader = _BoundedBody(finished, limit)
    response.deliverBody(reader)
    if response.code != 200:
        finished.addCallback(_refused, response.code)
    return finished


@implementer(IReconfigurable)
class PairFollower(Service):
    """
    This director's VRRP state, read from `[pair] vrrp_state_file`, and while
    it stands by the master's weights, fetched from `[pair] peer` once
    per update interval (`start_fetching` sets the rhythm ahead of the
    passes). `followed` is what the updater asks at each pass. Without
    `[pair]` it reads and fetches nothing and `followed` is always empty.
    `http` is a twisted.web `IAgent`; `clock` the reactor or a task.Clock.
    """

    log = Logger()

    def __init__(self, config, clock, http=None):
        self.clock = clock
        self.http = http if http is not None else quiet_agent(clock)
        self.state = VRRPState.UNKNOWN
        self.priority: int | None = None
        self.since: float | None = None  # when the state was first read as it is
        self.following = False  # the last pass followed the master
        self.answer: Desired | None = None
        self.answered_at: float | None = None  # when the answer came, its pass new
        self.last_fetch: float | None = None  # when the last good answer came
        self.last_error: str | None = None  # why the last fetch failed; None once one succeeds
        self.fetch_failures = 0
        self.state_problem: str | None = None  # why the state file gave no state
        self.fallback: str | None = None  # why a backup runs its own policy
        self._fetching: Deferred | None = None
        self._loop: LoopingCall | None = None
        self._first: IDelayedCall | None = None
        self.reconfigure(config)

    @property
    def settings(self) -> PairSettings | None:
        return self.config.pair

    def reconfigure(self, config) -> None:
        """IReconfigurable: a new [pair] table, used from the next read and fetch."""
        before = getattr(self, "config", None)
        self.config = config
        if config.pair is None or before is None or before.pair is None or before.pair.peer != config.pair.peer:
            # Another peer's answer is not this one's.
            self.answer = self.answered_at = None

    def start_fetching(self, first: float) -> None:
        """Read the state and, standing by, fetch `first` seconds from now, then every update interval."""
        self.stop_fetching()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._first = self.clock.callLater(first, self._loop.start, self.config.director.update_interval)

    def stop_fetching(self) -> None:
        if self._first is not None and self._first.active():
            self._first.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = self._first = None

    def stopService(self):
        super().stopService()
        self.stop_fetching()

    def tick(self) -> Deferred | None:
        """One read of the state; standing by, one fetch of the master's weights (none while one runs)."""
        self.refresh()
        if self.state not in STANDING_BY or self._fetching is not None:
            return None
        fetching = self._fetching = self.fetch()
        fetching.addBoth(self._fetched)
        return fetching

    def refresh(self) -> VRRPState:
        """Read the state file; a change of state, or of a problem reading it, is logged once."""
        settings = self.settings
        reading = VRRPReading(VRRPState.UNKNOWN) if settings is None else read_vrrp_state(settings.vrrp_state_file)
        if reading.problem != self.state_problem:
            self.state_problem = reading.problem
            if reading.problem is not None:
                self.log.warn("VRRP state unknown: {problem}", problem=reading.problem)
        if reading.state is not self.state or self.since is None:
            if self.since is not None or reading.state is not VRRPState.UNKNOWN:
                self.log.info("VRRP state {old} -> {new}", old=str(self.state), new=str(reading.state))
            self.state, self.since = reading.state, self.clock.seconds()
        self.priority = reading.priority
        return self.state

    def fetch(self) -> Deferred:
        """The peer's weights, checked (a `Desired`); fails on any error, timeout or oversized body."""
        settings = self.settings
        assert settings is not None
        asking = get_from_peer(self.http, self.clock, settings, DESIRED_PATH, MAX_DESIRED_BODY, settings.peer_timeout,
                               "peer_timeout")
        asking.addCallback(parse_desired)
        return asking

    def _fetched(self, result) -> None:
        self._fetching = None
        now = self.clock.seconds()
        if isinstance(result, Desired):
            if self.answer is None or result.time != self.answer.time:
                self.answered_at = now
            self.answer, self.last_fetch = result, now
            if self.last_error is not None:
                self.log.info("the peer {peer} answers again", peer=self._peer())
            self.last_error = None
            return
        self.fetch_failures += 1
        problem = f"fetching {self._peer()}{DESIRED_PATH} failed: {peer_error(result)}"
        if problem != self.last_error:
            self.log.warn("{problem}", problem=problem)
        self.last_error = problem

    def _peer(self) -> str:
        return self.settings.peer if self.settings is not None else "-"

    def followed(self, now: float) -> Mapping[tuple[str, DestKey], int]:
        """
        For the pass at `now`: the master's desired weights by (service name,
        server) while this director stands by and the master's answer is
        fresh; empty otherwise (its own policy). Falling back, and following
        again, are logged once.
        """
        settings = self.settings
        fallback = None
        if settings is not None and self.refresh() in STANDING_BY:
            fallback = self._why_not_follow(now, settings)
        following = settings is not None and self.state in STANDING_BY and fallback is None
        if fallback is not None and fallback != self.fallback:
            self.log.warn("VRRP {state}, running its own policy: {why}", state=str(self.state), why=fallback)
        if following and not self.following:
            self.log.info("VRRP {state}: following the master's weights from {peer}", state=str(self.state),
                          peer=self._peer())
        self.fallback, self.following = fallback, following
        return self.answer.weights if following and self.answer is not None else {}

    def _why_not_follow(self, now: float, settings: PairSettings) -> str | None:
        if self.answer is None or self.answered_at is None:
            return "no answer from the master yet"
        if now - self.answered_at > settings.follow_stale_after:
            return (f"no new pass from the master for {now - self.answered_at:.1f}s "
                    f"(follow_stale_after {settings.follow_stale_after:g}s)")
        if self.answer.vrrp_state in STANDING_BY:
            return f"the peer is {self.answer.vrrp_state} too"
        return None


def _refused(body: bytes, code: int) -> bytes:
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace").strip()
    raise ValueError(f"HTTP {code}: {message}")

