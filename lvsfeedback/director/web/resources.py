"""The status listener's HTTP resources: they translate HTTP to and from the plain objects."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.logger import Logger
from twisted.web import static
from twisted.web.resource import Resource

from lvsfeedback.addresses import describe_address
from lvsfeedback.director.pair import desired_document
from lvsfeedback.director.pair_guard import addresses_document
from lvsfeedback.director.web.control import ControlAccess, ControlError, ControlPanel
from lvsfeedback.director.web.history import History
from lvsfeedback.director.web.prometheus import metrics_registry
from lvsfeedback.director.web.status import build_status

JSON_TYPE = b"application/json"
BEARER_CHALLENGE = b'Bearer realm="lvsfeedback"'
# The dashboard's files come from this package and nowhere else; the policy
# makes the browser refuse anything else, injected or not.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DASHBOARD_FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


def _json(request, code: int, document: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=1).encode() + b"\n"


def peer_name(request) -> str:
    return describe_address(request.getClientAddress())


class JSONResource(Resource):
    """A leaf whose refusals are JSON too, 405 included."""

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET", b"HEAD")

    def render(self, request):
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _json(request, 405, {"error": f"{request.method.decode('latin-1')} is not allowed here; use "
                                                 f"{' or '.join(m.decode() for m in self.methods if m != b'HEAD')}"})
        return super().render(request)


class StatusResource(JSONResource):
    def __init__(self, director):
        super().__init__()
        self.director = director

    def render_GET(self, request):
        return _json(request, 200, build_status(self.director, self.director.reactor.seconds()))


class HistoryResource(JSONResource):
    def __init__(self, history: History):
        super().__init__()
        self.history = history

    def render_GET(self, request):
        return _json(request, 200, self.history.document())


class MetricsResource(JSONResource):
    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class ControlResource(JSONResource):
    """POST /control/ACTION with a JSON object; answers JSON, refusals included."""

    methods = (b"POST",)
    log = Logger()

    def __init__(self, panel: ControlPanel, access: ControlAccess):
        super().__init__()
        self.panel = panel
        self.access = access

    def render_POST(self, request):
        who = peer_name(request)
        action = b"/".join(request.postpath).decode("utf-8", "replace")
        try:
            self.access.check(request)
            answer = self.panel.act(action, self._body(request), who)
        except ControlError as error:
            self.log.warn(
                "control: refused {who} ({code}) {action}: {message}",
                who=who, code=error.code, action=action, message=error.message,
            )
            if error.code == 401:
                request.setHeader(b"www-authenticate", BEARER_CHALLENGE)
            return _json(request, error.code, {"error": error.message, **error.extra})
        return _json(request, 200, answer)

    @staticmethod
    def _body(request) -> dict[str, Any]:
        # JSON only: a page on another site can make a browser post a form
        # here without asking, but not a JSON request (that needs CORS consent).
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != JSON_TYPE:
            raise ControlError(415, "send the request as Content-Type: application/json")
        try:
            document = json.loads(request.content.read() or b"null")
        except ValueError as error:
            raise ControlError(400, f"the body is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise ControlError(400, 'the body must be a JSON object such as {"service": "web", "server": "10.1.0.1:80"}')
        return document


class PairResource(JSONResource):
    """A document of the pair endpoint, for the other director of a pair; allowed as control is."""

    def __init__(self, director, access: ControlAccess):
        super().__init__()
        self.director = director
        self.access = access

    def render_GET(self, request):
        try:
            self.access.check(request, "the pair endpoint")
        except ControlError as error:
            if error.code == 401:
                request.setHeader(b"www-authenticate", BEARER_CHALLENGE)
            return _json(request, error.code, {"error": error.message})
        try:
            return _json(request, 200, self.document())
        except ControlError as error:
            return _json(request, error.code, {"error": error.message})

    def document(self) -> dict[str, Any]:
        raise NotImplementedError


class PairDesiredResource(PairResource):
    """GET /pair/desired.json: the last pass's desired weights, for the other director to follow while it stands by."""

    def document(self) -> dict[str, Any]:
        return desired_document(self.director.updater.last, self.director.pair.state)


class PairAddressesResource(PairResource):
    """
    GET /pair/addresses.json: the addresses this host held at its guard's
    last reading (at most [pair] guard_interval old), for the other
    director's split-brain guard (director/pair_guard.py).
    """

    def document(self) -> dict[str, Any]:
        pair = self.director.pair
        try:
            return addresses_document(self.director.guard.held, str(pair.state), pair.priority)
        except ValueError as error:
            raise ControlError(503, str(error)) from None


def _dashboard_file(name: str) -> bytes:
    return resources.files("lvsfeedback.director").joinpath("static", name).read_bytes()


class DashboardFile(static.Data):
    """One of the dashboard's files, sent with a policy that allows only this listener's own."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render_GET(request)


def status_root(director, access: ControlAccess, history: History) -> Resource:
    """The resource tree of the status listener."""
    root = Resource()
    for path, (name, kind) in DASHBOARD_FILES.items():
        root.putChild(path, DashboardFile(_dashboard_file(name), kind.decode()))
    root.putChild(b"status.json", StatusResource(director))
    root.putChild(b"history.json", HistoryResource(history))
    root.putChild(b"metrics", MetricsResource(metrics_registry(director)))
    root.putChild(b"control", ControlResource(ControlPanel(director), access))
    pair = Resource()
    pair.putChild(b"desired.json", PairDesiredResource(director, access))
    pair.putChild(b"addresses.json", PairAddressesResource(director, access))
    root.putChild(b"pair", pair)
    return root
