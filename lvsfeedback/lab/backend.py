"""
The lab's real-server application: an HTTP/1.1 server that spends a set
amount of CPU time on every request and answers with its own name, so the
load generator can count each server's share and a CPU quota or a hog
slows it down the way real work would.

    python -m lvsfeedback.lab.backend --port 8080 --work-ms 5 --name rs1

Built on the standard library's threading HTTP server because it starts in
a fraction of the time Twisted needs inside the slow test VM, and the lab
starts one per real server. Once listening it prints one line beginning
with L{READY_MARKER} on stdout, then nothing more.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

READY_MARKER = "lvsfeedback-backend: listening"
SERVER_HEADER = "X-Server"


def spend_cpu(seconds: float) -> None:
    """
    Hash until this thread has used `seconds` of CPU time. Thread time, not
    wall time: when the server is starved (a quota, a hog) a request takes
    longer, exactly like real work. Per thread so concurrent requests each
    pay their own cost.
    """
    deadline = time.thread_time() + seconds
    digest = hashlib.sha256()
    block = b"lvsfeedback" * 64
    while time.thread_time() < deadline:
        for _ in range(20):
            digest.update(block)


class BackendHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections open between requests unless the client
    # asks to close them, which is what the persistent pattern measures.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one send (the handler flushes after each
    # request), and without Nagle: otherwise a small second segment waits
    # for the client's delayed ACK, 40 ms a response on a kept-alive connection.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: BackendServer

    def do_GET(self) -> None:
        spend_cpu(self.server.work_seconds)
        body = f"{self.server.name}\n".encode()
        self.send_response(200)
        self.send_header(SERVER_HEADER, self.server.name)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            # The client asked to close (the short pattern): say that we do.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        # A line per request would cost the guest more than the request itself.
        pass


class BackendServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs under the short-connection pattern,
    # which shows up as one-second retransmission latencies.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], name: str, work_seconds: float):
        self.name = name
        self.work_seconds = work_seconds
        super().__init__(address, BackendHandler)

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (its deadline passed) is routine under load,
        # not worth a traceback per request.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lvsfeedback.lab.backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any (8080)")
    parser.add_argument("--work-ms", type=float, default=5.0, help="CPU milliseconds spent per request (5)")
    parser.add_argument("--name", default=socket.gethostname(), help="name given in every answer (host name)")
    args = parser.parse_args(argv)
    if args.work_ms < 0:
        parser.error("--work-ms must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    server = BackendServer((args.address, args.port), args.name, args.work_ms / 1000)
    # SIGTERM (how the lab stops it) should close the socket like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    host, port = server.server_address[:2]
    print(f"{READY_MARKER} on {host}:{port} as {args.name}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
