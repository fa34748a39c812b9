"""
The kernel's IPVS table through generic netlink.

`KernelIPVS` is synchronous. It reads the table through a pyroute2 socket,
which is bound to the thread that made it, and writes through its own raw
netlink socket, many requests to a system call (lvsfeedback.ipvs.batch). `NetlinkIPVS` runs a KernelIPVS on a dedicated
one-thread pool, so the reactor never blocks on netlink and no two netlink
calls ever run at once; its methods return Deferreds.

pyroute2 is imported here only, and this module only when a backend that
talks to the kernel is built.
"""

from __future__ import annotations

from typing import Iterable

from pyroute2 import IPVS, IPVSService
from pyroute2.netlink.exceptions import NetlinkError
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from lvsfeedback.ipvs.batch import IPVSWriter
from lvsfeedback.ipvs.model import (
    PROTOCOL_NAMES,
    PROTOCOLS,
    Change,
    Dest,
    DestCounters,
    DeleteMarkRule,
    DestKey,
    IPVSError,
    RealServer,
    ServiceEntry,
    SetMarkRule,
    ServiceKey,
    VirtualService,
    FORWARDING_NAMES,
)

IP_VS_SVC_F_PERSISTENT = 0x0001


def _service_request(key: ServiceKey) -> IPVSService:
    """A service named for a dump of its real servers."""
    fields = {"af": key.family}
    if key.is_fwmark:
        fields["fwmark"] = key.fwmark
    else:
        fields.update(protocol=PROTOCOLS[key.protocol], addr=key.address, port=key.port)
    return IPVSService(**fields)


def _read_service(message) -> VirtualService:
    get = lambda name: message.get(("service", name))  # noqa: E731
    family = get("af")
    fwmark = get("fwmark") or 0
    if fwmark:
        key = ServiceKey.for_fwmark(fwmark, family)
    else:
        key = ServiceKey.for_address(PROTOCOL_NAMES.get(get("protocol"), str(get("protocol"))), get("addr"), get("port"))
    flags = get("flags") or {}
    persistent = bool(flags.get("flags", 0) & IP_VS_SVC_F_PERSISTENT)
    return VirtualService(key, scheduler=get("sched_name"), persistence=get("timeout") if persistent else 0)


def _read_dest(message) -> Dest:
    get = lambda name: message.get(("dest", name))  # noqa: E731
    server = RealServer(
        DestKey.of(get("addr"), get("port")),
        weight=get("weight"),
        forwarding=FORWARDING_NAMES.get(get("fwd_method") & 0x7, "nat"),
    )
    stats = message.get(("dest", "stats64")) or message.get(("dest", "stats"))
    counters = DestCounters(
        active_connections=get("active_conns") or 0,
        inactive_connections=get("inact_conns") or 0,
        connections=(stats.get("conns") if stats else 0) or 0,
        connection_rate=(stats.get("cps") if stats else 0) or 0,
    )
    return Dest(server, counters)


class KernelIPVS:
    """Synchronous access to the kernel's IPVS table. Use from one thread."""

    def __init__(self):
        self._reader: IPVS | None = None
        self._writer: IPVSWriter | None = None
        self._marks = None  # FirewallMarks, made on first use: python-iptables is costly to load

    @property
    def _ipvs(self) -> IPVS:
        if self._reader is None:
            try:
                self._reader = IPVS()
            except NetlinkError as error:
                raise IPVSError("open", f"the kernel has no IPVS ({error}): modprobe ip_vs") from error
        return self._reader

    @property
    def writer(self) -> IPVSWriter:
        if self._writer is None:
            self._writer = IPVSWriter()
        return self._writer

    def snapshot(self) -> dict[ServiceKey, ServiceEntry]:
        table = {}
        for message in self._ipvs.service("dump"):
            service = _read_service(message)
            dests = {}
            for dest_message in self._ipvs.dest("dump", service=_service_request(service.key)):
                dest = _read_dest(dest_message)
                dests[dest.server.key] = dest
            table[service.key] = ServiceEntry(service, dests)
        return table

    def apply(self, changes: Iterable[Change]) -> list[IPVSError]:
        """
        Apply changes in order. Runs of IPVS changes go to the kernel in
        batches (lvsfeedback.ipvs.batch); a mark rule between them is set
        after the run before it and before the run after it. A refused
        change does not stop the others; the refusals are returned, in order.
        """
        failures: list[IPVSError] = []
        run: list[Change] = []

        def send_run() -> None:
            if run:
                for change, reason in zip(run, self.writer.apply(run)):
                    if reason is not None:
                        failures.append(IPVSError(change, reason))
                run.clear()

        for change in changes:
            if isinstance(change, (SetMarkRule, DeleteMarkRule)):
                send_run()
                try:
                    self._apply_mark(change)
                except IPVSError as error:
                    failures.append(error)
            else:
                run.append(change)
        send_run()
        return failures

    def _apply_mark(self, change: SetMarkRule | DeleteMarkRule) -> None:
        from lvsfeedback.ipvs.fwmark import FirewallMarks

        try:
            if self._marks is None:
                self._marks = FirewallMarks()
            if isinstance(change, SetMarkRule):
                self._marks.set(change)
            else:
                self._marks.delete(change)
        except IPVSError as error:
            raise IPVSError(change, error.reason) from error
        except Exception as error:  # noqa: BLE001 - python-iptables raises its own IPTCError and ValueError
            raise IPVSError(change, f"iptables: {error}") from error

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class NetlinkIPVS:
    """
    The kernel's IPVS table for the reactor thread: every call runs on one
    dedicated worker thread, in order, and returns a Deferred. The thread
    starts with the first call, so building this before twistd forks is safe.
    """

    def __init__(self, reactor, kernel: KernelIPVS | None = None):
        self._reactor = reactor
        self._kernel = kernel or KernelIPVS()
        self._pool: ThreadPool | None = None

    def _call(self, function, *args):
        if self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="ipvs-netlink")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.close)
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def snapshot(self):
        return self._call(self._kernel.snapshot)

    def apply(self, changes: Iterable[Change]):
        return self._call(self._kernel.apply, list(changes))

    def close(self) -> None:
        if self._pool is not None and self._pool.started:
            self._pool.callInThread(self._kernel.close)
            self._pool.stop()
