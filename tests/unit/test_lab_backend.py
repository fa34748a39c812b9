"""The lab backend and hog: real HTTP on loopback, real CPU spent, real processes stopped."""

from __future__ import annotations

import http.client
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.lab import backend, hog
from lvsfeedback.lab.backend import BackendServer, spend_cpu
from lvsfeedback.lab.topology import LabProcess


class CountingBackend(BackendServer):
    accepted = 0

    def process_request(self, request, client_address):
        self.accepted += 1
        super().process_request(request, client_address)


class BackendTests(SynchronousTestCase):
    def setUp(self):
        self.server = CountingBackend(("127.0.0.1", 0), "rs7", work_seconds=0.02)
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.connection = http.client.HTTPConnection("127.0.0.1", self.server.server_address[1], timeout=10)
        self.addCleanup(self.connection.close)

    def get(self):
        self.connection.request("GET", "/")
        response = self.connection.getresponse()
        return response, response.read()

    def test_the_answer_names_the_server(self):
        response, body = self.get()
        self.assertEqual(response.status, 200)
        self.assertEqual(body, b"rs7\n")
        self.assertEqual(response.getheader("X-Server"), "rs7")

    def test_requests_share_one_kept_alive_connection(self):
        for _ in range(5):
            response, _ = self.get()
            self.assertFalse(response.will_close)
        self.assertEqual(self.server.accepted, 1)

    def test_each_request_spends_its_cpu_time(self):
        before = time.process_time()
        for _ in range(5):
            self.get()
        self.assertGreaterEqual(time.process_time() - before, 5 * 0.02)

    def test_a_client_asking_to_close_gets_a_closed_connection(self):
        self.connection.request("GET", "/", headers={"Connection": "close"})
        response = self.connection.getresponse()
        response.read()
        self.assertTrue(response.will_close)


class SpendCpuTests(SynchronousTestCase):
    def test_thread_time_advances_by_the_asked_amount(self):
        before = time.thread_time()
        spend_cpu(0.03)
        self.assertGreaterEqual(time.thread_time() - before, 0.03)


class CommandLineTests(SynchronousTestCase):
    def start(self, module, *arguments):
        argv = [sys.executable, "-m", module, *arguments]
        process = LabProcess.start(argv, argv=argv, namespace="host", log_path=Path(self.mktemp()))
        self.addCleanup(process.stop)
        return process

    def test_backend_says_where_it_listens_and_stops_cleanly_on_sigterm(self):
        process = self.start("lvsfeedback.lab.backend", "--address", "127.0.0.1", "--port", "0", "--name", "cli")
        line = process.wait_for_output(backend.READY_MARKER, timeout=30)
        port = int(line.rsplit(" as ", 1)[0].rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(connection.close)
        connection.request("GET", "/")
        self.assertEqual(connection.getresponse().read(), b"cli\n")
        self.assertEqual(process.stop(), 0)

    def test_backend_refuses_negative_work(self):
        self.assertRaises(SystemExit, backend.parse_args, ["--work-ms", "-1"])

    def test_hog_workers_spin_and_all_end_on_sigterm(self):
        process = self.start("lvsfeedback.lab.hog", "--workers", "2")
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
