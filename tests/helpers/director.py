"""
What the director's unit tests share: a director config on disk (the one
with a status listener and three real servers) and agents that come up in
its registry without a connection; HTTP requests through a status site in
memory, as bytes on the wire.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from lvsfeedback.director.config import load_config
from lvsfeedback.director.protocol import Agent
from lvsfeedback.ipvs.model import DestKey, ServiceKey
from lvsfeedback.necp.codec import Service

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
