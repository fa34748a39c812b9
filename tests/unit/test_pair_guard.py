"""
The pair's split-brain guard (#17, director/pair_guard.py): the decision
table over every failure of the pair, the peer's report read as hostile
input, the host's addresses, and `lvsfeedback pair-check` failing open on
every check it cannot make. The guard against keepalived and the kernel:
tests/integration/test_pair_guard.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import urllib.error
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.cli import main
from lvsfeedback.director.pair_guard import (
    MAX_ADDRESSES_BODY,
    STAND_DOWN,
    CheckSettings,
    PeerReport,
    PeerUnheard,
    addresses_document,
    ask_peer,
    held_addresses,
    parse_peer_report,
    read_pair_table,
    run_check,
    verdict,
)
from lvsfeedback.director.vrrp import VRRPReading, VRRPState

VIP = "192.0.2.10"
OTHER = "192.0.2.3"


def report(*addresses: str, state: str = "MASTER", priority: int | None = 100) -> PeerReport:
    return PeerReport(frozenset(addresses), state, priority)


class DecisionTableTests(SynchronousTestCase):
    """One case per row of README "Running a pair"'s table: (this director holds the VIP, the peer's report)."""

    def assertVerdict(self, stand_down: bool, holds: bool, peer: PeerReport | None, *, priority: int | None = 150,
                      unheard: str | None = None, says: str = "") -> None:
        found = verdict(VIP, holds, priority, peer, unheard)
        self.assertEqual(found.stand_down, stand_down, found.reason)
        self.assertIn(says, found.reason)

    def test_a_dead_peer_host_or_a_link_down_lets_vrrp_decide(self):
        # No answer at all (a timeout or no route): the peer may hold nothing.
        self.assertVerdict(False, False, None, unheard="timed out", says="not heard (timed out): VRRP decides")

    def test_a_dead_peer_lvs_director_lets_vrrp_decide_as_without_the_guard(self):
        # Its keepalived may still hold the VIP: VRRP, working, keeps this one BACKUP.
        self.assertVerdict(False, False, None, unheard="Connection refused", says="VRRP decides")

    def test_vrrp_blocked_with_the_peer_holding_the_vip_stands_down(self):
        self.assertVerdict(True, False, report(VIP, OTHER), says=f"the peer holds {VIP}: standing by")

    def test_a_peer_whose_keepalived_was_killed_but_left_the_vip_keeps_its_standby_down(self):
        # SIGKILL leaves the address configured: the peer's kernel still answers for it and forwards.
        self.assertVerdict(True, False, report(VIP, state="MASTER"), says="standing by")

    def test_a_peer_whose_keepalived_stopped_and_took_the_vip_away_is_no_reason_to_stand_down(self):
        # The trap: its notify file may still say MASTER; what counts is the address on its interface.
        self.assertVerdict(False, False, report(OTHER, state="MASTER"), says=f"does not hold {VIP}")

    def test_neither_holding_it_lets_vrrp_elect_one(self):
        self.assertVerdict(False, False, report(OTHER, state="BACKUP"))

    def test_the_holder_keeps_it_whether_or_not_the_peer_answers(self):
        self.assertVerdict(False, True, report(OTHER, state="FAULT"))
        self.assertVerdict(False, True, None, unheard="timed out")

    def test_both_holding_it_the_lower_priority_yields_and_the_higher_keeps_it(self):
        self.assertVerdict(True, True, report(VIP, priority=150), priority=100, says="yielding")
        self.assertVerdict(False, True, report(VIP, priority=100), priority=150, says="keeping it")

    def test_both_holding_it_with_priorities_unknown_or_equal_neither_gives_it_up(self):
        for mine, theirs in ((None, 100), (100, None), (100, 100)):
            self.assertVerdict(False, True, report(VIP, priority=theirs), priority=mine, says="keeping it")


class PeerReportTests(SynchronousTestCase):
    def test_the_document_served_is_the_document_read(self):
        document = addresses_document(frozenset({VIP, "fd00::1"}), VRRPReading(VRRPState.MASTER, 150))
        self.assertEqual(document, {"addresses": ["192.0.2.10", "fd00::1"], "vrrp_state": "MASTER", "priority": 150})
        self.assertEqual(parse_peer_report(json.dumps(document).encode()), report(VIP, "fd00::1", priority=150))

    def test_addresses_are_compared_in_one_spelling(self):
        body = json.dumps({"addresses": ["FD00:0::1"], "vrrp_state": "MASTER", "priority": None}).encode()
        self.assertEqual(parse_peer_report(body).addresses, frozenset({"fd00::1"}))

    def test_garbage_is_refused_with_a_reason(self):
        for body, problem in (
            (b"[]", "not a JSON object"),
            (b'{"addresses": "192.0.2.10", "vrrp_state": "MASTER"}', '"addresses" is not a list of strings'),
            (b'{"addresses": [1], "vrrp_state": "MASTER"}', '"addresses" is not a list of strings'),
            (b'{"addresses": ["x"], "vrrp_state": "MASTER"}', '"addresses"'),
            (b'{"addresses": [], "vrrp_state": 1}', '"vrrp_state" is not a string'),
            (b'{"addresses": [], "vrrp_state": "MASTER", "priority": 256}', '"priority" 256 is not 0..255'),
            (b'{"addresses": [], "vrrp_state": "MASTER", "priority": true}', '"priority" True'),
        ):
            error = self.assertRaises(ValueError, parse_peer_report, body)
            self.assertIn(problem, str(error), body)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


class AskPeerTests(SynchronousTestCase):
    settings = CheckSettings("http://10.0.0.2:9101", "secret", Path("/nonexistent/vrrp-VI_LVS"))

    def ask(self, answer):
        asked = []

        def opener(request, timeout):
            asked.append((request, timeout))
            if isinstance(answer, Exception):
                raise answer
            return FakeResponse(answer)

        return asked, lambda: ask_peer(self.settings, 0.5, opener)

    def test_the_peer_is_asked_with_the_token_within_the_timeout(self):
        asked, ask = self.ask(json.dumps({"addresses": [VIP], "vrrp_state": "MASTER", "priority": 150}).encode())
        self.assertEqual(ask(), report(VIP, priority=150))
        [(request, timeout)] = asked
        self.assertEqual((request.full_url, timeout), ("http://10.0.0.2:9101/pair/addresses.json", 0.5))
        self.assertEqual(request.get_header("Authorization"), "Bearer secret")

    def test_every_failure_is_the_peer_unheard_with_its_reason(self):
        for answer, reason in (
            (urllib.error.URLError(TimeoutError("timed out")), "timed out"),
            (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
            (urllib.error.HTTPError("http://x", 401, "Unauthorized", {}, None), "HTTP 401"),  # type: ignore[arg-type]
            (b"<html>", "Expecting value"),
            (b" " * (MAX_ADDRESSES_BODY + 1), f"larger than {MAX_ADDRESSES_BODY} bytes"),
        ):
            _, ask = self.ask(answer)
            error = self.assertRaises(PeerUnheard, ask)
            self.assertIn(reason, str(error))
            self.assertIn("http://10.0.0.2:9101/pair/addresses.json: ", str(error))


class HeldAddressesTests(SynchronousTestCase):
    def shown(self, links) -> frozenset[str]:
        def run(argv, **options):
            self.assertEqual(argv, ["ip", "-json", "address", "show"])
            return subprocess.CompletedProcess(argv, 0, json.dumps(links), "")

        return held_addresses(run)

    def test_only_addresses_of_interfaces_up_with_a_carrier_count_loopback_aside(self):
        links = [
            {"ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "addr_info": [{"local": "127.0.0.1"}]},
            {"ifname": "eth0", "flags": ["BROADCAST", "UP", "LOWER_UP"],
             "addr_info": [{"local": "10.0.0.2"}, {"local": VIP}, {"local": "fe80::1"}]},
            {"ifname": "eth1", "flags": ["BROADCAST", "NO-CARRIER", "UP"], "addr_info": [{"local": "10.9.0.1"}]},
            {"ifname": "eth2", "flags": ["BROADCAST"], "addr_info": [{"local": "10.8.0.1"}]},
        ]
        self.assertEqual(self.shown(links), frozenset({"10.0.0.2", VIP, "fe80::1"}))

    def test_ip_failing_is_an_os_error_saying_so(self):
        def run(argv, **options):
            raise subprocess.CalledProcessError(1, argv)

        self.assertIn("ip -json address show", str(self.assertRaises(OSError, held_addresses, run)))


class RunCheckTests(SynchronousTestCase):
    def config(self, pair: str = 'vrrp_state_file = "run/vrrp-VI_LVS"\npeer = "http://10.0.0.2:9101/"\n'
                                 'peer_token_file = "status.token"') -> Path:
        folder = Path(self.mktemp()).resolve()
        (folder / "run").mkdir(parents=True)
        (folder / "status.token").write_text("secret\n")
        (folder / "run" / "vrrp-VI_LVS").write_text("FAULT 100\n")
        path = folder / "director.toml"
        path.write_text(f"[director]\nlisten = \"tcp:3262\"\n[pair]\n{pair}\n" if pair else "[director]\n")
        return path

    def run_check(self, path, address=VIP, *, held=frozenset({OTHER}), answer=None):
        out, err = io.StringIO(), io.StringIO()
        asked = []

        def ask(settings, timeout):
            asked.append((settings, timeout))
            if answer is None:
                raise PeerUnheard("timed out")
            return answer

        status = run_check(str(path), address, out, err, held=lambda: held, ask=ask)
        return status, out.getvalue(), err.getvalue(), asked

    def test_the_pair_table_is_read_as_lvs_director_reads_it(self):
        path = self.config()
        self.assertEqual(read_pair_table(path), CheckSettings("http://10.0.0.2:9101", "secret",
                                                              path.parent / "run" / "vrrp-VI_LVS"))

    def test_standing_down_exits_non_zero_for_keepalived_with_the_reason(self):
        status, out, _, asked = self.run_check(self.config(), answer=report(VIP))
        self.assertEqual((status, out), (STAND_DOWN, f"pair-check: the peer holds {VIP}: standing by\n"))
        [(_, timeout)] = asked
        self.assertEqual(timeout, 1.0)

    def test_its_own_priority_comes_from_its_vrrp_state_file(self):
        # Both hold it; this one's file says priority 100, the peer 150: it yields.
        status, out, _, _ = self.run_check(self.config(), held=frozenset({VIP}), answer=report(VIP, priority=150))
        self.assertEqual(status, STAND_DOWN, out)

    def test_an_unheard_peer_exits_zero(self):
        status, out, _, _ = self.run_check(self.config())
        self.assertEqual((status, out), (0, "pair-check: the peer is not heard (timed out): VRRP decides\n"))

    def test_every_check_it_cannot_make_fails_open_with_a_line_on_stderr(self):
        missing = Path(self.mktemp()) / "director.toml"
        for path, address, held, said in (
            (missing, VIP, frozenset(), "cannot read [pair] from"),
            (self.config(pair=""), VIP, frozenset(), "has no [pair] table: VRRP decides"),
            (self.config(pair='peer = 3\nvrrp_state_file = "x"'), VIP, frozenset(), "[pair] needs peer"),
            (self.config(pair='peer = "http://x"\nvrrp_state_file = "x"\npeer_token_file = "gone"'), VIP,
             frozenset(), "No such file"),
            (self.config(), "vip", frozenset(), "'vip' is not an address"),
        ):
            status, out, err, _ = self.run_check(path, address, held=held, answer=report(VIP))
            self.assertEqual((status, out), (0, ""), err)
            self.assertIn(said, err)

    def test_unreadable_addresses_fail_open(self):
        def held():
            raise OSError("ip -json address show: not found")

        out, err = io.StringIO(), io.StringIO()
        status = run_check(str(self.config()), VIP, out, err, held=held, ask=lambda settings, timeout: report(VIP))
        self.assertEqual(status, 0)
        self.assertIn("cannot read this host's addresses, VRRP decides", err.getvalue())

    def test_the_command_line_fails_open_on_a_missing_config(self):
        out, err = io.StringIO(), io.StringIO()
        missing = str(Path(self.mktemp()) / "director.toml")
        self.assertEqual(main(["pair-check", "--config", missing, "--address", VIP], out, err), 0)
        self.assertIn(f"cannot read [pair] from {missing}", err.getvalue())
