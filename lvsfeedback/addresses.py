"""How the project writes a host and port: C{10.0.0.1:80}, C{[2001:db8::1]:80}."""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """C{host:port}, an IPv6 literal in brackets as in URLs and ipvsadm's listing."""
    # An IPv6 literal always holds a colon and an IPv4 one or a name never
    # does: no parsing, for a name built per server and per log line.
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_address(address: object) -> str:
    """A peer's address for a log line: host and port where it has them (TCP), else as it prints."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return host_port(host, port)
