"""The status listener: its site, its requests judged on their headers, and its service."""

from __future__ import annotations

import json

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http import RESPONSES
from zope.interface import implementer

from lvsfeedback.director.config import IReconfigurable
from lvsfeedback.director.listening import MovablePort
from lvsfeedback.director.web.control import ControlAccess, ControlError, is_local
from lvsfeedback.director.web.history import History
from lvsfeedback.director.web.resources import BEARER_CHALLENGE, JSON_TYPE, peer_name, status_root

# A control request is a JSON object of a few fields; a body larger than this
# is refused on its headers, before it is read.
MAX_BODY = 64 * 1024


class StatusRequest(server.Request):
    """
    A request whose body is judged on its headers, before any of it is
    read (twisted.web would read it all before rendering). Only control
    requests take a body, so a body's sender must be allowed control, and
    the body may be at most MAX_BODY bytes: a stranger's 50 MB is refused
    with a 401 on its headers, not read first. A chunked body, whose size
    the headers do not tell, is cut off where it passes the limit. A refusal
    is answered at once and the connection closed.
    """

    log = Logger()
    _refused = False
    _received = 0

    def gotLength(self, length):
        if length != 0:  # None: chunked
            try:
                self.channel.site.access.check(self)
                if length is not None and length > MAX_BODY:
                    raise _too_large()
            except ControlError as error:
                self._refuse(error)
                return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse(_too_large())
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, error: ControlError) -> None:
        """Answer `error` and close, before the body: the request is never rendered."""
        self._refused = True
        self.log.warn("control: refused {who} ({code}) before its body: {message}",
                      who=peer_name(self), code=error.code, message=error.message)
        # twisted.web would promise the body it is refusing (100 Continue) after the answer.
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps({"error": error.message, **error.extra}, indent=1).encode() + b"\n"
        head = [
            b"HTTP/1.1 %d %s" % (error.code, RESPONSES[error.code]),
            b"Content-Type: " + JSON_TYPE,
            b"Cache-Control: no-store",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if error.code == 401:
            head.append(b"WWW-Authenticate: " + BEARER_CHALLENGE)
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.loseConnection()


def _too_large() -> ControlError:
    return ControlError(413, f"the body must be at most {MAX_BODY} bytes: a control request is a small JSON object")


class StatusSite(server.Site):
    """The status listener's site; `access` judges control requests (see L{StatusRequest})."""

    noisy = False
    requestFactory = StatusRequest

    def __init__(self, resource, *, access: ControlAccess, **kwargs):
        super().__init__(resource, **kwargs)
        self.access = access

    def log(self, request):
        """No access log: the dashboard polls every second, and control actions log themselves."""


@implementer(IReconfigurable)
class StatusListener(Service):
    """
    The status listener as a child service of the director, on the endpoint
    `[status] listen` names, and the sampler of the charts' history. A
    listener that cannot start is logged and the director balances on
    without it: status is not worth an outage. A reload that names a new
    endpoint moves it there, or leaves it where it was if it cannot.
    """

    log = Logger()

    def __init__(self, director, reactor):
        self.director = director
        self.reactor = reactor
        self.history = History()
        access = ControlAccess(lambda: self.loopback_only, lambda: self.director.config.status.token_file)
        self.site = StatusSite(status_root(director, access, self.history), access=access, reactor=reactor)
        self.ports = MovablePort(reactor, self.site, "the status listener")

    @property
    def port(self):
        """The listening port, or None while it listens nowhere."""
        return self.ports.port

    @property
    def loopback_only(self) -> bool:
        return self.port is not None and is_local(self.port.getHost())

    def startService(self):
        super().startService()
        # A sample of the last pass, then one of every pass: weights change
        # only in passes, and a sample in the pass's own turn of the reactor
        # costs far less than one on a timer of its own (the caches are warm).
        if self.director.updater.last is not None:
            self.history.record(self.director.updater.last)
        self.director.updater.pass_listeners.append(self.history.record)
        listen = self.director.config.status.listen
        self.ports.listen_on(listen).addErrback(self._cannot_listen, listen)

    def reconfigure(self, config) -> None:
        """
        IReconfigurable: a new `[status] listen` is listened on, then the
        old port closed; the token file is read anew by each request.
        """
        if self.running and config.status.listen != self.ports.listen:
            self.ports.move_to(config.status.listen)

    def _cannot_listen(self, failure, description: str) -> None:
        self.log.critical(
            "the status listener cannot listen on {listen}: {reason}; the director runs without it",
            listen=description, reason=failure.getErrorMessage(),
        )

    def stopService(self):
        super().stopService()
        self.director.updater.pass_listeners.remove(self.history.record)
        return self.ports.close()
