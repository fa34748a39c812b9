"""
A director of a VRRP pair end to end on a task.Clock: its updater writes a
MemoryIPVS, its follower asks a fake peer, and its status listener is
spoken to in memory. The backup writes the master's weights; after a
takeover its first pass moves none by more than hysteresis; status.json,
/metrics, /pair/desired.json and `lvsfeedback status` show the pair.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.cli import format_status
from lvsfeedback.director.service import DirectorService
from lvsfeedback.director.web.control import ControlAccess
from lvsfeedback.director.web.history import History
from lvsfeedback.director.web.listener import StatusSite
from lvsfeedback.director.web.resources import status_root
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.ipvs.model import EditDest, RealServer
from tests.helpers.director import RS, TOKEN, WEB, connect, director_config, http
from tests.helpers.pair import FakeHTTP, FakeResponse, desired

CONFIG = """
[director]
listen = "tcp:0:interface=127.0.0.1"
update_interval = 2.0
adoption_grace = 0

[status]
listen = "tcp:0:interface=127.0.0.1"
{token}

[policy]
mode = "capacity"
hysteresis = 0.1
slow_start = 0

[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80
[[service.real]]
address = "10.1.0.1"
[[service.real]]
address = "10.1.0.2"
[[service.real]]
address = "10.1.0.3"

{pair}
"""

PAIR = """
[pair]
vrrp_state_file = "vrrp-VI_LVS"
peer = "http://10.0.0.2:9101"
peer_token_file = "status.token"
"""


class PairDirectorCase(SynchronousTestCase):
    """A director of a pair (with [pair] unless `pair` is False), its updater and follower running."""

    pair = True
    token = True
    loopback_only = True

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(5000)
        self.table = MemoryIPVS()
        self.http = FakeHTTP()
        self.http.answer = lambda: FakeResponse(200, desired(time=self.clock.seconds()))
        text = CONFIG.format(token='token_file = "status.token"' if self.token else "", pair=PAIR if self.pair else "")
        config = director_config(self, text, {"status.token": TOKEN + "\n"})
        self.state_file = config.path.parent / "vrrp-VI_LVS"
        self.director = DirectorService(config, self.clock, table=self.table, http=self.http)
        self.writes: list[list] = []
        apply = self.table.apply
        self.table.apply = lambda changes: (self.writes.append(list(changes)), apply(changes))[1]
        self.director.updater.startService()
        self.director.ask_ahead_of_passes()
        self.addCleanup(self.director.updater.stopService)
        self.addCleanup(self.director.pair.stopService)
        access = ControlAccess(lambda: self.loopback_only, lambda: self.director.config.status.token_file)
        # The host's addresses, as the guard's rtnetlink dump would give them (read every round: not watched).
        self.held = frozenset({"10.0.0.1", "10.0.0.3"})
        self.director.guard.addresses.dump = lambda: self.held
        self.site = StatusSite(status_root(self.director, access, History()), access=access, reactor=self.clock)

    def vrrp(self, state: str) -> None:
        self.state_file.write_text(f"{state} 100\n")

    def weights(self) -> dict:
        return {dest: found.server.weight for dest, found in self.table.table()[WEB].dests.items()}

    def get(self, path: bytes, token: str | None = TOKEN, **options):
        headers = {} if token is None else {b"authorization": b"Bearer " + token.encode()}
        return http(self.site, b"GET", path, headers=headers, **options)


class BackupTests(PairDirectorCase):
    def test_a_backup_writes_the_masters_weights_into_its_table(self):
        self.vrrp("BACKUP")
        for n in (1, 2, 3):
            connect(self.director, n, health=50)
        self.clock.advance(2.0)
        self.assertEqual(self.weights(), {RS[0]: 60, RS[1]: 30, RS[2]: 10})
        reasons = {d.reason for d in self.director.updater.last.services[WEB].decision.servers.values()}
        self.assertEqual(reasons, {"following"})
        self.assertTrue(self.director.pair.following)

    def test_a_new_master_moves_no_weight_by_more_than_hysteresis_at_its_first_pass(self):
        self.vrrp("BACKUP")
        # Its own agents say 10.1.0.1 is busy and 10.1.0.3 idle, far from the master's view.
        for n, health in ((1, 10), (2, 50), (3, 95)):
            connect(self.director, n, health=health)
        self.clock.advance(2.0)
        followed = self.weights()
        self.assertEqual(followed, {RS[0]: 60, RS[1]: 30, RS[2]: 10})
        self.writes.clear()
        self.vrrp("MASTER")
        with capturedLogs() as events:
            self.clock.advance(2.0)
        self.assertIn("VRRP state BACKUP -> MASTER", [formatEvent(event) for event in events])
        self.assertFalse(self.director.pair.following)
        decisions = self.director.updater.last.services[WEB].decision.servers
        self.assertEqual({d.reason for d in decisions.values()}, {"capacity"})
        for dest, decision in decisions.items():
            self.assertLessEqual(abs(decision.weight - followed[dest]), 0.1 * followed[dest], decision.detail)
        edits = [change for changes in self.writes for change in changes if isinstance(change, EditDest)]
        self.assertEqual(edits, [], "nothing moved by hysteresis or more")
        # Its own controller takes over from there.
        self.clock.advance(2.0)
        self.assertNotEqual(self.weights(), followed)

    def test_a_backup_whose_master_stops_answering_falls_back_to_its_own_policy(self):
        self.vrrp("BACKUP")
        for n in (1, 2, 3):
            connect(self.director, n, health=50)
        self.clock.advance(2.0)
        self.http.answer = lambda: FakeResponse(503, b'{"error": "down"}')
        for _ in range(4):
            for n in (1, 2, 3):
                connect(self.director, n, health=50)
            self.clock.advance(2.0)
        reasons = {d.reason for d in self.director.updater.last.services[WEB].decision.servers.values()}
        self.assertEqual(reasons, {"capacity"})
        self.assertGreaterEqual(self.director.pair.fetch_failures, 3)


class PairStatusTests(PairDirectorCase):
    def test_status_shows_the_vrrp_state_and_the_following(self):
        self.vrrp("BACKUP")
        self.clock.pump([1.5, 0.5])  # the fetch half a second ahead of the pass
        pair = self.get(b"/status.json").json()["pair"]
        self.assertEqual(pair["vrrp_state"], "BACKUP")
        self.assertEqual(pair["priority"], 100)
        self.assertEqual(pair["peer"], "http://10.0.0.2:9101")
        self.assertTrue(pair["following"])
        self.assertEqual(pair["last_fetch"], 5001.5)
        self.assertIsNone(pair["last_error"])
        self.assertEqual((pair["since"], pair["for"]), (5001.5, 0.5))

    def test_status_shows_why_a_backup_does_not_follow(self):
        self.vrrp("BACKUP")
        self.http.answer = lambda: FakeResponse(401, b'{"error": "wrong token"}')
        self.clock.advance(2.0)
        pair = self.get(b"/status.json").json()["pair"]
        self.assertFalse(pair["following"])
        self.assertEqual(pair["last_error"],
                         "fetching http://10.0.0.2:9101/pair/desired.json failed: HTTP 401: wrong token")
        self.assertEqual(pair["fetch_failures"], 1)

    def test_metrics_show_one_series_per_vrrp_state_the_following_and_the_failures(self):
        self.vrrp("BACKUP")
        self.clock.advance(2.0)
        samples = {}
        for family in text_string_to_metric_families(self.get(b"/metrics").body.decode()):
            for sample in family.samples:
                samples[sample.name, tuple(sample.labels.items())] = sample.value
        states = {labels[0][1]: value for (name, labels), value in samples.items() if name == "lvsfeedback_vrrp_state"}
        self.assertEqual(states, {"MASTER": 0, "BACKUP": 1, "FAULT": 0, "STOP": 0, "unknown": 0})
        self.assertEqual(samples["lvsfeedback_pair_following", ()], 1)
        self.assertEqual(samples["lvsfeedback_pair_peer_fetch_failures_total", ()], 0)

    def test_the_cli_prints_the_pair_in_one_line(self):
        self.vrrp("BACKUP")
        self.clock.pump([1.5, 0.5, 1.5, 0.5])
        text = format_status(self.get(b"/status.json").json(), "http://127.0.0.1:9101")
        [line] = [line for line in text.splitlines() if line.startswith("pair:")]
        self.assertEqual(line, "pair: VRRP BACKUP (priority 100) for 2.5s; following http://10.0.0.2:9101, "
                               "last fetch 0.5s ago")


    def test_status_and_the_cli_show_the_split_brain_guard_s_verdict(self):
        self.vrrp("BACKUP")
        self.director.guard.tick()  # the fake peer answers with a document that is not /pair/addresses.json
        guard = self.get(b"/status.json").json()["pair"]["guard"]
        self.assertEqual((guard["stand_down"], guard["problem"]), (False, None))
        self.assertIn("the peer is not heard", guard["reason"])
        text = format_status(self.get(b"/status.json").json(), "http://127.0.0.1:9101")
        [line] = [line for line in text.splitlines() if line.startswith("pair:")]
        self.assertIn("; split-brain guard: the peer is not heard (", line)
        self.assertTrue(line.endswith("VRRP decides"), line)


class DesiredEndpointTests(PairDirectorCase):
    def test_the_last_passs_desired_weights_are_served_with_the_vrrp_state(self):
        self.vrrp("MASTER")
        connect(self.director, 1, health=50)
        self.clock.advance(2.0)
        response = self.get(b"/pair/desired.json")
        self.assertEqual(response.code, 200, response.body)
        document = response.json()
        last = self.director.updater.last
        self.assertEqual((document["vrrp_state"], document["time"]), ("MASTER", last.time))
        decided = last.services[WEB].decision.servers
        self.assertEqual(document["services"]["web"], {
            "virtual_service": "TCP 10.0.0.1:80",
            "servers": [{"address": dest.address, "port": 80, "weight": decided[dest].weight,
                         "reason": str(decided[dest].reason)} for dest in RS],
        })

    def test_a_weight_hysteresis_held_back_is_served_as_the_kernel_holds_it(self):
        self.vrrp("MASTER")
        for n in (1, 2, 3):
            connect(self.director, n, health=50)
        self.clock.advance(2.0)
        wanted = self.director.updater.last.services[WEB].decision.servers[RS[0]].weight
        # The table a few percent off what the policy wants: within hysteresis, not rewritten.
        held = round(wanted * 0.95)
        self.table.apply([EditDest(WEB, RealServer(RS[0], held))])
        self.clock.advance(2.0)
        decision = self.director.updater.last.services[WEB].decision.servers[RS[0]]
        self.assertFalse(decision.write)
        self.assertNotEqual(decision.weight, held)
        served = {(s["address"], s["weight"]) for s in self.get(b"/pair/desired.json").json()["services"]["web"]["servers"]}
        self.assertIn((RS[0].address, held), served)
        self.assertEqual(served, {(dest.address, weight) for dest, weight in self.weights().items()})

    def test_before_the_first_pass_there_is_nothing_to_follow(self):
        self.director.updater.last = None
        self.assertEqual(self.get(b"/pair/desired.json").json(), {"vrrp_state": "unknown", "time": None, "services": {}})

    def test_the_token_is_required(self):
        for token, code in ((None, 401), ("wrong", 401), (TOKEN, 200)):
            response = self.get(b"/pair/desired.json", token=token)
            self.assertEqual(response.code, code, token)
        self.assertEqual(self.get(b"/pair/desired.json", token=None).headers[b"www-authenticate"],
                         b'Bearer realm="lvsfeedback"')

    def test_it_cannot_be_posted_to(self):
        self.assertEqual(http(self.site, b"POST", b"/pair/desired.json").code, 405)


class AddressesEndpointTests(PairDirectorCase):
    def test_the_host_s_addresses_are_served_as_the_guard_last_read_them_with_the_vrrp_state(self):
        self.vrrp("MASTER")
        self.clock.advance(2.0)
        self.director.guard.tick()
        response = self.get(b"/pair/addresses.json")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json(), {"addresses": ["10.0.0.1", "10.0.0.3"], "vrrp_state": "MASTER",
                                           "priority": 100})
        self.held = frozenset({"10.0.0.3"})  # keepalived took the VIP away: served from the next round
        self.assertEqual(self.get(b"/pair/addresses.json").json()["addresses"], ["10.0.0.1", "10.0.0.3"])
        self.director.guard.tick()
        self.assertEqual(self.get(b"/pair/addresses.json").json()["addresses"], ["10.0.0.3"])

    def test_before_the_guard_s_first_reading_the_peer_is_told_to_come_back(self):
        response = self.get(b"/pair/addresses.json")
        self.assertEqual((response.code, response.json()),
                         (503, {"error": "this host's addresses have not been read yet"}))

    def test_the_token_is_required(self):
        self.director.guard.tick()
        for token, code in ((None, 401), ("wrong", 401), (TOKEN, 200)):
            self.assertEqual(self.get(b"/pair/addresses.json", token=token).code, code, token)


class NetworkListenerWithoutTokenTests(PairDirectorCase):
    token = False
    loopback_only = False

    def test_the_desired_weights_are_refused_without_a_token_file(self):
        response = self.get(b"/pair/desired.json", token=None)
        self.assertEqual(response.code, 403)
        self.assertIn("the pair endpoint is refused: this status listener is reachable from the network",
                      response.json()["error"])


class AloneTests(PairDirectorCase):
    pair = False

    def test_without_pair_nothing_is_followed_nor_shown(self):
        self.vrrp("BACKUP")
        connect(self.director, 1, health=50)
        self.clock.advance(2.0)
        self.assertEqual(self.http.requests, [])
        self.assertIsNone(self.get(b"/status.json").json()["pair"])
        names = {family.name for family in text_string_to_metric_families(self.get(b"/metrics").body.decode())}
        self.assertFalse({"lvsfeedback_vrrp_state", "lvsfeedback_pair_following"} & names)
        self.assertNotIn("pair:", format_status(self.get(b"/status.json").json(), "http://127.0.0.1:9101"))

    def test_a_reload_that_adds_pair_starts_following(self):
        self.vrrp("BACKUP")
        path = self.director.config.path
        path.write_text(path.read_text() + PAIR)
        self.assertTrue(self.director.reload())
        for n in (1, 2, 3):
            connect(self.director, n, health=50)
        self.clock.advance(2.0)
        self.assertEqual(self.weights(), {RS[0]: 60, RS[1]: 30, RS[2]: 10})


class PeerRequestLogTests(SynchronousTestCase):
    def test_asking_the_peer_adds_no_line_per_connection_to_the_log(self):
        """
        The follower and the guard each open a connection to the peer every
        round (twice a second between them): Twisted's own "Starting factory"
        and "Stopping factory" lines for each would bury the director's log
        (four lines a second in run O).
        """
        reactor = MemoryReactorClock()
        config = director_config(self, CONFIG.format(token="", pair=PAIR), {"status.token": TOKEN + "\n"})
        director = DirectorService(config, reactor, table=MemoryIPVS())
        director.guard.addresses.dump = lambda: frozenset({"10.0.0.1"})
        with capturedLogs() as events:
            director.pair.fetch()
            director.guard.tick()
            for _, _, factory, _, _ in reactor.tcpClients:
                # What a real connector does around one connection.
                factory.doStart()
                factory.buildProtocol(None).makeConnection(StringTransport())
                factory.doStop()
        self.assertEqual([port for _, port, *_ in reactor.tcpClients], [9101, 9101])
        self.assertEqual([formatEvent(event) for event in events if "factory" in formatEvent(event)], [])
