"""
The dashboard in a real browser: headless chromium loads the page from a
director's status listener on 127.0.0.1 (observe mode, in-memory IPVS),
runs its script, and the rendered DOM must show what the director serves,
including a health that changed between two loads. The reactor keeps
serving while chromium runs, as a child process with a time limit.

Chromium is required, not optional: `make test` installs it (Debian
package `chromium`). Set LVSFEEDBACK_SAVE_SCREENSHOT=1 to copy the
screenshot to docs/dashboard.png.
"""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from lvsfeedback.director.service import DirectorService
from lvsfeedback.ipvs.memory import MemoryIPVS
from lvsfeedback.necp.units import Service
from tests.helpers.director import HTTP, connect, write_config

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROWSERS = ("chromium", "chromium-browser")
BROWSER_TIME_LIMIT = 90.0  # seconds of real time for one chromium run
# Virtual time the page gets before its DOM is read: the history load and
# a few one-second polls.
PAGE_TIME_MS = 3500
DNS_SERVICE = Service(forwarding=3, protocol=17, port=53)


class BrowserFailed(Exception):
    pass


class _Collect(ProcessProtocol):
    def __init__(self, finished: Deferred):
        self.finished = finished
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        code = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.finished.callback((b"".join(self.out), b"".join(self.err), code))


def run_browser(executable: str, arguments: list[str], time_limit: float) -> Deferred:
    """Run chromium; (stdout, stderr, exit code), or BrowserFailed after `time_limit` seconds."""
    finished: Deferred = Deferred()
    collector = _Collect(finished)
    process = reactor.spawnProcess(collector, executable, [executable, *arguments], env=dict(os.environ))
    timer = reactor.callLater(time_limit, process.signalProcess, "TERM")

    def done(result):
        if not timer.active():
            raise BrowserFailed(f"chromium did not finish within {time_limit:g}s; stopped it")
        timer.cancel()
        return result

    return finished.addCallback(done)


class DashboardDOM(HTMLParser):
    """The rendered dashboard's cells: (service, server, field) -> text, and the summary."""

    def __init__(self, html: str):
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}
        self.summary: dict[str, str] = {}
        self.mode = ""
        self.charts: list[tuple[str, str]] = []  # (service, chart field) with at least one line
        self._service = self._server = self._chart = None
        self._capture: tuple[str, ...] | None = None
        self._text: list[str] = []
        self._depth = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section" and "data-service" in attributes:
            self._service = attributes["data-service"]
        if tag == "tr" and "data-server" in attributes:
            self._server = attributes["data-server"]
        if tag == "svg" and "data-chart" in attributes:
            self._chart = attributes["data-chart"]
        if tag == "polyline" and self._service:
            self.charts.append((self._service, self._chart))
        field = attributes.get("data-field")
        if self._capture is None and (field is not None or attributes.get("id") == "mode"):
            if tag == "td" and self._server:
                self._capture = ("cell", self._service, self._server, field)
            elif tag == "dd":
                self._capture = ("summary", field)
            elif attributes.get("id") == "mode":
                self._capture = ("mode",)
            else:
                return
            self._text = []
            self._depth = 0
        elif self._capture is not None:
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "tr":
            self._server = None
        if self._capture is None:
            return
        if self._depth:
            self._depth -= 1
            return
        text = "".join(self._text).strip()
        kind, *key = self._capture
        if kind == "cell":
            self.cells[tuple(key)] = text
        elif kind == "summary":
            self.summary[key[0]] = text
        else:
            self.mode = text
        self._capture = None

    def handle_data(self, data):
        if self._capture is not None:
            self._text.append(data)


class DashboardInBrowserTests(TestCase):
    timeout = 4 * BROWSER_TIME_LIMIT

    def setUp(self):
        self.browser = next(filter(None, map(shutil.which, BROWSERS)), None)
        if self.browser is None:
            self.fail(
                "chromium is not installed, and this test needs a real browser: "
                "apt-get install -y chromium (make test installs it)"
            )
        self.director = DirectorService(
            write_config(self, update_interval=3600), reactor, table=MemoryIPVS(), observe=True
        )
        self.director.startService()
        self.addCleanup(self.director.stopService)
        self.url = f"http://127.0.0.1:{self.director.status.port.getHost().port}/"
        self.profile = os.path.abspath(self.mktemp())
        os.makedirs(self.profile)

    def chromium(self, *arguments: str) -> Deferred:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={self.profile}", f"--virtual-time-budget={PAGE_TIME_MS}",
        ]
        return run_browser(self.browser, [*flags, *arguments, self.url], BROWSER_TIME_LIMIT)

    @inlineCallbacks
    def load(self) -> DashboardDOM:
        out, err, code = yield self.chromium("--dump-dom")
        self.assertEqual(code, 0, f"chromium failed:\n{err.decode(errors='replace')[-3000:]}")
        return DashboardDOM(out.decode())

    @inlineCallbacks
    def advance(self):
        """A weight update pass, which the listener samples into the charts' history."""
        yield self.director.updater.run_pass()

    @inlineCallbacks
    def test_the_dashboard_shows_what_the_director_serves_and_follows_changes(self):
        first = connect(self.director, 1, health=40)
        self.director.registry.servicesStarted(first, [DNS_SERVICE])
        self.director.registry.healthReported(first, DNS_SERVICE, 90, reactor.seconds())
        connect(self.director, 2, health=70)
        counters = self.director.factory.counters
        counters.refused("malformed", "192.0.2.9", "from 192.0.2.9:1: garbage")
        counters.connection_refused("allow", "192.0.2.9", "agent connection from 192.0.2.9: not in [director] allow")
        yield self.advance()

        page = yield self.load()
        self.assertEqual(page.mode, "OBSERVE: weights not written")
        self.assertEqual(page.summary["agents"], "2")
        self.assertEqual(page.summary["refused"], "2")
        web_first = {field: page.cells[("web", "10.1.0.1:80", field)] for field in
                     ("health", "desired-weight", "kernel-weight", "base-weight", "reason")}
        self.assertEqual(web_first, {"health": "40", "desired-weight": "40", "kernel-weight": "-",
                                     "base-weight": "100", "reason": "health"})
        self.assertTrue(page.cells[("web", "10.1.0.1:80", "agent")].startswith("connected"))
        self.assertEqual(page.cells[("web", "10.1.0.2:80", "health")], "70")
        self.assertEqual(page.cells[("web", "10.1.0.3:80", "agent")], "never-seen")
        self.assertEqual(page.cells[("dns", "10.1.0.1:53", "desired-weight")], "9")
        self.assertIn(("web", "weight"), page.charts)
        self.assertIn(("web", "health"), page.charts)

        self.director.registry.healthReported(first, HTTP, 85, reactor.seconds())
        yield self.advance()
        page = yield self.load()
        self.assertEqual(page.cells[("web", "10.1.0.1:80", "health")], "85")
        self.assertEqual(page.cells[("web", "10.1.0.1:80", "desired-weight")], "85")
        self.assertIn("health 85", page.cells[("web", "10.1.0.1:80", "detail")])

        screenshot = os.path.abspath(self.mktemp() + ".png")
        _, err, code = yield self.chromium(f"--screenshot={screenshot}", "--window-size=1200,800")
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        with open(screenshot, "rb") as file:
            self.assertEqual(file.read(8), b"\x89PNG\r\n\x1a\n")
        if os.environ.get("LVSFEEDBACK_SAVE_SCREENSHOT") == "1":
            os.makedirs(os.path.join(PROJECT, "docs"), exist_ok=True)
            shutil.copyfile(screenshot, os.path.join(PROJECT, "docs", "dashboard.png"))

    @inlineCallbacks
    def test_a_pair_director_shows_its_vrrp_state(self):
        path = self.director.config.path
        path.write_text(path.read_text() + '\n[pair]\nvrrp_state_file = "vrrp-VI_LVS"\npeer = "http://192.0.2.2:9101"\n')
        (path.parent / "vrrp-VI_LVS").write_text("MASTER 150\n")
        self.assertTrue(self.director.reload())
        yield self.advance()
        out, err, code = yield self.chromium("--dump-dom")
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        badge = re.search(r'<span id="vrrp" class="([^"]*)"[^>]*>([^<]*)</span>', out.decode())
        self.assertIsNotNone(badge, out.decode()[:2000])
        self.assertEqual(badge.groups(), ("badge vrrp-master", "VRRP MASTER"))
