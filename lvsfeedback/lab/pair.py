"""
A pair of directors in the lab (#17): the DR lab with two directors
(L{Topology} with C{directors=2}), each running keepalived (VRRP only, its
config made from the shipped tap/keepalived-pair.conf) and C{twistd
lvs-director}, and real servers whose agents report to both.

    client ─┐
    director  10.200.0.3 (priority 150) ─┤ bridge "segment"; keepalived gives
    director2 10.200.0.4 (priority 100) ─┤ the VIP 10.200.0.1 to the master
    rsK       10.200.0.(10+K), VIP on lo ┘

Who owns what, as in production: lvs-director owns the virtual service and
its weights, on both directors (the kernel's IPVS table, like its sync
daemon, is per network namespace, so each director has its own); keepalived
owns the address, and starts the kernel's connection sync daemon with the
VRRP state (C{lvs_sync_daemon}: master on MASTER, backup on BACKUP). That is
the engine an operator already runs and knows, so lvs-director does not
start the sync daemon itself. keepalived's notify hook (tap/vrrp-notify)
records each director's VRRP state in its own run directory, and the
split-brain guard (lvs-director's verdict in its run directory's guard
file, keepalived's track_file; director/pair_guard.py) holds the director
without the VIP in FAULT while the other has it.

Everything here is driven from outside the namespaces, by a test or a
bench, and bounded: the VRRP state and the kernel's tables have no event to
wait on, so waits poll them until a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lvsfeedback.director.config import DEFAULT_GUARD_FILE
from lvsfeedback.lab.topology import (
    DIRECTOR_SEGMENT_ADDRESSES,
    DR,
    NAMESPACE_LINK,
    VIP,
    Command,
    LabError,
    LabProcess,
    LabServer,
    Topology,
    run_command,
)
from lvsfeedback.testing import ipvsadm

T = TypeVar("T")
TAP = Path(__file__).resolve().parents[2] / "tap"
SHIPPED_KEEPALIVED_CONFIG = TAP / "keepalived-pair.conf"
SHIPPED_NOTIFY_HOOK = TAP / "vrrp-notify"
KEEPALIVED = "/usr/sbin/keepalived"
TWISTD = str(Path(sys.executable).parent / "twistd")
IPTABLES = "iptables-legacy"
VRRP_PROTOCOL = "112"
VRRP_INSTANCE = "VI_LVS"
# The first director is the preferred master when both come up together; with
# nopreempt, though, a director already master keeps the address against a
# higher priority: whichever keepalived is up first, and the survivor of a death.
PRIORITIES = (150, 100)
NECP_PORT = 3262
STATUS_PORT = 9101
SERVICE_PORT = 80
POLL_INTERVAL = 0.1
# [pair] peer_timeout and guard_timeout: how long the follower and the
# split-brain guard wait for the other director. The emulated VM answers
# slowly at times, and a peer the guard wrongly finds unheard while VRRP is
# blocked lets the standby's keepalived take the VIP beside the master: the
# lab keeps 2 s for both (shipped: 1 s and guard_interval, 0.5 s), which a
# takeover with the guard pays for (README "Running a pair").
PEER_TIMEOUT = 2.0
# The directors' [policy] hysteresis: how far apart their weights may be.
HYSTERESIS = 0.1
# A director not holding the VIP, ready to take it: FAULT is the guard's standing by.
STANDING_BY = ("BACKUP", "FAULT")
# "pro expire state source virtual destination", one connection a line.
_CONNECTION_LINE = re.compile(r"^(\w+)\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def _set_line(text: str, pattern: str, replacement: str, what: str) -> str:
    """text with the one line matching pattern (its indentation kept) replaced; LabError when not exactly one."""
    regex = re.compile(rf"^([ \t]*){pattern}[^\n]*$", re.M)
    found = len(regex.findall(text))
    if found != 1:
        raise LabError(f"{SHIPPED_KEEPALIVED_CONFIG.name}: expected one {what} line to set, found {found}")
    return regex.sub(lambda match: match.group(1) + replacement, text)


def _drop_block(text: str, header: str, what: str) -> str:
    """text without the one block opening with the header line `header {` and closing at its `}` line."""
    regex = re.compile(rf"^[ \t]*{header} \{{\n.*?^[ \t]*\}}\n", re.M | re.S)
    if len(regex.findall(text)) != 1:
        raise LabError(f"{SHIPPED_KEEPALIVED_CONFIG.name}: expected one {what} block to drop")
    return regex.sub("", text)


def keepalived_config(shipped: str, *, number: int, notify: str, advert_int: float, sync: bool,
                      guard_file: Path | None, interface: str = NAMESPACE_LINK, vip: str = VIP) -> str:
    """
    The shipped pair config for director `number` (1 or 2) of the lab: its
    router id and priority, the lab's interface and VIP, a short advert
    interval, the notify hook at `notify`, the split-brain guard's verdict
    tracked in `guard_file` (None: no guard, the control of the split-brain
    test); without `sync`, no sync daemon (the control of the failover test).
    """
    text = shipped
    if guard_file is None:
        text = _drop_block(text, "track_file pair_guard", "track_file")
        text = _drop_block(text, "track_file", "instance's track_file")
    else:
        text = _set_line(text, r'file "', f'file "{guard_file}"', "guard file")
    text = _set_line(text, r"router_id\b", f"router_id lvs-director-{number}", "router_id")
    text = _set_line(text, r"priority\b", f"priority {PRIORITIES[number - 1]}", "priority")
    text = _set_line(text, r"interface\b", f"interface {interface}", "interface")
    text = _set_line(text, r"advert_int\b", f"advert_int {advert_int:g}", "advert_int")
    text = _set_line(text, r"notify\b", f"notify {notify}", "notify")
    text = _set_line(text, r"\S+/32 dev \S+", f"{vip}/32 dev {interface}", "virtual address")
    if not sync:
        return _set_line(text, r"lvs_sync_daemon\b", "# no lvs_sync_daemon: the control", "lvs_sync_daemon")
    # Its instance and sync id as shipped; only the interface is the lab's.
    shipped_line = re.search(r"^[ \t]*lvs_sync_daemon\s+\S+(.*)$", text, re.M)
    rest = shipped_line.group(1) if shipped_line else ""
    return _set_line(text, r"lvs_sync_daemon\b", f"lvs_sync_daemon {interface}{rest}", "lvs_sync_daemon")


def keepalived_command(config: Path, pid_file: Path, vrrp_pid_file: Path) -> list[str]:
    """
    keepalived in the foreground, VRRP only, logging to its stderr (its
    stdout too: the lab reads neither pipe), with pid files of its own so
    that two run on one machine.
    """
    return [
        "sh", "-c", 'exec "$@" >&2', "keepalived",
        KEEPALIVED, "--dont-fork", "--log-console", "--no-syslog", "--vrrp",
        f"--use-file={config}", f"--pid={pid_file}", f"--vrrp_pid={vrrp_pid_file}",
    ]


def director_config(number: int, servers: list[LabServer], *, token_file: Path, state_file: Path,
                    guard_file: Path | None = None, guard_timeout: float = PEER_TIMEOUT,
                    guard_interval: float | None = None, policy: str = "") -> str:
    """
    lvs-director's config for director `number`: NECP and status on its
    segment address, the DR web service on the VIP with every real server,
    health mode (both directors see the same agents' reports, so both
    compute the same weights), and `[pair]`: while BACKUP, by the notify
    hook's `state_file`, it follows the other's desired weights, as a
    capacity-mode backup must (it sees none of the packets); its split-brain
    guard writes `guard_file` (None: the default, beside `state_file`).
    """
    address = DIRECTOR_SEGMENT_ADDRESSES[number - 1]
    reals = "".join(f'\n[[service.real]]\naddress = "{server.address}"\n' for server in servers)
    # While BACKUP it follows the other's desired weights ([pair]), read from
    # the other's status listener on its segment address, behind the token.
    peer = DIRECTOR_SEGMENT_ADDRESSES[2 - number]
    guard = "" if guard_file is None else f'\nguard_file = "{guard_file}"'
    interval = "" if guard_interval is None else f"\nguard_interval = {guard_interval:g}"
    return f"""
[director]
listen = "tcp:{NECP_PORT}:interface={address}"
update_interval = 1.0
health_interval = 1.0
[status]
listen = "tcp:{STATUS_PORT}:interface={address}"
token_file = "{token_file}"
[pair]
vrrp_state_file = "{state_file}"
peer = "http://{peer}:{STATUS_PORT}"
peer_token_file = "{token_file}"{guard}
peer_timeout = {PEER_TIMEOUT:g}
guard_timeout = {guard_timeout:g}{interval}
[policy]
mode = "health"
hysteresis = {HYSTERESIS}
# Both directors start together; a ramp would only blur their agreement.
slow_start = 0
{policy}
[[service]]
name = "web"
protocol = "tcp"
address = "{VIP}"
port = {SERVICE_PORT}
scheduler = "wlc"
forwarding = "dr"
{reals}"""


def agent_command(server: LabServer) -> list[str]:
    """lvs-agent on a real server reporting its cgroup's load to both directors."""
    directors = [argument for address in DIRECTOR_SEGMENT_ADDRESSES
                 for argument in ("--director", f"tcp:{address}:{NECP_PORT}")]
    return [TWISTD, "-n", "--pidfile=", "lvs-agent", *directors, "--service", f"tcp:{SERVICE_PORT}:dr",
            "--metric", f"cgroup:path={server.cgroup.path}", "--interval", "0.5"]


@dataclass(frozen=True)
class Connection:
    """One entry of a director's IPVS connection table."""

    protocol: str
    state: str
    client: str
    virtual: str
    real: str


def parse_connections(listing: str) -> list[Connection]:
    """`ipvsadm -Lnc` output → its entries."""
    entries = []
    for line in listing.splitlines():
        match = _CONNECTION_LINE.match(line)
        if match and match.group(1) != "pro":
            entries.append(Connection(*match.groups()))
    return entries


def parse_scheduled_connections(listing: str, service: str) -> int:
    """
    `ipvsadm -Ln --stats --exact` output → the connections this director
    scheduled for `service` (ADDRESS:PORT); a synced connection is not counted.
    """
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] != "->" and fields[1] == service:
            return int(fields[2])
    raise LabError(f"no virtual service {service} in:\n{listing}")


# ipvsadm -L --daemon: "master sync daemon (mcast=eth0, syncid=51, ...)", one a line.
_SYNC_DAEMON_LINE = re.compile(r"^(master|backup) sync daemon\b", re.M)
# IPVS reschedules a new connection from a client port an entry still holds
# only over these states (net.ipv4.vs.conn_reuse_mode 1); any other sends it
# to the entry's real server whatever the weights say.
RESCHEDULED_OVER = frozenset({"TIME_WAIT", "CLOSE"})
# IPVS's TCP timeouts on the lab's directors (ipvsadm --set: established,
# FIN_WAIT, UDP), in seconds. A backup's synced table keeps the entries of
# connections whose end the master never synced, ESTABLISHED, for IPVS's 15
# minutes (900 s): after a takeover the new master held them, and the next
# cell found the pair unsound for as long. A minute outlives any pause of the
# lab's persistent connections (a request every two seconds or so), so the
# cells stay independent.
LAB_TCP_TIMEOUTS = (60, 120, 300)


def parse_sync_daemons(listing: str) -> frozenset[str]:
    """`ipvsadm -L --daemon` output → the sync daemons running: "master", "backup"."""
    return frozenset(_SYNC_DAEMON_LINE.findall(listing))


@dataclass(frozen=True)
class DirectorView:
    """What one director's system says, for judging whether the pair is sound (L{pair_problems})."""

    namespace: str
    vrrp_state: str | None
    holds_vip: bool
    sync_daemons: frozenset[str]
    connections: tuple[Connection, ...]


def pair_problems(views: list[DirectorView], *, sync: bool, service: str = f"{VIP}:{SERVICE_PORT}") -> list[str]:
    """
    Why the pair is not in a sound state to measure from, [] when it is:
    one director holds the VIP and is MASTER, the other stands by; with
    `sync`, the kernel's sync daemons as keepalived runs them (master on
    the master, backup on the other: a SIGKILLed keepalived leaves its
    daemons running, and a reboot would not); and no connection entry to
    `service` left on the master that would send a new connection from a
    reused client port to its old real server, past the weights. (A revived
    director keeps the ESTABLISHED entries it died with, and a new master
    the synced entries of connections that ended on the old one, until
    IPVS's timeout, `LAB_TCP_TIMEOUTS` in the lab: nothing short of a new
    namespace empties them.)
    """
    problems = []
    holders = [view for view in views if view.holds_vip]
    if len(holders) != 1:
        problems.append(f"{len(holders)} directors hold the VIP ({', '.join(v.namespace for v in holders) or 'none'})")
    for view in views:
        master = len(holders) == 1 and view is holders[0]
        if master and view.vrrp_state != "MASTER":
            problems.append(f"{view.namespace} holds the VIP but keepalived says {view.vrrp_state}")
        if not view.holds_vip and view.vrrp_state not in STANDING_BY:
            problems.append(f"{view.namespace} does not hold the VIP and is {view.vrrp_state}, not standing by")
        expected = frozenset() if not sync else frozenset({"master" if master else "backup"})
        if len(holders) == 1 and view.sync_daemons != expected:
            problems.append(f"{view.namespace} runs sync daemons {sorted(view.sync_daemons)}, not {sorted(expected)}")
        capturing = [entry for entry in view.connections
                     if entry.virtual == service and entry.state not in RESCHEDULED_OVER]
        if master and capturing:
            states = ", ".join(sorted({entry.state for entry in capturing}))
            problems.append(f"{view.namespace} still holds {len(capturing)} connections to {service} ({states})")
    return problems


@dataclass
class PairDirector:
    """One director of the pair: its number, namespace, address, and its processes while they run."""

    number: int
    namespace: str
    address: str
    folder: Path
    keepalived: LabProcess | None = None
    director: LabProcess | None = None
    # Where its guard file is, if not in its run directory: keepalived watches
    # the file with inotify, which misses changes on the VM's shared folders.
    guard_folder: Path | None = None

    @property
    def run_directory(self) -> Path:
        """Where the notify hook records this director's VRRP state."""
        return self.folder / "run"

    @property
    def state_file(self) -> Path:
        return self.run_directory / f"vrrp-{VRRP_INSTANCE}"

    @property
    def guard_file(self) -> Path:
        """Where its lvs-director writes the split-brain guard's verdict, and its keepalived reads it."""
        return (self.guard_folder or self.run_directory) / DEFAULT_GUARD_FILE

    @property
    def config(self) -> Path:
        """Its lvs-director's config."""
        return self.folder / "director.toml"

    @property
    def director_log(self) -> Path:
        return self.folder / "lvs-director.log"

    @property
    def segment_port(self) -> str:
        """Its veth's end on the segment's bridge: down, the director is cut off as if dead."""
        return f"to-{self.namespace.rsplit('-', 1)[1]}"


class DirectorPair:
    """
    The pair's lab. L{build} makes the namespaces and configs, L{start}
    starts backends, directors, keepalived and agents; L{teardown} (or the
    context manager's exit) stops all and removes everything.

        with DirectorPair(sync=True) as pair:
            master = pair.wait_for_master(60)
    """

    def __init__(self, servers: int = 3, *, sync: bool = True, guard: bool = True, advert_int: float = 0.2,
                 guard_timeout: float = PEER_TIMEOUT, guard_interval: float | None = None,
                 cpus_per_server: float | None = None, policy: str = "",
                 log_dir: Path | None = None):
        self.lab = Topology(servers, mode=DR, directors=2, cpus_per_server=cpus_per_server, log_dir=log_dir)
        self.sync = sync
        self.guard = guard
        self.advert_int = advert_int
        self.guard_timeout = guard_timeout
        self.guard_interval = guard_interval
        self.policy = policy
        self.directors: list[PairDirector] = []
        self.guard_root: Path | None = None

    @property
    def standby_state(self) -> str:
        """The VRRP state of the director not holding the VIP once all is settled: the guard holds it in FAULT."""
        return "FAULT" if self.guard else "BACKUP"

    def __enter__(self) -> DirectorPair:
        return self.build()

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    def build(self) -> DirectorPair:
        """The lab, and in its log folder each director's configs and a root-owned copy of the notify hook."""
        self.lab.build()
        try:
            assert self.lab.log_dir is not None
            for namespace in self.lab.plan.director_namespaces:
                self.lab.run(namespace, ["ipvsadm", "--set", *map(str, LAB_TCP_TIMEOUTS)])
            # The guard files on the machine's own disk (the VM's /tmp), not in
            # the log folder: that may be a folder the VM shares with its host,
            # where keepalived's inotify hears nothing of lvs-director's writes.
            self.guard_root = Path(tempfile.mkdtemp(prefix="lvsfeedback-pair-guard-"))
            # keepalived's script security refuses a hook that anyone but root may
            # change: the checkout's copy may be a user's, this one is root's.
            hook = self.lab.log_dir / "vrrp-notify"
            shutil.copyfile(SHIPPED_NOTIFY_HOOK, hook)
            hook.chmod(0o755)
            token = self.lab.log_dir / "status.token"
            token.write_text("lab-pair-status-token\n")
            shipped = SHIPPED_KEEPALIVED_CONFIG.read_text()
            for number, (namespace, address) in enumerate(
                    zip(self.lab.plan.director_namespaces, DIRECTOR_SEGMENT_ADDRESSES), start=1):
                director = PairDirector(number, namespace, address, self.lab.log_dir / f"director{number}",
                                        guard_folder=self.guard_root / f"director{number}")
                director.run_directory.mkdir(parents=True)
                director.guard_file.parent.mkdir()
                (director.folder / "keepalived.conf").write_text(keepalived_config(
                    shipped, number=number, notify=str(hook), advert_int=self.advert_int, sync=self.sync,
                    guard_file=director.guard_file if self.guard else None))
                director.config.write_text(director_config(
                    number, self.lab.servers, token_file=token, state_file=director.state_file,
                    guard_file=director.guard_file, guard_timeout=self.guard_timeout,
                    guard_interval=self.guard_interval, policy=self.policy))
                self.directors.append(director)
        except BaseException:
            self.teardown()
            raise
        return self

    def start(self, timeout: float) -> None:
        """
        Backends, both lvs-directors (each waited for until its service is in
        its kernel, so the sync daemon finds the real servers of the
        connections it is sent), keepalived on both, agents on every real server.
        """
        deadline = time.monotonic() + timeout
        self.lab.start_backends(port=SERVICE_PORT, work_ms=1, timeout=timeout)
        for director in self.directors:
            self.start_director(director)
        for director in self.directors:
            self.wait_for_service(director, deadline)
        for director in self.directors:
            self.start_keepalived(director)
        for server in self.lab.servers:
            self.lab.spawn(server.namespace, agent_command(server), cgroup=server.cgroup)

    def wait_for_service(self, director: PairDirector, deadline: float) -> None:
        """Until the director's lvs-director has put the service, with every real server, in its kernel."""
        def written() -> bool:
            return len(self.weights(director)) == len(self.lab.servers)

        self.poll(written, deadline, f"{director.namespace}: lvs-director's service in the kernel")

    def start_director(self, director: PairDirector) -> None:
        director.director = self.lab.spawn(director.namespace, [
            TWISTD, "-n", "--pidfile=", f"--logfile={director.director_log}",
            "lvs-director", "--config", str(director.config),
        ])

    def start_keepalived(self, director: PairDirector) -> None:
        # The hook's folder comes through the environment, which keepalived passes on to it.
        environment = dict(os.environ, LVSFEEDBACK_RUN_DIRECTORY=str(director.run_directory))
        director.keepalived = self.lab.spawn(director.namespace, keepalived_command(
            director.folder / "keepalived.conf", director.folder / "keepalived.pid",
            director.folder / "keepalived-vrrp.pid"), env=environment)

    @staticmethod
    def poll(done: Callable[[], T | None], deadline: float, what: str) -> T:
        """done()'s first true value, asked every POLL_INTERVAL until the deadline (LabError then)."""
        while True:
            value = done()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise LabError(f"waiting for {what}: not so by the deadline")
            time.sleep(POLL_INTERVAL)

    def vrrp_state(self, director: PairDirector) -> str | None:
        """
        The state keepalived last told the notify hook (MASTER, BACKUP, FAULT,
        STOP), None before any. With the split-brain guard a director standing
        by is FAULT while the other holds the VIP, else BACKUP (STANDING_BY).
        """
        try:
            return director.state_file.read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return None

    def holds_vip(self, director: PairDirector) -> bool:
        shown = run_command(Command(["ip", "-n", director.namespace, "-j", "addr", "show", "dev", NAMESPACE_LINK])).stdout
        return any(entry.get("local") == VIP for link in json.loads(shown) for entry in link.get("addr_info", []))

    def vip_holders(self, among: list[PairDirector] | None = None) -> list[PairDirector]:
        return [director for director in among or self.directors if self.holds_vip(director)]

    def wait_for_master(self, timeout: float, among: list[PairDirector] | None = None) -> PairDirector:
        """
        The director that is MASTER and alone in holding the VIP, once there
        is one: of the pair, or of those `among` (a killed one keeps the VIP
        on its dead link).
        """
        def master() -> PairDirector | None:
            holders = self.vip_holders(among)
            if len(holders) == 1 and self.vrrp_state(holders[0]) == "MASTER":
                return holders[0]
            return None

        return self.poll(master, time.monotonic() + timeout, "one master holding the VIP")

    def other(self, director: PairDirector) -> PairDirector:
        return next(each for each in self.directors if each is not director)

    def connections(self, director: PairDirector) -> list[Connection]:
        return parse_connections(self.lab.run(director.namespace, ["ipvsadm", "-Lnc"]).stdout)

    def scheduled_connections(self, director: PairDirector) -> int:
        """Connections this director's IPVS scheduled for the VIP (not those it was sent by sync)."""
        listing = self.lab.run(director.namespace, ["ipvsadm", "-Ln", "--stats", "--exact"]).stdout
        return parse_scheduled_connections(listing, f"{VIP}:{SERVICE_PORT}")

    def weights(self, director: PairDirector) -> dict[str, int]:
        """The kernel's weight of each real server of the VIP's service on this director, by address."""
        table = ipvsadm.parse(self.lab.run(director.namespace, ["ipvsadm", "-Ln"]).stdout)
        return {dest.address: weight for key, dests in table.items() if key.address == VIP
                for dest, (weight, _) in dests.items()}

    def status(self, director: PairDirector) -> dict[str, Any]:
        url = f"http://{director.address}:{STATUS_PORT}/status.json"
        status: dict[str, Any] = json.loads(self.lab.run(director.namespace, ["curl", "-sf", "--max-time", "10", url]).stdout)
        return status

    def view(self, director: PairDirector) -> DirectorView:
        """What the director's system says now (L{pair_problems} judges it)."""
        daemons = self.lab.run(director.namespace, ["ipvsadm", "-L", "--daemon"]).stdout
        return DirectorView(director.namespace, self.vrrp_state(director), self.holds_vip(director),
                            parse_sync_daemons(daemons), tuple(self.connections(director)))

    def problems(self) -> list[str]:
        """Why the pair is not sound to measure from now; [] when it is."""
        return pair_problems([self.view(director) for director in self.directors], sync=self.sync)

    def stop_sync_daemons(self, director: PairDirector) -> None:
        """The kernel's sync daemons in the director's namespace stopped, as a reboot stops them."""
        running = parse_sync_daemons(self.lab.run(director.namespace, ["ipvsadm", "-L", "--daemon"]).stdout)
        for daemon in sorted(running):
            self.lab.run(director.namespace, ["ipvsadm", "--stop-daemon", daemon])

    def kill(self, director: PairDirector) -> float:
        """
        The director dies: its segment link goes down, then keepalived and
        lvs-director get SIGKILL (nothing cleans up: the VIP stays on its
        interface, as on a machine that froze). The moment it died, its link
        down (time.monotonic()): until then its kernel still forwarded.
        """
        self._set_segment_port(director, "down")
        killed_at = time.monotonic()
        for process in (director.keepalived, director.director):
            if process is not None:
                process.signal(signal.SIGKILL)
        for process in (director.keepalived, director.director):
            if process is not None:
                process.stop()
        director.keepalived = director.director = None
        return killed_at

    def revive(self, director: PairDirector) -> None:
        """
        A killed director comes back as after a reboot of the machine: the
        VIP its keepalived left is gone (else it would answer for it beside
        the master until its new keepalived dropped it) and so is the VRRP
        state its hook recorded (/run is emptied) and the kernel's sync
        daemons its keepalived started (SIGKILL stopped none), its link up,
        lvs-director and keepalived started again. Its IPVS table is as the
        dead one left it: lvs-director adopts it.
        """
        director.state_file.unlink(missing_ok=True)
        # The guard's verdict too: as a SIGKILL leaves it, it would hold the
        # revived director in FAULT until its lvs-director's first round.
        director.guard_file.unlink(missing_ok=True)
        self.stop_sync_daemons(director)
        if self.holds_vip(director):
            run_command(Command(["ip", "-n", director.namespace, "addr", "del", f"{VIP}/32", "dev", NAMESPACE_LINK]))
        self._set_segment_port(director, "up")
        self.start_director(director)
        self.start_keepalived(director)

    def block_vrrp(self) -> None:
        """VRRP (IP protocol 112) dropped as it reaches either director: each hears nothing of the other's adverts."""
        for director in self.directors:
            self.lab.run(director.namespace, [IPTABLES, "-I", "INPUT", "-p", VRRP_PROTOCOL, "-j", "DROP"])

    def heal_vrrp(self) -> None:
        for director in self.directors:
            self.lab.run(director.namespace, [IPTABLES, "-D", "INPUT", "-p", VRRP_PROTOCOL, "-j", "DROP"])

    def cut_necp(self, director: PairDirector) -> None:
        """The agents' NECP packets dropped as they reach this director (no reset: as a partition does)."""
        self.lab.run(director.namespace, [IPTABLES, "-I", "INPUT", "-p", "tcp", "--dport", str(NECP_PORT), "-j", "DROP"])

    def restore_necp(self, director: PairDirector) -> None:
        self.lab.run(director.namespace, [IPTABLES, "-D", "INPUT", "-p", "tcp", "--dport", str(NECP_PORT), "-j", "DROP"])

    def _set_segment_port(self, director: PairDirector, state: str) -> None:
        run_command(Command(["ip", "-n", self.lab.plan.segment, "link", "set", director.segment_port, state]))

    def teardown(self) -> None:
        self.lab.teardown()
        if self.guard_root is not None:
            shutil.rmtree(self.guard_root, ignore_errors=True)
