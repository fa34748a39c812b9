"""
The C{http} metric: GET a URL whose body is a load figure, either the whole
body or one field of a JSON document.
"""

from __future__ import annotations

import json
import math
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from lvsfeedback.agent.metrics.errors import MetricReadError
from lvsfeedback.agent.metrics.interfaces import ILoadMetric
from lvsfeedback.agent.metrics.scale import HealthScale
from lvsfeedback.quiet_http import quiet_agent

_HEADERS = Headers({b"User-Agent": [b"lvsfeedback-agent"]})


def field_value(document: object, field: str) -> object:
    """
    The value at dotted path C{field} in a JSON document; a part that is a
    whole number indexes a list (C{servers.0.load}).

    @raise KeyError: when the path leads nowhere.
    """
    value = document
    for part in field.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(field)
    return value


@implementer(ILoadMetric)
class HTTPMetric:
    """GETs C{url} and scales the number in its answer."""

    def __init__(self, reactor, url: str, field: str | None, timeout: float, scale: HealthScale):
        self._reactor = reactor
        self._agent = quiet_agent(reactor, connectTimeout=timeout)
        self.url = url
        self.field = field
        self.timeout = timeout
        self.scale = scale

    def reading(self) -> Deferred[float]:
        """A Deferred firing with the number the URL answered."""
        answer = self._agent.request(b"GET", self.url.encode("ascii"), _HEADERS)
        answer.addCallback(self._read)
        answer.addErrback(self._failed)
        answer.addTimeout(self.timeout, self._reactor, onTimeoutCancel=self._timed_out)
        return answer

    def _timed_out(self, result: object, timeout: float) -> Failure:
        return Failure(MetricReadError(f"no answer from {self.url} within {timeout:g} s"))

    def _failed(self, reason: Failure) -> Failure:
        if reason.check(MetricReadError):
            return reason
        if reason.check(ResponseFailed):
            detail = "; ".join(cause.getErrorMessage() for cause in reason.value.reasons)
        else:
            detail = reason.getErrorMessage()
        return Failure(MetricReadError(f"GET {self.url} failed: {detail}"))

    def _read(self, response) -> Deferred[float]:
        def parse(body: bytes) -> float:
            if response.code != 200:
                raise MetricReadError(
                    f"{self.url} answered {response.code} "
                    f"{response.phrase.decode('latin-1')}"
                )
            return self.parse(body)

        return readBody(response).addCallback(parse)

    def parse(self, body: bytes) -> float:
        """The number in C{body}: the body itself, or its JSON C{field}."""
        if self.field is None:
            value: object = body.decode("utf-8", "replace").strip()
            try:
                number = float(value)  # type: ignore[arg-type]
            except ValueError:
                raise MetricReadError(f"{self.url} answered {value!r:.60}, not a number") from None
        else:
            try:
                value = field_value(json.loads(body), self.field)
            except ValueError:
                raise MetricReadError(f"{self.url} answered something that is not JSON") from None
            except KeyError:
                raise MetricReadError(f"{self.url} has no field {self.field!r}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MetricReadError(
                    f"field {self.field!r} of {self.url} is {value!r:.60}, not a number"
                )
            number = float(value)
        if not math.isfinite(number):
            raise MetricReadError(f"{self.url} answered {number}, not a finite number")
        return number

    def sample(self) -> Deferred[float]:
        return self.reading().addCallback(self.scale.health)


def build(options, environment) -> HTTPMetric:
    """C{http:url=U[,field=a.b,timeout=2,low=0,high=100]}."""
    url = options.text("url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or not url.isascii():
        raise options.error(f"key 'url' must be an http:// or https:// URL in ASCII, got {url!r}")
    field = options.text("field", None)
    return HTTPMetric(
        environment.reactor,
        url,
        field,
        options.number("timeout", 2.0, positive=True),
        options.scale(0.0, 100.0),
    )
