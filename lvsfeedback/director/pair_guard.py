"""
The pair's guard against split brain (#17): `lvsfeedback pair-check`, run by
keepalived as a ``track_script`` (tap/keepalived-pair.conf) every second.

With VRRP blocked between the two directors and nothing else, each stops
hearing the other's adverts and both become MASTER: both hold the virtual
address. keepalived cannot know the peer's state without VRRP, so the check
asks it another way: the peer's lvs-director, through its authenticated
status listener (`/pair/addresses.json`, the same `[pair] peer` and token the
follower uses), says which addresses its host really has configured on an
interface that is up, read from the system by netlink, not keepalived's
notify file: a keepalived that was killed leaves its file saying MASTER
whether or not the address is still there. A director that does not hold
the address stands down (the check fails: keepalived holds the instance in
FAULT) while its peer does, before VRRP has a say, so a partition of VRRP
alone changes nothing. Every way of not hearing the peer's lvs-director
(host dead, link down, lvs-director dead, timeout, refusal, garbage, a
broken config here) lets VRRP decide, as without the check: the guard may
only ever stop a director taking an address another one really holds, so it
never leaves the address unheld when a director can hold it.

`verdict` is the decision table, pure; README "Running a pair" has it too.
The check runs every second on each director, so it imports neither
Twisted nor the director's config module: it reads the three keys it needs
of `[pair]` itself (`read_pair_table`), which lvs-director validates at its
start and each reload.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lvsfeedback.director.vrrp import VRRPReading, read_vrrp_state

ADDRESSES_PATH = "/pair/addresses.json"
# A host's addresses, even thousands of them, fit well within this.
MAX_ADDRESSES_BODY = 1024 * 1024
# keepalived counts a check it has to stop (its script timeout) as failed:
# the check gives up on the peer well before.
DEFAULT_TIMEOUT = 1.0
IP = "ip"


@dataclass(frozen=True)
class PeerReport:
    """What the peer's lvs-director says of its host: the addresses it holds, its VRRP state and priority."""

    addresses: frozenset[str]
    vrrp_state: str
    priority: int | None


@dataclass(frozen=True)
class Verdict:
    stand_down: bool  # True: the check fails, keepalived holds this director in FAULT
    reason: str


def verdict(address: str, holds: bool, priority: int | None, peer: PeerReport | None, unheard: str | None) -> Verdict:
    """
    Whether this director, which `holds` the virtual `address` or not and has
    VRRP `priority`, must stand down, given its `peer`'s report (None when the
    peer was not heard, `unheard` saying why).
    """
    if peer is None:
        return Verdict(False, f"the peer is not heard ({unheard}): VRRP decides")
    peer_holds = address in peer.addresses
    if not peer_holds:
        return Verdict(False, f"the peer does not hold {address}: VRRP decides")
    if not holds:
        return Verdict(True, f"the peer holds {address}: standing by")
    # Both hold it: VRRP was cut while neither held it. One must yield, the
    # same one whichever of the two runs the check: the lower priority.
    if priority is None or peer.priority is None or priority == peer.priority:
        return Verdict(False, f"both hold {address}, priorities unknown or equal ({priority}, {peer.priority}): "
                              "keeping it")
    if priority < peer.priority:
        return Verdict(True, f"both hold {address}: the peer's priority {peer.priority} > {priority}, yielding")
    return Verdict(False, f"both hold {address}: this priority {priority} > the peer's {peer.priority}, keeping it")


# The peer's side ------------------------------------------------------------------


def held_addresses(run: Callable[..., Any] = subprocess.run) -> frozenset[str]:
    """
    The addresses configured on this host's interfaces that are up and have
    a carrier, loopback aside, as iproute2's ``ip -json address`` shows
    them; OSError when it cannot say.
    """
    try:
        shown = run([IP, "-json", "address", "show"], capture_output=True, text=True, timeout=5, check=True).stdout
        links = json.loads(shown)
    except subprocess.SubprocessError as error:
        raise OSError(f"{IP} -json address show: {error}") from None
    except ValueError as error:
        raise OSError(f"{IP} -json address show: not JSON: {error}") from None
    held = set()
    for link in links:
        flags = link.get("flags", [])
        if "UP" in flags and "LOWER_UP" in flags and "LOOPBACK" not in flags:
            held.update(str(ipaddress.ip_address(entry["local"])) for entry in link.get("addr_info", []))
    return frozenset(held)


def addresses_document(held: frozenset[str], reading: VRRPReading) -> dict[str, Any]:
    """/pair/addresses.json: the addresses this host holds, and the VRRP state and priority keepalived last told."""
    return {"addresses": sorted(held), "vrrp_state": str(reading.state), "priority": reading.priority}


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


# The check --------------------------------------------------------------------------


class PeerUnheard(Exception):
    """Why the peer's report could not be had; the message says it in a line."""


@dataclass(frozen=True)
class CheckSettings:
    """What the check needs of this director's [pair] table."""

    peer: str
    peer_token: str | None
    vrrp_state_file: Path


def read_pair_table(path: Path) -> CheckSettings | None:
    """
    The check's keys of [pair] in the director's config at `path` (paths
    relative to its folder, as lvs-director reads them); None without
    [pair]; ValueError or OSError saying what is wrong.
    """
    with path.open("rb") as file:
        table = tomllib.load(file).get("pair")
    if table is None:
        return None
    peer, token_file, state_file = table.get("peer"), table.get("peer_token_file"), table.get("vrrp_state_file")
    if not isinstance(peer, str) or not isinstance(state_file, str) or not isinstance(token_file, str | None):
        raise ValueError("[pair] needs peer and vrrp_state_file, and peer_token_file if any, as strings")
    token = None if token_file is None else (path.parent / token_file).read_text().strip()
    return CheckSettings(peer.rstrip("/"), token, path.parent / state_file)


def ask_peer(settings: CheckSettings, timeout: float, opener: Callable[..., Any] = urllib.request.urlopen) -> PeerReport:
    """The peer's report within `timeout` seconds; PeerUnheard on any failure."""
    where = settings.peer + ADDRESSES_PATH
    request = urllib.request.Request(where, headers={"User-Agent": "lvsfeedback-pair-check"})
    if settings.peer_token is not None:
        request.add_header("Authorization", "Bearer " + settings.peer_token)
    try:
        with opener(request, timeout=timeout) as response:
            body = response.read(MAX_ADDRESSES_BODY + 1)
    except urllib.error.HTTPError as error:
        raise PeerUnheard(f"{where}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise PeerUnheard(f"{where}: {getattr(error, 'reason', error)}") from None
    if len(body) > MAX_ADDRESSES_BODY:
        raise PeerUnheard(f"{where}: the answer is larger than {MAX_ADDRESSES_BODY} bytes")
    try:
        return parse_peer_report(body)
    except ValueError as error:
        raise PeerUnheard(f"{where}: {error}") from None


def check(settings: CheckSettings, address: str, timeout: float, *,
          held: Callable[[], frozenset[str]] = held_addresses,
          ask: Callable[[CheckSettings, float], PeerReport] = ask_peer) -> Verdict:
    """The verdict for this director now: its own addresses and priority, and its peer's report."""
    try:
        report, unheard = ask(settings, timeout), None
    except PeerUnheard as error:
        report, unheard = None, str(error)
    return verdict(address, address in held(), read_vrrp_state(settings.vrrp_state_file).priority, report, unheard)


STAND_DOWN = 1  # the exit status that makes keepalived's track_script fail


def run_check(config_path: str, address: str, out: TextIO, err: TextIO, *, timeout: float | None = None,
              held: Callable[[], frozenset[str]] = held_addresses,
              ask: Callable[[CheckSettings, float], PeerReport] = ask_peer) -> int:
    """
    `lvsfeedback pair-check`: 0 (this director may hold `address`) or
    STAND_DOWN, with the reason in a line on `out`; the peer is waited for
    `timeout` seconds (None: DEFAULT_TIMEOUT). A check that cannot be
    made (an address that is none, a config that cannot be read or has no
    [pair], this host's addresses unreadable) says why on `err` and lets
    VRRP decide: 0.
    """
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        err.write(f"pair-check: {address!r} is not an address; VRRP decides\n")
        return 0
    try:
        settings = read_pair_table(Path(config_path))
    except (OSError, ValueError) as error:
        err.write(f"pair-check: cannot read [pair] from {config_path}, VRRP decides: {error}\n")
        return 0
    if settings is None:
        err.write(f"pair-check: {config_path} has no [pair] table: VRRP decides\n")
        return 0
    try:
        found = check(settings, address, DEFAULT_TIMEOUT if timeout is None else timeout, held=held, ask=ask)
    except OSError as error:
        err.write(f"pair-check: cannot read this host's addresses, VRRP decides: {error}\n")
        return 0
    out.write(f"pair-check: {found.reason}\n")
    return STAND_DOWN if found.stand_down else 0
