"""
NECP's numbers: the header and unit layouts, the limits, the flags and
opcodes, and the errors every part of the codec raises.

Sans-IO, as the whole codec (this module, L{units}, L{messages},
L{framing}, L{auth}): bytes and values, no transports, reactors or clocks.
See /work/shared/necp.md for the byte layout.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import ClassVar

PROTOCOL_ID = 0x414A
VERSION = 1
HEADER = struct.Struct(">HHBBHQI")
HEADER_SIZE = HEADER.size
UNIT = struct.Struct(">8I")
UNIT_SIZE = UNIT.size
CREDENTIAL_SIZE = 20  # HMAC-SHA1
MAX_PAYLOAD = 64 * 1024  # project choice: refuse longer payloads from the header alone
MAX_UNITS = MAX_PAYLOAD // UNIT_SIZE
MAX_SEQUENCE = 2**64 - 1
MAX_MESSAGE_SIZE = HEADER_SIZE + MAX_PAYLOAD + CREDENTIAL_SIZE

MAX_U32 = 0xFFFFFFFF


class Flag(IntFlag):
    """Header flag bits."""

    BASIC_PAYLOAD = 0x0001
    CREDENTIAL = 0x0002
    ERROR = 0x0004
    VERSION_MISMATCH = 0x0008
    AUTH_REQUIRED = 0x0010
    BAD_SEQUENCE = 0x0020


class Opcode(IntEnum):
    """Message types; every other value in 0..255 is reserved."""

    NOOP = 0x00
    INIT = 0x01
    INIT_ACK = 0x02
    KEEPALIVE = 0x03
    KEEPALIVE_ACK = 0x04
    START = 0x05
    START_ACK = 0x06
    STOP = 0x07
    STOP_ACK = 0x08
    EXCEPTION_ADD = 0x20
    EXCEPTION_ADD_ACK = 0x21
    EXCEPTION_DEL = 0x22
    EXCEPTION_DEL_ACK = 0x23
    EXCEPTION_RESET = 0x24
    EXCEPTION_RESET_ACK = 0x25
    EXCEPTION_QUERY = 0x26
    EXCEPTION_RESP = 0x27


REQUEST_OPCODES = frozenset(
    {
        Opcode.INIT,
        Opcode.KEEPALIVE,
        Opcode.START,
        Opcode.STOP,
        Opcode.EXCEPTION_ADD,
        Opcode.EXCEPTION_DEL,
        Opcode.EXCEPTION_RESET,
        Opcode.EXCEPTION_QUERY,
    }
)
# Every reply's opcode is its request's plus one (EXCEPTION_QUERY -> EXCEPTION_RESP too).
REPLY_OPCODE: dict[int, Opcode] = {request: Opcode(request + 1) for request in REQUEST_OPCODES}
REPLY_OPCODES = frozenset(REPLY_OPCODE.values())


def opcode_name(opcode: int) -> str:
    """A readable name for an opcode, reserved ones included."""
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"reserved opcode 0x{opcode:02x}"


def describe_flags(flags: int) -> str:
    """Header flags as readable names, e.g. C{'ERROR|AUTH_REQUIRED'}."""
    names = [str(flag.name) for flag in Flag if flags & flag]  # every Flag has a name
    return "|".join(names) if names else "none"


class NECPError(Exception):
    """
    Input that is not acceptable NECP, or a value that cannot be encoded.

    The message says what was wrong. Unless it is a L{MessageRefused}, the
    byte stream it came from can no longer be trusted.
    """


class MessageTooLarge(NECPError):
    """A header announcing a payload over the limit: refused before it is read."""


class MessageRefused(NECPError):
    """
    One whole message was read and refused; the stream is still in step.

    Carries what an error reply needs: the refused message's opcode, request
    id and flags, and C{reply_flags} to answer with.
    """

    reply_flags: ClassVar[int] = Flag.ERROR

    def __init__(self, reason: str, opcode: int, request_id: int, flags: int):
        super().__init__(reason)
        self.reason = reason
        self.opcode = opcode
        self.request_id = request_id
        self.flags = flags


class UnsupportedVersion(MessageRefused):
    """A message of a protocol version other than ours."""

    reply_flags = Flag.ERROR | Flag.VERSION_MISMATCH

    def __init__(self, reason: str, opcode: int, request_id: int, flags: int, version: int):
        super().__init__(reason, opcode, request_id, flags)
        self.version = version


class AuthenticationFailed(MessageRefused):
    """A credential that is missing, unexpected or wrong."""

    reply_flags = Flag.ERROR | Flag.AUTH_REQUIRED


class BadSequenceNumber(MessageRefused):
    """A sequence number not above the last valid one: a replay or reordering."""

    reply_flags = Flag.ERROR | Flag.BAD_SEQUENCE


class ReservedOpcode(MessageRefused):
    """An opcode the draft reserves."""


def check_range(value: int, maximum: int, what: str) -> int:
    """C{value}, if an int in 0..C{maximum}: a field about to be encoded."""
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise NECPError(f"{what} {value!r} outside 0..{maximum}")
    return value
