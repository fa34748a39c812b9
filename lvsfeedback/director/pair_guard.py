"""
The pair's guard against split brain (#17): lvs-director decides, every
`[pair] guard_interval`, whether this director must stand down, and writes
the verdict to `[pair] guard_file`, which keepalived tracks (a `track_file`
with weight 0 in tap/keepalived-pair.conf: 1 holds the VRRP instance in
FAULT, 0 or no file lets VRRP decide). keepalived reads the file when it
changes (inotify); no process is forked in its path.

With VRRP blocked between the two directors and nothing else, each stops
hearing the other's adverts and both become MASTER: both hold the virtual
address. keepalived cannot know the peer's state without VRRP, so the guard
asks it another way: the peer's lvs-director, through its authenticated
status listener (`/pair/addresses.json`, the same `[pair] peer` and token the
follower uses), says which addresses its host really has configured on an
interface that is up (read over rtnetlink, director/host_addresses.py, and
again only when the kernel announces a change; not keepalived's notify file: a
keepalived that was killed leaves its file saying MASTER whether or not the
address is still there). A director that does not hold the virtual
addresses stands down while its peer holds them, before VRRP has a say, so
a partition of VRRP alone changes nothing. Every way of not hearing the
peer's lvs-director (host dead, link down, lvs-director dead, no answer
within `[pair] guard_timeout`, refusal, garbage) and every reading this
director cannot make lets VRRP decide, as without the guard: it may only ever stop a director taking an
address another one really holds, so it never leaves the address unheld
when a director can hold it.

The guarded addresses are the virtual services' own (`[[service]]
address`): keepalived moves them together. `verdict` is the decision table,
pure; README "Running a pair" has it too, with what a stopped, killed or
hung lvs-director leaves in the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from lvsfeedback.director.config import IReconfigurable, PairSettings
from lvsfeedback.director.host_addresses import HostAddresses
from lvsfeedback.director.pair import get_from_peer, peer_error
from lvsfeedback.quiet_http import quiet_agent

ADDRESSES_PATH = "/pair/addresses.json"
# A host's addresses, even thousands of them, fit well within this.
MAX_ADDRESSES_BODY = 1024 * 1024
# What the guard file holds: keepalived's track_file with weight 0 reads
# non-zero as a failure (FAULT) and zero as OK.
STAND_DOWN, VRRP_DECIDES = "1\n", "0\n"


@dataclass(frozen=True)
class PeerReport:
    """What the peer's lvs-director says of its host: the addresses it holds, its VRRP state and priority."""

    addresses: frozenset[str]
    vrrp_state: str
    priority: int | None


@dataclass(frozen=True)
class Verdict:
    stand_down: bool  # True: keepalived holds this director's instance in FAULT
    reason: str


def verdict(guarded: frozenset[str], held: frozenset[str], priority: int | None, peer: PeerReport | None,
            unheard: str | None) -> Verdict:
    """
    Whether this director, whose host `held` these addresses and whose
    VRRP `priority` is as given, must stand down to keep the `guarded`
    addresses on one director, given its `peer`'s report (None when the peer
    was not heard, `unheard` saying why).
    """
    shown = ", ".join(sorted(guarded))
    if not guarded:
        return Verdict(False, "no virtual address to guard: VRRP decides")
    if peer is None:
        return Verdict(False, f"the peer is not heard ({unheard}): VRRP decides")
    if not guarded & peer.addresses:
        return Verdict(False, f"the peer does not hold {shown}: VRRP decides")
    if not guarded & held:
        return Verdict(True, f"the peer holds {shown}: standing by")
    # Both hold them: VRRP was cut while neither held them. One must yield,
    # the same one whichever of the two decides: the lower priority.
    if priority is None or peer.priority is None or priority == peer.priority:
        return Verdict(False, f"both hold {shown}, priorities unknown or equal ({priority}, {peer.priority}): "
                              "keeping them")
    if priority < peer.priority:
        return Verdict(True, f"both hold {shown}: the peer's priority {peer.priority} > {priority}, yielding")
    return Verdict(False, f"both hold {shown}: this priority {priority} > the peer's {peer.priority}, keeping them")


def guarded_addresses(config) -> frozenset[str]:
    """The virtual services' addresses (a fwmark service has none of its own)."""
    return frozenset(service.key.address for service in config.services if service.key.address)


# The peer's report ----------------------------------------------------------------


def addresses_document(held: frozenset[str] | None, vrrp_state: str, priority: int | None) -> dict[str, Any]:
    """/pair/addresses.json: the addresses this host held at the guard's last reading, its VRRP state and priority."""
    if held is None:
        raise ValueError("this host's addresses have not been read yet")
    return {"addresses": sorted(held), "vrrp_state": vrrp_state, "priority": priority}


def parse_peer_report(body: bytes) -> PeerReport:
    """The peer's /pair/addresses.json, checked; ValueError naming the first wrong value."""
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the document is not a JSON object")
    addresses, state, priority = document.get("addresses"), document.get("vrrp_state"), document.get("priority")
    if not isinstance(addresses, list) or not all(isinstance(each, str) for each in addresses):
        raise ValueError('"addresses" is not a list of strings')
    if not isinstance(state, str):
        raise ValueError('"vrrp_state" is not a string')
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 255):
        raise ValueError(f'"priority" {priority!r} is not 0..255')
    try:
        held = frozenset(str(ipaddress.ip_address(each)) for each in addresses)
    except ValueError as error:
        raise ValueError(f'"addresses": {error}') from None
    return PeerReport(held, state, priority)


# The file keepalived tracks ---------------------------------------------------------


def write_guard_file(path: Path, content: str) -> bool:
    """
    `content` into `path` unless it holds it already: written aside in the
    same folder, then renamed over it, so that keepalived (woken by the
    rename) never reads half a value. True when written; OSError on failure.
    """
    try:
        if path.read_text() == content:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    aside = path.with_name(f".{path.name}.new")
    aside.write_text(content)
    os.replace(aside, path)
    return True


def release_guard_file(path: Path) -> None:
    """No file: keepalived reads a removed track file as 0, VRRP decides as without the guard."""
    path.unlink(missing_ok=True)


# The guard in lvs-director ----------------------------------------------------------


@implementer(IReconfigurable)
class PairGuard(Service):
    """
    Every `[pair] guard_interval`: this host's addresses (`addresses`, read
    again only after the kernel announced a change),
    the peer's report (its /pair/addresses.json), this director's priority
    (the follower's reading of the VRRP state file), the `verdict`, and the
    guard file rewritten when the verdict's value changes. A round still
    waiting for the peer delays the next. Stopped, it removes the
    file (VRRP decides). Without `[pair]` it does nothing. `held` is this
    host's addresses at the last reading, which /pair/addresses.json serves.
    """

    log = Logger()

    def __init__(self, config, clock, follower, http=None, addresses: HostAddresses | None = None):
        self.clock = clock
        self.follower = follower
        self.http = http if http is not None else quiet_agent(clock)
        self.addresses = addresses if addresses is not None else HostAddresses(clock)
        self.held: frozenset[str] | None = None
        self.verdict: Verdict | None = None
        self.problem: str | None = None  # why the last round could not write the file
        self._round: Deferred | None = None
        self._loop: LoopingCall | None = None
        self.reconfigure(config)

    @property
    def settings(self) -> PairSettings | None:
        return self.config.pair

    def reconfigure(self, config) -> None:
        """IReconfigurable: the new [pair] table and services, from the next round; a new interval, at once."""
        before = getattr(self, "config", None)
        self.config = config
        if self.running and (before is None or before.pair != config.pair):
            if before is not None and before.pair is not None and (
                    config.pair is None or before.pair.guard_file != config.pair.guard_file):
                release_guard_file(before.pair.guard_file)
            self._start_loop()

    def startService(self):
        super().startService()
        self._start_loop()

    def stopService(self):
        super().stopService()
        self._stop_loop()
        self.addresses.stop()
        if self._round is not None:
            self._round.cancel()  # its verdict is written at once, then released below
        settings = self.settings
        if settings is not None:
            try:
                release_guard_file(settings.guard_file)
            except OSError as error:
                self.log.error("cannot remove the guard file {path}: {error}", path=str(settings.guard_file),
                               error=error.strerror)
            else:
                self.log.info("stopping: the guard file {path} removed, VRRP decides", path=str(settings.guard_file))

    def _start_loop(self) -> None:
        self._stop_loop()
        if self.settings is None:
            self.addresses.stop()
            return
        self.addresses.start()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.settings.guard_interval, now=True)

    def _stop_loop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> Deferred | None:
        """One round; the loop waits for it before the next (LoopingCall does), so rounds never overlap."""
        settings = self.settings
        if settings is None:
            return None
        try:
            held, unreadable = self.addresses.current(), None
        except OSError as error:
            held, unreadable = None, str(error)
        asking = get_from_peer(self.http, self.clock, settings, ADDRESSES_PATH, MAX_ADDRESSES_BODY,
                               settings.guard_timeout, "guard_timeout")
        asking.addCallback(parse_peer_report)
        asking.addCallbacks(lambda report: (report, None), lambda failure: (None, peer_error(failure)))
        self._round = asking
        self._round.addCallback(self._decide, held, unreadable, settings)
        self._round.addErrback(lambda failure: None)  # cancelled by a stop
        self._round.addBoth(self._done)
        return self._round

    def _done(self, _) -> None:
        self._round = None

    def _decide(self, answer, held: frozenset[str] | None, unreadable: str | None, settings: PairSettings) -> None:
        report, unheard = answer
        if held is None:
            found = Verdict(False, f"cannot read this host's addresses ({unreadable}): VRRP decides")
        else:
            self.held = held
            self.follower.refresh()
            found = verdict(guarded_addresses(self.config), held, self.follower.priority, report, unheard)
        if self.verdict is None or found.stand_down != self.verdict.stand_down:
            self.log.info("split-brain guard: {action}: {reason}", reason=found.reason,
                          action="standing down (keepalived FAULT)" if found.stand_down else "VRRP decides")
        self.verdict = found
        try:
            write_guard_file(settings.guard_file, STAND_DOWN if found.stand_down else VRRP_DECIDES)
        except OSError as error:
            problem = f"cannot write the guard file {settings.guard_file}: {error.strerror or error}"
            if problem != self.problem:
                self.log.error("{problem}", problem=problem)
            self.problem = problem
        else:
            self.problem = None
