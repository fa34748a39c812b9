"""
Firewall-mark rules for fwmark virtual services, through python-iptables.

The rules live in a mangle-table chain the project owns (LVSFEEDBACK, jumped
to from PREROUTING), one rule per mark, tagged with a comment, so the
director never touches a rule it did not make. python-iptables drives the
legacy x_tables interface (see them with iptables-legacy-save), and
importing it runs modprobe and ldconfig, so it is imported only when a
fwmark service with a mark rule is configured.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from typing import Any

from lvsfeedback.ipvs.model import DeleteMarkRule, IPVSError, SetMarkRule

CHAIN = "LVSFEEDBACK"


def _comment(fwmark: int) -> str:
    return f"lvsfeedback fwmark {fwmark}"


def iptables_installed() -> bool:
    """Whether python-iptables (the C{fwmark} extra) is installed; asked without importing it."""
    return importlib.util.find_spec("iptc") is not None


def load_iptc() -> Any:
    try:
        import iptc
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot work on this host"
        raise IPVSError(
            "firewall marks",
            f"python-iptables cannot work on this host ({error}); it needs the iptables, "
            "libxtables12, libip4tc2 and libip6tc2 packages and legacy x_tables in the kernel",
        ) from error
    return iptc


class FirewallMarks:
    """Create and remove MARK rules in the project's own mangle chain."""

    def __init__(self, chain: str = CHAIN):
        self._iptc = load_iptc()
        self._chain = chain

    def _table(self, ipv6: bool) -> tuple[Any, Any]:
        iptc = self._iptc
        table = iptc.Table6(iptc.Table6.MANGLE) if ipv6 else iptc.Table(iptc.Table.MANGLE)
        table.autocommit = False
        table.refresh()
        if not table.is_chain(self._chain):
            table.create_chain(self._chain)
        prerouting = iptc.Chain(table, "PREROUTING")
        if not any(rule.target.name == self._chain for rule in prerouting.rules):
            jump = (iptc.Rule6 if ipv6 else iptc.Rule)()
            jump.create_target(self._chain)
            prerouting.insert_rule(jump)
        return table, iptc.Chain(table, self._chain)

    def _delete(self, chain: Any, fwmark: int) -> None:
        for rule in list(chain.rules):
            if any(m.name == "comment" and m.comment == _comment(fwmark) for m in rule.matches):
                chain.delete_rule(rule)

    def set(self, change: SetMarkRule) -> None:
        """Make the chain hold exactly this rule for this mark."""
        network = ipaddress.ip_network(change.destination, strict=False)
        ipv6 = network.version == 6
        table, chain = self._table(ipv6)
        self._delete(chain, change.fwmark)
        rule = (self._iptc.Rule6 if ipv6 else self._iptc.Rule)()
        rule.dst = str(network)
        rule.protocol = change.protocol
        if change.ports:
            ports = rule.create_match("multiport")
            ports.dports = ",".join(str(port) for port in change.ports)
        comment = rule.create_match("comment")
        comment.comment = _comment(change.fwmark)
        target = rule.create_target("MARK")
        target.set_xmark = f"{change.fwmark:#x}/0xffffffff"
        chain.append_rule(rule)
        table.commit()

    def delete(self, change: DeleteMarkRule) -> None:
        table, chain = self._table(change.family == 10)
        self._delete(chain, change.fwmark)
        table.commit()

    def rules(self, ipv6: bool = False) -> dict[int, str]:
        """The marks this chain sets, with each rule's match, for status and tests."""
        table, chain = self._table(ipv6)
        found = {}
        for rule in chain.rules:
            mark = int(rule.target.get_all_parameters()["set-xmark"][0].split("/")[0], 16)
            found[mark] = f"{rule.dst} {rule.protocol}"
        return found
