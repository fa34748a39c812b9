"""
An open-loop HTTP load generator for the lab.

Requests arrive on a Poisson process at a set rate (or a rate that changes
at set moments: piecewise constant), drawn from a seeded RNG (same seed,
same schedule), and are sent at their scheduled time whatever
earlier requests are doing. Latency counts from each request's *scheduled*
time, so a request that waited for a connection or for a slow server pays
for that wait: no coordinated omission.

Two connection patterns:

- C{short}: one request per TCP connection (C{Connection: close}), so IPVS
  schedules every request.
- C{persistent}: C{connections} keep-alive connections, like as many users
  each with their own HTTP/1.1 connection: every request is dealt to one
  connection (chosen by the seeded RNG), which sends its requests one after
  another; after C{requests_per_connection} requests it closes and
  reconnects, so IPVS only schedules the reconnections. A connection that
  IPVS put on a slow server keeps its queue there, as a real user's would;
  a shared queue feeding whichever connection is idle would instead steer
  requests away from slow servers by itself and hide the scheduler.

Every request has a deadline (its scheduled time + C{timeout}); a request
not answered by then is recorded as a timeout. So a run ends by itself at
most C{timeout} seconds after its last arrival.

It runs as one asyncio process with non-blocking sockets (asyncio starts
much faster than Twisted inside the slow test VM):

    python -m lvsfeedback.lab.loadgen --target 10.200.0.1:80 --rate 100 \\
        --duration 10 --seed 1 --pattern persistent --records out.jsonl

and prints a JSON summary on stdout, with the moment its schedule started
on the machine's monotonic clock (asyncio's), so that another process can
place each request's scheduled time on its own clock (L{parse_start}).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import statistics
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

from lvsfeedback.lab.backend import SERVER_HEADER

PATTERNS = ("short", "persistent")
OK, ERROR, TIMEOUT = "ok", "error", "timeout"
# The first arrival is scheduled this long after the start, so the schedule
# does not begin already late while the generator sets itself up.
START_LEAD = 0.05
MAX_HEAD_BYTES = 65536


@dataclass(frozen=True)
class LoadConfig:
    host: str
    port: int
    rate: float
    duration: float
    seed: int = 0
    pattern: str = "short"
    connections: int = 16
    requests_per_connection: int = 100
    timeout: float = 5.0
    max_requests: int | None = None
    max_in_flight: int = 512
    path: str = "/"
    # (moment, rate): from each moment on (seconds from the start) arrivals come at that rate.
    rate_changes: tuple[tuple[float, float], ...] = ()

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, not {self.pattern!r}")
        if self.rate <= 0 or self.duration <= 0 or self.timeout <= 0:
            raise ValueError("rate, duration and timeout must be positive")
        moments = [moment for moment, _ in self.rate_changes]
        if moments != sorted(set(moments)) or any(not 0 < moment < self.duration for moment in moments) \
                or any(rate <= 0 for _, rate in self.rate_changes):
            raise ValueError("rate changes need increasing moments inside the duration and positive rates")
        if self.connections < 1 or self.requests_per_connection < 1 or self.max_in_flight < 1:
            raise ValueError("connections, requests_per_connection and max_in_flight must be at least 1")


@dataclass(frozen=True)
class RequestRecord:
    """One request: when it was due (seconds from the start), how it ended, how long it took."""

    scheduled: float
    outcome: str
    latency: float | None = None
    server: str | None = None
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    duration: float
    requests: int
    ok: int
    errors: int
    timeouts: int
    throughput: float
    # Latency statistics in seconds over the successful requests; None when there is none.
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    p999: float | None
    max: float | None
    servers: dict[str, int] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)


def poisson_schedule(rate: float, duration: float, seed: int, max_requests: int | None = None,
                     rate_changes: tuple[tuple[float, float], ...] = ()) -> list[float]:
    """
    Arrival times in [0, duration) of a Poisson process at `rate` per second,
    fixed by `seed`; with `rate_changes`, (moment, rate) pairs in time order,
    the rate is piecewise constant. Each piece starts its own gaps at its
    first moment, which the process's lack of memory allows.
    """
    rng = random.Random(seed)
    pieces = [(0.0, rate), *rate_changes]
    arrivals = []
    for index, (begin, piece_rate) in enumerate(pieces):
        end = pieces[index + 1][0] if index + 1 < len(pieces) else duration
        moment = begin + rng.expovariate(piece_rate)
        while moment < min(end, duration):
            if max_requests is not None and len(arrivals) >= max_requests:
                return arrivals
            arrivals.append(moment)
            moment += rng.expovariate(piece_rate)
    return arrivals


def percentile(ordered: list[float], percent: float) -> float:
    """
    Nearest-rank percentile of an ascending list: the smallest value with at
    least `percent` % of the values at or below it.
    """
    if not ordered:
        raise ValueError("no values")
    # Rounded first so that float noise (99.9 / 100 * 1000 = 999.0000000000001)
    # does not push the rank one place up.
    rank = max(1, math.ceil(round(percent / 100 * len(ordered), 9)))
    return ordered[rank - 1]


def summarize(records: list[RequestRecord], duration: float) -> Summary:
    """Statistics of a run whose arrivals spanned `duration` seconds; throughput counts successes."""
    outcomes = Counter(record.outcome for record in records)
    latencies = sorted(record.latency for record in records if record.outcome == OK)
    servers = Counter(record.server for record in records if record.outcome == OK)
    ok = outcomes[OK]

    def stat(percent: float) -> float | None:
        return percentile(latencies, percent) if latencies else None

    return Summary(
        duration=duration,
        requests=len(records),
        ok=ok,
        errors=outcomes[ERROR],
        timeouts=outcomes[TIMEOUT],
        throughput=ok / duration,
        mean=statistics.fmean(latencies) if latencies else None,
        p50=stat(50),
        p95=stat(95),
        p99=stat(99),
        p999=stat(99.9),
        max=latencies[-1] if latencies else None,
        servers=dict(sorted(servers.items())),
        shares={name: count / ok for name, count in sorted(servers.items())},
    )


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client understands."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def server(self) -> str:
        """Which real server answered: its header, or the body the lab backend writes."""
        return self.headers.get(SERVER_HEADER.lower()) or self.body.decode(errors="replace").strip()


class ResponseParser:
    """Incremental parser of HTTP/1.1 responses framed by Content-Length (what the lab backend sends)."""

    def __init__(self):
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str], int] | None = None

    def feed(self, data: bytes) -> list[Response]:
        self._buffer += data
        responses = []
        while True:
            if self._head is None:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError(f"no end of headers in {MAX_HEAD_BYTES} bytes")
                    return responses
                head = bytes(self._buffer[:end]).decode("latin-1")
                del self._buffer[: end + 4]
                self._head = self._parse_head(head)
            status, headers, length = self._head
            if len(self._buffer) < length:
                return responses
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._head = None
            responses.append(Response(status, headers, body))

    @staticmethod
    def _parse_head(head: str) -> tuple[int, dict[str, str], int]:
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"bad status line {status_line!r}")
        headers = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"bad header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ProtocolError("response without Content-Length")
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
        return int(code), headers, length


class HTTPConnection(asyncio.Protocol):
    """One client connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._parser = ResponseParser()
        self._waiter: asyncio.Future | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._parser.feed(data)
        except ProtocolError as error:
            self._fail(error)
            self._transport.abort()
            return
        for response in responses:
            if self._waiter is None or self._waiter.done():
                self._fail(ProtocolError("a response nobody asked for"))
                self._transport.abort()
                return
            self._waiter.set_result(response)
            self._waiter = None

    def connection_lost(self, reason: Exception | None) -> None:
        self.closed = True
        self._fail(reason or ConnectionResetError("the server closed the connection before answering"))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self._waiter = None

    def request(self, raw: bytes) -> asyncio.Future:
        waiter = self._loop.create_future()
        if self.closed:
            waiter.set_exception(ConnectionResetError("the connection is closed"))
            return waiter
        self._waiter = waiter
        self._transport.write(raw)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class LoadRun:
    """One run of a L{LoadConfig}; L{run} returns a record per scheduled request, in schedule order."""

    def __init__(self, config: LoadConfig):
        self.config = config
        self.schedule = poisson_schedule(config.rate, config.duration, config.seed, config.max_requests,
                                         config.rate_changes)
        self.records: list[RequestRecord | None] = [None] * len(self.schedule)
        self.stopped_at: float | None = None
        self._issued = 0
        host_header = config.host if config.port == 80 else f"{config.host}:{config.port}"
        request_head = f"GET {config.path} HTTP/1.1\r\nHost: {host_header}\r\n"
        self._keep_alive_request = (request_head + "\r\n").encode()
        self._closing_request = (request_head + "Connection: close\r\n\r\n").encode()

    async def run(self) -> list[RequestRecord]:
        """Every scheduled request's record; after L{stop}, those scheduled before it."""
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time() + START_LEAD
        if self.config.pattern == "short":
            await self._run_short()
        else:
            await self._run_persistent()
        return self.records[:self._issued]

    @property
    def start(self) -> float:
        """The moment of offset 0, on time.monotonic()'s clock (the event loop's), which every process shares."""
        return self._start

    def stop(self) -> None:
        """End the schedule now: no new arrivals; requests in flight still finish."""
        if self.stopped_at is None:
            self.stopped_at = max(0.0, self._loop.time() - self._start)

    @property
    def duration(self) -> float:
        """How long arrivals were offered: the configured duration, or until L{stop}."""
        return self.config.duration if self.stopped_at is None else min(self.stopped_at, self.config.duration)

    async def _arrivals(self):
        """Yield each request's index and offset at its scheduled time (at once when late), until stopped."""
        for index, offset in enumerate(self.schedule):
            delay = self._start + offset - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopped_at is not None:
                return
            self._issued = index + 1
            yield index, offset

    def _remaining(self, offset: float) -> float:
        return self._start + offset + self.config.timeout - self._loop.time()

    def _record(self, index: int, offset: float, response: Response) -> None:
        latency = self._loop.time() - (self._start + offset)
        outcome = OK if 200 <= response.status < 400 else ERROR
        error = None if outcome == OK else f"HTTP {response.status}"
        self.records[index] = RequestRecord(offset, outcome, latency, response.server, response.status, error)

    def _record_failure(self, index: int, offset: float, error: BaseException) -> None:
        # TimeoutError is an OSError, so one `except OSError` catches both; tell them apart here.
        if isinstance(error, TimeoutError):
            self.records[index] = RequestRecord(offset, TIMEOUT, error="no answer before the deadline")
        else:
            self.records[index] = RequestRecord(offset, ERROR, error=_describe(error))

    async def _connect(self) -> HTTPConnection:
        _, connection = await self._loop.create_connection(
            lambda: HTTPConnection(self._loop), self.config.host, self.config.port
        )
        return connection

    async def _run_short(self) -> None:
        in_flight = asyncio.Semaphore(self.config.max_in_flight)
        tasks = []

        async def one_request(index: int, offset: float) -> None:
            connection = None
            try:
                async with asyncio.timeout(self._remaining(offset)):
                    async with in_flight:
                        connection = await self._connect()
                        response = await connection.request(self._closing_request)
                self._record(index, offset, response)
            except (OSError, ProtocolError) as error:
                self._record_failure(index, offset, error)
            finally:
                if connection is not None:
                    connection.close()

        async for index, offset in self._arrivals():
            tasks.append(asyncio.create_task(one_request(index, offset)))
        await asyncio.gather(*tasks)

    async def _run_persistent(self) -> None:
        queues = [asyncio.Queue() for _ in range(self.config.connections)]
        workers = [asyncio.create_task(self._connection_worker(due)) for due in queues]
        # Seeded apart from the schedule, so both stay the same run to run.
        dealer = random.Random(self.config.seed + 1)
        async for arrival in self._arrivals():
            dealer.choice(queues).put_nowait(arrival)
        for due in queues:
            due.put_nowait(None)
        await asyncio.gather(*workers)

    async def _connection_worker(self, due: asyncio.Queue) -> None:
        connection = None
        served = 0
        try:
            while (arrival := await due.get()) is not None:
                index, offset = arrival
                if self._remaining(offset) <= 0:
                    # Due so long ago that its deadline has passed: sending it would only load the server.
                    self._record_failure(index, offset, TimeoutError())
                    continue
                try:
                    async with asyncio.timeout(self._remaining(offset)):
                        if connection is None or connection.closed:
                            connection, served = await self._connect(), 0
                        response = await connection.request(self._keep_alive_request)
                    self._record(index, offset, response)
                    served += 1
                except (OSError, ProtocolError) as error:
                    self._record_failure(index, offset, error)
                    # After a failure the connection's state is unknown: start afresh.
                    served = self.config.requests_per_connection
                if served >= self.config.requests_per_connection and connection is not None:
                    connection.close()
                    connection = None
        finally:
            if connection is not None:
                connection.close()


def run_load(config: LoadConfig) -> list[RequestRecord]:
    """Run the load to the end in a fresh event loop (blocks for about duration + timeout at most)."""
    return asyncio.run(LoadRun(config).run())


async def run_until_terminated(run: LoadRun) -> list[RequestRecord]:
    """Run the load; SIGTERM or SIGINT ends its schedule early (see L{LoadRun.stop})."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, run.stop)
    return await run.run()


def write_records(records: list[RequestRecord], path: str) -> None:
    """One JSON object per line, in schedule order."""
    with open(path, "w") as out:
        for record in records:
            out.write(json.dumps(asdict(record)) + "\n")


def read_records(path: str) -> list[RequestRecord]:
    with open(path) as lines:
        return [RequestRecord(**json.loads(line)) for line in lines]


def parse_output(text: str) -> Summary:
    """The summary printed by a run of this module's command line."""
    return Summary(**json.loads(text)["summary"])


def parse_start(text: str) -> float:
    """When the run printed in text started, on time.monotonic()'s clock (L{LoadRun.start})."""
    return float(json.loads(text)["start"])


def command_line(config: LoadConfig, records_path: str | None = None) -> list[str]:
    """The arguments after C{python -m lvsfeedback.lab.loadgen} that run `config`."""
    arguments = [
        "--target", f"{config.host}:{config.port}", "--rate", repr(config.rate),
        "--duration", repr(config.duration), "--seed", str(config.seed), "--pattern", config.pattern,
        "--connections", str(config.connections), "--requests-per-connection", str(config.requests_per_connection),
        "--timeout", repr(config.timeout), "--max-in-flight", str(config.max_in_flight), "--path", config.path,
    ]
    if config.max_requests is not None:
        arguments += ["--max-requests", str(config.max_requests)]
    for moment, rate in config.rate_changes:
        arguments += ["--rate-change", f"{moment!r}:{rate!r}"]
    if records_path is not None:
        arguments += ["--records", records_path]
    return arguments


def parse_target(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_rate_change(text: str) -> tuple[float, float]:
    moment, colon, rate = text.partition(":")
    try:
        return float(moment), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SECONDS:RATE") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lvsfeedback.lab.loadgen", description="Open-loop Poisson HTTP load; prints a JSON summary."
    )
    parser.add_argument("--target", type=parse_target, required=True, help="HOST:PORT to send requests to")
    parser.add_argument("--rate", type=float, required=True, help="mean arrivals per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of arrivals")
    parser.add_argument("--rate-change", type=parse_rate_change, action="append", default=[], metavar="SECONDS:RATE",
                        help="from SECONDS after the start on, RATE arrivals per second (repeatable, in time order)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival schedule (0)")
    parser.add_argument("--pattern", choices=PATTERNS, default="short", help="connection pattern (short)")
    parser.add_argument("--connections", type=int, default=16, help="persistent: connections in the pool (16)")
    parser.add_argument("--requests-per-connection", type=int, default=100,
                        help="persistent: requests before a connection is replaced (100)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds after its scheduled time a request fails (5)")
    parser.add_argument("--max-requests", type=int, default=None, help="stop the schedule after this many requests")
    parser.add_argument("--max-in-flight", type=int, default=512, help="short: connections open at once (512)")
    parser.add_argument("--path", default="/", help="request path (/)")
    parser.add_argument("--records", metavar="FILE", help="write one JSON line per request to FILE")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    host, port = args.target
    return LoadConfig(
        host=host, port=port, rate=args.rate, duration=args.duration, seed=args.seed, pattern=args.pattern,
        connections=args.connections, requests_per_connection=args.requests_per_connection,
        timeout=args.timeout, max_requests=args.max_requests, max_in_flight=args.max_in_flight, path=args.path,
        rate_changes=tuple(args.rate_change),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"lvsfeedback-loadgen: {error}", file=sys.stderr)
        return 2
    run = LoadRun(config)
    records = asyncio.run(run_until_terminated(run))
    if args.records:
        write_records(records, args.records)
    summary = summarize(records, run.duration)
    print(json.dumps({"config": asdict(config), "start": run.start, "summary": asdict(summary)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
