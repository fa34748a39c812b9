"""
Direct routing, tunnelling and IPv6 carrying traffic on a real kernel (#17):
HTTP through the virtual address reaches every real server, and in DR and
TUN the answers go straight to the client, not back through the director.
"""

from twisted.trial.unittest import TestCase

from lvsfeedback.lab.loadgen import LoadConfig
from lvsfeedback.lab.topology import (
    BACKEND_PORT,
    CLIENT_ADDRESS,
    DIRECTOR_SEGMENT_ADDRESS,
    DR,
    TUN,
    VIP,
    VIP6,
    Topology,
)
from tests.integration import require_ipvs

SERVERS = 3
# Broadcast and multicast a quiet segment brings the director's eth0 during a
# run (ARP; IPv6 router solicitations, MLD and DAD of every link coming up),
# far fewer than the answers, which are at least twice the requests.
STRAY_PACKETS = 50


class LabForwardingTests(TestCase):
    def build_lab(self, **options):
        require_ipvs()
        lab = Topology(servers=SERVERS, **options).build()

        def teardown_unless_done():
            if lab.leftovers():
                lab.teardown()

        self.addCleanup(teardown_unless_done)
        return lab

    def add_service(self, lab, service, method, reals):
        lab.run(lab.director, ["ipvsadm", "-A", "-t", service, "-s", "rr"])
        for real in reals:
            lab.run(lab.director, ["ipvsadm", "-a", "-t", service, "-r", real, method, "-w", "1"])

    def run_load(self, lab, host):
        # What is proved is where the packets go, not how fast: a generous
        # timeout, as the emulated VM on a busy machine can stall for seconds.
        return lab.generate_load(LoadConfig(host, 80, rate=20, duration=3, seed=7, timeout=60, pattern="short"))

    def assertEveryServerAnsweredEverything(self, lab, summary):
        self.assertGreater(summary.requests, 40)
        self.assertEqual((summary.ok, summary.errors, summary.timeouts), (summary.requests, 0, 0), summary)
        self.assertEqual(set(summary.servers), {server.name for server in lab.servers}, summary)

    def load_counting_packets(self, lab):
        """
        A run's load through the VIP; its summary, with the packets the
        director's eth0 received meanwhile, and those the client sent and
        received.
        """
        director_before, _ = lab.packet_counts(lab.director)
        client_received_before, client_sent_before = lab.packet_counts(lab.client)
        summary = self.run_load(lab, VIP)
        director_after, _ = lab.packet_counts(lab.director)
        client_received_after, client_sent_after = lab.packet_counts(lab.client)
        counts = (director_after - director_before, client_sent_after - client_sent_before,
                  client_received_after - client_received_before)
        return summary, counts

    def assertAnswersBypassTheDirector(self, lab):
        """
        The director's eth0 receives no more than the client sent (the
        requests) while the client receives the answers: had those crossed
        the director, its eth0 would have received them too.
        """
        summary, (director_received, client_sent, client_received) = self.load_counting_packets(lab)
        self.assertEveryServerAnsweredEverything(lab, summary)
        counts = f"director received {director_received}, client sent {client_sent}, received {client_received}"
        # Each short request is at least a SYN-ACK and an answer back.
        self.assertGreaterEqual(client_received, 2 * summary.requests, counts)
        self.assertLessEqual(director_received, client_sent + STRAY_PACKETS, counts)

    def test_direct_routing_reaches_every_real_server_and_answers_bypass_the_director(self):
        lab = self.build_lab(mode=DR)
        # DR rewrites only the destination MAC: the real servers serve the VIP's port.
        lab.start_backends(port=80, work_ms=1)
        self.add_service(lab, f"{VIP}:80", "-g", [f"{server.address}:80" for server in lab.servers])
        self.assertAnswersBypassTheDirector(lab)

    def test_tunnelling_reaches_every_real_server_and_answers_bypass_the_director(self):
        lab = self.build_lab(mode=TUN)
        lab.start_backends(port=80, work_ms=1)
        self.add_service(lab, f"{VIP}:80", "-i", [f"{server.address}:80" for server in lab.servers])
        self.assertAnswersBypassTheDirector(lab)

    def test_answers_routed_through_the_director_are_seen_crossing_it(self):
        # The control: the bypass check fails when the answers do cross.
        lab = self.build_lab(mode=DR)
        lab.run(lab.director, ["sysctl", "-qw", "net.ipv4.ip_forward=1",
                               # The answers come from the VIP, one of its own addresses.
                               "net.ipv4.conf.all.accept_local=1", "net.ipv4.conf.eth0.accept_local=1"])
        for server in lab.servers:
            lab.run(server.namespace, ["ip", "route", "add", f"{CLIENT_ADDRESS}/32", "via", DIRECTOR_SEGMENT_ADDRESS])
        lab.start_backends(port=80, work_ms=1)
        self.add_service(lab, f"{VIP}:80", "-g", [f"{server.address}:80" for server in lab.servers])
        _, (director_received, client_sent, client_received) = self.load_counting_packets(lab)
        counts = f"director received {director_received}, client sent {client_sent}, received {client_received}"
        self.assertGreater(director_received, client_sent + STRAY_PACKETS, counts)

    def test_an_ipv6_virtual_service_reaches_every_real_server(self):
        lab = self.build_lab(ipv6=True)
        lab.start_backends(work_ms=1)
        self.add_service(lab, f"[{VIP6}]:80", "-m", [f"[{server.address6}]:{BACKEND_PORT}" for server in lab.servers])
        self.assertEveryServerAnsweredEverything(lab, self.run_load(lab, VIP6))
