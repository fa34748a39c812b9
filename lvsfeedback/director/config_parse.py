"""
What the director's config reader (lvsfeedback.director.config) is built
from: a TOML table that names each problem by its key and reports the keys
nobody read, and the value parsers, each returning the parsed value or
raising `_Invalid(reason)`.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import json
import math
import re
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from twisted.internet.endpoints import serverFromString

if TYPE_CHECKING:
    from lvsfeedback.director.config import _Reader

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}


E = TypeVar("E", bound=enum.StrEnum)


class _Invalid(Exception):
    """A value that does not fit its key; the message is the reason."""


_REQUIRED: Any = object()


def _show(value: object) -> str:
    """A value as it would be written in TOML, near enough for a message."""
    return json.dumps(value, default=str)


class _Table:
    """One TOML table being read. It remembers which keys were read, so that
    `finish` can report the others as unknown."""

    def __init__(self, reader: _Reader, path: str, data: Mapping[str, Any]):
        self.reader = reader
        self.path = path
        self.data = data
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str, parse: Callable[[Any], Any], default: Any = _REQUIRED) -> Any:
        """The parsed value of `name`, `default` when absent, None (reported) when invalid."""
        self.read.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                self.reader.problem(self.key(name), "is required")
                return None
            return default
        try:
            return parse(self.data[name])
        except _Invalid as error:
            self.reader.problem(self.key(name), str(error))
            return None

    def take_list(
        self, name: str, parse: Callable[[Any], Any], default: tuple[Any, ...], allow_empty: bool = True
    ) -> tuple[Any, ...]:
        """Like `take` for a list, checking each item; invalid items are left out."""
        self.read.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, list):
            self.reader.problem(self.key(name), f"must be a list, got {_show(value)}")
            return default
        if not value and not allow_empty:
            self.reader.problem(self.key(name), "must not be empty (leave it out for the default)")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(parse(item))
            except _Invalid as error:
                self.reader.problem(f"{self.key(name)}[{index}]", str(error))
        return tuple(items)

    def forbid(self, name: str, reason: str) -> None:
        """`name` must not be given here."""
        self.read.add(name)
        if name in self.data:
            self.reader.problem(self.key(name), reason)

    def skip(self, *names: str) -> None:
        """Leave `names` unjudged, neither read nor unknown."""
        self.read.update(names)

    def optional_table(self, name: str) -> _Table | None:
        self.read.add(name)
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            self.reader.problem(self.key(name), f"must be a table ([{self.key(name)}]), got {_show(value)}")
            return None
        return _Table(self.reader, self.key(name), value)

    def table(self, name: str) -> _Table:
        """The table `name`, empty when absent or invalid (and then reported)."""
        return self.optional_table(name) or _Table(self.reader, self.key(name), {})

    def tables(self, name: str) -> list[_Table]:
        """The array of tables `name` ([[name]]), each keyed name[index]."""
        self.read.add(name)
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.reader.problem(
                self.key(name), f"must be an array of tables ([[{self.key(name)}]]), got {_show(value)}"
            )
            return []
        return [_Table(self.reader, f"{self.key(name)}[{index}]", item) for index, item in enumerate(value)]

    def finish(self) -> None:
        """Report the keys nobody read: most likely typos."""
        known = sorted(self.read)
        for name in self.data:
            if name in self.read:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {_show(close[0])}?" if close else f"expected one of: {', '.join(known)}"
            self.reader.problem(self.key(name), f"unknown key; {hint}")


# Value parsers: each returns the parsed value or raises _Invalid(reason).


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_show(value)}")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty string, got {_show(value)}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}; got {_show(value)}")
        return str(value)

    return parse


def _enum(kind: type[E]) -> Callable[[object], E]:
    choose = _choice(tuple(kind))

    def parse(value: object) -> E:
        return kind(choose(value))

    return parse


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(f"must be an integer {low}..{high}, got {_show(value)}")
        return value

    return parse


def _number(check: Callable[[float], bool], description: str) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not check(value)
        ):
            raise _Invalid(f"must be {description}, got {_show(value)}")
        return float(value)

    return parse


def _seconds(check: Callable[[float], bool], bound: str) -> Callable[[object], float]:
    return _number(check, f"a number of seconds {bound}")


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_show(value)}")
    return value


def _address(value: object) -> str:
    try:
        address = ipaddress.ip_address(_string(value))
    except ValueError:
        raise _Invalid(f"must be an IPv4 or IPv6 address, got {_show(value)}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise _Invalid(f"must be an address without a %scope, got {_show(value)}")
    return str(address)


def _network(value: object) -> Network:
    try:
        return ipaddress.ip_network(_string(value))
    except ValueError as error:
        if "has host bits set" in str(error):
            network = ipaddress.ip_network(str(value), strict=False)
            raise _Invalid(f"{value} has host bits set; did you mean {network}?") from None
        raise _Invalid(f"must be an address or network such as 192.0.2.0/24, got {_show(value)}") from None


def _http_url(value: object) -> str:
    """An http:// or https:// URL of a host (and port), without a path: a status listener."""
    text = _string(value)
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number 0..65535
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname or url.path.strip("/") or url.query:
        raise _Invalid(f"must be a status listener's URL such as \"http://10.0.0.2:9101\", got {_show(value)}")
    return text.rstrip("/")


def _endpoint(value: object) -> str:
    description = _string(value)
    try:
        # Parsing a server endpoint only builds an object (ssl: reads its
        # certificate files); nothing listens, so no reactor is needed.
        serverFromString(None, description)
    except Exception as error:  # the endpoint parsers raise whatever they meet
        raise _Invalid(f"not a Twisted server endpoint ({error}), got {_show(value)}") from None
    return description


def _family_name_choice(value: object) -> int:
    return FAMILIES[_choice(tuple(FAMILIES))(value)]


def _family(network: Network) -> int:
    return socket.AF_INET6 if network.version == 6 else socket.AF_INET


def _family_name(family: int) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


_SYNTAX_LOCATION = re.compile(
    r"^(?P<message>.*?)\s*\((?:at line (?P<line>\d+), column (?P<column>\d+)|at end of document)\)$"
)


def _syntax_problem(message: str) -> str:
    """tomllib's message with the place first: 'line 3, column 7: invalid TOML: ...'."""
    match = _SYNTAX_LOCATION.match(message)
    if match is None:
        return f"invalid TOML: {message}"
    where = f"line {match['line']}, column {match['column']}" if match["line"] else "end of file"
    return f"{where}: invalid TOML: {match['message']}"
