"""
The lab's director pair without root or a VM: each director's keepalived
config made from the shipped one (and accepted by keepalived), its command
line, lvs-director's config and the agents' command, and the readers of
ipvsadm's connection table and statistics.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lvsfeedback.director.config import check_config, load_config
from lvsfeedback.lab.cgroups import Cgroup
from lvsfeedback.lab.pair import (
    HYSTERESIS,
    SHIPPED_KEEPALIVED_CONFIG,
    Connection,
    DirectorView,
    PairDirector,
    agent_command,
    director_config,
    keepalived_command,
    keepalived_config,
    pair_problems,
    parse_connections,
    parse_scheduled_connections,
    parse_sync_daemons,
)
from lvsfeedback.lab.topology import LabError, LabServer

SHIPPED = SHIPPED_KEEPALIVED_CONFIG.read_text()
SERVERS = [LabServer(f"rs{n}", f"p-rs{n}", f"10.200.0.{10 + n}", Cgroup(Path(f"/cg/p/rs{n}"))) for n in (1, 2, 3)]


def guard_file(number: int) -> Path:
    return Path(f"/lab/director{number}/run/pair-guard")


def config(number: int = 1, sync: bool = True, guard: bool = True) -> str:
    return keepalived_config(SHIPPED, number=number, notify="/run/lab/vrrp-notify", advert_int=0.2, sync=sync,
                             guard_file=guard_file(number) if guard else None)


def directive(text: str, name: str) -> list[str]:
    """The values of every line of the directive, without comments."""
    return [line.split("#")[0].split(None, 1)[1].strip() for line in text.splitlines()
            if line.split() and line.split()[0] == name]


class KeepalivedConfigTests(SynchronousTestCase):
    def test_each_director_gets_its_router_id_and_priority(self):
        first, second = config(1), config(2)
        self.assertEqual((directive(first, "router_id"), directive(first, "priority")),
                         (["lvs-director-1"], ["150"]))
        self.assertEqual((directive(second, "router_id"), directive(second, "priority")),
                         (["lvs-director-2"], ["100"]))

    def test_the_lab_s_vip_interface_adverts_and_hook(self):
        text = config()
        self.assertIn("10.200.0.1/32 dev eth0", text)
        self.assertNotIn("192.0.2.10", text)
        self.assertEqual(directive(text, "advert_int"), ["0.2"])
        self.assertEqual(directive(text, "notify"), ["/run/lab/vrrp-notify"])
        self.assertEqual(directive(text, "interface"), ["eth0"])

    def test_the_shipped_behaviour_is_kept(self):
        text = config()
        for line in ("vrrp_version 3", "nopreempt", "state BACKUP", "enable_script_security"):
            self.assertIn(line, text)
        self.assertEqual(directive(text, "lvs_sync_daemon"), ["eth0 VI_LVS id 51"])

    def test_without_sync_there_is_no_sync_daemon(self):
        self.assertEqual(directive(config(sync=False), "lvs_sync_daemon"), [])

    def test_a_shipped_file_missing_a_line_to_set_is_refused_by_name(self):
        broken = re.sub(r"^\s*advert_int.*$", "", SHIPPED, flags=re.M)
        error = self.assertRaises(LabError, keepalived_config, broken, number=1, notify="/x", advert_int=1,
                                  sync=True, guard_file=None)
        self.assertIn("keepalived-pair.conf: expected one advert_int line to set, found 0", str(error))

    def test_the_guard_tracks_the_file_the_director_s_lvs_director_writes(self):
        text = config(2)
        self.assertEqual(directive(text, "file"), [f'"{guard_file(2)}"'])
        self.assertRegex(text, r"track_file pair_guard \{\s*file \S+\s*weight 0\s*\}")
        self.assertRegex(text, r"track_file \{\s*pair_guard\s*\}")

    def test_the_director_s_config_names_the_guard_file_its_keepalived_tracks(self):
        folder = Path(self.mktemp()).resolve()
        director = PairDirector(1, "p-director", "10.200.0.3", folder, guard_folder=Path("/tmp/guard/director1"))
        director.run_directory.mkdir(parents=True)
        (folder / "status.token").write_text("token\n")
        director.config.write_text(director_config(1, SERVERS, token_file=folder / "status.token",
                                                   state_file=director.state_file, guard_file=director.guard_file))
        tracked = keepalived_config(SHIPPED, number=1, notify="/x", advert_int=0.2, sync=True,
                                    guard_file=director.guard_file)
        self.assertEqual(load_config(director.config).pair.guard_file, Path("/tmp/guard/director1/pair-guard"))
        self.assertEqual(directive(tracked, "file"), ['"/tmp/guard/director1/pair-guard"'])
        # Without a folder of its own, its run directory: [pair] guard_file's default.
        director = PairDirector(1, "p-director", "10.200.0.3", folder)
        director.config.write_text(director_config(1, SERVERS, token_file=folder / "status.token",
                                                   state_file=director.state_file))
        self.assertEqual(load_config(director.config).pair.guard_file, director.guard_file)

    def test_without_the_guard_nothing_tracks_a_file(self):
        text = config(guard=False)
        self.assertEqual((directive(text, "file"), directive(text, "track_file")), ([], []))
        self.assertNotIn("pair_guard", text)

    def test_keepalived_accepts_both_directors_configs(self):
        keepalived = shutil.which("keepalived")
        if keepalived is None:
            raise SkipTest("keepalived is not installed (make deps installs it)")
        for number, sync, guard in ((1, True, True), (2, True, True), (1, False, True), (1, True, False)):
            path = self.mktemp()
            Path(path).write_text(config(number, sync, guard))
            result = subprocess.run([keepalived, "--config-test", "--use-file", path, "--log-console"],
                                    capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr + result.stdout)

    def test_the_command_runs_vrrp_only_in_the_foreground_with_its_own_pid_files(self):
        argv = keepalived_command(Path("/f/k.conf"), Path("/f/k.pid"), Path("/f/v.pid"))
        self.assertEqual(argv[:4], ["sh", "-c", 'exec "$@" >&2', "keepalived"])
        for flag in ("--dont-fork", "--log-console", "--vrrp", "--use-file=/f/k.conf", "--pid=/f/k.pid",
                     "--vrrp_pid=/f/v.pid"):
            self.assertIn(flag, argv)


class DirectorConfigTests(SynchronousTestCase):
    def write(self, number: int) -> str:
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        token = folder / "status.token"
        token.write_text("secret\n")
        path = folder / "director.toml"
        path.write_text(director_config(number, SERVERS, token_file=token, state_file=folder / "run" / "vrrp-VI_LVS"))
        return str(path)

    def test_lvs_director_accepts_it(self):
        self.assertEqual(check_config(self.write(1)), [])

    def test_each_director_listens_on_its_own_address_and_serves_the_vip_by_dr(self):
        for number, address in ((1, "10.200.0.3"), (2, "10.200.0.4")):
            loaded = load_config(self.write(number))
            self.assertEqual(loaded.director.listen, f"tcp:3262:interface={address}")
            self.assertEqual(loaded.status.listen, f"tcp:9101:interface={address}")
            [service] = loaded.services
            self.assertEqual((service.key.address, service.key.port, service.forwarding), ("10.200.0.1", 80, "dr"))
            self.assertEqual([(real.dest_key.address, real.dest_key.port, real.forwarding) for real in service.reals],
                             [(server.address, 80, "dr") for server in SERVERS])
            self.assertEqual((service.policy.mode, service.policy.hysteresis), ("health", HYSTERESIS))

    def test_each_director_follows_the_other_while_backup(self):
        for number, peer in ((1, "10.200.0.4"), (2, "10.200.0.3")):
            path = self.write(number)
            pair = load_config(path).pair
            self.assertEqual(pair.peer, f"http://{peer}:9101")
            self.assertEqual(pair.vrrp_state_file, Path(path).parent / "run" / "vrrp-VI_LVS")
            self.assertEqual(pair.peer_token, b"secret")


class AgentCommandTests(SynchronousTestCase):
    def test_the_agent_reports_to_both_directors(self):
        argv = agent_command(SERVERS[0])
        self.assertEqual([argv[i + 1] for i, arg in enumerate(argv) if arg == "--director"],
                         ["tcp:10.200.0.3:3262", "tcp:10.200.0.4:3262"])
        self.assertIn("cgroup:path=/cg/p/rs1", argv)
        self.assertIn("tcp:80:dr", argv)


class IpvsadmReaderTests(SynchronousTestCase):
    def test_connection_entries(self):
        listing = (
            "IPVS connection entries\n"
            "pro expire state       source             virtual            destination\n"
            "TCP 14:59  ESTABLISHED 10.200.0.2:40310   10.200.0.1:80      10.200.0.11:80\n"
            "TCP 01:57  FIN_WAIT    10.200.0.2:40312   10.200.0.1:80      10.200.0.12:80\n"
        )
        self.assertEqual(parse_connections(listing), [
            Connection("TCP", "ESTABLISHED", "10.200.0.2:40310", "10.200.0.1:80", "10.200.0.11:80"),
            Connection("TCP", "FIN_WAIT", "10.200.0.2:40312", "10.200.0.1:80", "10.200.0.12:80"),
        ])

    def test_scheduled_connections_of_a_service(self):
        listing = (
            "IP Virtual Server version 1.2.1 (size=4096)\n"
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
            "  -> RemoteAddress:Port\n"
            "TCP  10.200.0.1:80                     1234     5000        0   300000        0\n"
            "  -> 10.200.0.11:80                     400     1600        0   100000        0\n"
        )
        self.assertEqual(parse_scheduled_connections(listing, "10.200.0.1:80"), 1234)
        self.assertRaises(LabError, parse_scheduled_connections, listing, "10.200.0.9:80")


def view(number: int, state: str | None, holds: bool, daemons: set[str], *states: str) -> DirectorView:
    """Director `number`'s view, with a connection to the VIP in each of `states`."""
    connections = tuple(Connection("TCP", each, f"10.200.0.2:{40000 + n}", "10.200.0.1:80", "10.200.0.11:80")
                        for n, each in enumerate(states))
    return DirectorView(f"p-director{number}", state, holds, frozenset(daemons), connections)


class SoundPairTests(SynchronousTestCase):
    """The failover cells' check before measuring (lab/failover_cells.py, PairLab.steady)."""

    def test_a_master_and_a_standby_with_their_sync_daemons_and_no_live_entries_is_sound(self):
        for standby in ("BACKUP", "FAULT"):
            views = [view(1, "MASTER", True, {"master"}, "TIME_WAIT", "CLOSE"),
                     view(2, standby, False, {"backup"}, "ESTABLISHED")]
            self.assertEqual(pair_problems(views, sync=True), [], standby)
        self.assertEqual(pair_problems([view(1, "MASTER", True, set()), view(2, "BACKUP", False, set())],
                                       sync=False), [])

    def test_a_stale_master_sync_daemon_left_by_a_killed_keepalived_is_refused(self):
        views = [view(1, "MASTER", True, {"master"}), view(2, "BACKUP", False, {"master", "backup"})]
        self.assertEqual(pair_problems(views, sync=True),
                         ["p-director2 runs sync daemons ['backup', 'master'], not ['backup']"])

    def test_entries_on_the_master_that_would_carry_a_new_connection_past_the_weights_are_refused(self):
        views = [view(1, "MASTER", True, {"master"}, "ESTABLISHED", "FIN_WAIT", "TIME_WAIT"),
                 view(2, "BACKUP", False, {"backup"})]
        self.assertEqual(pair_problems(views, sync=True),
                         ["p-director1 still holds 2 connections to 10.200.0.1:80 (ESTABLISHED, FIN_WAIT)"])

    def test_no_holder_two_holders_or_a_wrong_state_is_refused(self):
        self.assertIn("0 directors hold the VIP (none)",
                      pair_problems([view(1, "BACKUP", False, set()), view(2, "BACKUP", False, set())], sync=False))
        self.assertIn("2 directors hold the VIP (p-director1, p-director2)",
                      pair_problems([view(1, "MASTER", True, set()), view(2, "MASTER", True, set())], sync=False))
        self.assertEqual(pair_problems([view(1, None, True, set()), view(2, "STOP", False, set())], sync=False),
                         ["p-director1 holds the VIP but keepalived says None",
                          "p-director2 does not hold the VIP and is STOP, not standing by"])

    def test_the_sync_daemons_are_read_from_ipvsadm(self):
        listing = ("master sync daemon (mcast=eth0, syncid=51, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
                   "backup sync daemon (mcast=eth0, syncid=51, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n")
        self.assertEqual(parse_sync_daemons(listing), {"master", "backup"})
        self.assertEqual(parse_sync_daemons(""), frozenset())
