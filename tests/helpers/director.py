"""
What the director's unit tests share: a director config on disk (the one
with a status listener and three real servers) and agents that come up in
its registry without a connection; HTTP requests through a status site in
memory, as bytes on the wire.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from lvsfeedback.director.config import DirectorConfig, load_config
from lvsfeedback.director.events import Agent
from lvsfeedback.ipvs.model import DestKey, ServiceKey
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


def write_director_config(case, text: str, files: Mapping[str, str | bytes] | None = None) -> str:
    """
    C{text} (dedented) as director.toml in a fresh folder of C{case}, with
    C{files} (name to content) beside it, as a token or secret file; its path.
    """
    folder = case.mktemp()
    os.makedirs(folder)
    for name, content in (files or {}).items():
        with open(os.path.join(folder, name), "wb" if isinstance(content, bytes) else "w") as file:
            file.write(content)
    path = os.path.join(folder, "director.toml")
    with open(path, "w") as file:
        file.write(textwrap.dedent(text))
    return path


def director_config(case, text: str, files: Mapping[str, str | bytes] | None = None) -> DirectorConfig:
    """L{write_director_config}, loaded."""
    return load_config(write_director_config(case, text, files))


def write_config(case, director: str = "", token: bool = False, update_interval: float = 2.0,
                 status_listen: str = "tcp:0:interface=127.0.0.1") -> DirectorConfig:
    """The status tests' director config (L{CONFIG}); with C{token}, a token file beside it."""
    text = CONFIG.format(director=director, status='token_file = "status.token"' if token else "",
                         update_interval=update_interval, status_listen=status_listen)
    return director_config(case, text, {"status.token": TOKEN + "\n"} if token else None)


def agent_up(registry, n: int, health: int | None = None, *, now: float = 0.0, port: int = 40000) -> Agent:
    """
    Agent 10.1.0.N comes up in C{registry} (without a connection), starts
    tcp/80 and, given C{health}, reports it at C{now}.
    """
    agent = Agent(f"10.1.0.{n}", port, n)
    registry.agentUp(agent)
    refused = registry.servicesStarted(agent, [HTTP])
    if refused:
        raise AssertionError(f"{agent} had tcp/80 refused: {refused}")
    if health is not None:
        registry.healthReported(agent, HTTP, health, now)
    return agent


def accept(factory, host: str, port: int = 40000):
    """
    A connection from C{host}:C{port} to the director's NECP C{factory} as its
    listener makes one: the protocol, on a StringTransport; None if refused.
    """
    address = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(address)
    if protocol is None:
        return None  # the listener closes the socket at once
    protocol.makeConnection(StringTransport(peerAddress=address))
    return protocol


def connect(director, n: int, health: int | None = None) -> Agent:
    """L{agent_up} in C{director}'s registry, from port 4000N, reporting now."""
    return agent_up(director.registry, n, health, now=director.reactor.seconds(), port=40000 + n)


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
