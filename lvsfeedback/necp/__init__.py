"""
NECP, the Network Element Control Protocol (draft-cerpa-necp-02).

Its modules, sans-IO first:
  - L{wire}: the numbers (opcodes, flags, header) and the codec's errors;
  - L{units}: the units messages carry (services, queries, answers, exceptions);
  - L{messages}: one class per message;
  - L{framing}: bytes to messages and back;
  - L{auth}: credentials and sequence numbers;
  - L{session}: one session's state, either end: handshake, requests,
    replies and retries, keepalives; no I/O, no timers;
  - L{counters}: what an endpoint handled and refused, and refusals logged
    at a bounded cost;
  - L{factory}: the settings every connection of one endpoint shares;
  - L{protocol}: the Twisted protocol that drives a session over a
    connection and keeps its timers.

This package's namespace is the codec. The two ends are
L{lvsfeedback.director.protocol} and L{lvsfeedback.agent.protocol}.
"""

from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.framing import Decoder, decode, encode
from lvsfeedback.necp.messages import (
    ErrorReply,
    ExceptionAdd,
    ExceptionAddAck,
    ExceptionDel,
    ExceptionDelAck,
    ExceptionQuery,
    ExceptionReset,
    ExceptionResetAck,
    ExceptionResp,
    Init,
    InitAck,
    Keepalive,
    KeepaliveAck,
    Message,
    Noop,
    Start,
    StartAck,
    Stop,
    StopAck,
)
from lvsfeedback.necp.units import (
    CAPACITY_QUERY,
    HEALTH_QUERY,
    Answer,
    ExceptionRule,
    InstalledException,
    Query,
    RawUnit,
    Service,
)
from lvsfeedback.necp.wire import (
    AuthenticationFailed,
    BadSequenceNumber,
    Flag,
    MessageRefused,
    MessageTooLarge,
    NECPError,
    Opcode,
    ReservedOpcode,
    UnsupportedVersion,
)

__all__ = [
    "CAPACITY_QUERY",
    "HEALTH_QUERY",
    "Answer",
    "AuthenticationFailed",
    "Authenticator",
    "BadSequenceNumber",
    "Decoder",
    "ErrorReply",
    "ExceptionAdd",
    "ExceptionAddAck",
    "ExceptionDel",
    "ExceptionDelAck",
    "ExceptionQuery",
    "ExceptionReset",
    "ExceptionResetAck",
    "ExceptionResp",
    "ExceptionRule",
    "Flag",
    "Init",
    "InitAck",
    "InstalledException",
    "Keepalive",
    "KeepaliveAck",
    "Message",
    "MessageRefused",
    "MessageTooLarge",
    "NECPError",
    "Noop",
    "Opcode",
    "Query",
    "RawUnit",
    "ReservedOpcode",
    "Service",
    "Start",
    "StartAck",
    "Stop",
    "StopAck",
    "UnsupportedVersion",
    "decode",
    "encode",
]
