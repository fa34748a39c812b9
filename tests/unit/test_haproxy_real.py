"""
The agent-check responder against a real HAProxy (Debian's package): HAProxy
polls the agent, and the weight HAProxy shows on its stats socket follows
the agent's health, its drain, and its failing probe.
"""

import os
import shutil
import socket
import tempfile

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from lvsfeedback.agent.haproxy import HAProxyAgentFactory

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

CONFIG = """
global
    stats socket {socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
backend web
    server rs1 127.0.0.1:{backend_port} weight 200 agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter 100
"""


class ControlledSampler:
    def __init__(self):
        self.value, self.drained, self.failing_metrics = 75, False, []

    def health(self, protocol, port):
        return self.value

    def failing(self, protocol, port):
        return self.failing_metrics


class Quiet(ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()
        self.output = b""

    def errReceived(self, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(None)


class RealHAProxyTests(TestCase):
    timeout = 60

    def setUp(self):
        if not os.path.exists(HAPROXY):
            self.fail("haproxy is not installed: make test installs Debian's haproxy package")
        self.sampler = ControlledSampler()
        port = reactor.listenTCP(0, HAProxyAgentFactory(self.sampler, "tcp", 80), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # A short folder: a Unix socket path may not exceed about 100 bytes.
        folder = tempfile.mkdtemp(prefix="lvsf-haproxy-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.stats = os.path.join(folder, "stats.sock")
        config = os.path.join(folder, "haproxy.cfg")
        with open(config, "w") as file:
            file.write(CONFIG.format(socket=self.stats, backend_port=9, agent_port=port.getHost().port))
        self.process = Quiet()
        transport = reactor.spawnProcess(self.process, HAPROXY, [HAPROXY, "-db", "-f", config], env=None)
        self.addCleanup(self.stop_haproxy, transport)

    def stop_haproxy(self, transport):
        if transport.pid is not None:
            transport.signalProcess("KILL")
        return self.process.ended

    def server_state(self):
        """(weight, admin/operational status) of rs1 from `show stat`, or None before HAProxy is up."""
        try:
            with socket.socket(socket.AF_UNIX) as connection:
                connection.connect(self.stats)
                connection.sendall(b"show stat\n")
                text = b""
                while chunk := connection.recv(65536):
                    text += chunk
        except OSError:
            return None
        lines = text.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("svname") == "rs1":
                return int(row["weight"]), row["status"]
        return None

    @defer.inlineCallbacks
    def wait_for(self, predicate, what, seconds=15):
        for _ in range(int(seconds / 0.1)):
            state = self.server_state()
            if state is not None and predicate(*state):
                return state
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"HAProxy never showed {what}; last state {self.server_state()}; stderr {self.process.output[-500:]!r}")

    @defer.inlineCallbacks
    def test_haproxy_weight_follows_health_drain_and_probe(self):
        # 75% of the configured weight 200.
        yield self.wait_for(lambda weight, status: weight == 150, "weight 150 for health 75")
        self.sampler.value = 30
        yield self.wait_for(lambda weight, status: weight == 60, "weight 60 for health 30")
        self.sampler.drained = True
        yield self.wait_for(lambda weight, status: "DRAIN" in status, "DRAIN when drained")
        self.sampler.drained = False
        self.sampler.failing_metrics = ["probe"]
        yield self.wait_for(lambda weight, status: status.startswith("DOWN"), "DOWN when the probe fails")
        self.sampler.failing_metrics = []
        self.sampler.value = 90
        yield self.wait_for(lambda weight, status: weight == 180 and not status.startswith(("DOWN", "DRAIN")),
                            "back up at weight 180")
