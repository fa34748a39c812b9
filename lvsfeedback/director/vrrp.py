"""
A director's VRRP state as keepalived's notify hook (tap/vrrp-notify) last
recorded it: ``STATE PRIORITY`` in ``[pair] vrrp_state_file``, written aside
and renamed. Read by the director's follower (director/pair.py), whose
reading the split-brain guard (director/pair_guard.py) uses for the priority.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

# The notify hook writes one short line.
MAX_STATE_FILE = 256


class VRRPState(enum.StrEnum):
    MASTER = "MASTER"
    BACKUP = "BACKUP"
    FAULT = "FAULT"
    STOP = "STOP"
    UNKNOWN = "unknown"  # no file, or one that cannot be read


# Not holding the address, ready to take it: a director in these follows the master.
STANDING_BY = frozenset({VRRPState.BACKUP, VRRPState.FAULT})


@dataclass(frozen=True)
class VRRPReading:
    state: VRRPState
    priority: int | None = None
    problem: str | None = None  # why the file gave no state; None when it is absent or fine


def read_vrrp_state(path: Path) -> VRRPReading:
    """The state tap/vrrp-notify wrote to `path`: ``STATE PRIORITY`` (the priority may be missing)."""
    try:
        with path.open("rb") as file:
            content = file.read(MAX_STATE_FILE + 1)
    except FileNotFoundError:
        return VRRPReading(VRRPState.UNKNOWN)
    except OSError as error:
        return VRRPReading(VRRPState.UNKNOWN, problem=f"cannot read {path}: {error.strerror}")
    words = content.decode("ascii", "replace").split() if len(content) <= MAX_STATE_FILE else []
    states = tuple(state for state in VRRPState if state is not VRRPState.UNKNOWN)
    if not 1 <= len(words) <= 2 or words[0] not in states or (len(words) == 2 and not _priority(words[1])):
        shown = content[:40].decode("ascii", "replace")
        return VRRPReading(
            VRRPState.UNKNOWN, problem=f"{path} does not hold 'STATE PRIORITY' (STATE one of {', '.join(states)}): {shown!r}"
        )
    return VRRPReading(VRRPState(words[0]), int(words[1]) if len(words) == 2 else None)


def _priority(word: str) -> bool:
    return word.isdigit() and int(word) <= 255
