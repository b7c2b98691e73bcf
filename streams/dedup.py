"""Duplicate detection per device on ``seq``: a sliding window like IPsec's anti-replay.

The state per device is ``(highest seq seen, bitmask of the WIDTH seqs below it)``, two
integers, so it is cheap to keep in memory and to write to a changelog. A seq far below
the highest one (more than WIDTH back) is not a replay but a device that restarted
its counter: it is accepted and the window starts again from it.
"""

from __future__ import annotations

from typing import Final, NamedTuple

WIDTH: Final = 1024
_FULL: Final = (1 << WIDTH) - 1


class SeqState(NamedTuple):
    high: int
    mask: int  # bit i set: seq (high - i) was seen; bit 0 is high itself


class SeqVerdict(NamedTuple):
    duplicate: bool
    state: SeqState
    reset: bool  # the device restarted its counter


def check_seq(state: SeqState | None, seq: int) -> SeqVerdict:
    """Is ``seq`` a repeat for a device in ``state``? Also returns the next state."""
    if state is None:
        return SeqVerdict(False, SeqState(seq, 1), False)
    high, mask = state
    if seq > high:
        shift = seq - high
        mask = ((mask << shift) | 1) & _FULL if shift < WIDTH else 1
        return SeqVerdict(False, SeqState(seq, mask), False)
    back = high - seq
    if back >= WIDTH:
        return SeqVerdict(False, SeqState(seq, 1), True)
    bit = 1 << back
    if mask & bit:
        return SeqVerdict(True, state, False)
    return SeqVerdict(False, SeqState(high, mask | bit), False)
