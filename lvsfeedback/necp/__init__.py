"""
NECP, the Network Element Control Protocol (draft-cerpa-necp-02).

This package's namespace is the sans-IO codec: L{wire} (numbers and
errors), L{units}, L{messages}, L{framing} (bytes to messages and back) and
L{auth} (credentials and sequence numbers). The Twisted protocol base lives
in L{lvsfeedback.necp.protocol}, the two ends in
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
