"""
The pair's split-brain guard (#17, director/pair_guard.py): the decision
table over every failure of the pair, the peer's report read as hostile
input, the host's addresses, the file keepalived tracks (written aside and
renamed, only on a change, removed at a stop), and the guard's rounds in
lvs-director on a MemoryReactorClock, this host's addresses read again only
when the kernel announces a change (how they are read and kept:
test_pair_guard_addresses.py). The guard against keepalived and the kernel:
tests/integration/test_pair_guard.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet.defer import fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.host_addresses import HostAddresses
from lvsfeedback.director.pair import PairFollower
from lvsfeedback.director.pair_guard import (
    MAX_ADDRESSES_BODY,
    STAND_DOWN,
    VRRP_DECIDES,
    PairGuard,
    PeerReport,
    Verdict,
    addresses_document,
    guarded_addresses,
    parse_peer_report,
    release_guard_file,
    verdict,
    write_guard_file,
)
from tests.helpers.director import director_config
from tests.helpers.pair import FakeAnnouncements, FakeHTTP, FakeResponse

VIP = "192.0.2.10"
OTHER = "192.0.2.3"
GUARDED = frozenset({VIP})


def report(*addresses: str, state: str = "MASTER", priority: int | None = 100) -> PeerReport:
    return PeerReport(frozenset(addresses), state, priority)


class DecisionTableTests(SynchronousTestCase):
    """One case per row of README "Running a pair"'s table: (this director holds the VIP, the peer's report)."""

    def assertVerdict(self, stand_down: bool, holds: bool, peer: PeerReport | None, *, priority: int | None = 150,
                      unheard: str | None = None, says: str = "") -> None:
        found = verdict(GUARDED, frozenset({VIP, OTHER} if holds else {OTHER}), priority, peer, unheard)
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
        self.assertVerdict(False, True, report(VIP, priority=100), priority=150, says="keeping them")

    def test_both_holding_it_with_priorities_unknown_or_equal_neither_gives_it_up(self):
        for mine, theirs in ((None, 100), (100, None), (100, 100)):
            self.assertVerdict(False, True, report(VIP, priority=theirs), priority=mine, says="keeping them")

    def test_any_of_several_virtual_addresses_counts_and_none_to_guard_lets_vrrp_decide(self):
        guarded = frozenset({VIP, "192.0.2.11"})
        self.assertTrue(verdict(guarded, frozenset({OTHER}), 100, report("192.0.2.11"), None).stand_down)
        self.assertEqual(verdict(frozenset(), frozenset(), 100, report(VIP), None),
                         Verdict(False, "no virtual address to guard: VRRP decides"))


class PeerReportTests(SynchronousTestCase):
    def test_the_document_served_is_the_document_read(self):
        document = addresses_document(frozenset({VIP, "fd00::1"}), "MASTER", 150)
        self.assertEqual(document, {"addresses": ["192.0.2.10", "fd00::1"], "vrrp_state": "MASTER", "priority": 150})
        self.assertEqual(parse_peer_report(json.dumps(document).encode()), report(VIP, "fd00::1", priority=150))

    def test_no_document_before_the_host_s_addresses_are_read(self):
        self.assertRaises(ValueError, addresses_document, None, "MASTER", 150)

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


class GuardedAddressesTests(SynchronousTestCase):
    def test_the_guarded_addresses_are_the_services_own(self):
        config = director_config(self, SERVICES + '[[service]]\nname = "marked"\nprotocol = "fwmark"\nfwmark = 5\n')
        self.assertEqual(guarded_addresses(config), frozenset({VIP, "192.0.2.11"}))


class GuardFileTests(SynchronousTestCase):
    def setUp(self):
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.path = self.folder / "pair-guard"

    def test_a_value_is_written_aside_and_renamed_into_place(self):
        self.assertTrue(write_guard_file(self.path, STAND_DOWN))
        self.assertEqual(self.path.read_text(), "1\n")
        self.assertEqual(os.listdir(self.folder), ["pair-guard"])  # nothing left aside
        before = self.path.stat().st_ino
        self.assertTrue(write_guard_file(self.path, VRRP_DECIDES))
        self.assertEqual(self.path.read_text(), "0\n")
        # Renamed over, not rewritten in place: keepalived never reads it half written.
        self.assertNotEqual(self.path.stat().st_ino, before)

    def test_the_same_value_is_not_written_again(self):
        write_guard_file(self.path, STAND_DOWN)
        before = self.path.stat()
        self.assertFalse(write_guard_file(self.path, STAND_DOWN))
        self.assertEqual((self.path.stat().st_ino, self.path.stat().st_mtime_ns), (before.st_ino, before.st_mtime_ns))

    def test_a_value_someone_else_changed_is_put_back(self):
        write_guard_file(self.path, STAND_DOWN)
        self.path.write_text("0\n")  # keepalived's init_file overwrite, an operator
        self.assertTrue(write_guard_file(self.path, STAND_DOWN))
        self.assertEqual(self.path.read_text(), "1\n")

    def test_released_there_is_no_file_which_keepalived_reads_as_0(self):
        write_guard_file(self.path, STAND_DOWN)
        release_guard_file(self.path)
        self.assertFalse(self.path.exists())
        release_guard_file(self.path)  # already gone: nothing to do

    def test_a_missing_folder_is_an_os_error(self):
        self.assertRaises(OSError, write_guard_file, self.folder / "gone" / "pair-guard", STAND_DOWN)


SERVICES = f"""
[director]
listen = "tcp:0:interface=127.0.0.1"
update_interval = 2.0

[status]
listen = "tcp:0:interface=127.0.0.1"

[[service]]
name = "web"
protocol = "tcp"
address = "{VIP}"
port = 80
[[service.real]]
address = "10.1.0.1"

[[service]]
name = "dns"
protocol = "udp"
address = "192.0.2.11"
port = 53
[[service.real]]
address = "10.1.0.1"
"""

PAIR = """
[pair]
vrrp_state_file = "run/vrrp-VI_LVS"
peer = "http://10.0.0.2:9101"
peer_timeout = 1.0
guard_interval = 0.5
"""


class PairGuardTests(SynchronousTestCase):
    """The guard in lvs-director: a peer faked by FakeHTTP, this host's addresses by `held`."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.http = FakeHTTP()
        self.peer_holds(VIP)
        self.held: frozenset[str] | Exception = frozenset({OTHER})
        self.readings = 0
        self.config = director_config(self, SERVICES + PAIR)
        (self.config.path.parent / "run").mkdir()
        self.state_file = self.config.pair.vrrp_state_file
        self.state_file.write_text("BACKUP 100\n")
        self.path = self.config.pair.guard_file
        self.follower = PairFollower(self.config, self.clock, self.http)
        self.announcements = FakeAnnouncements()
        self.guard = PairGuard(self.config, self.clock, self.follower, self.http, addresses=self.host())

    def host(self) -> HostAddresses:
        """This host's addresses, read by `read` and announced on `announcements`."""
        return HostAddresses(self.clock, dump=self.read, subscribe=lambda: self.announcements)

    def read(self) -> frozenset[str]:
        self.readings += 1
        if isinstance(self.held, Exception):
            raise self.held
        return self.held

    def announce(self, message: bytes = b"an RTM_NEWADDR") -> None:
        self.announcements.pending.append(message)
        for reader in list(self.clock.readers):
            reader.doRead()

    def peer_holds(self, *addresses: str, priority: int = 150) -> None:
        body = json.dumps({"addresses": list(addresses), "vrrp_state": "MASTER", "priority": priority}).encode()
        self.http.answer = lambda: FakeResponse(200, body)

    def guard_with(self, pair_lines: str) -> None:
        """A guard whose [pair] table has these lines more."""
        config = director_config(self, SERVICES + PAIR + pair_lines)
        (config.path.parent / "run").mkdir()
        self.path = config.pair.guard_file
        self.guard = PairGuard(config, self.clock, self.follower, self.http, addresses=self.host())

    def start(self) -> None:
        self.guard.startService()
        self.addCleanup(lambda: self.guard.running and self.guard.stopService())

    def value(self) -> str | None:
        return self.path.read_text() if self.path.exists() else None

    def test_a_standby_whose_peer_holds_the_vip_writes_stand_down_at_its_first_round(self):
        self.start()
        self.assertEqual(self.value(), STAND_DOWN)
        self.assertEqual(self.guard.verdict, Verdict(True, "the peer holds 192.0.2.10, 192.0.2.11: standing by"))
        [(method, url, headers)] = self.http.requests
        self.assertEqual((method, url), (b"GET", b"http://10.0.0.2:9101/pair/addresses.json"))

    def test_a_peer_that_stops_answering_is_unheard_after_guard_timeout_not_peer_timeout(self):
        # guard_timeout defaults to guard_interval (0.5 s), shorter than peer_timeout (1 s):
        # a dead master is noticed within two rounds.
        self.start()
        self.http.answer = None  # its link went down: no answer, no refusal
        self.clock.advance(0.5)
        self.assertEqual(self.value(), STAND_DOWN)  # still waiting for it
        self.clock.advance(0.5)  # guard_timeout after the question
        self.assertEqual(self.value(), VRRP_DECIDES)
        self.assertIn("no answer within 0.5s (guard_timeout)", self.guard.verdict.reason)

    def test_a_guard_timeout_set_bounds_the_guard_s_fetch(self):
        self.guard_with("guard_timeout = 0.2\n")
        self.start()
        self.http.answer = None
        self.clock.advance(0.5)
        self.assertEqual(self.value(), STAND_DOWN)
        self.clock.advance(0.2)
        self.assertEqual(self.value(), VRRP_DECIDES)
        self.assertIn("no answer within 0.2s (guard_timeout)", self.guard.verdict.reason)

    def test_a_refused_connection_is_acted_on_in_the_same_round(self):
        # The peer's host is up, its lvs-director dead: the kernel refuses at once.
        self.start()
        self.http.request = lambda *_: fail(ConnectionRefusedError())
        self.clock.advance(0.5)  # the next round: no timeout waited for
        self.assertEqual(self.value(), VRRP_DECIDES)
        self.assertIn("ConnectionRefusedError", self.guard.verdict.reason)

    def test_a_round_still_waiting_is_not_doubled(self):
        self.guard_with("guard_timeout = 1.0\n")
        self.start()
        self.http.answer = None
        for _ in range(3):
            self.clock.advance(0.5)  # two rounds fall due while one waits for the peer
        self.assertEqual((len(self.http.requests), self.readings), (2, 1))
        self.assertIsNone(self.guard._round)

    def test_the_file_is_written_only_when_the_verdict_changes(self):
        self.start()
        before = self.path.stat()
        self.clock.pump([0.5] * 4)
        self.assertEqual(len(self.http.requests), 5)
        self.assertEqual((self.path.stat().st_ino, self.path.stat().st_mtime_ns), (before.st_ino, before.st_mtime_ns))
        self.peer_holds(OTHER)  # keepalived there took the VIP away
        self.clock.advance(0.5)
        self.assertEqual(self.value(), VRRP_DECIDES)

    def test_a_stop_removes_the_file_so_that_vrrp_decides(self):
        self.start()
        self.assertEqual(self.value(), STAND_DOWN)
        with capturedLogs() as events:
            self.guard.stopService()
        self.assertIsNone(self.value())
        self.assertEqual([event["log_format"] for event in events],
                         ["stopping: the guard file {path} removed, VRRP decides"])
        self.clock.advance(5)
        self.assertEqual((self.value(), len(self.http.requests)), (None, 1))

    def test_a_stop_during_a_round_leaves_no_file(self):
        self.http.answer = None
        self.start()
        self.guard.stopService()
        self.assertIsNone(self.value())
        self.clock.advance(5)
        self.assertIsNone(self.value())

    def test_unreadable_host_addresses_let_vrrp_decide_logged_once(self):
        self.held = OSError(13, "Permission denied")
        with capturedLogs() as events:
            self.start()
            self.clock.pump([0.5] * 3)
        self.assertEqual(self.value(), VRRP_DECIDES)
        self.assertEqual(self.guard.verdict.reason, "cannot read this host's addresses (Permission denied): VRRP decides")
        self.assertIsNone(self.guard.held)
        self.assertEqual(self.readings, 4)  # retried each round
        errors = [event for event in events if event["log_level"].name == "error"]
        self.assertEqual([event["problem"] for event in errors], ["Permission denied"])

    def test_the_host_s_addresses_are_read_at_the_start_and_not_again_while_nothing_is_announced(self):
        self.start()
        self.clock.pump([0.5] * 20)
        self.assertEqual((len(self.http.requests), self.readings), (21, 1))

    def test_an_announced_change_is_read_at_the_next_round(self):
        self.start()
        self.clock.pump([0.5] * 2)
        self.held = frozenset({VIP, OTHER})  # keepalived added the VIP
        self.announce()
        self.announce()
        self.assertEqual(self.value(), STAND_DOWN)  # not before the round
        self.clock.advance(0.5)
        self.assertEqual((self.readings, self.guard.held), (2, frozenset({VIP, OTHER})))
        self.assertIn("yielding", self.guard.verdict.reason)

    def test_a_stop_or_a_reload_without_pair_stops_watching_the_host_s_addresses(self):
        self.start()
        self.assertEqual(self.clock.readers, {self.guard.addresses})
        self.guard.stopService()
        self.assertEqual((self.clock.readers, self.announcements.closed), (set(), True))
        self.announcements = FakeAnnouncements()
        self.guard.startService()
        self.assertEqual(self.clock.readers, {self.guard.addresses})
        self.guard.reconfigure(director_config(self, SERVICES))
        self.assertEqual((self.clock.readers, self.announcements.closed), (set(), True))

    def test_both_holding_the_vip_its_own_priority_from_the_state_file_decides(self):
        self.held = frozenset({VIP, OTHER})
        self.state_file.write_text("MASTER 100\n")
        self.start()
        self.assertEqual(self.value(), STAND_DOWN)  # the peer's 150 beats 100
        self.assertIn("yielding", self.guard.verdict.reason)
        self.state_file.write_text("MASTER 200\n")
        self.clock.advance(0.5)
        self.assertEqual(self.value(), VRRP_DECIDES)

    def test_the_host_s_addresses_are_kept_for_the_peer(self):
        self.start()
        self.assertEqual(self.guard.held, frozenset({OTHER}))

    def test_a_file_it_cannot_write_is_logged_once_and_shown(self):
        (self.config.path.parent / "run").rename(self.config.path.parent / "elsewhere")
        self.state_file = None
        with capturedLogs() as events:
            self.start()
            self.clock.pump([0.5] * 3)
        errors = [event for event in events if event["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("cannot write the guard file", self.guard.problem)
        self.assertIn("No such file or directory", self.guard.problem)

    def test_a_reload_with_a_new_interval_or_file_takes_effect_at_once(self):
        self.start()
        new = director_config(self, SERVICES + PAIR.replace("guard_interval = 0.5", "guard_interval = 2\n"
                                                             'guard_file = "run/other-guard"'))
        (new.path.parent / "run").mkdir()
        self.guard.reconfigure(new)
        self.assertIsNone(self.value())  # the old file released
        self.assertEqual(new.pair.guard_file.read_text(), STAND_DOWN)
        asked = len(self.http.requests)
        self.clock.advance(1.0)
        self.assertEqual(len(self.http.requests), asked)
        self.clock.advance(1.0)
        self.assertEqual(len(self.http.requests), asked + 1)

    def test_without_a_pair_table_it_does_nothing(self):
        alone = director_config(self, SERVICES)
        guard = PairGuard(alone, self.clock, PairFollower(alone, self.clock, self.http), self.http,
                          addresses=self.host())
        guard.startService()
        self.clock.advance(5)
        guard.stopService()
        self.assertEqual((self.http.requests, self.readings, guard.verdict, self.clock.readers), ([], 0, None, set()))

    def test_an_oversized_answer_is_the_peer_unheard(self):
        self.http.answer = lambda: FakeResponse(200, b" " * (MAX_ADDRESSES_BODY + 1), chunk=65536)
        self.start()
        self.assertEqual(self.value(), VRRP_DECIDES)
        self.assertIn(f"larger than {MAX_ADDRESSES_BODY} bytes", self.guard.verdict.reason)

    def test_a_refusal_is_the_peer_unheard_with_its_reason(self):
        self.http.answer = lambda: FakeResponse(401, b'{"error": "wrong token"}')
        self.start()
        self.assertEqual(self.value(), VRRP_DECIDES)
        self.assertIn("HTTP 401: wrong token", self.guard.verdict.reason)
