"""The load generator: its statistics, its schedule, its HTTP parsing, and real runs on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import signal
import socket
import statistics
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.lab.backend import Backend
from lvsfeedback.lab.loadgen import (
    ERROR,
    OK,
    TIMEOUT,
    LoadConfig,
    LoadRun,
    ProtocolError,
    RequestRecord,
    ResponseParser,
    command_line,
    config_from_args,
    main,
    parse_args,
    parse_output,
    parse_start,
    percentile,
    poisson_schedule,
    read_records,
    run_load,
    run_until_terminated,
    summarize,
    write_records,
)
from lvsfeedback.testing.daemon import free_port


class PercentileTests(SynchronousTestCase):
    def test_nearest_rank_on_one_to_a_hundred(self):
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(percentile(values, 50), 50)
        self.assertEqual(percentile(values, 95), 95)
        self.assertEqual(percentile(values, 99), 99)
        self.assertEqual(percentile(values, 99.9), 100)
        self.assertEqual(percentile(values, 100), 100)
        self.assertEqual(percentile(values, 0), 1)

    def test_nearest_rank_on_a_short_list(self):
        values = [0.1, 0.2, 0.3, 0.4]
        self.assertEqual(percentile(values, 50), 0.2)
        self.assertEqual(percentile(values, 51), 0.3)
        self.assertEqual(percentile(values, 75), 0.3)
        self.assertEqual(percentile(values, 99), 0.4)

    def test_no_values(self):
        self.assertRaises(ValueError, percentile, [], 50)


class SummaryTests(SynchronousTestCase):
    def test_a_mixed_run(self):
        records = [
            RequestRecord(0.0, OK, 0.010, "rs1", 200),
            RequestRecord(0.1, OK, 0.030, "rs2", 200),
            RequestRecord(0.2, OK, 0.020, "rs1", 200),
            RequestRecord(0.3, OK, 0.040, "rs1", 200),
            RequestRecord(0.4, ERROR, 0.005, "rs3", 503, "HTTP 503"),
            RequestRecord(0.5, ERROR, error="ConnectionRefusedError"),
            RequestRecord(0.6, TIMEOUT, error="no answer before the deadline"),
        ]
        summary = summarize(records, duration=2.0)
        self.assertEqual(
            (summary.requests, summary.ok, summary.errors, summary.timeouts), (7, 4, 2, 1)
        )
        self.assertEqual(summary.throughput, 2.0)
        # Only successes count in the latency figures.
        self.assertAlmostEqual(summary.mean, 0.025)
        self.assertEqual((summary.p50, summary.p95, summary.p99, summary.p999), (0.020, 0.040, 0.040, 0.040))
        self.assertEqual(summary.max, 0.040)
        self.assertEqual(summary.servers, {"rs1": 3, "rs2": 1})
        self.assertEqual(summary.shares, {"rs1": 0.75, "rs2": 0.25})

    def test_percentiles_of_a_thousand_latencies(self):
        latencies = [i / 1000 for i in range(1000, 0, -1)]
        records = [RequestRecord(i / 100, OK, latency, "rs1", 200) for i, latency in enumerate(latencies)]
        summary = summarize(records, duration=10.0)
        self.assertEqual((summary.p50, summary.p95, summary.p99, summary.p999), (0.5, 0.95, 0.99, 0.999))
        self.assertEqual(summary.throughput, 100.0)

    def test_nothing_succeeded(self):
        summary = summarize([RequestRecord(0.0, TIMEOUT)], duration=1.0)
        self.assertEqual((summary.ok, summary.timeouts, summary.throughput), (0, 1, 0.0))
        self.assertIsNone(summary.mean)
        self.assertIsNone(summary.p99)
        self.assertEqual(summary.shares, {})


class ScheduleTests(SynchronousTestCase):
    def test_same_seed_same_schedule(self):
        self.assertEqual(poisson_schedule(50, 10, seed=3), poisson_schedule(50, 10, seed=3))
        self.assertNotEqual(poisson_schedule(50, 10, seed=3), poisson_schedule(50, 10, seed=4))

    def test_arrivals_are_increasing_and_inside_the_window(self):
        arrivals = poisson_schedule(100, 5, seed=1)
        self.assertEqual(arrivals, sorted(arrivals))
        self.assertGreaterEqual(arrivals[0], 0)
        self.assertLess(arrivals[-1], 5)

    def test_the_mean_rate_is_the_asked_rate(self):
        rate, duration = 200.0, 100.0
        arrivals = poisson_schedule(rate, duration, seed=11)
        expected = rate * duration
        # A Poisson count has standard deviation sqrt(n): 5 of them is a generous bound.
        self.assertLess(abs(len(arrivals) - expected), 5 * math.sqrt(expected))
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        self.assertLess(abs(statistics.fmean(gaps) * rate - 1), 0.03)
        # Exponential gaps: the standard deviation equals the mean.
        self.assertLess(abs(statistics.pstdev(gaps) * rate - 1), 0.05)

    def test_max_requests_cuts_the_schedule(self):
        self.assertEqual(len(poisson_schedule(1000, 10, seed=0, max_requests=25)), 25)
        self.assertEqual(len(poisson_schedule(10, 10, seed=0, max_requests=25, rate_changes=((1.0, 1000.0),))), 25)

    def test_a_constant_rate_keeps_the_schedule_it_always_had(self):
        # The arrivals before rate changes existed: seeds of recorded runs still mean the same load.
        rng = random.Random(7)
        before, moment = [], rng.expovariate(40)
        while moment < 20:
            before.append(moment)
            moment += rng.expovariate(40)
        self.assertEqual(poisson_schedule(40, 20, seed=7), before)

    def test_a_rate_that_changes_offers_each_rate_over_its_piece(self):
        # 40 % of 100/s for the first 100 s, then 70 %: the light-load scenario's profile.
        arrivals = poisson_schedule(40.0, 300.0, seed=5, rate_changes=((100.0, 70.0),))
        self.assertEqual(arrivals, sorted(arrivals))
        self.assertLess(arrivals[-1], 300.0)
        for begin, end, rate in ((0.0, 100.0, 40.0), (100.0, 300.0, 70.0)):
            piece = [moment for moment in arrivals if begin <= moment < end]
            expected = rate * (end - begin)
            self.assertLess(abs(len(piece) - expected), 5 * math.sqrt(expected))
            gaps = [b - a for a, b in zip(piece, piece[1:])]
            self.assertLess(abs(statistics.fmean(gaps) * rate - 1), 0.05)

    def test_a_ramp_of_nine_steps_rises_step_by_step(self):
        steps = tuple((10.0 * index, 50.0 + 10 * index) for index in range(1, 9))
        arrivals = poisson_schedule(50.0, 90.0, seed=2, rate_changes=steps)
        counts = [sum(1 for moment in arrivals if 10 * index <= moment < 10 * (index + 1)) for index in range(9)]
        for index, count in enumerate(counts):
            expected = 10 * (50 + 10 * index)
            self.assertLess(abs(count - expected), 5 * math.sqrt(expected))
        self.assertGreater(counts[-1], 2 * counts[0])

    def test_rate_changes_must_be_in_order_inside_the_run_and_positive(self):
        for changes in (((2.0, 5.0), (1.0, 5.0)), ((0.0, 5.0),), ((12.0, 5.0),), ((3.0, 0.0),), ((3.0, 5.0), (3.0, 6.0))):
            self.assertRaises(ValueError, LoadConfig, "127.0.0.1", 80, rate=10, duration=10, rate_changes=changes)


class ResponseParserTests(SynchronousTestCase):
    RESPONSE = b"HTTP/1.1 200 OK\r\nX-Server: rs2\r\nContent-Length: 4\r\n\r\nrs2\n"

    def test_a_response_split_anywhere(self):
        for cut in range(1, len(self.RESPONSE)):
            parser = ResponseParser()
            self.assertEqual(parser.feed(self.RESPONSE[:cut]), [])
            [response] = parser.feed(self.RESPONSE[cut:])
            self.assertEqual((response.status, response.server, response.body), (200, "rs2", b"rs2\n"))

    def test_two_responses_in_one_read(self):
        responses = ResponseParser().feed(self.RESPONSE * 2)
        self.assertEqual(len(responses), 2)

    def test_the_body_names_the_server_without_the_header(self):
        [response] = ResponseParser().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nrs3\n")
        self.assertEqual(response.server, "rs3")

    def test_not_http(self):
        self.assertRaises(ProtocolError, ResponseParser().feed, b"SSH-2.0-OpenSSH\r\n\r\n")

    def test_no_content_length(self):
        self.assertRaises(ProtocolError, ResponseParser().feed, b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n")


class ConfigTests(SynchronousTestCase):
    def test_bad_values(self):
        self.assertRaises(ValueError, LoadConfig, "127.0.0.1", 80, rate=10, duration=1, pattern="pipelined")
        self.assertRaises(ValueError, LoadConfig, "127.0.0.1", 80, rate=0, duration=1)
        self.assertRaises(ValueError, LoadConfig, "127.0.0.1", 80, rate=10, duration=1, connections=0)


def run_against_backend(config_for_port, name="alpha"):
    """Run the load against a lab backend listening on loopback in the same event loop."""

    async def scenario():
        backend = Backend(name, work_seconds=0.001)
        server = await backend.listen("127.0.0.1", 0)
        async with server:
            records = await LoadRun(config_for_port(server.sockets[0].getsockname()[1])).run()
        return records, backend

    return asyncio.run(scenario())


class LoopbackRunTests(SynchronousTestCase):
    def test_sigterm_ends_the_schedule_early_and_requests_already_sent_finish(self):
        async def scenario():
            backend = Backend("alpha", work_seconds=0.001)
            server = await backend.listen("127.0.0.1", 0)
            run = LoadRun(LoadConfig("127.0.0.1", server.sockets[0].getsockname()[1], rate=100, duration=60, seed=5))
            asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)
            async with server:
                records = await run_until_terminated(run)
            return run, records, backend

        run, records, backend = asyncio.run(scenario())
        self.assertLess(run.duration, 60)
        self.assertEqual(run.duration, run.stopped_at)
        self.assertEqual([record.scheduled for record in records],
                         [offset for offset in poisson_schedule(100, 60, 5) if offset < run.stopped_at][:len(records)])
        self.assertTrue(records)
        self.assertEqual({record.outcome for record in records}, {OK})
        self.assertEqual(backend.requests, len(records))
        self.assertEqual(summarize(records, run.duration).throughput, len(records) / run.stopped_at)

    def test_short_connections_one_per_request(self):
        records, backend = run_against_backend(
            lambda port: LoadConfig("127.0.0.1", port, rate=100, duration=0.5, seed=5)
        )
        self.assertEqual([record.scheduled for record in records], poisson_schedule(100, 0.5, 5))
        self.assertEqual({record.outcome for record in records}, {OK})
        self.assertEqual({record.server for record in records}, {"alpha"})
        self.assertEqual(backend.connections, len(records))
        self.assertTrue(all(record.latency > 0 for record in records))

    def test_persistent_connections_carry_several_requests_then_reconnect(self):
        records, backend = run_against_backend(lambda port: LoadConfig(
            "127.0.0.1", port, rate=200, duration=0.5, seed=6,
            pattern="persistent", connections=2, requests_per_connection=10,
        ))
        self.assertEqual({record.outcome for record in records}, {OK})
        self.assertEqual(backend.requests, len(records))
        # Each of the 2 connections is replaced after 10 requests.
        self.assertGreaterEqual(backend.connections, math.ceil(len(records) / 10))
        self.assertLessEqual(backend.connections, len(records) // 10 + 2)

    def test_persistent_requests_stay_with_their_connection_even_when_it_stalls(self):
        # A server that answers on its first connection and never on the
        # second, as if IPVS had put that one on a dead server. Each request
        # belongs to the connection it was dealt to, so about half time out;
        # a shared queue would have fed nearly all to the live connection.
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(8)

        def serve():
            live, _ = server.accept()
            stalled, _ = server.accept()
            self.addCleanup(stalled.close)
            with live:
                buffer = b""
                while chunk := live.recv(65536):
                    buffer += chunk
                    while b"\r\n\r\n" in buffer:
                        _, buffer = buffer.split(b"\r\n\r\n", 1)
                        live.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Server: live\r\n\r\nok")

        threading.Thread(target=serve, daemon=True).start()
        records = run_load(LoadConfig("127.0.0.1", server.getsockname()[1], rate=200, duration=0.5, seed=6,
                                      pattern="persistent", connections=2, requests_per_connection=1000, timeout=0.3))
        timeouts = sum(1 for record in records if record.outcome == TIMEOUT)
        self.assertGreater(len(records), 50)
        self.assertTrue(0.3 < timeouts / len(records) < 0.7, f"{timeouts} of {len(records)} timed out")
        self.assertEqual({r.server for r in records if r.outcome == OK}, {"live"})

    def test_a_silent_server_gives_timeouts(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        # Connections complete in the kernel's backlog; nothing ever answers.
        silent.listen(64)
        for pattern in ("short", "persistent"):
            config = LoadConfig("127.0.0.1", silent.getsockname()[1], rate=20, duration=0.3, seed=1,
                                pattern=pattern, timeout=0.2)
            records = run_load(config)
            self.assertTrue(records)
            self.assertEqual({record.outcome for record in records}, {TIMEOUT}, pattern)
            self.assertTrue(all(record.latency is None for record in records))

    def test_a_closed_port_gives_errors(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        records = run_load(LoadConfig("127.0.0.1", port, rate=20, duration=0.3, seed=1))
        self.assertTrue(records)
        self.assertEqual({record.outcome for record in records}, {ERROR})
        self.assertIn("ConnectionRefusedError", records[0].error)


class CommandLineTests(SynchronousTestCase):
    def test_a_config_survives_the_command_line(self):
        config = LoadConfig("10.200.0.1", 80, rate=37.5, duration=12.25, seed=9, pattern="persistent",
                            connections=5, requests_per_connection=50, timeout=2.5, max_requests=400,
                            max_in_flight=64, path="/work", rate_changes=((4.0, 50.0), (8.5, 12.25)))
        args = parse_args(command_line(config, "/tmp/records.jsonl"))
        self.assertEqual(config_from_args(args), config)
        self.assertEqual(args.records, "/tmp/records.jsonl")

    def test_records_survive_their_file(self):
        records = [RequestRecord(0.5, OK, 0.01, "rs1", 200), RequestRecord(0.75, TIMEOUT, error="late")]
        path = self.mktemp()
        write_records(records, path)
        self.assertEqual(read_records(path), records)

    def test_the_printed_summary_reads_back(self):
        summary = summarize([RequestRecord(0.5, OK, 0.01, "rs1", 200)], duration=1.0)
        printed = json.dumps({"config": {}, "summary": dataclasses.asdict(summary)})
        self.assertEqual(parse_output(printed), summary)

    def test_the_printed_start_is_on_the_caller_s_monotonic_clock(self):
        port = free_port()  # nothing listens: every request is refused at once
        output = io.StringIO()
        before = time.monotonic()
        with contextlib.redirect_stdout(output):
            main(["--target", f"127.0.0.1:{port}", "--rate", "20", "--duration", "0.2", "--seed", "1"])
        after = time.monotonic()
        self.assertTrue(before <= parse_start(output.getvalue()) <= after, (before, output.getvalue(), after))
        self.assertGreater(parse_output(output.getvalue()).errors, 0)

    def test_bad_targets(self):
        for target in ("10.0.0.1", ":80", "host:http"):
            self.assertRaises(SystemExit, parse_args, ["--target", target, "--rate", "1", "--duration", "1"])
