"""
An in-process IPVS table with the kernel's semantics, for unit tests.

It refuses what the kernel refuses, with the kernel's errno names (EEXIST
for a duplicate, ESRCH for a missing service, ENOENT for a missing real
server, EINVAL for a weight out of range), and its methods return already-fired Deferreds, like
`NetlinkIPVS` returns Deferreds that fire later.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from twisted.internet.defer import succeed
from zope.interface import implementer

from lvsfeedback.ipvs.interfaces import IIPVSTable
from lvsfeedback.ipvs.model import (
    MAX_WEIGHT,
    AddDest,
    AddService,
    Change,
    DeleteDest,
    DeleteMarkRule,
    DeleteService,
    Dest,
    DestCounters,
    DestKey,
    EditDest,
    EditService,
    IPVSError,
    ServiceEntry,
    ServiceKey,
    SetMarkRule,
)


@implementer(IIPVSTable)
class MemoryIPVS:
    def __init__(self):
        self._services: dict[ServiceKey, ServiceEntry] = {}
        self.applied: list[Change] = []  # every change accepted, in order
        self.marks: dict[int, SetMarkRule] = {}  # the MARK rules, by mark

    def snapshot(self):
        return succeed(self.table())

    def table(self) -> dict[ServiceKey, ServiceEntry]:
        return {key: replace(entry, dests=dict(entry.dests)) for key, entry in self._services.items()}

    def apply(self, changes: Iterable[Change]):
        failures = []
        for change in changes:
            try:
                self._apply(change)
            except IPVSError as error:
                failures.append(error)
            else:
                self.applied.append(change)
        return succeed(failures)

    def set_counters(self, service: ServiceKey, dest: DestKey, counters: DestCounters) -> None:
        """What the kernel's traffic accounting would do: for tests."""
        entry = self._services[service]
        dests = dict(entry.dests)
        dests[dest] = replace(dests[dest], counters=counters)
        self._services[service] = replace(entry, dests=dests)

    def _apply(self, change: Change) -> None:
        match change:
            case AddService(service):
                if service.key in self._services:
                    raise IPVSError(change, "EEXIST")
                self._services[service.key] = ServiceEntry(service, {})
            case EditService(service):
                entry = self._entry(change, service.key)
                self._services[service.key] = replace(entry, service=service)
            case DeleteService(key):
                self._entry(change, key)
                del self._services[key]
            case AddDest(service, server):
                entry = self._entry(change, service)
                self._check_weight(change, server.weight)
                if server.key in entry.dests:
                    raise IPVSError(change, "EEXIST")
                self._services[service] = replace(entry, dests={**entry.dests, server.key: Dest(server)})
            case EditDest(service, server):
                entry = self._entry(change, service)
                self._check_weight(change, server.weight)
                if server.key not in entry.dests:
                    raise IPVSError(change, "ENOENT")
                kept = entry.dests[server.key].counters
                self._services[service] = replace(entry, dests={**entry.dests, server.key: Dest(server, kept)})
            case SetMarkRule(fwmark):
                self.marks[fwmark] = change
            case DeleteMarkRule(fwmark):
                self.marks.pop(fwmark, None)
            case DeleteDest(service, key):
                entry = self._entry(change, service)
                if key not in entry.dests:
                    raise IPVSError(change, "ENOENT")
                self._services[service] = replace(
                    entry, dests={k: d for k, d in entry.dests.items() if k != key}
                )

    def _entry(self, change: Change, key: ServiceKey) -> ServiceEntry:
        try:
            return self._services[key]
        except KeyError:
            raise IPVSError(change, "ESRCH") from None

    @staticmethod
    def _check_weight(change: Change, weight: int) -> None:
        if not 0 <= weight <= MAX_WEIGHT:
            raise IPVSError(change, "EINVAL")
