"""
The lab's cluster in network namespaces, for the experiment and the
director's integration tests (run as root on a kernel with IPVS).

    client ns                director ns                          rsK ns
    eth0 10.200.0.2 ── to-client 10.200.0.1 (the VIP)
                              br-backend 10.201.0.1 ── to-rsK ── eth0 10.201.0.(10+K)
                                                                   default via 10.201.0.1

The real servers' default route is the director, so IPVS NAT (masquerading)
works: their answers go back through the director, which rewrites them.
The director forwards IPv4. Each real server also gets a cgroup v2 group
with a CPU quota (see L{lvsfeedback.lab.cgroups}). With C{ipv6}, every NAT
leg also carries an IPv6 address (fd00:200::/64 beside 10.200.0.0/24,
fd00:201::/64 beside 10.201.0.0/24, the virtual address fd00:200::1) and the
director forwards IPv6 too.

Direct routing (C{dr}) and tunnelling (C{tun}) put everyone on one segment,
a bridge in a namespace of its own, so that the director's interface counts
only what really reaches the director:

    client ns    eth0 10.200.0.2                    ── to-client   ┐
    director ns  eth0 10.200.0.3 and the VIP        ── to-director ├ bridge "segment" (segment ns)
    rsK ns       eth0 10.200.0.(10+K), the VIP too  ── to-rsK      ┘

The director receives the clients' packets for the VIP and hands them to a
real server, which answers the client straight from the VIP: in DR the real
servers hold the VIP on C{lo}, in TUN on an ipip device that decapsulates
what the director sends (its reverse-path filter relaxed, since the client is
not behind that device). Either way each real server must never answer ARP
for the VIP (C{arp_ignore=1}, C{arp_announce=2}), or clients would bypass
the director. Nothing routes through the director: it does not forward.

With C{directors=2} (DR or TUN) a second director joins the segment at
10.200.0.4 and neither holds the VIP: in a pair keepalived moves it between
them (see L{lvsfeedback.lab.pair}).

Every namespace and the cgroup parent carry a run-unique prefix, so parallel
runs and the leftovers of a crashed one never collide. L{Topology} is a
context manager whose exit (or L{Topology.teardown}) stops every process it
started, kills whatever else runs in its namespaces, and removes the
namespaces and cgroups, also after a failure.

Commands run through iproute2 (in batches: each C{ip} costs a noticeable
fraction of a second in the emulated test VM). L{setup_commands},
L{teardown_commands} and L{namespace_command} build them as plain data, so
unit tests check them without root.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lvsfeedback.lab.backend import READY_MARKER as BACKEND_READY_MARKER
from lvsfeedback.lab.cgroups import CGROUP_ROOT, Cgroup, CgroupError, CgroupTree
from lvsfeedback.lab.hog import READY_MARKER as HOG_READY_MARKER
from lvsfeedback.lab.loadgen import LoadConfig, Summary, command_line, parse_output

NETNS_DIR = Path("/run/netns")
PREFIX_STEM = "lvsfeedback-lab"
NETWORK_PREFIX_LENGTH = 24
VIP = "10.200.0.1"
CLIENT_ADDRESS = "10.200.0.2"
DIRECTOR_BACKEND_ADDRESS = "10.201.0.1"
BRIDGE = "br-backend"
# How the director reaches the real servers: masquerading, direct routing, ipip tunnelling.
NAT, DR, TUN = "nat", "dr", "tun"
MODES = (NAT, DR, TUN)
# DR and TUN: the director's own address on the shared segment, beside the VIP;
# in a pair each director's, in order.
DIRECTOR_SEGMENT_ADDRESSES = ("10.200.0.3", "10.200.0.4")
DIRECTOR_SEGMENT_ADDRESS = DIRECTOR_SEGMENT_ADDRESSES[0]
SEGMENT_BRIDGE = "segment"
VIP_TUNNEL = "vip-tun"
# What a DR or TUN real server must get right: it holds the VIP but never
# answers ARP for it, nor uses it as the source of its own ARP requests.
REAL_SERVER_ARP = ("net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
IPV6_PREFIX_LENGTH = 64
VIP6 = "fd00:200::1"
CLIENT_ADDRESS6 = "fd00:200::2"
DIRECTOR_BACKEND_ADDRESS6 = "fd00:201::1"
DIRECTOR_CLIENT_LINK = "to-client"
# Inside its own namespace each leg is simply eth0: names are per namespace.
NAMESPACE_LINK = "eth0"
BACKEND_PORT = 8080
COMMAND_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
EXIT_AFTER_EOF_TIMEOUT = 2.0
# Starting Python and asyncio takes seconds in the emulated test VM.
LOADGEN_STARTUP_ALLOWANCE = 60.0
# `ip netns exec` gives the command a fresh /sys without the cgroup
# hierarchy; mounting it back (in the private mount namespace ip made) lets
# the command join its cgroup and lets agents read cgroup metrics, at the
# very same paths as outside. $1 is the cgroup.procs file to join, or "".
_IN_NAMESPACE_SCRIPT = (
    'mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 125; '
    'if [ -n "$1" ]; then echo $$ > "$1" || exit 125; fi; '
    'shift; exec "$@"'
)


class LabError(Exception):
    """The lab could not be built, used or removed; the message says which step and why."""


def new_prefix() -> str:
    """A prefix unique to this run, e.g. C{lvsfeedback-lab-3f9a2c1e}."""
    return f"{PREFIX_STEM}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LabServer:
    """A real server: its short name (C{rs1}), namespace, address, cgroup and, in an IPv6 lab, IPv6 address."""

    name: str
    namespace: str
    address: str
    cgroup: Cgroup
    address6: str | None = None


@dataclass(frozen=True)
class Command:
    argv: list[str]
    input: str | None = None


@dataclass(frozen=True)
class TopologyPlan:
    """Names and addresses of one lab run; pure data."""

    prefix: str
    servers: int
    cgroup_root: Path = CGROUP_ROOT
    mode: str = NAT
    ipv6: bool = False
    directors: int = 1

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.prefix):
            raise LabError(f"prefix {self.prefix!r} must be letters, digits, '_', '.', '-'")
        if not 1 <= self.servers <= 200:
            raise LabError(f"the lab holds 1 to 200 real servers, not {self.servers}")
        if self.mode not in MODES:
            raise LabError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.ipv6 and self.mode != NAT:
            raise LabError(f"the IPv6 lab is a NAT one, not {self.mode}")
        if self.directors not in (1, len(DIRECTOR_SEGMENT_ADDRESSES)):
            raise LabError(f"the lab has one director or a pair, not {self.directors}")
        if self.directors > 1 and not self.shared_segment:
            raise LabError("a pair of directors shares the clients' segment: DR or TUN, not NAT")

    @property
    def shared_segment(self) -> bool:
        """Client, director and real servers on one segment (DR, TUN), rather than NAT's two networks."""
        return self.mode != NAT

    @property
    def segment(self) -> str:
        """The namespace holding the shared segment's bridge (DR, TUN)."""
        return f"{self.prefix}-segment"

    @property
    def director(self) -> str:
        return f"{self.prefix}-director"

    @property
    def director_namespaces(self) -> list[str]:
        """The director's namespace, or a pair's two (the first is L{director})."""
        return [self.director] + [f"{self.prefix}-director{number}" for number in range(2, self.directors + 1)]

    @property
    def client(self) -> str:
        return f"{self.prefix}-client"

    @property
    def cgroup_parent(self) -> Path:
        return Path(self.cgroup_root) / self.prefix

    @property
    def real_servers(self) -> list[LabServer]:
        return [
            LabServer(
                name=f"rs{number}",
                namespace=f"{self.prefix}-rs{number}",
                address=f"10.{200 if self.shared_segment else 201}.0.{10 + number}",
                cgroup=Cgroup(self.cgroup_parent / f"rs{number}"),
                address6=f"fd00:201::{10 + number}" if self.ipv6 else None,
            )
            for number in range(1, self.servers + 1)
        ]

    @property
    def namespaces(self) -> list[str]:
        segment = [self.segment] if self.shared_segment else []
        return [*self.director_namespaces, self.client] + [server.namespace for server in self.real_servers] + segment


def _ip_batch(namespace: str | None, lines: list[str], force: bool = False) -> Command:
    argv = ["ip"] + (["-n", namespace] if namespace else []) + (["-force"] if force else []) + ["-batch", "-"]
    return Command(argv, "".join(line + "\n" for line in lines))


def _sysctl(namespace: str, *settings: str) -> Command:
    return Command(["ip", "netns", "exec", namespace, "sysctl", "-qw", *settings])


def setup_commands(plan: TopologyPlan) -> list[Command]:
    """The iproute2 and sysctl commands that build the plan's namespaces and links, in order."""
    if plan.shared_segment:
        return _shared_segment_commands(plan)
    servers = plan.real_servers
    director_lines = [
        "link set lo up",
        f"link add {BRIDGE} type bridge",
        f"addr add {DIRECTOR_BACKEND_ADDRESS}/{NETWORK_PREFIX_LENGTH} dev {BRIDGE}",
        f"link set {BRIDGE} up",
        f"link add {DIRECTOR_CLIENT_LINK} type veth peer name {NAMESPACE_LINK} netns {plan.client}",
        f"addr add {VIP}/{NETWORK_PREFIX_LENGTH} dev {DIRECTOR_CLIENT_LINK}",
        f"link set {DIRECTOR_CLIENT_LINK} up",
    ]
    for server in servers:
        link = f"to-{server.name}"
        director_lines += [
            f"link add {link} type veth peer name {NAMESPACE_LINK} netns {server.namespace}",
            f"link set {link} master {BRIDGE}",
            f"link set {link} up",
        ]
    client_lines = [
        "link set lo up",
        f"addr add {CLIENT_ADDRESS}/{NETWORK_PREFIX_LENGTH} dev {NAMESPACE_LINK}",
        f"link set {NAMESPACE_LINK} up",
        # Not needed to reach the VIP (same network); lets the client reach
        # the real servers directly through the director, for checks.
        f"route add default via {VIP}",
    ]
    if plan.ipv6:
        # nodad: usable at once, not after duplicate address detection.
        director_lines += [
            f"addr add {VIP6}/{IPV6_PREFIX_LENGTH} dev {DIRECTOR_CLIENT_LINK} nodad",
            f"addr add {DIRECTOR_BACKEND_ADDRESS6}/{IPV6_PREFIX_LENGTH} dev {BRIDGE} nodad",
        ]
        client_lines += [f"addr add {CLIENT_ADDRESS6}/{IPV6_PREFIX_LENGTH} dev {NAMESPACE_LINK} nodad"]
    commands = [
        _ip_batch(None, [f"netns add {namespace}" for namespace in plan.namespaces]),
        _ip_batch(plan.director, director_lines),
        _ip_batch(plan.client, client_lines),
    ]
    for server in servers:
        server_lines = [
            "link set lo up",
            f"addr add {server.address}/{NETWORK_PREFIX_LENGTH} dev {NAMESPACE_LINK}",
            f"link set {NAMESPACE_LINK} up",
            f"route add default via {DIRECTOR_BACKEND_ADDRESS}",
        ]
        if server.address6 is not None:
            server_lines += [
                f"addr add {server.address6}/{IPV6_PREFIX_LENGTH} dev {NAMESPACE_LINK} nodad",
                f"route add ::/0 via {DIRECTOR_BACKEND_ADDRESS6}",
            ]
        commands.append(_ip_batch(server.namespace, server_lines))
    forwarding = ["net.ipv4.ip_forward=1"] + (["net.ipv6.conf.all.forwarding=1"] if plan.ipv6 else [])
    commands += [
        _sysctl(plan.director, *forwarding),
        _client_ports(plan),
    ]
    return commands


def _client_ports(plan: TopologyPlan) -> Command:
    # The short-connection pattern opens a connection per request and the
    # client keeps each in TIME_WAIT for a minute: widen the port range
    # and let new connections reuse TIME_WAIT ports, or a long run at a
    # few hundred requests/s runs out of ports.
    return _sysctl(plan.client, "net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1")


def _shared_segment_commands(plan: TopologyPlan) -> list[Command]:
    """
    DR and TUN: everyone on one bridge; the director holds the VIP (a pair's
    keepalived gives it to one of them), and so does every real server, silently.
    """
    servers = plan.real_servers
    directors = plan.director_namespaces
    members = [(namespace.removeprefix(f"{plan.prefix}-"), namespace) for namespace in directors]
    members += [("client", plan.client)] + [(s.name, s.namespace) for s in servers]
    segment_lines = ["link set lo up", f"link add {SEGMENT_BRIDGE} type bridge", f"link set {SEGMENT_BRIDGE} up"]
    for name, namespace in members:
        segment_lines += [
            f"link add to-{name} type veth peer name {NAMESPACE_LINK} netns {namespace}",
            f"link set to-{name} master {SEGMENT_BRIDGE}",
            f"link set to-{name} up",
        ]
    commands = [
        _ip_batch(None, [f"netns add {namespace}" for namespace in plan.namespaces]),
        _ip_batch(plan.segment, segment_lines),
        # Before any real server holds the VIP, so none ever answers ARP for it.
        *[_sysctl(server.namespace, *REAL_SERVER_ARP) for server in servers],
        *[_ip_batch(namespace, [
            "link set lo up",
            # The director's own address first: the segment's route, and the
            # source of what it tunnels, are its, not the VIP's.
            f"addr add {address}/{NETWORK_PREFIX_LENGTH} dev {NAMESPACE_LINK}",
            *([f"addr add {VIP}/32 dev {NAMESPACE_LINK}"] if len(directors) == 1 else []),
            f"link set {NAMESPACE_LINK} up",
        ]) for namespace, address in zip(directors, DIRECTOR_SEGMENT_ADDRESSES)],
        _ip_batch(plan.client, [
            "link set lo up",
            f"addr add {CLIENT_ADDRESS}/{NETWORK_PREFIX_LENGTH} dev {NAMESPACE_LINK}",
            f"link set {NAMESPACE_LINK} up",
        ]),
    ]
    for server in servers:
        lines = [
            "link set lo up",
            f"addr add {server.address}/{NETWORK_PREFIX_LENGTH} dev {NAMESPACE_LINK}",
            f"link set {NAMESPACE_LINK} up",
        ]
        if plan.mode == DR:
            lines.append(f"addr add {VIP}/32 dev lo")
        else:
            lines += [
                f"link add {VIP_TUNNEL} type ipip local {server.address}",
                f"addr add {VIP}/32 dev {VIP_TUNNEL}",
                f"link set {VIP_TUNNEL} up",
            ]
        commands.append(_ip_batch(server.namespace, lines))
        if plan.mode == TUN:
            # The client's packets come out of the tunnel, but the way back to
            # the client is eth0: a strict reverse-path filter would drop them.
            commands.append(_sysctl(server.namespace, "net.ipv4.conf.all.rp_filter=0",
                                    f"net.ipv4.conf.{VIP_TUNNEL}.rp_filter=0"))
    commands.append(_client_ports(plan))
    return commands


def teardown_commands(namespaces: list[str]) -> list[Command]:
    """
    Deleting a namespace deletes its links (and its IPVS table); -force goes
    on to the next one when one fails.
    """
    return [_ip_batch(None, [f"netns del {namespace}" for namespace in namespaces], force=True)]


def namespace_command(namespace: str, argv: list[str], procs_file: Path | None = None) -> list[str]:
    """
    argv run in the namespace, with the cgroup hierarchy mounted, first
    joining the cgroup whose C{cgroup.procs} is procs_file when given (so
    every child it forks starts in that group too).
    """
    return [
        "ip", "netns", "exec", namespace,
        "sh", "-c", _IN_NAMESPACE_SCRIPT, "lab-in-namespace", str(procs_file or ""), *argv,
    ]


def list_namespaces(netns_dir: Path = NETNS_DIR) -> list[str]:
    """Names of the namespaces `ip netns` knows."""
    try:
        return sorted(os.listdir(netns_dir))
    except FileNotFoundError:
        return []


def namespace_pids(namespace: str, netns_dir: Path = NETNS_DIR, proc: Path = Path("/proc")) -> list[int]:
    """Processes whose network namespace is the named one."""
    try:
        target = os.stat(netns_dir / namespace)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            found = os.stat(proc / entry / "ns" / "net")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


def run_command(command: Command, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a command to the end; a failure raises L{LabError} with the command and its stderr."""
    try:
        result = subprocess.run(
            command.argv, input=command.input, capture_output=True, text=True, timeout=timeout,
        )
    except FileNotFoundError:
        raise LabError(f"{command.argv[0]} not found: the lab needs iproute2 (and procps for sysctl)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(command.argv)} did not finish in {timeout:g} s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(f"{' '.join(command.argv)} failed with status {result.returncode}: {detail}")
    return result


class LabProcess:
    """
    A long-running process started in a namespace. Its stdout is a pipe the
    caller reads (L{wait_for_output}, L{read_output}); its stderr goes to
    L{log_path}, whose tail every error message quotes.
    """

    def __init__(self, popen: subprocess.Popen, argv: list[str], namespace: str, log_path: Path):
        self.popen = popen
        self.argv = argv
        self.namespace = namespace
        self.log_path = log_path
        self._pending = b""

    @classmethod
    def start(cls, command: list[str], *, argv: list[str], namespace: str, log_path: Path,
              env: dict[str, str] | None = None) -> LabProcess:
        """
        Start command (argv wrapped to run in namespace) as the leader of a
        new process group, so stop() reaches whatever it forks.
        """
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                env=env, start_new_session=True,
            )
        return cls(popen, argv, namespace, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def describe(self) -> str:
        return f"{' '.join(self.argv)} (pid {self.pid}, namespace {self.namespace})"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def failure(self, why: str) -> LabError:
        """An error naming this process and why, with the tail of its stderr."""
        tail = self.log_tail()
        return LabError(f"{self.describe()} {why}" + (f"; its stderr ends:\n{tail}" if tail else ""))

    def _read_until(self, done, timeout: float) -> None:
        """Read stdout into the pending buffer until done(buffer) or EOF (returns) or the deadline (raises)."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.popen.stdout, selectors.EVENT_READ)
            while not done(self._pending):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.failure(f"gave no expected output in {timeout:g} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(self.popen.stdout.fileno(), 65536)
                if not chunk:
                    return
                self._pending += chunk

    def wait_for_output(self, marker: str, timeout: float) -> str:
        """The first stdout line containing marker, waiting at most timeout seconds for it."""
        needle = marker.encode()

        def whole_line_read(buffer: bytes) -> bool:
            found = buffer.find(needle)
            return found >= 0 and buffer.find(b"\n", found) >= 0

        self._read_until(whole_line_read, timeout)
        position = self._pending.find(needle)
        if position < 0:
            # The end of its stdout comes a moment before the process is reaped.
            try:
                ended = f"exited (status {self.popen.wait(EXIT_AFTER_EOF_TIMEOUT)})"
            except subprocess.TimeoutExpired:
                ended = "closed its stdout"
            raise self.failure(f"{ended} before printing {marker!r}")
        end = self._pending.find(b"\n", position)
        end = len(self._pending) if end < 0 else end + 1
        start = self._pending.rfind(b"\n", 0, position) + 1
        line = self._pending[start:end]
        self._pending = self._pending[end:]
        return line.decode(errors="replace").rstrip("\n")

    def read_output(self, timeout: float) -> str:
        """All of stdout not read yet, once the process has exited; raises if it runs past timeout."""
        self._read_until(lambda buffer: False, timeout)
        self.popen.wait()
        output, self._pending = self._pending, b""
        return output.decode(errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM its process group, SIGKILL it after timeout seconds; the exit status."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        status = self.popen.wait()
        self.popen.stdout.close()
        return status

    def signal(self, signum: int) -> None:
        """Send signum to the process and whatever it forked (its process group)."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass


class Topology:
    """
    The lab cluster: a director, a client and `servers` real servers, each
    real server in a cgroup limited to `cpus_per_server` CPUs (None: no limit),
    reached by NAT (with `ipv6`, over IPv6 too), DR or TUN (`mode`); in DR
    and TUN, `directors=2` makes it a pair's lab (L{lvsfeedback.lab.pair}).

        with Topology(servers=3, cpus_per_server=0.5) as lab:
            backends = lab.start_backends(work_ms=5)
            lab.run(lab.director, ["ipvsadm", "-Ln"])
    """

    def __init__(
        self,
        servers: int = 3,
        *,
        prefix: str | None = None,
        cpus_per_server: float | None = None,
        log_dir: Path | None = None,
        cgroup_root: Path = CGROUP_ROOT,
        netns_dir: Path = NETNS_DIR,
        mode: str = NAT,
        ipv6: bool = False,
        directors: int = 1,
    ):
        self.plan = TopologyPlan(prefix or new_prefix(), servers, Path(cgroup_root), mode, ipv6, directors)
        self.cpus_per_server = cpus_per_server
        self.netns_dir = netns_dir
        self.cgroups = CgroupTree(self.plan.prefix, Path(cgroup_root))
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.processes: list[LabProcess] = []

    @property
    def prefix(self) -> str:
        return self.plan.prefix

    @property
    def director(self) -> str:
        """The director's namespace name."""
        return self.plan.director

    @property
    def client(self) -> str:
        """The client's namespace name."""
        return self.plan.client

    @property
    def servers(self) -> list[LabServer]:
        return self.plan.real_servers

    def server(self, name: str) -> LabServer:
        for server in self.servers:
            if server.name == name:
                return server
        raise LabError(f"no real server {name!r} in this lab (it has {', '.join(s.name for s in self.servers)})")

    def __enter__(self) -> Topology:
        return self.build()

    def __exit__(self, *exc_info) -> None:
        self.teardown()

    def build(self) -> Topology:
        """Create cgroups, namespaces and links; on any failure remove what was made, then raise."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, cgroups)")
        # Checked first so that cleaning up after a failed build never
        # removes what another run with the same prefix owns.
        existing = self.leftovers()
        if existing:
            raise LabError(f"prefix {self.prefix!r} is in use: {', '.join(existing)} already exist")
        try:
            if self.log_dir is None:
                self.log_dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-logs-"))
            self.cgroups.create()
            for server in self.servers:
                self.cgroups.child(server.name, self.cpus_per_server)
            for command in setup_commands(self.plan):
                run_command(command)
        except BaseException as error:
            # Also on Ctrl-C: a half-built lab must not outlive the run.
            try:
                self.teardown()
            except LabError as cleanup:
                error.add_note(f"and cleaning up after it failed too: {cleanup}")
            if isinstance(error, (CgroupError, OSError)):
                raise LabError(f"building the lab failed: {error}") from error
            raise
        return self

    def run(self, namespace: str, argv: list[str], *, timeout: float = COMMAND_TIMEOUT,
            cgroup: Cgroup | None = None) -> subprocess.CompletedProcess:
        """Run a command to its end in a namespace; a non-zero status raises L{LabError}."""
        procs = cgroup.procs_file if cgroup is not None else None
        return run_command(Command(namespace_command(namespace, argv, procs)), timeout)

    def spawn(self, namespace: str, argv: list[str], *, cgroup: Cgroup | None = None,
              env: dict[str, str] | None = None) -> LabProcess:
        """Start a long-running process in a namespace (and cgroup); teardown stops it if the caller does not."""
        if self.log_dir is None:
            raise LabError("spawn() before build(): the lab does not exist yet")
        procs = cgroup.procs_file if cgroup is not None else None
        log_path = self.log_dir / f"{len(self.processes) + 1:03d}-{namespace}-{Path(argv[0]).name}.log"
        process = LabProcess.start(
            namespace_command(namespace, argv, procs), argv=argv, namespace=namespace, log_path=log_path, env=env,
        )
        self.processes.append(process)
        if cgroup is not None:
            # The command joins the cgroup itself before it execs, so nothing
            # it forks escapes; doing it here as well means that it is in the
            # group already when spawn() returns.
            cgroup.add_process(process.pid)
        return process

    def start_backends(self, port: int = BACKEND_PORT, work_ms: float = 5.0,
                       timeout: float = 120.0) -> dict[str, LabProcess]:
        """
        One L{lvsfeedback.lab.backend} per real server, in its namespace and
        cgroup, started together and each waited for until it listens; by
        server name. In DR and TUN the port must be the virtual service's:
        the packets reach the real server unchanged.
        """
        # "": every address of both families.
        address = "" if self.plan.ipv6 else "0.0.0.0"
        started = {
            server.name: self.spawn(server.namespace, [
                sys.executable, "-m", "lvsfeedback.lab.backend", "--address", address,
                "--port", str(port), "--work-ms", str(work_ms), "--name", server.name,
            ], cgroup=server.cgroup)
            for server in self.servers
        }
        deadline = time.monotonic() + timeout
        for process in started.values():
            process.wait_for_output(BACKEND_READY_MARKER, max(0.0, deadline - time.monotonic()))
        return started

    def start_hog(self, server: LabServer, workers: int = 1, duty: float = 1.0,
                  timeout: float = 60.0) -> LabProcess:
        """
        A CPU hog competing with the server's backend inside its cgroup,
        returned once its workers spin; stop() ends it.
        """
        hog = self.spawn(server.namespace, [
            sys.executable, "-m", "lvsfeedback.lab.hog", "--workers", str(workers), "--duty", str(duty),
        ], cgroup=server.cgroup)
        hog.wait_for_output(HOG_READY_MARKER, timeout)
        return hog

    def start_load(self, config: LoadConfig, records_path: str | None = None) -> LabProcess:
        """
        The load generator running `config` from the client namespace; read
        its result with L{finish_load}. Meanwhile the caller may change the
        cluster (quotas, hogs, weights) and watch the effect.
        """
        return self.spawn(self.client, [sys.executable, "-m", "lvsfeedback.lab.loadgen",
                                        *command_line(config, records_path)])

    def finish_load(self, loadgen: LabProcess, config: LoadConfig) -> Summary:
        """Wait for a load generator started by L{start_load} to end by itself; its summary."""
        output = loadgen.read_output(LOADGEN_STARTUP_ALLOWANCE + config.duration + config.timeout)
        if loadgen.returncode != 0:
            raise loadgen.failure(f"ended with status {loadgen.returncode}")
        return parse_output(output)

    def stop_load(self, loadgen: LabProcess, config: LoadConfig) -> Summary:
        """
        End a load generator's schedule now (SIGTERM); once the requests
        already sent finish, its summary, over the arrivals made until then.
        """
        loadgen.signal(signal.SIGTERM)
        return self.finish_load(loadgen, config)

    def generate_load(self, config: LoadConfig, records_path: str | None = None) -> Summary:
        """Run `config` from the client namespace to its end; its summary (records to records_path)."""
        return self.finish_load(self.start_load(config, records_path), config)

    def packet_counts(self, namespace: str) -> tuple[int, int]:
        """Packets received and sent so far on a namespace's eth0 (every namespace's leg in DR and TUN)."""
        shown = self.run(namespace, ["ip", "-s", "-j", "link", "show", "dev", NAMESPACE_LINK]).stdout
        try:
            [link] = json.loads(shown)
            statistics = link["stats64"]
            return statistics["rx"]["packets"], statistics["tx"]["packets"]
        except (ValueError, KeyError, TypeError) as error:
            raise LabError(f"no packet counts for {NAMESPACE_LINK} in {namespace} in {shown!r}: {error}") from None

    def set_cpus(self, server: LabServer, cpus: float | None) -> None:
        """Change the server's CPU quota while it runs (None lifts it)."""
        server.cgroup.set_cpus(cpus)

    def leftovers(self) -> list[str]:
        """What of this run still exists: namespaces by name, and the cgroup parent by path."""
        found = [name for name in list_namespaces(self.netns_dir) if name in self.plan.namespaces]
        if self.plan.cgroup_parent.exists():
            found.append(str(self.plan.cgroup_parent))
        return found

    def teardown(self) -> None:
        """
        Stop every process, kill what else runs in the namespaces, remove
        namespaces and cgroups. Each step runs even when an earlier one
        failed; raises L{LabError} if anything is left. Safe to call twice.
        """
        problems = []
        for process in self.processes:
            try:
                process.stop()
            except OSError as error:
                problems.append(f"stopping {process.describe()}: {error}")
        self.processes.clear()
        for namespace in self.plan.namespaces:
            for pid in namespace_pids(namespace, self.netns_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.cgroups.remove()
        except CgroupError as error:
            problems.append(str(error))
        present = [name for name in list_namespaces(self.netns_dir) if name in self.plan.namespaces]
        if present:
            try:
                for command in teardown_commands(present):
                    run_command(command)
            except LabError as error:
                problems.append(str(error))
        if self._own_log_dir and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir = None
        left = self.leftovers()
        if left:
            problems.append(f"still present: {', '.join(left)}")
        if problems:
            raise LabError("tearing down the lab: " + "; ".join(problems))
