"""
The kernel's IPVS table through generic netlink (pyroute2).

`KernelIPVS` is synchronous and owns one pyroute2 socket, which is bound to
the thread that made it. `NetlinkIPVS` runs a KernelIPVS on a dedicated
one-thread pool, so the reactor never blocks on netlink and no two netlink
calls ever run at once; its methods return Deferreds.

pyroute2 is imported here only, and this module only when a backend that
talks to the kernel is built.
"""

from __future__ import annotations

import errno
import socket
from typing import Iterable

from pyroute2 import IPVS, IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from lvsfeedback.ipvs.model import (
    PROTOCOL_NAMES,
    PROTOCOLS,
    AddDest,
    AddService,
    Change,
    DeleteDest,
    DeleteService,
    Dest,
    DestCounters,
    DeleteMarkRule,
    DestKey,
    EditDest,
    EditService,
    IPVSError,
    RealServer,
    ServiceEntry,
    SetMarkRule,
    ServiceKey,
    VirtualService,
    FORWARDING,
    FORWARDING_NAMES,
)

IP_VS_SVC_F_PERSISTENT = 0x0001
# The kernel reads the netmask attribute as a raw u32: a dotted IPv4 mask for
# IPv4, a prefix length for IPv6. pyroute2 only knows the first, so IPv6
# needs the prefix length 128 spelled as the IPv4 address with those bytes.
_FULL_NETMASK = {socket.AF_INET: "255.255.255.255", socket.AF_INET6: "128.0.0.0"}


def _service_key_fields(key: ServiceKey) -> dict:
    fields = {"af": key.family, "netmask": _FULL_NETMASK[key.family]}
    if key.is_fwmark:
        fields["fwmark"] = key.fwmark
    else:
        fields.update(protocol=PROTOCOLS[key.protocol], addr=key.address, port=key.port)
    return fields


def _service_request(key: ServiceKey, service: VirtualService | None = None) -> IPVSService:
    fields = _service_key_fields(key)
    if service is not None:
        persistent = service.persistence > 0
        fields.update(
            sched_name=service.scheduler,
            timeout=service.persistence,
            flags={"flags": IP_VS_SVC_F_PERSISTENT if persistent else 0, "mask": 0xFFFF},
        )
    return IPVSService(**fields)


def _dest_request(server: RealServer | DestKey) -> IPVSDest:
    if isinstance(server, DestKey):
        return IPVSDest(addr=server.address, port=server.port)
    # A fresh IPVSDest per request: pyroute2 request objects keep state.
    return IPVSDest(
        addr=server.key.address,
        port=server.key.port,
        weight=server.weight,
        fwd_method=FORWARDING[server.forwarding],
    )


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
        self._socket: IPVS | None = None
        self._marks = None  # FirewallMarks, made on first use: python-iptables is costly to load

    @property
    def _ipvs(self) -> IPVS:
        if self._socket is None:
            try:
                self._socket = IPVS()
            except NetlinkError as error:
                raise IPVSError("open", f"the kernel has no IPVS ({error}): modprobe ip_vs") from error
        return self._socket

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
        Apply changes in order, all in one pyroute2 event-loop run (a loop per
        request is what makes one-call-at-a-time slow). A refused change does
        not stop the others; the refusals are returned.
        """
        ipvs = self._ipvs
        changes = list(changes)

        async def apply_all() -> list[IPVSError]:
            failures = []
            for change in changes:
                try:
                    if isinstance(change, (SetMarkRule, DeleteMarkRule)):
                        self._apply_mark(change)
                    else:
                        await self._request(ipvs.asyncore, change)
                except NetlinkError as error:
                    failures.append(IPVSError(change, errno.errorcode.get(error.code, str(error.code))))
                except IPVSError as error:
                    failures.append(IPVSError(change, error.reason))
            return failures

        return ipvs._run_with_cleanup(apply_all)

    def _apply_mark(self, change: SetMarkRule | DeleteMarkRule) -> None:
        from lvsfeedback.ipvs.fwmark import FirewallMarks

        if self._marks is None:
            self._marks = FirewallMarks()
        try:
            if isinstance(change, SetMarkRule):
                self._marks.set(change)
            else:
                self._marks.delete(change)
        except Exception as error:  # noqa: BLE001 - python-iptables raises its own IPTCError and ValueError
            raise IPVSError(change, f"iptables: {error}") from error

    @staticmethod
    async def _request(asyncore, change: Change):
        match change:
            case AddService(service):
                await asyncore.service("add", service=_service_request(service.key, service))
            case EditService(service):
                await asyncore.service("set", service=_service_request(service.key, service))
            case DeleteService(key):
                await asyncore.service("del", service=_service_request(key))
            case AddDest(service, server):
                await asyncore.dest("add", service=_service_request(service), dest=_dest_request(server))
            case EditDest(service, server):
                await asyncore.dest("set", service=_service_request(service), dest=_dest_request(server))
            case DeleteDest(service, key):
                await asyncore.dest("del", service=_service_request(service), dest=_dest_request(key))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


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
