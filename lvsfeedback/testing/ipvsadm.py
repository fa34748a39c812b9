"""
Read the kernel's IPVS table through ipvsadm, the way an operator sees it.

Integration tests compare this view with what the project reads and writes
through netlink, so a mistake in either shows as a disagreement.
"""

from __future__ import annotations

import subprocess

from lvsfeedback.ipvs.model import IPVSADM_FORWARDING, DestKey, ServiceKey

_FORWARDING_BY_IPVSADM = {label: name for name, label in IPVSADM_FORWARDING.items()}


def _split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def parse(listing: str) -> dict[ServiceKey, dict[DestKey, tuple[int, str]]]:
    """`ipvsadm -Ln` output → {service: {real server: (weight, forwarding)}}."""
    table: dict[ServiceKey, dict[DestKey, tuple[int, str]]] = {}
    current = None
    for line in listing.splitlines():
        fields = line.split()
        if not fields or fields[0] in ("IP", "Prot"):
            continue
        if fields[0] == "->":
            if fields[1] == "RemoteAddress:Port":
                continue
            address, port = _split_host_port(fields[1])
            table[current][DestKey.of(address, port)] = (int(fields[3]), _FORWARDING_BY_IPVSADM[fields[2]])
        elif fields[0] == "FWM":
            family = 10 if "IPv6" in fields else 2
            current = ServiceKey.for_fwmark(int(fields[1]), family)
            table[current] = {}
        else:
            address, port = _split_host_port(fields[1])
            current = ServiceKey.for_address(fields[0].lower(), address, port)
            table[current] = {}
    return table


def read_table() -> dict[ServiceKey, dict[DestKey, tuple[int, str]]]:
    return parse(subprocess.run(["ipvsadm", "-Ln"], check=True, capture_output=True, text=True).stdout)


def clear() -> None:
    subprocess.run(["ipvsadm", "-C"], check=True)
