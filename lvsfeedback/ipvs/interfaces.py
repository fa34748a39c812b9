"""
The IPVS table as the director sees it: what every backend provides.

`NetlinkIPVS` is the kernel's table; `MemoryIPVS` stands in for it in unit
tests and in observe mode on a host without ip_vs. The contract tests
(lvsfeedback.testing.ipvs_contract) run against both.
"""

from __future__ import annotations

from zope.interface import Interface


class IIPVSTable(Interface):
    """An IPVS table: read whole, written by lists of changes."""

    def snapshot():
        """
        Read the table: every virtual service with its real servers, their
        weights and traffic counters.

        @return: a L{Deferred} firing with a C{dict} from
            L{lvsfeedback.ipvs.model.ServiceKey} to
            L{lvsfeedback.ipvs.model.ServiceEntry}.
        """

    def apply(changes):
        """
        Apply changes in order; a refused change does not stop the others.

        @param changes: an iterable of L{lvsfeedback.ipvs.model.Change}.
        @return: a L{Deferred} firing with the list of
            L{lvsfeedback.ipvs.model.IPVSError} for the changes refused, in
            order (empty when all were applied).
        """
