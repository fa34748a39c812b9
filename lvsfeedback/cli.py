"""
The `lvsfeedback` command: ask a running director what it does, tell it to
drain, undrain or pin a real server, and check a configuration file.

    lvsfeedback status [--json]
    lvsfeedback drain SERVICE SERVER
    lvsfeedback undrain SERVICE SERVER
    lvsfeedback pin SERVICE SERVER WEIGHT
    lvsfeedback check-config FILE
    lvsfeedback version
    lvsfeedback experiment [--quick] [--scenario NAME] [--out DIR] ...

SERVICE is a service's name from the config, or its virtual service as
ipvsadm writes it ("TCP 10.0.0.1:80", "FWM 5"); SERVER is "10.1.0.1:80", or
the address alone when only one of the service's servers has it.

A command-line tool, so it blocks: plain urllib against the director's
status listener. Every failure is one line on stderr and a non-zero status.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import lvsfeedback
from lvsfeedback.ipvs.model import IPVSADM_FORWARDING

DEFAULT_URL = "http://127.0.0.1:9101"
FAILED = 1


class CommandFailed(Exception):
    """A failure worth one line to the user; the message is that line."""


class DirectorClient:
    """The director's status listener, over HTTP."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 5.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CommandFailed(f"the director's URL must look like {DEFAULT_URL}, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def status(self) -> dict[str, Any]:
        return self._call(urllib.request.Request(f"{self.url}/status.json"))

    def control(self, action: str, **fields: Any) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            f"{self.url}/control/{action}", data=json.dumps(fields).encode(), headers=headers, method="POST"
        )
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise CommandFailed(f"the director refused: {_error_message(error)}") from None
        except urllib.error.URLError as error:
            raise CommandFailed(f"cannot reach the director at {self.url}: {_reason(error.reason)}") from None
        except OSError as error:  # the connection failed after it was made: a reset, or a read timeout
            raise CommandFailed(f"cannot reach the director at {self.url}: {_reason(error)}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise CommandFailed(f"{self.url} answered something that is not the director's JSON") from None


def _reason(reason: object) -> str:
    """A connection failure in a few words: 'connection refused', 'timed out'."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.errno is not None:
        return (reason.strerror or errno.errorcode.get(reason.errno, str(reason))).lower()
    return str(reason)


def _error_message(error: urllib.error.HTTPError) -> str:
    body = error.read()
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = error.reason
    return f"{message} (HTTP {error.code})"


# status as a table ----------------------------------------------------------------

COLUMNS = ("  -> RemoteAddress:Port", "Forward", "Weight", "Want", "Base", "Health", "Agent",
           "ActiveConn", "InActConn", "Reason")
NUMERIC = {"Weight", "Want", "Base", "Health", "ActiveConn", "InActConn"}


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _duration(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _server_cells(server: dict[str, Any]) -> list[str]:
    agent = server["agent"]
    state = "stopped" if agent["stopped"] else agent["state"]
    if agent["for"] is not None:
        state = f"{state} {_duration(agent['for'])}"
    health = server["health"]
    counters = server["counters"] or {}
    reason = server["reason"] or "no pass yet"
    if server["detail"]:
        reason = f"{reason}: {server['detail']}"
    return [
        f"  -> {server['server']}",
        IPVSADM_FORWARDING.get(server["forwarding"], server["forwarding"]),
        _dash(server["kernel_weight"]),
        _dash(server["desired_weight"]) + ("*" if server["pending"] else ""),
        _dash(server["base_weight"]),
        "-" if health is None else f"{health['value']} ({_duration(health['age'])})",
        state,
        _dash(counters.get("active_connections")),
        _dash(counters.get("inactive_connections")),
        reason,
    ]


def _pair_line(pair: dict[str, Any] | None, now: float) -> str | None:
    """One line on a director of a VRRP pair: its state, and whether it follows the master."""
    if pair is None:
        return None
    priority = "" if pair["priority"] is None else f" (priority {pair['priority']})"
    line = f"pair: VRRP {pair['vrrp_state']}{priority} for {_duration(pair['for'])}; "
    line += f"following {pair['peer']}" if pair["following"] else f"own policy, peer {pair['peer']}"
    if pair["last_fetch"] is not None:
        line += f", last fetch {_duration(now - pair['last_fetch'])} ago"
    if pair["last_error"]:
        line += f"; {pair['last_error']}"
    guard = pair.get("guard")
    if guard is not None:
        line += f"; split-brain guard: {guard['problem'] or guard['reason']}"
    return line


def format_status(status: dict[str, Any], url: str) -> str:
    """The director's status in the spirit of `ipvsadm -Ln`, with health and reasons."""
    director = status["director"]
    passes = status["passes"]
    mode = "observe mode: weights are computed, never written" if director["observe"] else "live"
    last = passes["last"]
    last_text = "no pass yet" if last is None else (
        f"last pass {_duration(last['age'])} ago, {last['duration'] * 1000:.1f} ms"
    )
    lines = [
        f"lvsfeedback director {director['version']} at {url} ({mode})",
        f"passes {passes['total']} ({passes['failed']} failed), weight writes {passes['writes']}, {last_text}; "
        f"agents connected {len(status['agents'])}",
        "Prot LocalAddress:Port Scheduler Flags",
    ]
    pair = _pair_line(status.get("pair"), director["time"])
    if pair is not None:
        lines.insert(2, pair)
    rows: list[list[str] | str] = [list(COLUMNS)]
    for service in status["services"]:
        flags = [service["mode"]]
        if service["panic"]:
            flags.append(f"PANIC ({service['serving']} of {service['considered']} serving)")
        if not service["in_kernel"]:
            flags.append("not in kernel")
        rows.append(f"{service['virtual_service']} {service['scheduler']} {', '.join(flags)}  [{service['name']}]")
        rows += [_server_cells(server) for server in service["servers"]]
    widths = [max(len(row[i]) for row in rows if isinstance(row, list)) for i in range(len(COLUMNS))]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        cells = [
            cell.rjust(width) if COLUMNS[i] in NUMERIC else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append(" ".join(cells).rstrip())
    if any(server["pending"] for service in status["services"] for server in service["servers"]):
        lines.append("* the kernel does not have this weight yet (observe mode, hysteresis or adoption grace)")
    return "\n".join(lines)


# commands -----------------------------------------------------------------------


def _client(options) -> DirectorClient:
    token = None
    if options.token_file is not None:
        try:
            token = Path(options.token_file).read_text().strip()
        except OSError as error:
            raise CommandFailed(f"cannot read the token file {options.token_file}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise CommandFailed(f"the token file {options.token_file} is not text") from None
    return DirectorClient(options.url, token, options.timeout)


def command_status(options, out: TextIO, err: TextIO) -> int:
    status = _client(options).status()
    if options.json:
        out.write(json.dumps(status, indent=2) + "\n")
    else:
        out.write(format_status(status, options.url) + "\n")
    return 0


def command_control(options, out: TextIO, err: TextIO) -> int:
    fields: dict[str, Any] = {"service": options.service, "server": options.server}
    if options.command == "pin":
        fields["weight"] = options.weight
    answer = _client(options).control(options.command, **fields)
    now = answer["override"] or "following feedback"
    out.write(
        f"{answer['server']} of {answer['service']} ({answer['virtual_service']}): {now}, "
        f"{answer['applies']}\n"
    )
    return 0


def command_check_config(options, out: TextIO, err: TextIO) -> int:
    # Imported here: status and control need none of the director's code.
    from lvsfeedback.director.config import check_config

    problems = check_config(options.file)
    for problem in problems:
        err.write(problem + "\n")
    if problems:
        return FAILED
    out.write(f"{options.file}: ok\n")
    return 0


def command_version(options, out: TextIO, err: TextIO) -> int:
    out.write(f"lvsfeedback {lvsfeedback.__version__}\n")
    return 0


def command_experiment(options, out: TextIO, err: TextIO) -> int:
    # Imported here: it is the lab's, and only this command needs it. The
    # lab is not in the installed package: it runs from the source tree.
    try:
        from lvsfeedback.lab.experiment import main as experiment
    except ModuleNotFoundError as missing:
        err.write(f"lvsfeedback experiment: runs from the project's source tree (make deps), "
                  f"not an installed package: {missing}\n")
        return 2

    return experiment(options.arguments)


def _weight(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lvsfeedback", description="Operate an lvsfeedback director.")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def talks_to_director(command: argparse.ArgumentParser) -> None:
        command.add_argument("--url", default=DEFAULT_URL, help=f"the director's status listener (default {DEFAULT_URL})")
        command.add_argument("--token-file", help="file holding the control token ([status] token_file)")
        command.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the director (default 5)")

    status = commands.add_parser("status", help="services, real servers, weights, health and why")
    talks_to_director(status)
    status.add_argument("--json", action="store_true", help="the director's status document as JSON")
    status.set_defaults(run=command_status)

    target = {
        "service": "service name, or its virtual service as ipvsadm writes it: 'TCP 10.0.0.1:80'",
        "server": "real server ADDRESS:PORT (the address alone when unambiguous)",
    }
    for name, description in (
        ("drain", "give a real server weight 0 until undrained"),
        ("undrain", "let a real server's weight follow feedback again"),
        ("pin", "hold a real server at a fixed weight until undrained"),
    ):
        command = commands.add_parser(name, help=description, description=description)
        talks_to_director(command)
        command.add_argument("service", help=target["service"])
        command.add_argument("server", help=target["server"])
        if name == "pin":
            command.add_argument("weight", type=_weight, help="IPVS weight 0..65535")
        command.set_defaults(run=command_control)

    check = commands.add_parser("check-config", help="report every problem in a director config file")
    check.add_argument("file")
    check.set_defaults(run=command_check_config)

    experiment = commands.add_parser(
        "experiment", add_help=False, help="measure what feedback buys in a lab cluster (root, a kernel with IPVS)"
    )
    experiment.set_defaults(run=command_experiment)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=command_version)
    return top


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    # The experiment parses its own options (lvsfeedback experiment --help).
    options, extra = parser().parse_known_args(argv)
    if options.command == "experiment":
        options.arguments = extra
    elif extra:
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return options.run(options, out, err)
    except CommandFailed as failure:
        err.write(f"lvsfeedback {options.command}: {failure}\n")
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
