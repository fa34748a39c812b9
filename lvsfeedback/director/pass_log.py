"""
What the weight updater logs of each pass: the weights it wrote, and in
observe mode the desired weights that moved.

Observe mode writes nothing, so it says when a desired weight moves; with
thousands of servers whose health moves together that was one line per
server per pass (a tenth of the director's CPU at 1,000 agents, #15). A
pass logs at most L{OBSERVED_LINES} of them and one line counting the rest:
every desired weight is in the pass's result (status.json) anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from twisted.logger import Logger

from lvsfeedback.ipvs.model import (
    AddDest,
    AddService,
    Change,
    DeleteDest,
    DeleteService,
    EditDest,
    EditService,
    ServiceKey,
)

if TYPE_CHECKING:
    from lvsfeedback.director.updater import PassResult, ServicePass

# Desired weights observe mode logs one by one in a pass; the rest are counted in one line.
OBSERVED_LINES = 20


def log_desired(log: Logger, plan: PassResult, before: Mapping[ServiceKey, ServicePass]) -> None:
    """
    The desired weights of C{plan} that differ from those of the pass that
    made C{before}: the first L{OBSERVED_LINES} one line each, then one line
    for how many more.
    """
    logged = more = 0
    for key, service_pass in plan.services.items():
        if service_pass.decision is None:
            continue
        earlier = before.get(key)
        decided_before = earlier.decision.servers if earlier is not None and earlier.decision is not None else {}
        for dest, decision in service_pass.decision.servers.items():
            previous = decided_before.get(dest)
            if previous is not None and previous.weight == decision.weight:
                continue
            if logged == OBSERVED_LINES:
                more += 1
                continue
            logged += 1
            log.info(
                "observe: {service} {dest}: desired weight {old} -> {new} ({reason}: {detail})",
                service=str(key), dest=str(dest), old="none" if previous is None else previous.weight,
                new=decision.weight, reason=decision.reason, detail=decision.detail,
            )
    if more:
        log.info("observe: {more} more desired weights moved in this pass (status.json has them all)", more=more)


def log_change(log: Logger, change: Change, plan: PassResult) -> None:
    """One line for a change the kernel took."""
    match change:
        case EditDest(service, server) | AddDest(service, server):
            service_pass = plan.services[service]
            decision = service_pass.decision.servers.get(server.key) if service_pass.decision else None
            old = service_pass.written.get(server.key)  # as read: the plan's
            log.info(
                "{service} {dest}: weight {old} -> {new} ({reason}: {detail})",
                service=str(service), dest=str(server.key), old="none" if old is None else old,
                new=server.weight, reason=decision.reason if decision else "config",
                detail=decision.detail if decision else "",
            )
        case DeleteDest(service, dest):
            log.info("{service} {dest}: removed", service=str(service), dest=str(dest))
        case AddService(service) | EditService(service):
            log.info("{service}: {scheduler}, persistence {persistence}",
                     service=str(service.key), scheduler=service.scheduler, persistence=service.persistence)
        case DeleteService(key):
            log.info("{service}: removed", service=str(key))
