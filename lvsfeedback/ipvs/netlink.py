"""
The kernel's IPVS table through generic netlink.

`KernelIPVS` is synchronous: it reads and writes through one raw generic
netlink socket (lvsfeedback.ipvs.batch), many write requests to a system
call, and sets the MARK rules of fwmark services through iptables.
`NetlinkIPVS` runs a KernelIPVS on a dedicated one-thread pool, so the
reactor never waits on the kernel (whose IPVS lock keepalived or ipvsadm may
hold) and no two netlink calls ever run at once; its methods return Deferreds.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from lvsfeedback.ipvs.batch import IPVSSocket
from lvsfeedback.ipvs.interfaces import IIPVSTable
from lvsfeedback.ipvs.model import (
    Change,
    DeleteMarkRule,
    IPVSError,
    ServiceEntry,
    ServiceKey,
    SetMarkRule,
)


class KernelIPVS:
    """Synchronous access to the kernel's IPVS table. Use from one thread."""

    def __init__(self):
        self._socket: IPVSSocket | None = None
        self._marks = None  # FirewallMarks, made on first use: python-iptables is costly to load

    @property
    def ipvs(self) -> IPVSSocket:
        """The netlink socket, opened on first use (IPVSError when the kernel has no IPVS)."""
        if self._socket is None:
            self._socket = IPVSSocket()
        return self._socket

    def snapshot(self) -> dict[ServiceKey, ServiceEntry]:
        ipvs = self.ipvs
        return {
            service.key: ServiceEntry(service, {dest.server.key: dest for dest in ipvs.dests(service.key)})
            for service in ipvs.services()
        }

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
                for change, reason in zip(run, self.ipvs.apply(run)):
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
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@implementer(IIPVSTable)
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
