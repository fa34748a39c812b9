"""
NECP messages to bytes and back, over a stream.

Reading: L{Decoder} takes chunks of any size and returns whole messages.
Everything wrong with the input raises L{NECPError}. Its subclass
L{MessageRefused} means one whole message was read and set aside but the
stream is still in step, so the caller may answer with an error reply and
carry on; any other L{NECPError} means the stream cannot be trusted and the
connection must be closed.

Writing: L{encode} turns a message into bytes; L{Authenticator.encode} does
the same with a sequence number and a credential; L{RequestTemplate}, the
unsigned bytes of one message under any request id.
"""

from __future__ import annotations

import hmac
import struct
from typing import TYPE_CHECKING

from lvsfeedback.necp.messages import ERROR_REASONS, MESSAGE_TYPES, ErrorReply, Message
from lvsfeedback.necp.wire import (
    CREDENTIAL_SIZE,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_SEQUENCE,
    PROTOCOL_ID,
    UNIT_SIZE,
    VERSION,
    AuthenticationFailed,
    BadSequenceNumber,
    Flag,
    MessageRefused,
    MessageTooLarge,
    NECPError,
    ReservedOpcode,
    UnsupportedVersion,
    check_range,
    opcode_name,
)

if TYPE_CHECKING:
    from lvsfeedback.necp.auth import Authenticator

# The same bits as plain ints for the decoder: an int & an IntFlag member
# goes through enum's Python-level operator, several times per message.
_CREDENTIAL_BIT = int(Flag.CREDENTIAL)
_BASIC_PAYLOAD_BIT = int(Flag.BASIC_PAYLOAD)
_ERROR_BIT = int(Flag.ERROR)


def _check_request_id(request_id: int) -> int:
    return check_range(request_id, 0xFFFF, "request id")


_READERS = {opcode: kind.from_payload for opcode, kind in MESSAGE_TYPES.items()}


def encode(message: Message, *, sequence: int = 0, secret: bytes | None = None) -> bytes:
    """
    The bytes of one message. With C{secret}, the credential flag is set and
    an HMAC-SHA1 over the header (length including the credential) and the
    payload is appended.
    """
    payload = message.payload()
    flags = Flag.BASIC_PAYLOAD if payload else 0
    if type(message) is ErrorReply:
        flags |= Flag.ERROR | (message.flags & ERROR_REASONS)
    length = len(payload)
    if secret is not None:
        flags |= Flag.CREDENTIAL
        length += CREDENTIAL_SIZE
    try:
        header = HEADER.pack(
            PROTOCOL_ID,
            flags,
            VERSION,
            message.opcode,
            message.request_id,
            sequence,
            length,
        )
    except struct.error:
        _check_request_id(message.request_id)
        check_range(message.opcode, 0xFF, "opcode")
        check_range(sequence, MAX_SEQUENCE, "sequence number")
        raise
    if secret is None:
        return header + payload
    signed = header + payload
    return signed + hmac.digest(secret, signed, "sha1")


# Where the request id lies in a header: after the protocol id, flags, version and opcode.
_REQUEST_ID_AT = 6


class RequestTemplate:
    """
    The unsigned bytes of one message with any request id: a sender that
    asks the same questions round after round (a keepalive's queries) packs
    the header once and patches in each request id. C{encode(request_id)}
    equals L{encode} of the message with that request id.
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, message: Message):
        whole = encode(message)
        self._head = whole[:_REQUEST_ID_AT]
        self._tail = whole[_REQUEST_ID_AT + 2 :]

    def encode(self, request_id: int) -> bytes:
        try:
            return self._head + request_id.to_bytes(2, "big") + self._tail
        except OverflowError:
            _check_request_id(request_id)
            raise


class Decoder:
    """
    Whole messages out of a byte stream fed in chunks of any size.

    Call L{feed} with what arrived, then L{next_message} until it returns
    None. At most one incomplete message is held back, and a payload over
    L{MAX_PAYLOAD} is refused as soon as its header arrives. After an
    L{NECPError} that is not a L{MessageRefused} the decoder drops its buffer
    and refuses all further input.
    """

    def __init__(self, authenticator: Authenticator | None = None):
        self.authenticator = authenticator
        # What arrived and is not read yet starts at _offset: the chunk fed
        # itself when nothing was held (the usual case: whole messages, read
        # in place), else a bytearray that the rest is appended to.
        self._buffer: bytes | bytearray = b""
        self._offset = 0
        self._failure: NECPError | None = None

    @property
    def buffered(self) -> int:
        """How many bytes are held waiting for the rest of a message."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        if self._failure is not None:
            raise NECPError(f"no more input accepted after: {self._failure}")
        buffer, offset = self._buffer, self._offset
        if offset == len(buffer) and type(data) is bytes:
            self._buffer = data
        else:
            # Part of a message is held: gather it and the rest in a bytearray of our own.
            if type(buffer) is bytearray:
                del buffer[:offset]
            else:
                self._buffer = buffer = bytearray(buffer[offset:])
            buffer += data
        self._offset = 0

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes arrive."""
        if self._failure is not None:
            raise NECPError(f"no more input accepted after: {self._failure}")
        if len(self._buffer) - self._offset < HEADER_SIZE:
            return None  # how every read ends: checked here, without a call
        try:
            return self._next()
        except MessageRefused:
            raise
        except NECPError as failure:
            self._fail(failure)
            raise
        except (struct.error, ValueError) as failure:  # defensive: never leak another type
            error = NECPError(f"undecodable message: {failure}")
            self._fail(error)
            raise error from failure

    def _fail(self, failure: NECPError) -> None:
        self._failure = failure
        self._buffer = b""
        self._offset = 0

    def _next(self) -> Message | None:
        buffer = self._buffer
        start = self._offset
        available = len(buffer) - start
        if available < HEADER_SIZE:
            return None
        protocol_id, flags, version, opcode, request_id, sequence, length = HEADER.unpack_from(
            buffer, start
        )
        if protocol_id != PROTOCOL_ID:
            raise NECPError(f"protocol id 0x{protocol_id:04x} is not NECP's 0x{PROTOCOL_ID:04x}")
        credential = flags & _CREDENTIAL_BIT
        limit = MAX_PAYLOAD + CREDENTIAL_SIZE if credential else MAX_PAYLOAD
        if length > limit:
            raise MessageTooLarge(f"payload length {length} over the limit of {limit}")
        end = start + HEADER_SIZE + length
        if len(buffer) < end:
            return None
        self._offset = end

        if version != VERSION:
            raise UnsupportedVersion(
                f"NECP version {version} (this end speaks {VERSION})",
                opcode,
                request_id,
                flags,
                version,
            )
        authenticator = self.authenticator
        if credential:
            if length < CREDENTIAL_SIZE:
                raise NECPError(f"payload length {length} too short for a credential")
            end -= CREDENTIAL_SIZE
            if authenticator is None:
                raise AuthenticationFailed(
                    "message carries a credential but no shared secret is configured",
                    opcode,
                    request_id,
                    flags,
                )
            signed = bytes(buffer[start:end])
            if not hmac.compare_digest(
                authenticator.credential(signed), bytes(buffer[end : end + CREDENTIAL_SIZE])
            ):
                raise AuthenticationFailed("credential does not match", opcode, request_id, flags)
            refusal = authenticator.accept_sequence(sequence)
            if refusal is not None:
                raise BadSequenceNumber(refusal, opcode, request_id, flags)
            length -= CREDENTIAL_SIZE
        elif authenticator is not None and authenticator.required:
            raise AuthenticationFailed(
                "credential missing where one is required", opcode, request_id, flags
            )

        if length % UNIT_SIZE:
            raise NECPError(f"payload length {length} is not a whole number of 32-byte units")
        if length and not flags & _BASIC_PAYLOAD_BIT:
            raise NECPError(f"{length}-byte payload without the basic-payload flag")
        payload = bytes(buffer[end - length : end])
        if flags & _ERROR_BIT:
            return ErrorReply.from_header(opcode, request_id, flags, payload)
        reader = _READERS.get(opcode)
        if reader is None:
            raise ReservedOpcode(opcode_name(opcode), opcode, request_id, flags)
        return reader(request_id, payload)


def decode(data: bytes, authenticator: Authenticator | None = None) -> Message:
    """Exactly one message from C{data}; anything short or left over is an error."""
    decoder = Decoder(authenticator)
    decoder.feed(data)
    message = decoder.next_message()
    if message is None:
        raise NECPError(f"truncated message: {len(data)} bytes")
    if decoder.buffered:
        raise NECPError(f"{decoder.buffered} bytes after the message")
    return message
