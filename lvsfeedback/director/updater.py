"""
The weight updater: the only writer to the IPVS table.

Every `update_interval` seconds one pass reads the table (weights and
counters), asks the registry what the agents said, runs the policy, and
writes only the differences. A lost agent brings a pass forward, so the
scheduler stops sending new connections to its server at once; so does a
significant change of health, but never sooner than half an interval after
the last pass began, so that a noisy signal cannot make passes continuous.
A regular pass whose round of questions is still being answered waits for
the answers, a bounded while (L{ANSWER_WAIT}), so that it acts on all of
them at once rather than leaving the late ones to another pass.
Two passes never overlap: one asked for while another runs (a tick of the
clock included) follows it. The ticks never wait on a pass, so a reload
that changes the interval, or a stop, takes effect at once and leaves one
rhythm; a stop returns a Deferred that fires once the running pass ends.
A pass that fails is logged and the next one starts from a fresh read, so
nothing is lost by retrying.

Restarts change nothing the policy would not change: the first pass adopts
the kernel's table as it is, and for a short grace period a real server
whose agent has not spoken yet keeps the weight the kernel already gives it.

Each pass ends in a L{PassResult}: the members of each service, the facts
the policy was given about each, its decisions and the weights the kernel
has after the pass's writes. The status listener reads only that, so what it
shows is what one pass saw and did. Listeners in C{pass_listeners} (bound
callables, the style of the registry's own listener lists) get each result.
Operators change the weights only through L{WeightUpdater.set_override} and
L{WeightUpdater.clear_override}.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from lvsfeedback.director.config import IReconfigurable, ServiceConfig
from lvsfeedback.director.pass_log import log_change, log_desired
from lvsfeedback.director.policy import (
    Decision,
    Drained,
    Override,
    Pinned,
    PolicyState,
    Reason,
    ServerInput,
    ServiceDecision,
    ServiceInput,
    decide,
)
from lvsfeedback.ipvs.interfaces import IIPVSTable
from lvsfeedback.ipvs.model import (
    AddDest,
    AddService,
    Change,
    DeleteDest,
    DeleteMarkRule,
    DeleteService,
    DestKey,
    EditDest,
    EditService,
    RealServer,
    ServiceEntry,
    ServiceKey,
    SetMarkRule,
)

# A regular pass waits at most this long (and a quarter of the update interval)
# for the answers to its round of questions: at 10,000 agents the round takes
# longer than the half second by which it leads the pass.
ANSWER_WAIT = 0.5


@dataclass(frozen=True)
class ServicePass:
    """One virtual service as a pass saw, decided and wrote it."""

    service: ServiceConfig  # as configured when the pass ran
    in_kernel: bool  # the kernel has the virtual service after the pass's writes
    # The real servers weighed, configured ones first, then auto-joined ones in
    # the order they joined (with weights_only: the kernel's): forwarding.
    members: Mapping[DestKey, RealServer]
    # What the policy was told of each member: base weight, agent, health,
    # capacity, counters, the kernel's weight when read, override.
    inputs: Mapping[DestKey, ServerInput]
    decision: ServiceDecision | None  # None when the pass skipped the service (weights_only, not in the kernel)
    written: Mapping[DestKey, int]  # each server's kernel weight after the pass's writes; absent: not in the kernel
    held: frozenset[DestKey] = frozenset()  # kept at the kernel's weight during adoption


@dataclass(frozen=True)
class PassResult:
    """What one pass saw, decided and wrote: the director's status."""

    time: float
    kernel: Mapping[ServiceKey, ServiceEntry]  # the table as the pass read it
    services: Mapping[ServiceKey, ServicePass]  # every configured service, in the config's order
    # The writes the pass planned; in observe mode none per real server (it
    # writes nothing: the desired weights are in the decisions).
    changes: tuple[Change, ...]
    refused: tuple = ()
    duration: float = 0.0


@implementer(IReconfigurable)
class WeightUpdater(Service):
    log = Logger()

    def __init__(self, config, registry, table: IIPVSTable, clock, *, observe: bool | None = None):
        self.registry = registry
        self.table = table
        self.clock = clock
        self.observe = observe
        self._overrides: dict[tuple[ServiceKey, DestKey], Override] = {}
        self.state = PolicyState()
        self.last: PassResult | None = None
        self.writes = 0
        self.passes = 0
        self.failed_passes = 0
        self._managed: set[ServiceKey] = set()
        self._marks_set: dict[ServiceKey, SetMarkRule] = {}
        self._first_seen_weights: dict[tuple[ServiceKey, DestKey], int] = {}
        self._panic: set[ServiceKey] = set()
        self._adopt_until = 0.0
        self._adopting = False
        self._running: Deferred | None = None
        self._again = False
        self._soon: IDelayedCall | None = None
        self._waiting: IDelayedCall | None = None  # a regular pass waiting for its round's answers
        self._last_start: float | None = None
        self._no_lost_pass_before = 0.0  # the last pass's end plus its length, on the clock
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        registry.lost_listeners.append(self.pass_soon)
        registry.change_listeners.append(self.pass_early)
        # Called with each pass's PassResult once it is the last one.
        self.pass_listeners: list[Callable[[PassResult], object]] = []
        # A VRRP backup's source of the master's weights by (service name, server), asked once per pass.
        self.followed: Callable[[float], Mapping[tuple[str, DestKey], int]] = lambda now: {}
        self._following: Mapping[tuple[str, DestKey], int] = {}
        # Whether questions of the latest round are unanswered; answered() says when none are.
        self.answers_pending: Callable[[], bool] = lambda: False
        self.reconfigure(config)

    def reconfigure(self, config) -> None:
        """IReconfigurable: take a (re)loaded config; the next pass reconciles the kernel to it."""
        self.config = config
        # Built once per config rather than in every pass.
        self._configured = {
            service.key: {real.dest_key: RealServer(real.dest_key, real.base_weight, real.forwarding) for real in service.reals}
            for service in config.services
        }
        self._managed |= {service.key for service in config.services}
        if self._loop.running and self._loop.interval != config.director.update_interval:
            self._loop.stop()
            self._loop.start(config.director.update_interval, now=False)

    @property
    def overrides(self) -> Mapping[tuple[ServiceKey, DestKey], Drained | Pinned]:
        """The operator's overrides, read-only: set_override and clear_override change them."""
        return MappingProxyType(self._overrides)

    def set_override(self, key: ServiceKey, dest: DestKey, override: Drained | Pinned) -> Override:
        """Hold real server `dest` of `key` as `override` says from the next pass on; the one it replaces."""
        previous = self._overrides.get((key, dest))
        self._overrides[key, dest] = override
        return previous

    def clear_override(self, key: ServiceKey, dest: DestKey) -> Override:
        """Let real server `dest` of `key` follow feedback again from the next pass on; the override it had."""
        return self._overrides.pop((key, dest), None)

    @property
    def observing(self) -> bool:
        return self.config.director.observe if self.observe is None else self.observe

    def startService(self):
        super().startService()
        self._adopt_until = self.clock.seconds() + self.config.director.adoption_grace
        self._adopting = True
        self._loop.start(self.config.director.update_interval, now=True)

    def stopService(self) -> Deferred | None:
        """No pass after this; the Deferred returned fires when the running one ends."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        for call in (self._soon, self._waiting):
            if call is not None and call.active():
                call.cancel()
        self._soon = self._waiting = None
        self._again = False
        if self._running is None:
            return None
        ended = Deferred()

        def over(result):
            ended.callback(None)
            return result

        self._running.addBoth(over)
        return ended

    @property
    def next_pass(self) -> float | None:
        """When the next regular pass is due on the clock (maybe past: a busy reactor); None when stopped."""
        loop = self._loop
        if not loop.running:
            return None
        if loop.call is not None:
            # Its tick, even overdue: reports read before it fires must not bring another pass.
            return loop.call.getTime()
        # Within the tick: the loop keeps its phase from its start (a pass never delays a tick).
        ticks = (self.clock.seconds() - loop.starttime) // loop.interval + 1
        return loop.starttime + ticks * loop.interval

    def pass_soon(self) -> None:
        """
        A pass out of the regular rhythm, in the next turn of the reactor (so
        that agents lost together make one pass), or right after the pass
        running then; but no sooner after the last pass ended than it
        lasted: agents lost one after another (thousands redialling) leave
        the reactor at least half its time for their connections.
        """
        if self.running and self._soon is None:
            rest = self._no_lost_pass_before - self.clock.seconds()
            self._soon = self.clock.callLater(max(0.0, rest), self._pass_soon_due)

    def pass_early(self) -> None:
        """
        A pass brought forward by a change of health: at once, or half an
        update interval after the last pass began, whichever is later; none
        when the regular pass follows within half an interval, or one is
        already on its way. Passes stay at least half an interval apart.
        """
        if not self.running or self._soon is not None or self._running is not None or self._waiting is not None:
            return
        now = self.clock.seconds()
        gap = self.config.director.update_interval / 2
        at = now if self._last_start is None else max(now, self._last_start + gap)
        next_pass = self.next_pass
        if next_pass is not None and at > next_pass - gap:
            return
        self._soon = self.clock.callLater(at - now, self._pass_soon_due)

    def _pass_soon_due(self) -> None:
        self._soon = None
        self._one_pass()

    def _tick(self) -> None:
        # Not the pass's Deferred: a LoopingCall waiting on it would neither
        # stop nor restart at a new interval until the pass ends.
        if self._waiting is None and self.answers_pending():
            wait = min(ANSWER_WAIT, self.config.director.update_interval / 4)
            self._waiting = self.clock.callLater(wait, self.answered)
            return
        self._one_pass()

    def answered(self) -> None:
        """The latest round's questions are all answered: a regular pass waiting for them runs now."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            if waiting.active():
                waiting.cancel()
            self._one_pass()

    def _one_pass(self) -> Deferred:
        """A pass now, or, if one is running, right after it: one at a time."""
        if self._running is not None:
            self._again = True
            return self._running
        running = self._running = self.run_pass()
        running.addBoth(self._pass_over)
        return running

    def _pass_over(self, result):
        self._running = None
        ended = self.clock.seconds()
        self._no_lost_pass_before = ended + (ended - self._last_start if self._last_start is not None else 0.0)
        if self._again:
            self._again = False
            self._one_pass()
        return result

    def run_pass(self):
        started = time.perf_counter()
        now = self._last_start = self.clock.seconds()
        reading = self.table.snapshot()
        reading.addCallback(self._plan_and_apply, now, started)
        reading.addErrback(self._pass_failed)
        return reading

    def _pass_failed(self, failure) -> None:
        self.failed_passes += 1
        self.log.failure("weight update pass failed; the next pass retries", failure)

    def _plan_and_apply(self, kernel, now: float, started: float):
        plan = self.plan(kernel, now)
        if self._adopting and now >= self._adopt_until:
            self._adopting = False
            self.log.info("adoption over: real servers no agent has spoken for now follow the policy")
        self.passes += 1
        self._report_panic(plan.services)
        if self.observing or not plan.changes:
            return self._finish(plan, [], started)
        applying = self.table.apply(plan.changes)
        applying.addCallback(lambda refused: self._finish(plan, refused, started))
        return applying

    def _finish(self, plan: PassResult, refused: list, started: float) -> None:
        failed = {id(error.change) for error in refused}
        written: list[Change] = []
        if self.observing:
            log_desired(self.log, plan, self.last.services if self.last else {})
        else:
            written = [change for change in plan.changes if id(change) not in failed]
            for change in written:
                self.writes += 1
                log_change(self.log, change, plan)
        for error in refused:
            self.log.error("the kernel refused {change}: {reason}", change=str(error.change), reason=error.reason)
        result = replace(
            plan, services=_after_writes(plan.services, written), refused=tuple(refused),
            duration=time.perf_counter() - started,
        )
        self.last = result
        for listener in list(self.pass_listeners):
            try:
                listener(result)
            except Exception:
                self.log.failure("a listener of weight update passes failed")

    def plan(self, kernel: dict[ServiceKey, ServiceEntry], now: float) -> PassResult:
        """
        The changes that bring the kernel to what config, agents and policy
        want, in a result whose written weights are the kernel's as read.
        """
        weights_only = self.config.director.weights_only
        self._following = self.followed(now)
        inputs: dict[ServiceKey, ServiceInput] = {}
        members_by_service: dict[ServiceKey, dict[DestKey, RealServer]] = {}
        changes: list[Change] = []
        for service in self.config.services:
            entry = kernel.get(service.key)
            if weights_only:
                if entry is None:
                    continue
                members = {dest: d.server for dest, d in entry.dests.items()}
            else:
                members = dict(self._configured[service.key])
                for dest, server in self.registry.auto_joined.get(service.key, {}).items():
                    members.setdefault(dest, server)
                desired = service.virtual_service()
                if entry is None:
                    changes.append(AddService(desired))
                elif entry.service != desired:
                    changes.append(EditService(desired))
                changes += self._mark_changes(service)
                if entry is not None:
                    changes += [DeleteDest(service.key, dest) for dest in entry.dests if dest not in members]
            members_by_service[service.key] = members
            inputs[service.key] = ServiceInput(
                service.policy,
                {dest: self._server_input(service, entry, dest, server, weights_only) for dest, server in members.items()},
            )
        if not weights_only:
            # A service an earlier config declared and this one does not.
            for key in sorted(self._managed - set(inputs)):
                if key in kernel:
                    changes.append(DeleteService(key))
                if self._marks_set.pop(key, None) is not None:
                    changes.append(DeleteMarkRule(key.fwmark, key.family))
        decisions, self.state = decide(inputs, self.state, now)
        adopting = now < self._adopt_until
        # Observe mode sends nothing: a change per real server whose desired
        # weight differs from the kernel's (all of them on an empty table)
        # would be built every pass to be thrown away.
        writing = not self.observing
        services: dict[ServiceKey, ServicePass] = {}
        for service in self.config.services:
            key = service.key
            entry = kernel.get(key)
            read = {dest: found.server.weight for dest, found in entry.dests.items()} if entry is not None else {}
            service_decision = decisions.get(key)
            if service_decision is None:
                services[key] = ServicePass(service, entry is not None, {}, {}, None, read)
                continue
            members = members_by_service[key]
            held = []
            for dest, decision in service_decision.servers.items():
                current = read.get(dest)
                if adopting and current is not None and decision.reason is Reason.STATIC:
                    held.append(dest)  # during adoption, a server nobody has spoken for keeps its kernel weight
                    continue
                # The usual case, per server and pass: in the kernel, to keep its weight.
                if not writing or (
                    current is not None and not decision.remove and (decision.weight == current or not decision.write)
                ):
                    continue
                change = self._change_for(key, members[dest], decision, current, weights_only)
                if change is not None:
                    changes.append(change)
            services[key] = ServicePass(
                service, entry is not None, members, inputs[key].servers, service_decision, read, frozenset(held)
            )
        return PassResult(now, kernel, services, tuple(changes))

    def _mark_changes(self, service) -> list[Change]:
        """The MARK rule a fwmark service needs, set once per run and on change."""
        if service.mark is None:
            return []
        rule = SetMarkRule(service.key.fwmark, str(service.mark.destination), service.mark.protocol, service.mark.ports)
        if self._marks_set.get(service.key) == rule:
            return []
        self._marks_set[service.key] = rule
        return [rule]

    def _server_input(
        self, service, entry: ServiceEntry | None, dest: DestKey, server: RealServer, weights_only: bool
    ) -> ServerInput:
        agent, report, capacity = self.registry.facts(service, dest)
        kernel_dest = entry.dests.get(dest) if entry is not None else None
        # Usually there is none, and the lookup's key costs two hashes.
        override = self._overrides.get((service.key, dest)) if self._overrides else None
        # Positional, in the fields' order (base weight, agent, report, counters,
        # kernel weight, override, capacity, followed): keywords cost a third more, per server and pass.
        return ServerInput(
            self._first_seen_weight(service.key, dest, kernel_dest) if weights_only else server.weight,
            agent,
            report,
            kernel_dest.counters if kernel_dest else None,
            kernel_dest.server.weight if kernel_dest else None,
            override,
            capacity,
            self._following.get((service.name, dest)) if self._following else None,
        )

    def _first_seen_weight(self, key: ServiceKey, dest: DestKey, kernel_dest) -> int:
        """
        A server's base weight beside keepalived (weights_only): its
        configured weight lives in keepalived's config, so the weight the
        kernel had when first seen stands for it.
        """
        first = self._first_seen_weights.setdefault((key, dest), kernel_dest.server.weight if kernel_dest else 1)
        return max(first, 1)

    @staticmethod
    def _change_for(key: ServiceKey, member: RealServer, decision: Decision, current: int | None, weights_only: bool):
        if decision.remove and not weights_only:
            return DeleteDest(key, member.key) if current is not None else None
        weight = 0 if decision.remove else decision.weight
        if current is None:
            return None if weights_only else AddDest(key, RealServer(member.key, weight, member.forwarding))
        if weight != current and (decision.write or decision.remove):
            return EditDest(key, RealServer(member.key, weight, member.forwarding))
        return None

    def _report_panic(self, services: Mapping[ServiceKey, ServicePass]) -> None:
        decisions = {key: service.decision for key, service in services.items() if service.decision is not None}
        for key, decision in decisions.items():
            if decision.panic and key not in self._panic:
                self.log.critical(
                    "PANIC on {service}: only {serving} of {considered} servers would keep a weight; "
                    "using static weights until more recover",
                    service=str(key), serving=decision.serving, considered=decision.considered,
                )
            elif not decision.panic and key in self._panic:
                self.log.warn("{service} left panic mode", service=str(key))
        self._panic = {key for key, decision in decisions.items() if decision.panic}


def _after_writes(services: Mapping[ServiceKey, ServicePass], written: list[Change]) -> dict[ServiceKey, ServicePass]:
    """The services with the changes the kernel took on top of what the pass read."""
    weights: dict[ServiceKey, dict[DestKey, int | None]] = {}
    presence: dict[ServiceKey, bool] = {}
    for change in written:
        match change:
            case AddDest(key, server) | EditDest(key, server):
                weights.setdefault(key, {})[server.key] = server.weight
            case DeleteDest(key, dest):
                weights.setdefault(key, {})[dest] = None
            case AddService(service):
                presence[service.key] = True
            case DeleteService(key):
                presence[key] = False
    if not weights and not presence:
        return dict(services)
    after = {}
    for key, service_pass in services.items():
        if key not in weights and key not in presence:
            after[key] = service_pass
            continue
        kernel = dict(service_pass.written)
        for dest, weight in weights.get(key, {}).items():
            if weight is None:
                kernel.pop(dest, None)
            else:
                kernel[dest] = weight
        after[key] = replace(service_pass, written=kernel, in_kernel=presence.get(key, service_pass.in_kernel))
    return after
