"""
The lab's real-server application: an HTTP/1.1 server that spends a set
amount of CPU time on every request and answers with its own name, so the
load generator can count each server's share and a CPU quota or a hog
slows it down the way real work would.

    python -m lvsfeedback.lab.backend --port 8080 --work-ms 5 --name rs1

One asyncio process serving requests one at a time, first come first
served: a single-worker server, the textbook queue. Hand-parsed HTTP keeps
the server's own cost per request small next to the configured work (the
standard library's http.server spends several milliseconds a request
inside the emulated test VM, in header parsing and a thread per
connection), and asyncio starts in a fraction of the time Twisted needs
there. Once listening it prints one line beginning with L{READY_MARKER} on
stdout, then nothing more; SIGTERM or SIGINT stop it with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import socket
import sys
import time

READY_MARKER = "lvsfeedback-backend: listening"
SERVER_HEADER = "X-Server"
MAX_HEAD_BYTES = 16384
# The short-connection pattern opens connections in bursts; a small backlog
# drops SYNs, which shows up as one-second retransmission latencies.
LISTEN_BACKLOG = 1024
REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 431: "Request Header Fields Too Large"}


def spend_cpu(seconds: float) -> None:
    """
    Hash until this thread has used `seconds` of CPU time. CPU time, not
    wall time: when the server is starved (a quota, a hog) a request takes
    longer, exactly like real work.
    """
    deadline = time.thread_time() + seconds
    digest = hashlib.sha256()
    block = b"lvsfeedback" * 64
    while time.thread_time() < deadline:
        for _ in range(20):
            digest.update(block)


class BadRequest(Exception):
    """A request this server cannot read; it answers 400 and closes."""


def parse_request_head(head: bytes) -> tuple[str, bool, int]:
    """
    A request's head (up to the blank line) → (method, keep the connection
    open?, body length). HTTP/1.1 keeps it open unless the client says
    C{Connection: close}; HTTP/1.0 closes it unless C{Connection: keep-alive}.
    """
    try:
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, _target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest(f"bad request line in {head[:80]!r}") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(f"unsupported version {version!r}")
    connection = ""
    length = 0
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(f"bad header line {line!r}")
        name = name.strip().lower()
        if name == "connection":
            connection = value.strip().lower()
        elif name == "content-length":
            if not value.strip().isdigit():
                raise BadRequest(f"bad Content-Length {value!r}")
            length = int(value)
        elif name == "transfer-encoding":
            raise BadRequest("chunked request bodies are not supported")
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    return method, keep_alive, length


def response(status: int, name: str, body: bytes, keep_alive: bool, head_only: bool = False) -> bytes:
    """A whole response in one buffer, so it leaves in one segment; head_only for HEAD."""
    headers = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"{SERVER_HEADER}: {name}",
        "Content-Type: text/plain",
        f"Content-Length: {len(body)}",
    ]
    if not keep_alive:
        headers.append("Connection: close")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


class Backend:
    """One server's settings and counters, shared by its connections."""

    def __init__(self, name: str, work_seconds: float):
        self.name = name
        self.work_seconds = work_seconds
        self.connections = 0
        self.requests = 0

    def protocol(self) -> BackendProtocol:
        self.connections += 1
        return BackendProtocol(self)

    async def listen(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(
            self.protocol, host, port, backlog=LISTEN_BACKLOG, reuse_address=True,
        )


class BackendProtocol(asyncio.Protocol):
    """One connection: answers its requests in order, pipelined or not."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while not self._transport.is_closing():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._answer(431, keep_alive=False)
                return
            try:
                method, keep_alive, length = parse_request_head(bytes(self._buffer[:end]))
            except BadRequest as error:
                self._answer(400, keep_alive=False, body=f"{error}\n".encode())
                return
            request_end = end + 4 + length
            if len(self._buffer) < request_end:
                return  # the body is still on its way
            del self._buffer[:request_end]
            self.backend.requests += 1
            if method not in ("GET", "HEAD"):
                self._answer(405, keep_alive)
                continue
            spend_cpu(self.backend.work_seconds)
            self._answer(200, keep_alive, head_only=method == "HEAD")

    def _answer(self, status: int, keep_alive: bool, body: bytes | None = None, head_only: bool = False) -> None:
        payload = f"{self.backend.name}\n".encode() if body is None else body
        self._transport.write(response(status, self.backend.name, payload, keep_alive, head_only))
        if not keep_alive:
            self._transport.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lvsfeedback.lab.backend",
        description="An HTTP server that spends CPU time on every request and answers with its name.",
    )
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any (8080)")
    parser.add_argument("--work-ms", type=float, default=5.0, help="CPU milliseconds spent per request (5)")
    parser.add_argument("--name", default=socket.gethostname(), help="name given in every answer (host name)")
    args = parser.parse_args(argv)
    if args.work_ms < 0:
        parser.error("--work-ms must not be negative")
    return args


async def serve(args: argparse.Namespace) -> None:
    backend = Backend(args.name, args.work_ms / 1000)
    server = await backend.listen(args.address, args.port)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"{READY_MARKER} on {host}:{port} as {args.name}", flush=True)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
