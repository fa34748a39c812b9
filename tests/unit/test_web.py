"""
The director's status listener in memory: a DirectorService on a task.Clock
with an in-memory IPVS table, and HTTP requests fed byte by byte to the
twisted.web Site over a StringTransport. Status, history, metrics, the
dashboard's files, and every control action and refusal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.config import load_config
from lvsfeedback.director.policy import DRAINED, Pinned
from lvsfeedback.director.protocol import Agent
from lvsfeedback.director.service import DirectorService
from lvsfeedback.director.web import (
    DASHBOARD_FILES,
    MAX_BODY,
    ControlAccess,
    History,
    StatusSite,
    build_status,
    is_local,
    parse_service_key,
    status_root,
)
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.ipvs.model import DestCounters, DestKey, ServiceKey
from lvsfeedback.necp.units import Service

WEB = ServiceKey.for_address("tcp", "10.0.0.1", 80)
DNS = ServiceKey.for_address("udp", "10.0.0.2", 53)
RS = [DestKey.of(f"10.1.0.{n}", 80) for n in (1, 2, 3)]
HTTP = Service(forwarding=3, protocol=6, port=80)
TOKEN = "s3cret-token"

CONFIG = """
[director]
listen = "tcp:0:interface=127.0.0.1"
update_interval = {update_interval}
{director}

[status]
listen = "{status_listen}"
{status}

[policy]
mode = "health"  # these tests assert base x health weights
smoothing_half_life = 0
hysteresis = 0
slow_start = 0
panic_threshold = 0.5

[[service]]
name = "web"
protocol = "tcp"
address = "10.0.0.1"
port = 80
[[service.real]]
address = "10.1.0.1"
weight = 100
[[service.real]]
address = "10.1.0.2"
weight = 100
[[service.real]]
address = "10.1.0.3"
weight = 50

[[service]]
name = "dns"
protocol = "udp"
address = "10.0.0.2"
port = 53
[[service.real]]
address = "10.1.0.1"
weight = 10
"""


def write_config(case, director: str = "", token: bool = False, update_interval: float = 2.0,
                 status_listen: str = "tcp:0:interface=127.0.0.1"):
    """A director config in a fresh folder; with `token`, a token file beside it."""
    folder = case.mktemp()
    os.makedirs(folder)
    status = ""
    if token:
        with open(os.path.join(folder, "status.token"), "w") as file:
            file.write(TOKEN + "\n")
        status = 'token_file = "status.token"'
    path = os.path.join(folder, "director.toml")
    with open(path, "w") as file:
        file.write(CONFIG.format(director=director, status=status, update_interval=update_interval,
                                 status_listen=status_listen))
    return load_config(path)


def connect(director, n: int, health: int | None = None) -> Agent:
    """Agent 10.1.0.N comes up, starts tcp/80 and (optionally) reports `health`."""
    agent = Agent(f"10.1.0.{n}", 40000 + n, n)
    director.registry.agentUp(agent)
    director.registry.servicesStarted(agent, [HTTP])
    if health is not None:
        director.registry.healthReported(agent, HTTP, health, director.reactor.seconds())
    return agent


def server_status(status: dict, service: str, server: str) -> dict:
    [found] = [
        entry
        for entry in next(s for s in status["services"] if s["name"] == service)["servers"]
        if entry["server"] == server
    ]
    return found


@dataclass
class Response:
    code: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(site, method: bytes, path: bytes, *, body: bytes = b"", headers: dict[bytes, bytes] | None = None,
         peer: str = "127.0.0.1") -> Response:
    """One HTTP/1.1 request through `site` in memory, as bytes on the wire."""
    channel, transport = open_channel(site, peer=peer)
    sent = {b"host": b"127.0.0.1:9101", b"connection": b"close", **(headers or {})}
    if body:
        sent[b"content-length"] = str(len(body)).encode()
    head = b"".join(b"%s: %s\r\n" % item for item in sent.items())
    channel.dataReceived(b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, path, head, body))
    raw = transport.value()
    channel.connectionLost(None)
    return parse_response(raw)


def open_channel(site, *, peer: str = "127.0.0.1"):
    """A connection to `site` in memory: its HTTP channel and its transport."""
    client = IPv4Address("TCP", peer, 50123)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9101), peerAddress=client)
    channel = site.buildProtocol(client)
    channel.makeConnection(transport)
    return channel, transport


def parse_response(raw: bytes) -> Response:
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    answer_headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        answer_headers[name.lower()] = value
    return Response(int(status_line.split()[1]), answer_headers, payload)


def post_json(site, action: str, document, *, token: str | None = None, **options) -> Response:
    headers = {b"content-type": b"application/json", **options.pop("headers", {})}
    if token is not None:
        headers[b"authorization"] = b"Bearer " + token.encode()
    return http(site, b"POST", b"/control/" + action.encode(), body=json.dumps(document).encode(),
                headers=headers, **options)


class DirectorCase(SynchronousTestCase):
    """A director on a task.Clock: its updater runs, nothing listens."""

    loopback_only = True
    token = False
    director_options = ""
    observe = None

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(5000)
        self.table = MemoryIPVS()
        self.director = DirectorService(
            write_config(self, self.director_options, token=self.token), self.clock, table=self.table,
            observe=self.observe,
        )
        self.director.updater.startService()
        self.addCleanup(self.director.updater.stopService)
        self.history = History()
        access = ControlAccess(lambda: self.loopback_only, lambda: self.director.config.status.token_file)
        self.site = StatusSite(status_root(self.director, access, self.history), access=access, reactor=self.clock)

    def tick(self, seconds: float = 2.0) -> None:
        self.clock.advance(seconds)

    def status(self) -> dict:
        response = http(self.site, b"GET", b"/status.json")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.headers[b"content-type"], b"application/json")
        return response.json()


class StatusTests(DirectorCase):
    def test_every_configured_service_is_listed_with_its_servers_and_base_weights(self):
        status = self.status()
        self.assertEqual([s["name"] for s in status["services"]], ["web", "dns"])
        web = status["services"][0]
        self.assertEqual(web["virtual_service"], "TCP 10.0.0.1:80")
        self.assertEqual(web["scheduler"], "wlc")
        self.assertEqual(
            [(s["server"], s["base_weight"]) for s in web["servers"]],
            [("10.1.0.1:80", 100), ("10.1.0.2:80", 100), ("10.1.0.3:80", 50)],
        )
        self.assertEqual(status["services"][1]["servers"][0]["server"], "10.1.0.1:53")

    def test_a_server_shows_kernel_weight_policy_weight_and_why(self):
        connect(self.director, 1, health=40)
        self.tick()
        server = server_status(self.status(), "web", "10.1.0.1:80")
        self.assertEqual(server["kernel_weight"], 40)
        self.assertEqual(server["desired_weight"], 40)
        self.assertEqual(server["reason"], "health")
        self.assertEqual(server["detail"], "health 40 (smoothed 40.0)")
        self.assertFalse(server["pending"])

    def test_latest_health_its_age_and_the_agent_state_are_shown(self):
        connect(self.director, 1, health=40)
        self.tick(1.5)
        status = self.status()
        first = server_status(status, "web", "10.1.0.1:80")
        self.assertEqual(first["health"]["value"], 40)
        self.assertEqual(first["health"]["age"], 1.5)
        self.assertEqual(first["agent"]["state"], "connected")
        self.assertEqual(first["agent"]["for"], 1.5)
        never = server_status(status, "web", "10.1.0.2:80")
        self.assertEqual((never["agent"]["state"], never["health"]), ("never-seen", None))
        self.assertEqual(
            status["agents"],
            [{"address": "10.1.0.1", "connected_at": 5000.0, "connected_for": 1.5, "services": ["tcp/80"],
              "health": [{"service": "tcp/80", "value": 40, "age": 1.5}]}],
        )

    def test_a_lost_agent_shows_as_lost_with_the_lost_agent_reason(self):
        agent = connect(self.director, 3, health=80)
        self.tick()
        self.director.registry.agentLost(agent, "3 keepalives unanswered")
        self.tick()
        server = server_status(self.status(), "web", "10.1.0.3:80")
        self.assertEqual(server["agent"]["state"], "lost")
        self.assertEqual((server["reason"], server["kernel_weight"]), ("lost-agent", 0))

    def test_ipvs_counters_of_each_server_are_shown(self):
        self.table.set_counters(WEB, RS[1], DestCounters(7, 3, 120, 5, 61))
        self.tick()
        counters = server_status(self.status(), "web", "10.1.0.2:80")["counters"]
        self.assertEqual(
            counters,
            {"active_connections": 7, "inactive_connections": 3, "connections": 120, "connection_rate": 5,
             "packet_rate": 61},
        )

    def test_panic_is_flagged_per_service(self):
        for n in (1, 2, 3):
            connect(self.director, n, health=0)
        self.tick()
        services = {s["name"]: s for s in self.status()["services"]}
        self.assertTrue(services["web"]["panic"])
        self.assertEqual((services["web"]["serving"], services["web"]["considered"]), (0, 3))
        self.assertFalse(services["dns"]["panic"])
        self.assertEqual(server_status(self.status(), "web", "10.1.0.1:80")["reason"], "panic")

    def test_pass_statistics_are_shown(self):
        connect(self.director, 1, health=40)
        self.tick()
        self.tick(0.5)
        passes = self.status()["passes"]
        self.assertEqual((passes["total"], passes["failed"]), (2, 0))
        self.assertEqual(passes["writes"], self.director.updater.writes)
        self.assertGreater(passes["writes"], 0)
        self.assertEqual(passes["last"]["age"], 0.5)
        # 10.1.0.1:80 follows its health; 10.1.0.1:53 keeps its weight while its agent may still START it.
        self.assertEqual(passes["last"]["changes"], 1)

    def test_a_drained_server_shows_its_override(self):
        self.director.updater.overrides[WEB, RS[0]] = DRAINED
        self.director.updater.overrides[WEB, RS[1]] = Pinned(7)
        self.tick()
        status = self.status()
        self.assertEqual(server_status(status, "web", "10.1.0.1:80")["override"], "drained")
        self.assertEqual(server_status(status, "web", "10.1.0.2:80")["override"], "pinned 7")
        self.assertIsNone(server_status(status, "web", "10.1.0.3:80")["override"])

    def test_status_cannot_be_posted_to(self):
        response = http(self.site, b"POST", b"/status.json", body=b"{}")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers[b"allow"], b"GET, HEAD")
        self.assertIn("POST is not allowed", response.json()["error"])


class ObserveStatusTests(DirectorCase):
    observe = True

    def test_observe_mode_shows_the_weights_the_kernel_does_not_get(self):
        connect(self.director, 1, health=30)
        self.tick()
        status = self.status()
        self.assertTrue(status["director"]["observe"])
        server = server_status(status, "web", "10.1.0.1:80")
        self.assertEqual((server["kernel_weight"], server["desired_weight"], server["pending"]), (None, 30, True))
        self.assertFalse(status["services"][0]["in_kernel"])
        self.assertEqual(status["passes"]["writes"], 0)


class HistoryTests(DirectorCase):
    def test_history_keeps_samples_of_the_last_window_only(self):
        history = History(window=5)
        connect(self.director, 1, health=40)
        self.tick()
        history.record(self.director, self.clock.seconds())
        first = self.clock.seconds()
        self.tick(3)
        history.record(self.director, self.clock.seconds())
        self.assertEqual([sample["time"] for sample in history.samples], [first, first + 3])
        self.tick(3)
        history.record(self.director, self.clock.seconds())
        self.assertEqual([sample["time"] for sample in history.samples], [first + 3, first + 6])
        self.assertEqual(history.samples[-1]["services"]["web"]["10.1.0.1:80"], [40, 40, 40])
        self.assertEqual(history.samples[-1]["services"]["web"]["10.1.0.2:80"], [100, 100, None])

    def test_history_samples_say_what_the_status_says_of_every_server(self):
        connect(self.director, 1, health=40)
        connect(self.director, 2, health=70)
        self.tick()
        connect(self.director, 3, health=55)  # health known, not yet acted on
        history = History()
        history.record(self.director, self.clock.seconds())
        status = self.status()
        expected = {
            service["name"]: {
                server["server"]: [server["kernel_weight"], server["desired_weight"],
                                   None if server["health"] is None else server["health"]["value"]]
                for server in service["servers"]
            }
            for service in status["services"]
        }
        self.assertEqual(history.samples[-1], {"time": status["director"]["time"], "services": expected})

    def test_samples_of_the_same_servers_share_their_names(self):
        # 150 samples of 10,000 servers took 240 MB with a name per server and sample.
        history = History()
        history.record(self.director, self.clock.seconds())
        self.tick()
        history.record(self.director, self.clock.seconds())
        first, second = (services["web"][0] for _, services in history._samples)
        self.assertEqual(first, ("10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"))
        self.assertIs(first, second)

    def test_history_is_served_for_the_dashboard(self):
        self.history.record(self.director, self.clock.seconds())
        document = http(self.site, b"GET", b"/history.json").json()
        self.assertEqual(document["fields"], ["kernel_weight", "desired_weight", "health"])
        self.assertEqual(document["samples"][0]["services"]["dns"], {"10.1.0.1:53": [10, 10, None]})


class MetricsTests(DirectorCase):
    def scrape(self) -> dict:
        response = http(self.site, b"GET", b"/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers[b"content-type"].startswith(b"text/plain"))
        samples = {}
        for family in text_string_to_metric_families(response.body.decode()):
            for sample in family.samples:
                samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    @staticmethod
    def labels(service="web", virtual="TCP 10.0.0.1:80", server="10.1.0.1:80", **extra):
        return tuple(sorted({"service": service, "virtual_service": virtual, "server": server, **extra}.items()))

    def test_metrics_show_agents_health_weights_and_passes(self):
        connect(self.director, 1, health=40)
        connect(self.director, 2)
        self.tick()
        samples = self.scrape()
        self.assertEqual(samples["lvsfeedback_agents_connected", ()], 2)
        self.assertEqual(samples["lvsfeedback_server_health", self.labels()], 40)
        self.assertNotIn(("lvsfeedback_server_health", self.labels(server="10.1.0.2:80")), samples)
        self.assertEqual(samples["lvsfeedback_server_kernel_weight", self.labels()], 40)
        self.assertEqual(samples["lvsfeedback_server_desired_weight", self.labels()], 40)
        self.assertEqual(samples["lvsfeedback_server_weight_reason", self.labels(reason="health")], 1)
        self.assertEqual(samples["lvsfeedback_server_kernel_weight", self.labels(server="10.1.0.3:80")], 50)
        self.assertEqual(samples["lvsfeedback_update_passes_total", ()], 2)
        self.assertEqual(samples["lvsfeedback_update_passes_failed_total", ()], 0)
        self.assertEqual(samples["lvsfeedback_weight_writes_total", ()], self.director.updater.writes)
        self.assertEqual(
            samples["lvsfeedback_update_pass_duration_seconds", ()], round(self.director.updater.last.duration, 6)
        )
        self.assertEqual(samples["lvsfeedback_observe_mode", ()], 0)
        self.assertEqual(samples["lvsfeedback_service_panic", (("service", "web"), ("virtual_service", "TCP 10.0.0.1:80"))], 0)

    def test_metrics_follow_the_director_between_scrapes(self):
        connect(self.director, 1, health=40)
        self.tick()
        self.assertEqual(self.scrape()["lvsfeedback_server_health", self.labels()], 40)
        for n in (1, 2, 3):
            connect(self.director, n, health=0)
        self.tick()
        samples = self.scrape()
        self.assertEqual(samples["lvsfeedback_server_health", self.labels()], 0)
        self.assertEqual(samples["lvsfeedback_service_panic", (("service", "web"), ("virtual_service", "TCP 10.0.0.1:80"))], 1)
        self.assertEqual(samples["lvsfeedback_agents_connected", ()], 3)

    def test_only_the_directors_metrics_are_exposed(self):
        names = {name for name, _ in self.scrape()}
        self.assertTrue(all(name.startswith("lvsfeedback_") for name in names), names)


class DashboardTests(DirectorCase):
    def test_the_page_loads_its_script_and_style_from_the_director_only(self):
        page = http(self.site, b"GET", b"/")
        self.assertEqual(page.code, 200)
        self.assertEqual(page.headers[b"content-type"], b"text/html; charset=utf-8")
        self.assertIn(b"default-src 'self'", page.headers[b"content-security-policy"])
        self.assertIn(b'<script src="dashboard.js"', page.body)
        self.assertIn(b'href="dashboard.css"', page.body)
        script = http(self.site, b"GET", b"/dashboard.js")
        self.assertEqual((script.code, script.headers[b"content-type"]), (200, b"text/javascript; charset=utf-8"))
        self.assertIn(b'fetch("status.json"', script.body)
        style = http(self.site, b"GET", b"/dashboard.css")
        self.assertEqual(style.headers[b"content-type"], b"text/css; charset=utf-8")

    def test_no_dashboard_file_refers_to_another_host(self):
        for path in DASHBOARD_FILES:
            body = http(self.site, b"GET", b"/" + path).body.decode()
            # The SVG namespace is a name, not a place the browser fetches from.
            body = body.replace('"http://www.w3.org/2000/svg"', "")
            self.assertNotIn("http://", body, path)
            self.assertNotIn("https://", body, path)
            self.assertNotIn("//cdn", body, path)


class ControlTests(DirectorCase):
    def test_drain_gives_weight_zero_on_the_next_pass_and_says_so(self):
        connect(self.director, 1, health=90)
        self.tick()
        response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["override"], "drained")
        self.assertIs(self.director.updater.overrides[WEB, RS[0]], DRAINED)
        self.tick()
        self.assertEqual(self.table.table()[WEB].dests[RS[0]].server.weight, 0)
        self.assertEqual(server_status(self.status(), "web", "10.1.0.1:80")["reason"], "drained")

    def test_undrain_returns_the_server_to_feedback(self):
        connect(self.director, 1, health=90)
        post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"})
        self.tick()
        response = post_json(self.site, "undrain", {"service": "web", "server": "10.1.0.1:80"})
        self.assertEqual((response.json()["previous"], response.json()["override"]), ("drained", None))
        self.assertNotIn((WEB, RS[0]), self.director.updater.overrides)
        self.tick()
        self.assertEqual(self.table.table()[WEB].dests[RS[0]].server.weight, 90)

    def test_pin_holds_a_weight_and_takes_the_service_as_ipvsadm_writes_it(self):
        connect(self.director, 2, health=90)
        response = post_json(self.site, "pin", {"service": "TCP 10.0.0.1:80", "server": "10.1.0.2:80", "weight": 7})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(self.director.updater.overrides[WEB, RS[1]], Pinned(7))
        self.tick()
        self.assertEqual(self.table.table()[WEB].dests[RS[1]].server.weight, 7)

    def test_a_server_may_be_named_by_its_address_alone_when_unambiguous(self):
        response = post_json(self.site, "drain", {"service": "dns", "server": "10.1.0.1"})
        self.assertEqual(response.json()["server"], "10.1.0.1:53")
        self.assertIs(self.director.updater.overrides[DNS, DestKey.of("10.1.0.1", 53)], DRAINED)

    def test_control_logs_who_asked_for_what(self):
        with capturedLogs() as events:
            post_json(self.site, "pin", {"service": "web", "server": "10.1.0.3:80", "weight": 12}, peer="127.0.0.9")
        [event] = [e for e in events if e.get("action") == "pin"]
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["who"], "127.0.0.9:50123")
        self.assertEqual((event["server"], event["now"]), ("10.1.0.3:80", "pinned 12"))

    def test_unknown_server_is_404_with_the_known_ones(self):
        response = post_json(self.site, "drain", {"service": "web", "server": "10.9.9.9:80"})
        self.assertEqual(response.code, 404)
        self.assertEqual(response.headers[b"content-type"], b"application/json")
        self.assertIn("no real server '10.9.9.9:80' in service web", response.json()["error"])
        self.assertEqual(response.json()["servers"], ["10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"])
        self.assertEqual(self.director.updater.overrides, {})

    def test_unknown_service_is_404(self):
        response = post_json(self.site, "drain", {"service": "mail", "server": "10.1.0.1:80"})
        self.assertEqual(response.code, 404)
        self.assertIn("no service 'mail'; configured: web (TCP 10.0.0.1:80), dns (UDP 10.0.0.2:53)",
                      response.json()["error"])

    def test_unknown_action_is_404(self):
        response = post_json(self.site, "reboot", {"service": "web", "server": "10.1.0.1:80"})
        self.assertEqual(response.code, 404)
        self.assertIn("no control action 'reboot'", response.json()["error"])

    def test_control_by_get_is_405(self):
        response = http(self.site, b"GET", b"/control/drain")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers[b"allow"], b"POST")
        self.assertIn("use POST", response.json()["error"])

    def test_a_form_post_is_refused(self):
        response = http(self.site, b"POST", b"/control/drain", body=b"service=web&server=10.1.0.1:80",
                        headers={b"content-type": b"application/x-www-form-urlencoded"})
        self.assertEqual(response.code, 415)
        self.assertEqual(self.director.updater.overrides, {})

    def test_a_bad_weight_or_missing_field_is_400(self):
        for document, message in (
            ({"service": "web", "server": "10.1.0.1:80", "weight": 70000}, '"weight" must be an integer 0..65535'),
            ({"service": "web", "server": "10.1.0.1:80", "weight": "7"}, '"weight" must be an integer'),
            ({"service": "web"}, '"server" is required'),
        ):
            response = post_json(self.site, "pin", document)
            self.assertEqual(response.code, 400, document)
            self.assertIn(message, response.json()["error"])
        response = http(self.site, b"POST", b"/control/pin", body=b"{not json",
                        headers={b"content-type": b"application/json"})
        self.assertEqual(response.code, 400)
        self.assertEqual(self.director.updater.overrides, {})

    def test_without_a_token_a_name_other_than_localhost_is_refused(self):
        # A hostile page could point its own name at 127.0.0.1 (DNS rebinding).
        response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"},
                             headers={b"host": b"attacker.example:9101"})
        self.assertEqual(response.code, 403)
        self.assertEqual(self.director.updater.overrides, {})
        for host in (b"localhost:9101", b"[::1]:9101", b"127.0.0.1"):
            response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"},
                                 headers={b"host": host})
            self.assertEqual(response.code, 200, host)


DRAIN_HEAD = (
    b"POST /control/drain HTTP/1.1\r\nHost: 127.0.0.1:9101\r\nContent-Type: application/json\r\n%s\r\n"
)
DRAIN_BODY = json.dumps({"service": "web", "server": "10.1.0.1:80"}).encode()


def chunked(body: bytes, size: int) -> bytes:
    """`body` in chunks of `size` bytes, chunked transfer coding, without the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in
                    (body[at:at + size] for at in range(0, len(body), size)))


class RequestBodyLimitTests(DirectorCase):
    """A body is judged on its headers, before any of it is read."""

    def recorded_requests(self) -> list:
        """The requests the site makes from now on."""
        made = []
        make = self.site.requestFactory

        def record(*args, **kwargs):
            made.append(make(*args, **kwargs))
            return made[-1]

        self.site.requestFactory = record
        return made

    def test_a_body_over_the_limit_is_refused_on_its_headers_alone(self):
        channel, transport = open_channel(self.site)
        channel.dataReceived(DRAIN_HEAD % b"Content-Length: 50000000\r\n")
        response = parse_response(transport.value())
        self.assertEqual(response.code, 413)
        self.assertIn(f"at most {MAX_BODY} bytes", response.json()["error"])
        self.assertTrue(transport.disconnecting)

    def test_a_refused_body_is_not_kept_when_it_comes_anyway(self):
        made = self.recorded_requests()
        channel, transport = open_channel(self.site)
        channel.dataReceived(DRAIN_HEAD % b"Content-Length: 50000000\r\n")
        channel.dataReceived(b"x" * 100_000)
        [request] = made
        self.assertIsNone(request.content)
        self.assertEqual(self.director.updater.overrides, {})

    def test_a_refused_body_gets_no_100_continue_after_the_refusal(self):
        channel, transport = open_channel(self.site)
        channel.dataReceived(DRAIN_HEAD % b"Content-Length: 50000000\r\nExpect: 100-continue\r\n")
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertEqual(parse_response(transport.value()).code, 413)

    def test_a_chunked_body_is_cut_off_at_the_limit(self):
        made = self.recorded_requests()
        channel, transport = open_channel(self.site)
        channel.dataReceived(DRAIN_HEAD % b"Transfer-Encoding: chunked\r\n")
        channel.dataReceived(chunked(b"x" * (MAX_BODY + 1), 4096))
        self.assertEqual(parse_response(transport.value()).code, 413)
        self.assertTrue(transport.disconnecting)
        [request] = made
        self.assertLessEqual(request.content.tell(), MAX_BODY)

    def test_a_chunked_drain_within_the_limit_is_obeyed(self):
        channel, transport = open_channel(self.site)
        channel.dataReceived(DRAIN_HEAD % b"Transfer-Encoding: chunked\r\n" + chunked(DRAIN_BODY, 10) + b"0\r\n\r\n")
        self.assertEqual(parse_response(transport.value()).code, 200, transport.value())
        self.assertIs(self.director.updater.overrides[WEB, RS[0]], DRAINED)

    def test_a_body_at_the_limit_is_read(self):
        body = DRAIN_BODY[:-1] + b" " * (MAX_BODY - len(DRAIN_BODY)) + b"}"
        response = http(self.site, b"POST", b"/control/drain", body=body,
                        headers={b"content-type": b"application/json"})
        self.assertEqual(response.code, 200, response.body)


class NetworkListenerWithoutTokenTests(DirectorCase):
    loopback_only = False

    def test_control_is_refused_before_the_body_is_sent(self):
        channel, transport = open_channel(self.site, peer="192.0.2.7")
        channel.dataReceived(DRAIN_HEAD % b"Content-Length: 100\r\n")
        self.assertEqual(parse_response(transport.value()).code, 403)
        self.assertTrue(transport.disconnecting)

    def test_control_is_refused_with_a_clear_message(self):
        response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"})
        self.assertEqual(response.code, 403)
        self.assertIn("[status] token_file is not set", response.json()["error"])
        self.assertEqual(self.director.updater.overrides, {})

    def test_status_is_still_served(self):
        self.assertEqual(len(self.status()["services"]), 2)


class NetworkListenerWithTokenTests(DirectorCase):
    loopback_only = False
    token = True

    def test_no_token_is_401(self):
        response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"})
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers[b"www-authenticate"], b'Bearer realm="lvsfeedback"')
        self.assertIn("control needs a token", response.json()["error"])

    def test_no_token_is_401_before_the_body_is_sent(self):
        channel, transport = open_channel(self.site, peer="192.0.2.7")
        channel.dataReceived(DRAIN_HEAD % b"Content-Length: 50000000\r\n")
        response = parse_response(transport.value())
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers[b"www-authenticate"], b'Bearer realm="lvsfeedback"')
        self.assertTrue(transport.disconnecting)

    def test_a_token_is_checked_before_the_size(self):
        # A stranger learns nothing about what it may send.
        channel, transport = open_channel(self.site, peer="192.0.2.7")
        channel.dataReceived(DRAIN_HEAD % b"Content-Length: 50000000\r\nAuthorization: Bearer guess\r\n")
        self.assertEqual(parse_response(transport.value()).code, 401)

    def test_the_right_token_with_a_body_over_the_limit_is_413(self):
        channel, transport = open_channel(self.site, peer="192.0.2.7")
        channel.dataReceived(DRAIN_HEAD % f"Content-Length: 50000000\r\nAuthorization: Bearer {TOKEN}\r\n".encode())
        self.assertEqual(parse_response(transport.value()).code, 413)

    def test_wrong_token_is_401(self):
        with capturedLogs() as events:
            response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"}, token="guess")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.json()["error"], "wrong token")
        self.assertEqual(self.director.updater.overrides, {})
        [refusal] = [e for e in events if e.get("code") == 401]
        self.assertEqual(refusal["log_level"], LogLevel.warn)

    def test_the_right_token_is_obeyed(self):
        response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"}, token=TOKEN)
        self.assertEqual(response.code, 200, response.body)
        self.assertIs(self.director.updater.overrides[WEB, RS[0]], DRAINED)


class LoopbackListenerWithTokenTests(DirectorCase):
    token = True

    def test_a_configured_token_is_required_on_loopback_too(self):
        response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"})
        self.assertEqual(response.code, 401)
        response = post_json(self.site, "drain", {"service": "web", "server": "10.1.0.1:80"}, token=TOKEN)
        self.assertEqual(response.code, 200)


class AddressTests(SynchronousTestCase):
    def test_only_loopback_and_unix_listeners_are_local(self):
        self.assertTrue(is_local(IPv4Address("TCP", "127.0.0.1", 9101)))
        self.assertTrue(is_local(IPv6Address("TCP", "::1", 9101)))
        self.assertTrue(is_local(UNIXAddress(b"/run/lvsfeedback.sock")))
        self.assertFalse(is_local(IPv4Address("TCP", "0.0.0.0", 9101)))
        self.assertFalse(is_local(IPv6Address("TCP", "::", 9101)))
        self.assertFalse(is_local(IPv4Address("TCP", "192.0.2.7", 9101)))

    def test_services_are_named_as_ipvsadm_writes_them(self):
        self.assertEqual(parse_service_key("TCP 10.0.0.1:80"), WEB)
        self.assertEqual(parse_service_key("tcp  10.0.0.1:80"), WEB)
        self.assertEqual(parse_service_key("TCP [2001:db8:0::1]:443"), ServiceKey.for_address("tcp", "2001:db8::1", 443))
        self.assertEqual(parse_service_key("FWM 5"), ServiceKey.for_fwmark(5))
        self.assertIsNone(parse_service_key("web"))
        self.assertIsNone(parse_service_key("TCP 10.0.0.300:80"))
