"""
NECP's authentication: the HMAC-SHA1 credential and the sequence numbers of
one connection.

Sans-IO: the one time-dependent value, the high half of a sequence number,
is computed from a time the caller passes in.
"""

from __future__ import annotations

import hmac

from lvsfeedback.necp.framing import encode
from lvsfeedback.necp.messages import Message
from lvsfeedback.necp.wire import MAX_SEQUENCE, MAX_U32, NECPError, check_range


class Authenticator:
    """
    The credential and sequence numbers of one connection: the shared secret,
    the next number to send, and the lowest number still acceptable.

    Sequence numbers are 64 bits, the high half from the caller's clock and
    the low half counting up, strictly increasing. Sending starts at the
    number the peer asked for (see L{start_sending}); receiving refuses any
    number not above the last valid one (see L{start_receiving}).
    """

    def __init__(self, secret: bytes, *, required: bool = False):
        if not isinstance(secret, bytes) or not secret:
            raise NECPError("the shared secret must be non-empty bytes")
        self.secret = secret
        # When true, a message without a credential is refused.
        self.required = required
        self._send_next: int | None = None
        self._send_exact = False
        self._receive_floor: int | None = None

    @staticmethod
    def initial_sequence(now: float) -> int:
        """A starting sequence number: the clock in the high half, 0 in the low."""
        return (int(now) & MAX_U32) << 32

    def start_sending(self, first: int) -> None:
        """The peer asked for C{first}: the next message carries exactly that."""
        self._send_next = check_range(first, MAX_SEQUENCE, "sequence number")
        self._send_exact = True

    def start_receiving(self, first: int) -> None:
        """Accept from now on only credentials, with sequence numbers from C{first} up."""
        self._receive_floor = check_range(first, MAX_SEQUENCE, "sequence number")
        self.required = True

    @property
    def receive_floor(self) -> int | None:
        """The lowest sequence number still acceptable; None before L{start_receiving}."""
        return self._receive_floor

    def next_sequence(self, now: float) -> int:
        """The sequence number for the next message sent (0 before L{start_sending})."""
        if self._send_next is None:
            return 0
        if self._send_exact:
            sequence = self._send_next
            self._send_exact = False
        else:
            sequence = max(self._send_next, self.initial_sequence(now))
        if sequence > MAX_SEQUENCE:
            raise NECPError("sequence numbers exhausted on this connection")
        self._send_next = sequence + 1
        return sequence

    def accept_sequence(self, sequence: int) -> str | None:
        """Take C{sequence} if it is acceptable; otherwise say why not."""
        floor = self._receive_floor
        if floor is None:
            return None
        if sequence < floor:
            if sequence == floor - 1:
                return f"sequence number {sequence} repeats the last valid one"
            return f"sequence number {sequence} is below the lowest acceptable {floor}"
        self._receive_floor = sequence + 1
        return None

    def credential(self, signed: bytes) -> bytes:
        return hmac.digest(self.secret, signed, "sha1")

    def encode(self, message: Message, now: float) -> bytes:
        """The bytes of C{message} with the next sequence number and a credential."""
        return encode(message, sequence=self.next_sequence(now), secret=self.secret)
