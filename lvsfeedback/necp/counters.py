"""
What an NECP endpoint handled and refused, counted, and refusals logged at
a bounded cost, so that operators see an attack without the log drowning.

L{NECPCounters} is the one owner of these counts: messages handled by
opcode, messages refused by reason, connections refused by reason. The
status listener reads them. Each refusal is also logged under one rule:
a refusal class (its reason) is logged once per peer per window (a
minute): the first at once, with its detail; the rest of that window are
counted, and summarised in one line when it ends ("... and 9,999 more
bad_credential refusals from 127.0.2.1 in the last 60 s"). The peer is
then forgotten. At most C{max_tracked} (peer, reason) windows are open at
once; past that, refusals from peers without one share one window per
reason, so a flood of source addresses costs bounded memory and log.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from lvsfeedback.necp.wire import AuthenticationFailed, BadSequenceNumber, MessageTooLarge, NECPError

# Why a message is refused.
BAD_CREDENTIAL = "bad_credential"  # credential missing, unexpected or wrong; authentication refused
BAD_SEQUENCE = "bad_sequence"  # a sequence number not above the last: a replay or reordering
LIMIT = "limit"  # over a limit: size, queued output, exceptions, answer size, time to handshake
MALFORMED = "malformed"  # what the codec cannot decode, or units NECP or IPVS do not allow
NOT_ALLOWED = "not_allowed"  # services the agent may not offer (none of its address in the config)
UNEXPECTED = "unexpected"  # well formed, but not what this end takes now
MESSAGE_REASONS = (BAD_CREDENTIAL, BAD_SEQUENCE, LIMIT, MALFORMED, NOT_ALLOWED, UNEXPECTED)

# Why a connection is refused at connect.
MAX_AGENTS = "max_agents"
ALLOW = "allow"
CONNECTION_REASONS = (MAX_AGENTS, ALLOW)

LOG_WINDOW = 60.0
MAX_TRACKED = 256
# The peer of the window shared by refusals from peers beyond MAX_TRACKED.
OTHER_PEERS = "other peers"


def refusal_reason(error: NECPError) -> str:
    """The counted reason for refusing what the codec refused with C{error}."""
    if isinstance(error, AuthenticationFailed):
        return BAD_CREDENTIAL
    if isinstance(error, BadSequenceNumber):
        return BAD_SEQUENCE
    if isinstance(error, MessageTooLarge):
        return LIMIT
    return MALFORMED


class _Window:
    """Refusals of one class from one peer while its first is logged and the rest counted."""

    __slots__ = ("ends", "more")

    def __init__(self, ends: float):
        self.ends = ends
        self.more = 0


class NECPCounters:
    """
    Counts of one NECP endpoint, and its refusals' rate-limited log lines.
    Plain object; its only timer ends windows on the injected clock.

    @ivar messages: messages handled (read whole and accepted), by opcode.
    @ivar refusals: messages (or sessions) refused, by reason.
    @ivar connections_refused: connections refused at connect, by reason.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, *, window: float = LOG_WINDOW, max_tracked: int = MAX_TRACKED):
        self.clock = clock
        self.window = window
        self.max_tracked = max_tracked
        self.messages: Counter[int] = Counter()
        self.refusals = dict.fromkeys(MESSAGE_REASONS, 0)
        self.connections_refused = dict.fromkeys(CONNECTION_REASONS, 0)
        # In the order they opened, which is the order they end.
        self._windows: dict[tuple[str, str], _Window] = {}
        self._window_end: IDelayedCall | None = None

    @property
    def tracked(self) -> int:
        """How many (peer, reason) windows are open."""
        return len(self._windows)

    def refused(self, reason: str, host: str, detail: str) -> None:
        """A message or session from C{host} refused for C{reason}; C{detail} says which and why."""
        self.refusals[reason] += 1
        self._log(reason, host, detail)

    def connection_refused(self, reason: str, host: str, detail: str, *, scope: str | None = None) -> None:
        """
        A connection from C{host} refused at connect for C{reason}. C{scope}
        is the peer it is logged for, C{host} by default.
        """
        self.connections_refused[reason] += 1
        self._log(reason, host if scope is None else scope, detail)

    def _log(self, reason: str, peer: str, detail: str) -> None:
        windows = self._windows
        key = (peer, reason)
        window = windows.get(key)
        if window is None and len(windows) >= self.max_tracked:
            key = (OTHER_PEERS, reason)
            window = windows.get(key)
        if window is not None:
            window.more += 1
            return
        windows[key] = _Window(self.clock.seconds() + self.window)
        self.log.warn(
            "refused ({reason}) {detail}; more {reason} refusals from {peer} are counted for {window:g} s",
            reason=reason, detail=detail, peer=key[0], window=self.window,
        )
        if self._window_end is None:
            self._window_end = self.clock.callLater(self.window, self._end_windows)

    def _end_windows(self) -> None:
        """Summarise and forget the windows that ended; wait for the next one to end."""
        self._window_end = None
        now = self.clock.seconds()
        windows = self._windows
        while windows:
            key, window = next(iter(windows.items()))
            if window.ends > now:
                self._window_end = self.clock.callLater(window.ends - now, self._end_windows)
                return
            del windows[key]
            self._summarise(key, window)

    def _summarise(self, key: tuple[str, str], window: _Window) -> None:
        if window.more:
            peer, reason = key
            self.log.warn(
                "... and {more:,} more {reason} refusals from {peer} in the last {window:g} s",
                more=window.more, reason=reason, peer=peer, window=self.window,
            )

    def flush(self) -> None:
        """Summarise every open window now and forget them: the endpoint stops."""
        if self._window_end is not None and self._window_end.active():
            self._window_end.cancel()
        self._window_end = None
        windows, self._windows = self._windows, {}
        for key, window in windows.items():
            self._summarise(key, window)
