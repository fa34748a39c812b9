"""
lvsfeedback.director.pair: the VRRP state file tap/vrrp-notify writes, the
peer's /pair/desired.json read as hostile input, and the PairFollower on a
task.Clock over a fake twisted.web IAgent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.pair import MAX_DESIRED_BODY, PairFollower, parse_desired
from lvsfeedback.director.vrrp import VRRPReading, VRRPState, read_vrrp_state
from lvsfeedback.ipvs.model import DestKey
from tests.helpers.director import RS, TOKEN, write_config
from tests.helpers.pair import FakeHTTP, FakeResponse, desired


class VRRPStateFileTests(SynchronousTestCase):
    def setUp(self):
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.path = self.folder / "vrrp-VI_LVS"

    def read(self, content: bytes) -> VRRPReading:
        self.path.write_bytes(content)
        return read_vrrp_state(self.path)

    def test_each_state_and_its_priority_are_read(self):
        for state in ("MASTER", "BACKUP", "FAULT", "STOP"):
            self.assertEqual(self.read(f"{state} 150\n".encode()), VRRPReading(VRRPState(state), 150))

    def test_a_state_without_a_priority_is_read(self):
        # keepalived may call the hook without one: it writes "STATE \n".
        self.assertEqual(self.read(b"BACKUP \n"), VRRPReading(VRRPState.BACKUP, None))

    def test_an_absent_file_is_unknown_without_a_problem(self):
        self.assertEqual(read_vrrp_state(self.path), VRRPReading(VRRPState.UNKNOWN))

    def test_garbage_is_unknown_with_the_reason(self):
        for garbage in (b"", b"master 100\n", b"MASTER high\n", b"MASTER 100 extra\n", b"MASTER 256\n",
                        b"\xff\xfe", b"MASTER " + b"1" * 300):
            reading = self.read(garbage)
            self.assertEqual(reading.state, VRRPState.UNKNOWN, garbage)
            self.assertIn("does not hold 'STATE PRIORITY'", reading.problem)

    def test_an_unreadable_file_is_unknown_with_the_reason(self):
        self.path.mkdir()
        reading = read_vrrp_state(self.path)
        self.assertEqual(reading.state, VRRPState.UNKNOWN)
        self.assertEqual(reading.problem, f"cannot read {self.path}: Is a directory")

    def test_the_file_the_hook_renames_into_place_is_read_anew(self):
        self.path.write_bytes(b"BACKUP 100\n")
        self.assertEqual(read_vrrp_state(self.path).state, VRRPState.BACKUP)
        aside = self.folder / ".vrrp-VI_LVS.new"
        aside.write_bytes(b"MASTER 100\n")
        os.rename(aside, self.path)
        self.assertEqual(read_vrrp_state(self.path).state, VRRPState.MASTER)


class DesiredDocumentTests(SynchronousTestCase):
    def test_a_good_document_gives_weights_by_service_name_and_server(self):
        answer = parse_desired(desired())
        self.assertEqual((answer.vrrp_state, answer.time), ("MASTER", 100.0))
        self.assertEqual(dict(answer.weights), {("web", RS[0]): 60, ("web", RS[1]): 30, ("web", RS[2]): 10})

    def test_an_ipv6_server_is_read(self):
        document = {"vrrp_state": "MASTER", "time": 1, "services": {"api6": {"servers": [
            {"address": "fd00::21", "port": 8443, "weight": 5}]}}}
        self.assertEqual(dict(parse_desired(json.dumps(document).encode()).weights),
                         {("api6", DestKey.of("fd00::21", 8443)): 5})

    def test_every_kind_of_garbage_is_refused_with_a_reason(self):
        good = json.loads(desired())

        def broken(change) -> bytes:
            document = json.loads(json.dumps(good))
            change(document)
            return json.dumps(document).encode()

        server = lambda document: document["services"]["web"]["servers"][0]  # noqa: E731
        cases = {
            b"not json": "Expecting value",
            b"[]": "not a JSON object",
            broken(lambda d: d.update(time=None)): '"time" is not a number',
            broken(lambda d: d.update(time=True)): '"time" is not a number',
            broken(lambda d: d.update(vrrp_state=1)): '"vrrp_state" is not a string',
            broken(lambda d: d.update(services=[])): '"services" is not an object',
            broken(lambda d: d["services"].update(web=[])): "\"servers\" is not a list",
            broken(lambda d: d["services"]["web"]["servers"].append(7)): "a server is not an object",
            broken(lambda d: server(d).update(weight=-1)): "weight -1 is not 0..65535",
            broken(lambda d: server(d).update(weight=65536)): "weight 65536 is not 0..65535",
            broken(lambda d: server(d).update(weight=1.5)): "weight 1.5 is not",
            broken(lambda d: server(d).update(weight=True)): "weight True is not",
            broken(lambda d: server(d).update(port="80")): "port '80' is not 0..65535",
            broken(lambda d: server(d).update(address="10.1.0.300")): "'10.1.0.300' is not an address",
            broken(lambda d: server(d).update(address=None)): "None is not an address",
        }
        for body, reason in cases.items():
            with self.assertRaises(ValueError, msg=body) as raised:
                parse_desired(body)
            self.assertIn(reason, str(raised.exception), body)


PAIR = """
[pair]
vrrp_state_file = "vrrp-VI_LVS"
peer = "http://10.0.0.2:9101"
peer_token_file = "status.token"
peer_timeout = 1.0
"""


class FollowerCase(SynchronousTestCase):
    """A PairFollower of a director with update_interval 2 (stale after 6 s), on a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.config = write_config(self, director=PAIR, token=True)
        self.state_file = self.config.path.parent / "vrrp-VI_LVS"
        self.http = FakeHTTP()
        self.follower = PairFollower(self.config, self.clock, self.http)

    def vrrp(self, state: str) -> None:
        self.state_file.write_text(f"{state} 100\n")

    def answer(self, body: bytes = b"", code: int = 200, **options) -> None:
        self.http.answer = lambda: FakeResponse(code, body or desired(**options))

    def logged(self, run) -> str:
        with capturedLogs() as events:
            run()
        return "\n".join(formatEvent(event) for event in events)


class PeerErrorTests(SynchronousTestCase):
    """What the follower logs of a failed fetch, through twisted.web's own Agent on a memory reactor."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        config = write_config(self, director=PAIR, token=True)
        (config.path.parent / "vrrp-VI_LVS").write_text("BACKUP 100\n")
        self.follower = PairFollower(config, self.reactor)

    def test_a_peer_that_never_accepts_the_connection_is_a_timeout(self):
        # The connection attempt is what the timeout cancels: twisted.web
        # fails with the address it was connecting to.
        self.follower.tick()
        self.reactor.advance(1.0)
        self.assertEqual(self.follower.last_error, "fetching http://10.0.0.2:9101/pair/desired.json failed: "
                                                   "no answer within 1s (peer_timeout)")

    def test_a_peer_that_accepts_and_never_answers_is_a_timeout(self):
        self.follower.tick()
        connection = self.reactor.tcpClients[0][2].buildProtocol(None)
        connection.makeConnection(StringTransport())
        self.reactor.advance(1.0)
        self.assertEqual(self.follower.last_error, "fetching http://10.0.0.2:9101/pair/desired.json failed: "
                                                   "no answer within 1s (peer_timeout)")

    def test_a_connection_lost_before_the_answer_says_so(self):
        self.follower.tick()
        connection = self.reactor.tcpClients[0][2].buildProtocol(None)
        connection.makeConnection(StringTransport())
        connection.connectionLost(Failure(ConnectionLost("reset by the peer")))
        self.assertEqual(self.follower.last_error, "fetching http://10.0.0.2:9101/pair/desired.json failed: "
                                                   "Connection to the other side was lost in a non-clean fashion: "
                                                   "reset by the peer.")


class FollowerTests(FollowerCase):
    def test_a_backup_asks_the_peer_with_its_token_and_follows_the_answer(self):
        self.vrrp("BACKUP")
        self.answer()
        self.follower.tick()
        [(method, url, headers)] = self.http.requests
        self.assertEqual((method, url), (b"GET", b"http://10.0.0.2:9101/pair/desired.json"))
        self.assertEqual(headers[b"Authorization"], [b"Bearer " + TOKEN.encode()])
        self.assertEqual(dict(self.follower.followed(self.clock.seconds())),
                         {("web", RS[0]): 60, ("web", RS[1]): 30, ("web", RS[2]): 10})
        self.assertTrue(self.follower.following)
        self.assertEqual(self.follower.last_fetch, self.clock.seconds())

    def test_a_master_neither_asks_nor_follows(self):
        self.vrrp("MASTER")
        self.answer()
        self.follower.tick()
        self.assertEqual(self.http.requests, [])
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})
        self.assertFalse(self.follower.following)

    def test_following_stops_when_the_state_becomes_master_and_says_so_once(self):
        self.vrrp("BACKUP")
        self.answer()
        self.follower.tick()
        self.assertTrue(self.follower.followed(self.clock.seconds()))
        self.vrrp("MASTER")
        log = self.logged(lambda: [self.follower.followed(self.clock.seconds()) for _ in range(3)])
        self.assertEqual(log.count("VRRP state BACKUP -> MASTER"), 1, log)
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})
        self.assertFalse(self.follower.following)

    def test_without_a_state_file_the_director_runs_its_own_policy(self):
        self.answer()
        self.follower.tick()
        self.assertEqual(self.follower.state, VRRPState.UNKNOWN)
        self.assertEqual(self.http.requests, [])
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})

    def test_garbage_in_the_state_file_is_unknown_and_logged_once(self):
        self.state_file.write_text("BACKUPP 100\n")
        log = self.logged(lambda: [self.follower.tick() for _ in range(3)])
        self.assertEqual(log.count("VRRP state unknown:"), 1, log)
        self.assertEqual(self.http.requests, [])

    def test_a_stale_answer_falls_back_to_its_own_policy_once_logged(self):
        self.vrrp("BACKUP")
        self.answer()
        self.follower.tick()
        # The master's pass time stands still: its updater stopped.
        self.clock.advance(6.5)
        self.follower.tick()
        log = self.logged(lambda: [self.follower.followed(self.clock.seconds()) for _ in range(3)])
        self.assertEqual(log.count("running its own policy: no new pass from the master for 6.5s"), 1, log)
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})
        self.answer(time=106.5)
        self.follower.tick()
        self.assertTrue(self.follower.followed(self.clock.seconds()))

    def test_a_peer_that_is_backup_too_is_not_followed(self):
        self.vrrp("BACKUP")
        self.answer(state="BACKUP")
        self.follower.tick()
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})
        self.assertEqual(self.follower.fallback, "the peer is BACKUP too")

    def test_a_director_held_in_fault_by_the_guard_follows_the_master_too(self):
        # The split-brain guard keeps the director without the address in FAULT.
        self.vrrp("FAULT")
        self.answer()
        self.follower.tick()
        self.assertEqual(len(self.http.requests), 1)
        self.assertEqual(dict(self.follower.followed(self.clock.seconds())),
                         {("web", RS[0]): 60, ("web", RS[1]): 30, ("web", RS[2]): 10})

    def test_a_peer_in_fault_too_is_not_followed(self):
        self.vrrp("FAULT")
        self.answer(state="FAULT")
        self.follower.tick()
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})
        self.assertEqual(self.follower.fallback, "the peer is FAULT too")

    def test_garbage_changes_no_weight_and_is_logged_once_per_change(self):
        self.vrrp("BACKUP")
        self.answer()
        self.follower.tick()
        good = dict(self.follower.followed(self.clock.seconds()))
        self.answer(b'{"vrrp_state": "MASTER", "time": 102, "services": {"web": {"servers": [{"port": 80, "weight": 1}]}}}')
        log = self.logged(lambda: [self.follower.tick() for _ in range(3)])
        self.assertEqual(log.count("failed: service 'web': None is not an address"), 1, log)
        self.assertEqual(self.follower.fetch_failures, 3)
        self.assertEqual(dict(self.follower.followed(self.clock.seconds())), good)

    def test_a_body_over_the_limit_is_cut_off_and_fails(self):
        self.vrrp("BACKUP")
        self.http.answer = lambda: FakeResponse(200, b" " * (MAX_DESIRED_BODY + 1), chunk=1024 * 1024)
        self.follower.tick()
        [response] = self.http.responses
        self.assertEqual(response.transport.producerState, "stopped")
        self.assertEqual(self.follower.fetch_failures, 1)
        self.assertIn(f"larger than {MAX_DESIRED_BODY} bytes", self.follower.last_error)
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})

    def test_a_refusal_by_the_peer_is_a_failure_with_its_message(self):
        self.vrrp("BACKUP")
        self.answer(b'{"error": "wrong token"}', code=401)
        self.follower.tick()
        self.assertEqual(self.follower.last_error,
                         "fetching http://10.0.0.2:9101/pair/desired.json failed: HTTP 401: wrong token")

    def test_a_peer_that_does_not_answer_times_out_and_the_next_tick_asks_again(self):
        self.vrrp("BACKUP")
        fetching = self.follower.tick()
        self.follower.tick()
        self.assertEqual(len(self.http.requests), 1, "one fetch at a time")
        self.clock.advance(1.0)
        self.assertTrue(fetching.called)
        self.assertEqual(self.follower.last_error, "fetching http://10.0.0.2:9101/pair/desired.json failed: "
                                                   "no answer within 1s (peer_timeout)")
        self.answer()
        self.follower.tick()
        self.assertEqual(len(self.http.requests), 2)
        self.assertIsNone(self.follower.last_error)

    def test_fetching_runs_on_the_update_interval_from_the_first_delay(self):
        self.vrrp("BACKUP")
        self.answer()
        self.follower.start_fetching(1.5)
        self.clock.advance(1.4)
        self.assertEqual(self.http.requests, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.http.requests), 1)
        self.clock.advance(2.0)
        self.assertEqual(len(self.http.requests), 2)
        self.follower.stop_fetching()
        self.clock.advance(10)
        self.assertEqual(len(self.http.requests), 2)

    def test_a_reload_without_pair_stops_following(self):
        self.vrrp("BACKUP")
        self.answer()
        self.follower.tick()
        self.follower.reconfigure(write_config(self))
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})
        self.follower.tick()
        self.assertEqual(len(self.http.requests), 1)

    def test_a_reload_that_names_another_peer_forgets_the_old_ones_answer(self):
        self.vrrp("BACKUP")
        self.answer()
        self.follower.tick()
        other = write_config(self, director=PAIR.replace("10.0.0.2", "10.0.0.3"), token=True)
        other.pair.vrrp_state_file.write_text("BACKUP 100\n")
        self.follower.reconfigure(other)
        self.assertEqual(self.follower.followed(self.clock.seconds()), {})
        self.follower.tick()
        self.assertEqual(self.http.requests[-1][1], b"http://10.0.0.3:9101/pair/desired.json")
        self.assertTrue(self.follower.followed(self.clock.seconds()))
