"""The http metric against a twisted.web server on 127.0.0.1."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.errors import MetricReadError, MetricSpecError
from lvsfeedback.agent.metrics.http import field_value
from lvsfeedback.agent.metrics.spec import MetricRegistry

DOCUMENT = {"load": {"value": 30}, "servers": [{"load": 10}], "state": "busy", "up": True}


class Unavailable(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(503)
        return b"40"


class NeverAnswers(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render_GET(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class HTTPMetricTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        root = Resource()
        root.putChild(b"load", Data(b"42\n", "text/plain"))
        root.putChild(b"status", Data(json.dumps(DOCUMENT).encode(), "application/json"))
        root.putChild(b"text", Data(b"busy", "text/plain"))
        root.putChild(b"unavailable", Unavailable())
        self.slow = NeverAnswers()
        root.putChild(b"slow", self.slow)
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    def metric(self, spec: str):
        return MetricRegistry.discover().build(spec, MetricEnvironment(reactor)).metric

    @inlineCallbacks
    def test_plain_body_is_the_load(self):
        metric = self.metric(f"http:url={self.base}/load")
        self.assertEqual((yield metric.reading()), 42.0)
        self.assertEqual((yield metric.sample()), 58.0)

    @inlineCallbacks
    def test_client_does_not_log_each_connection(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.metric(f"http:url={self.base}/load").sample()
        client_events = [formatEvent(e) for e in events if "Client" in formatEvent(e)]
        self.assertEqual(client_events, [])

    @inlineCallbacks
    def test_json_field_by_dotted_path(self):
        metric = self.metric(f"http:url={self.base}/status,field=load.value,high=60")
        self.assertEqual((yield metric.sample()), 50.0)

    @inlineCallbacks
    def test_json_field_through_a_list_index(self):
        metric = self.metric(f"http:url={self.base}/status,field=servers.0.load")
        self.assertEqual((yield metric.reading()), 10.0)

    @inlineCallbacks
    def test_refusals_say_what_was_wrong(self):
        cases = {
            f"http:url={self.base}/status,field=load.missing": "has no field 'load.missing'",
            f"http:url={self.base}/status,field=state": "is 'busy', not a number",
            f"http:url={self.base}/status,field=up": "is True, not a number",
            f"http:url={self.base}/text,field=load": "answered something that is not JSON",
            f"http:url={self.base}/load,field=load": "has no field 'load'",
            f"http:url={self.base}/text": "answered 'busy', not a number",
            f"http:url={self.base}/unavailable": "answered 503 Service Unavailable",
            f"http:url={self.base}/nowhere": "answered 404 Not Found",
        }
        for spec, expected in cases.items():
            error = yield self.assertFailure(self.metric(spec).sample(), MetricReadError)
            self.assertIn(expected, str(error), spec)

    @inlineCallbacks
    def test_no_answer_within_the_timeout_fails(self):
        metric = self.metric(f"http:url={self.base}/slow,timeout=0.2")
        error = yield self.assertFailure(metric.sample(), MetricReadError)
        self.assertEqual(str(error), f"no answer from {self.base}/slow within 0.2 s")
        self.assertEqual(len(self.slow.requests), 1)

    @inlineCallbacks
    def test_closed_port_fails(self):
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        metric = self.metric(f"http:url=http://127.0.0.1:{number}/load")
        error = yield self.assertFailure(metric.sample(), MetricReadError)
        self.assertRegex(str(error), r"^GET http://127.0.0.1:\d+/load failed: .*refused")


class HTTPSpecTests(SynchronousTestCase):
    def test_url_must_be_http(self) -> None:
        registry = MetricRegistry.discover()
        for url in ("ftp://host/load", "http:/load", "/load", "http://hôte/load"):
            error = self.assertRaises(
                MetricSpecError, registry.build, f"http:url={url}", MetricEnvironment(reactor)
            )
            self.assertIn("must be an http:// or https:// URL", str(error))

    def test_field_value_walks_dicts_and_lists(self) -> None:
        self.assertEqual(field_value(DOCUMENT, "servers.0.load"), 10)
        self.assertRaises(KeyError, field_value, DOCUMENT, "servers.1.load")
        self.assertRaises(KeyError, field_value, DOCUMENT, "load.value.deeper")
