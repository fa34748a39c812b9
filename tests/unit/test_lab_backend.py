"""The lab backend and hog: HTTP parsing, real requests on loopback, real CPU spent, real processes stopped."""

from __future__ import annotations

import http.client
import signal
import sys
import time
from pathlib import Path

import psutil
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.lab import backend, hog
from lvsfeedback.lab.backend import Backend, BadRequest, parse_request_head, response, spend_cpu
from lvsfeedback.lab.topology import LabProcess

GET = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n"
WORK_MS = 40


class RequestHeadTests(SynchronousTestCase):
    def test_http_1_1_keeps_the_connection_unless_told(self):
        self.assertEqual(parse_request_head(b"GET / HTTP/1.1\r\nHost: x"), ("GET", True, 0))
        self.assertEqual(parse_request_head(b"GET / HTTP/1.1\r\nConnection: close"), ("GET", False, 0))

    def test_http_1_0_closes_unless_told(self):
        self.assertEqual(parse_request_head(b"GET / HTTP/1.0"), ("GET", False, 0))
        self.assertEqual(parse_request_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive"), ("GET", True, 0))

    def test_body_length(self):
        self.assertEqual(parse_request_head(b"POST /x HTTP/1.1\r\nContent-Length: 12"), ("POST", True, 12))

    def test_unreadable_requests(self):
        for head in (b"GET /", b"GET / HTTP/2", b"GET / HTTP/1.1\r\nno colon",
                     b"POST / HTTP/1.1\r\nContent-Length: -1", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked"):
            self.assertRaises(BadRequest, parse_request_head, head)

    def test_a_response_in_one_buffer(self):
        self.assertEqual(
            response(200, "rs1", b"rs1\n", keep_alive=False),
            b"HTTP/1.1 200 OK\r\nX-Server: rs1\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
            b"Connection: close\r\n\r\nrs1\n",
        )
        self.assertTrue(response(200, "rs1", b"rs1\n", keep_alive=True, head_only=True).endswith(b"4\r\n\r\n"))


class FakeTransport:
    def __init__(self):
        self.written = bytearray()
        self.closed = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


class ProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.backend = Backend("rs4", work_seconds=0)
        self.protocol = self.backend.protocol()
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)

    def test_pipelined_requests_split_anywhere(self):
        stream = GET * 3
        for start in range(0, len(stream), 7):
            self.protocol.data_received(stream[start:start + 7])
        self.assertEqual(self.transport.written.count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(self.transport.written.count(b"\r\n\r\nrs4\n"), 3)
        self.assertFalse(self.transport.closed)
        self.assertEqual((self.backend.connections, self.backend.requests), (1, 3))

    def test_a_request_body_is_skipped(self):
        self.protocol.data_received(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
        self.assertEqual(self.transport.written, b"")
        self.protocol.data_received(b"cde" + GET)
        self.assertIn(b"405 Method Not Allowed", self.transport.written)
        self.assertIn(b"200 OK", self.transport.written)

    def test_close_when_asked(self):
        self.protocol.data_received(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + GET)
        self.assertTrue(self.transport.closed)
        self.assertEqual(self.transport.written.count(b"200 OK"), 1)

    def test_head_has_no_body(self):
        self.protocol.data_received(b"HEAD / HTTP/1.1\r\n\r\n")
        self.assertTrue(self.transport.written.endswith(b"Content-Length: 4\r\n\r\n"))

    def test_garbage_gets_400_and_a_closed_connection(self):
        self.protocol.data_received(b"\x16\x03\x01 hello\r\n\r\n")
        self.assertTrue(self.transport.written.startswith(b"HTTP/1.1 400 Bad Request"))
        self.assertTrue(self.transport.closed)

    def test_an_endless_head_is_cut_off(self):
        self.protocol.data_received(b"GET / HTTP/1.1\r\n" + b"X-Pad: 0123456789\r\n" * 1000)
        self.assertTrue(self.transport.written.startswith(b"HTTP/1.1 431"))
        self.assertTrue(self.transport.closed)


class SpendCpuTests(SynchronousTestCase):
    def test_cpu_time_advances_by_the_asked_amount(self):
        before = time.process_time()
        spend_cpu(0.05)
        self.assertGreaterEqual(time.process_time() - before, 0.05)


class RunningBackendTests(SynchronousTestCase):
    """The backend as the lab starts it: its own process, on loopback."""

    def setUp(self):
        argv = [sys.executable, "-m", "lvsfeedback.lab.backend", "--address", "127.0.0.1", "--port", "0",
                "--name", "cli", "--work-ms", str(WORK_MS)]
        self.process = LabProcess.start(argv, argv=argv, namespace="host", log_path=Path(self.mktemp()))
        self.addCleanup(self.process.stop)
        line = self.process.wait_for_output(backend.READY_MARKER, timeout=30)
        port = int(line.rsplit(" as ", 1)[0].rsplit(":", 1)[1])
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(self.connection.close)

    def get(self, headers=None):
        self.connection.request("GET", "/", headers=headers or {})
        answer = self.connection.getresponse()
        return answer, answer.read()

    def test_the_answer_names_the_server(self):
        answer, body = self.get()
        self.assertEqual((answer.status, body, answer.getheader("X-Server")), (200, b"cli\n", "cli"))

    def test_requests_share_one_kept_alive_connection(self):
        self.get()
        local_address = self.connection.sock.getsockname()
        for _ in range(4):
            answer, _ = self.get()
            self.assertFalse(answer.will_close)
        self.assertEqual(self.connection.sock.getsockname(), local_address)

    def test_each_request_spends_its_cpu_time(self):
        server = psutil.Process(self.process.pid)
        before = sum(server.cpu_times()[:2])
        for _ in range(5):
            self.get()
        # /proc reports user and system time in 10 ms ticks, each rounded down.
        self.assertGreaterEqual(sum(server.cpu_times()[:2]) - before, 5 * WORK_MS / 1000 - 0.03)

    def test_a_client_asking_to_close_gets_a_closed_connection(self):
        answer, _ = self.get({"Connection": "close"})
        self.assertTrue(answer.will_close)

    def test_sigterm_stops_it_cleanly(self):
        self.get()
        self.assertEqual(self.process.stop(), 0)


class CommandLineTests(SynchronousTestCase):
    def test_backend_refuses_negative_work(self):
        self.assertRaises(SystemExit, backend.parse_args, ["--work-ms", "-1"])

    def test_hog_workers_spin_and_all_end_on_sigterm(self):
        argv = [sys.executable, "-m", "lvsfeedback.lab.hog", "--workers", "2"]
        process = LabProcess.start(argv, argv=argv, namespace="host", log_path=Path(self.mktemp()))
        self.addCleanup(process.stop)
        line = process.wait_for_output(hog.READY_MARKER, timeout=30)
        workers = [psutil.Process(int(pid)) for pid in line.removeprefix(hog.READY_MARKER).split()]
        self.assertEqual(len(workers), 2)
        self.assertEqual({worker.ppid() for worker in workers}, {process.pid})
        self.assertEqual(process.stop(), 0)
        for worker in workers:
            self.assertFalse(worker.is_running())

    def test_hog_refuses_bad_options(self):
        self.assertRaises(SystemExit, hog.parse_args, ["--workers", "0"])
        self.assertRaises(SystemExit, hog.parse_args, ["--duty", "1.5"])
        self.assertRaises(SystemExit, hog.parse_args, ["--duty", "0"])

    def test_a_process_that_ignores_sigterm_is_killed(self):
        argv = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]
        process = LabProcess.start(argv, argv=argv, namespace="host", log_path=Path(self.mktemp()))
        process.wait_for_output("ready", timeout=10)
        self.assertEqual(process.stop(timeout=0.2), -signal.SIGKILL)
