"""The control API's logic and who may use it: drain, undrain, pin; loopback or a token."""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger

from lvsfeedback.director.policy import DRAINED, Pinned
from lvsfeedback.director.web.status import describe_override
from lvsfeedback.ipvs.model import MAX_WEIGHT, DestKey, ServiceKey


class ControlError(Exception):
    """A control request refused: the HTTP status and a message for people."""

    def __init__(self, code: int, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


_SERVICE_ADDRESS = re.compile(r"^(?P<protocol>tcp|udp|sctp)\s+\[?(?P<address>[^\]\s]+?)\]?:(?P<port>\d+)$", re.I)
_SERVICE_MARK = re.compile(r"^fwm\s+(?P<mark>\d+)(?P<v6>\s+ipv6)?$", re.I)
_SERVER = re.compile(r"^\[?(?P<address>[^\]]+?)\]?(?::(?P<port>\d+))?$")


def parse_service_key(text: str) -> ServiceKey | None:
    """A virtual service in ipvsadm's words ("TCP 10.0.0.1:80", "FWM 5"); None if it is not one."""
    text = " ".join(text.split())
    try:
        if match := _SERVICE_ADDRESS.match(text):
            return ServiceKey.for_address(match["protocol"].lower(), match["address"], int(match["port"]))
        if match := _SERVICE_MARK.match(text):
            return ServiceKey.for_fwmark(int(match["mark"]), socket.AF_INET6 if match["v6"] else socket.AF_INET)
    except ValueError:
        return None
    return None


class ControlPanel:
    """The operator overrides: drain, undrain and pin one real server."""

    log = Logger()

    def __init__(self, director):
        self.director = director

    def find_service(self, text: str):
        for service in self.director.config.services:
            if service.name == text:
                return service
        key = parse_service_key(text)
        for service in self.director.config.services:
            if service.key == key:
                return service
        known = ", ".join(f"{service.name} ({service.key})" for service in self.director.config.services)
        raise ControlError(404, f"no service {text!r}; configured: {known or 'none'}")

    def find_server(self, service, text: str) -> DestKey:
        """
        The member named `text` ("10.1.0.1:80"; the address alone when only
        one port has it), among those the last pass weighed.
        """
        last = self.director.updater.last
        service_pass = last.services.get(service.key) if last is not None else None
        members = list(service_pass.members) if service_pass is not None else []
        match = _SERVER.match(text.strip())
        try:
            address = str(ipaddress.ip_address(match["address"])) if match else None
        except ValueError:
            address = None
        if address is not None:
            candidates = [
                dest for dest in members
                if dest.address == address and (match["port"] is None or dest.port == int(match["port"]))
            ]
            if len(candidates) == 1:
                return candidates[0]
            if len(candidates) > 1:
                raise ControlError(
                    400, f"{text} names several real servers of {service.name}; add the port",
                    servers=[str(dest) for dest in candidates],
                )
        raise ControlError(
            404, f"no real server {text!r} in service {service.name} ({service.key})",
            servers=[str(dest) for dest in members],
        )

    def act(self, action: str, request: dict[str, Any], who: str) -> dict[str, Any]:
        """Carry out `action` as asked in `request` (a decoded JSON object) by `who`."""
        if action not in ("drain", "undrain", "pin"):
            raise ControlError(404, f"no control action {action!r}; use drain, undrain or pin")
        service = self.find_service(_text_field(request, "service"))
        dest = self.find_server(service, _text_field(request, "server"))
        updater = self.director.updater
        if action == "drain":
            previous = updater.set_override(service.key, dest, DRAINED)
        elif action == "pin":
            previous = updater.set_override(service.key, dest, Pinned(_weight_field(request)))
        else:
            previous = updater.clear_override(service.key, dest)
        previous = describe_override(previous)
        now = describe_override(updater.overrides.get((service.key, dest)))
        self.log.info(
            "control: {who} asked to {action} {server} of {service}: {previous} -> {now}",
            who=who, action=action, server=str(dest), service=f"{service.name} ({service.key})",
            previous=previous or "feedback", now=now or "feedback",
        )
        return {
            "action": action,
            "service": service.name,
            "virtual_service": str(service.key),
            "server": str(dest),
            "previous": previous,
            "override": now,
            "applies": f"on the next weight update pass (every {self.director.config.director.update_interval:g}s)",
        }


def _text_field(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ControlError(400, f'"{name}" is required: a non-empty string')
    return value


def _weight_field(request: dict[str, Any]) -> int:
    value = request.get("weight")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise ControlError(400, f'"weight" must be an integer 0..{MAX_WEIGHT}, got {json.dumps(value)}')
    return value


def is_local(address) -> bool:
    """Can only this host reach a listener bound to `address`?"""
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, IPv4Address | IPv6Address):
        return ipaddress.ip_address(address.host.split("%")[0]).is_loopback
    return False


@dataclass
class ControlAccess:
    """
    Who may use the control API. `loopback_only` and `token_file` are asked
    on each request, so a reload that sets a token file applies at once.
    """

    loopback_only: Callable[[], bool]
    token_file: Callable[[], Any]

    def check(self, request, what: str = "control") -> None:
        """Refuse `request` (a ControlError) unless it may use `what`: control, or the pair endpoint."""
        path = self.token_file()
        if path is not None:
            self._check_token(request, path, what)
            return
        if not self.loopback_only():
            raise ControlError(
                403,
                f"{what} is refused: this status listener is reachable from the network and "
                "[status] token_file is not set; set a token file, or listen on loopback only",
            )
        # Without a token, only the listener's locality protects control. A
        # web page's script could still reach a loopback listener through a
        # name it points at 127.0.0.1 (DNS rebinding); such requests name
        # that host, so only address literals and localhost are taken.
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not _local_host_name(host):
            raise ControlError(403, f"{what} without a token takes Host: localhost or an address, not {host!r}")

    @staticmethod
    def _check_token(request, path, what: str) -> None:
        try:
            expected = path.read_bytes().strip()
        except OSError as error:
            raise ControlError(503, f"cannot read the token file {path}: {error.strerror}") from None
        given = request.getHeader(b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise ControlError(401, f"{what} needs a token: send Authorization: Bearer <token from [status] token_file>")
        if not hmac.compare_digest(token.strip(), expected):
            raise ControlError(401, "wrong token")


_HOST = re.compile(r"^(?:\[(?P<bracketed>[^\]]+)\]|(?P<name>[^:]+))(?::\d+)?$")


def _local_host_name(host: str) -> bool:
    """Is a Host header `localhost` or an address literal, port aside?"""
    match = _HOST.match(host)
    if match is None:
        return False
    name = match["bracketed"] or match["name"]
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
