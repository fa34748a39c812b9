"""
lvs-director against the kernel's IPVS, in the lab: real servers in network
namespaces, each with a CPU-bound HTTP backend in its own cgroup and a real
`twistd lvs-agent` reporting the `cgroup` metric; a real `twistd
lvs-director` in the director namespace; a client sending HTTP through the
virtual address. Every wait is for a line the director logs, bounded.
"""

from __future__ import annotations

import re
import signal
import textwrap

from lvsfeedback.ipvs.model import MAX_WEIGHT, DestKey, ServiceKey
from lvsfeedback.lab.loadgen import LoadConfig
from lvsfeedback.lab.topology import VIP
from tests.integration.harness import (
    REAL,
    SERVICE,
    STARTUP,
    UNTIL_STOPPED,
    UPDATE,
    DirectorInTheLab,
    change_line,
    reals,
)


class FeedbackTests(DirectorInTheLab):
    def test_weight_follows_cgroup_load_and_a_killed_agent_is_quiesced_without_failed_requests(self):
        self.lab.start_backends(work_ms=5)
        self.write_config(SERVICE.format(vip=VIP, reals=reals(self.lab.servers)), policy="slow_start = 4.0")
        director = self.start_director()
        # Traffic from the start: loaded a little, servers report below 100.
        traffic = LoadConfig(host=VIP, port=80, rate=8, duration=UNTIL_STOPPED, pattern="short", timeout=10)
        load = self.lab.start_load(traffic)
        for server in self.lab.servers:
            self.start_agent(server)
        self.wait_for_feedback(director, self.lab.servers)

        busy = self.lab.servers[1]
        before = self.weights()[busy.address]
        mark = len(director.lines)
        hog = self.lab.start_hog(busy)
        # Three update periods, after the agent has measured the hog: two of
        # its 0.5 s samples, smoothed, and one health question (2 s).
        director.wait_for(change_line(busy.address), 3 * UPDATE + 6.0, after=mark,
                          where=lambda match: int(match.group(2)) < before)
        director.wait_for(change_line(busy.address), 60, after=mark, where=lambda match: int(match.group(2)) < before / 2)
        self.assertLess(self.weights()[busy.address], before / 2)
        self.assertDirectorAgreesWithIpvsadm()

        mark = len(director.lines)
        hog.stop()
        director.wait_for(change_line(busy.address, "health|slow-start"), 60, after=mark,
                          where=lambda match: int(match.group(2)) > before / 2)
        self.assertGreater(self.weights()[busy.address], before / 2)

        lost = self.lab.servers[2]
        mark = len(director.lines)
        self.agents[lost.name].signal(signal.SIGKILL)
        # Three keepalive intervals (at most 6 s each) and one update period.
        director.wait_for(change_line(lost.address, "lost-agent"), 3 * 6 + UPDATE, after=mark)
        self.assertEqual(self.weights()[lost.address], 0, "quiesced, not removed")
        self.assertDirectorAgreesWithIpvsadm()

        summary = self.lab.stop_load(load, traffic)
        self.assertEqual((summary.errors, summary.timeouts), (0, 0), summary)
        self.assertEqual(set(summary.servers), {server.name for server in self.lab.servers}, summary)


class CapacityModeTests(DirectorInTheLab):
    servers = 2
    mode = "capacity"

    def test_capacity_mode_gives_three_times_the_cpu_at_least_twice_the_weight(self):
        small, large = self.lab.servers
        self.lab.set_cpus(small, 0.1)
        self.lab.set_cpus(large, 0.3)
        self.lab.start_backends(work_ms=5)
        self.write_config(SERVICE.format(vip=VIP, reals=reals(self.lab.servers)),
                          policy="slow_start = 0")
        director = self.start_director()
        # Persistent connections: new weights move traffic only as slowly as
        # connections are made, which is what a controller must not overshoot on.
        traffic = LoadConfig(host=VIP, port=80, rate=12, duration=UNTIL_STOPPED, pattern="persistent", timeout=10)
        load = self.lab.start_load(traffic)
        for server in self.lab.servers:
            self.start_agent(server)
        written: dict[str, int] = {}

        def large_weighs_twice_small(match) -> bool:
            written[match.group(1)] = int(match.group(3))
            return written.get(large.address, 0) >= 2 * written.get(small.address, MAX_WEIGHT)

        # Three times the CPU: a weight at least twice as large, within a minute of feedback.
        director.wait_for(rf"TCP {re.escape(VIP)}:80 ([\d.]+):8080: weight (\S+) -> (\d+) \(capacity", STARTUP + 60,
                          where=large_weighs_twice_small)
        self.assertDirectorAgreesWithIpvsadm()
        weights = self.weights()
        self.assertGreater(weights[large.address], 1.5 * weights[small.address], weights)
        status = {s["server"]: s for s in self.status()["services"][0]["servers"]}
        self.assertRegex(status[f"{large.address}:8080"]["detail"], r"^utilisation [\d.]+ vs mean [\d.]+")

        summary = self.lab.stop_load(load, traffic)
        self.assertEqual((summary.errors, summary.timeouts), (0, 0), summary)


class RestartAndReloadTests(DirectorInTheLab):
    servers = 4  # the fourth joins by a reload

    def test_restart_changes_no_weight_and_reload_refuses_bad_files_and_adds_servers(self):
        first_three, fourth = self.lab.servers[:3], self.lab.servers[3]
        self.lab.start_backends(work_ms=5)
        self.write_config(SERVICE.format(vip=VIP, reals=reals(first_three)))
        director = self.start_director()
        traffic = LoadConfig(host=VIP, port=80, rate=8, duration=UNTIL_STOPPED, pattern="persistent", timeout=10)
        load = self.lab.start_load(traffic)
        for server in first_three:
            self.start_agent(server)
        self.wait_for_feedback(director, first_three)

        before = self.weights()
        self.assertEqual(director.stop(), -signal.SIGTERM, director.tail())
        self.assertEqual(self.weights(), before, "a stopped director leaves the table as it was")
        director = self.start_director()
        for server in first_three:
            director.wait_for(rf"agent {re.escape(server.address)} up", STARTUP)
        director.wait_for(r"adoption over", 60 + 3 * UPDATE)  # the default adoption_grace
        self.assertEqual(set(self.weights()), set(before), "no real server disappeared")
        self.assertDirectorAgreesWithIpvsadm()

        mark = restarted_until = len(director.lines)
        with open(self.config, "w") as file:
            file.write('[director]\nlisten = 3262\n')
        director.signal(signal.SIGHUP)
        director.wait_for(r"config reload refused, the running config stays", 30, after=mark)
        self.assertEqual(set(self.weights()), set(before))

        mark = len(director.lines)
        self.write_config(SERVICE.format(vip=VIP, reals=reals(self.lab.servers)))
        director.signal(signal.SIGHUP)
        director.wait_for(r"config reloaded", 30, after=mark)
        # No agent speaks for it: its base weight, reached by a slow start.
        director.wait_for(change_line(fourth.address, "static|slow-start"), 3 * UPDATE + 10, after=mark)
        self.assertIn(fourth.address, self.weights())
        self.assertDirectorAgreesWithIpvsadm()

        summary = self.lab.stop_load(load, traffic)
        self.assertEqual((summary.errors, summary.timeouts), (0, 0), summary)
        # Until the reload, the restarted director wrote only what health
        # reports asked for: no reset to static, no ramp from the floor.
        writes = [line for line in director.lines[:restarted_until] if re.search(r": weight \S+ -> \d+ \(", line)]
        self.assertFalse([line for line in writes if re.search(r"\((static|slow-start|lost-agent|panic)", line)],
                         "\n".join(writes))


class TableOwnershipTests(DirectorInTheLab):
    servers = 2

    def test_weights_only_beside_ipvsadm_weights_its_servers_and_adds_or_removes_none(self):
        rs1, rs2 = self.lab.servers
        beside = ServiceKey.for_address("tcp", VIP, 81)
        self.lab.run(self.lab.director, ["ipvsadm", "-A", "-t", f"{VIP}:81", "-s", "wlc"])
        for server in (rs1, rs2):
            self.lab.run(self.lab.director,
                         ["ipvsadm", "-a", "-t", f"{VIP}:81", "-r", f"{server.address}:8080", "-m", "-w", "100"])
        self.lab.start_backends(work_ms=5)
        # The config names only rs1 and a server that does not exist: neither
        # is added; rs2, which ipvsadm added, is weighted all the same.
        services = SERVICE.format(vip=VIP, reals=REAL.format(address=rs1.address) + REAL.format(address="10.201.0.99"))
        self.write_config(services.replace("port = 80\n", "port = 81\n", 1), director="weights_only = true")
        director = self.start_director()
        for server in (rs1, rs2):
            self.start_agent(server, metric="command:cmd=echo 50")  # load 50 of 100: health 50
        for server in (rs1, rs2):
            director.wait_for(rf"TCP {re.escape(VIP)}:81 {re.escape(server.address)}:8080: weight 100 -> 50 \(health", STARTUP)
        table = self.kernel()
        self.assertEqual(set(table), {beside})
        self.assertEqual(set(table[beside]), {DestKey.of(rs1.address, 8080), DestKey.of(rs2.address, 8080)})
        self.assertFalse([line for line in director.lines if re.search(r"removed|-> none", line)])

    def test_fwmark_service_carries_traffic_and_its_mark_rule_leaves_with_it(self):
        marked = ServiceKey.for_fwmark(7)
        self.lab.start_backends(work_ms=2)
        fwmark = textwrap.dedent(f"""
            [[service]]
            name = "marked"
            protocol = "fwmark"
            fwmark = 7
            scheduler = "rr"
            forwarding = "nat"
            [service.mark]
            destination = "{VIP}"
            protocol = "tcp"
            ports = [82]
            """) + "".join(REAL.format(address=server.address) for server in self.lab.servers)
        self.write_config(fwmark)
        director = self.start_director()
        director.wait_for(r"FWM 7: rr", STARTUP)
        rules = self.lab.run(self.lab.director, ["iptables-legacy-save", "-t", "mangle"]).stdout
        self.assertIn('--comment "lvsfeedback fwmark 7" -j MARK --set-xmark 0x7/0xffffffff', rules)
        self.assertIn(f"-d {VIP}/32 -p tcp -m multiport --dports 82", rules)

        summary = self.lab.generate_load(LoadConfig(host=VIP, port=82, rate=5, duration=6, pattern="short", timeout=10))
        self.assertEqual((summary.errors, summary.timeouts), (0, 0), summary)
        self.assertEqual(set(summary.servers), {server.name for server in self.lab.servers}, summary)

        mark = len(director.lines)
        self.write_config("")
        director.signal(signal.SIGHUP)
        director.wait_for(r"FWM 7: removed", 3 * UPDATE + 20, after=mark)
        self.assertNotIn(marked, self.kernel())
        rules = self.lab.run(self.lab.director, ["iptables-legacy-save", "-t", "mangle"]).stdout
        self.assertNotIn("lvsfeedback fwmark 7", rules)
