"""Duplicate detection per device on ``seq``: a sliding window like IPsec's anti-replay,
which tells a repeat from a device that restarted its counter by event time.

The state per device is ``(highest seq seen, bitmask of the WIDTH seqs below it)``, two
integers, so it is cheap to keep in memory and to write to a changelog. Beside it the
caller passes the event time of the device's newest accepted reading.

A seq already seen is a *repeat* (the same reading sent again: dropped) unless its
event time is newer than the device's newest accepted reading: then the device
restarted its counter (a reboot, a LoRaWAN rejoin, a restarted simulator) and the
reading is new. It is accepted and the window starts again from it. A seq more than
WIDTH below the highest one is taken as a restart too, whatever its event time (the
window no longer knows whether it was seen).
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


def check_seq(state: SeqState | None, seq: int, ts: int = -1, newest_ts: int = -1) -> SeqVerdict:
    """Is ``seq`` (with event time ``ts``) a repeat for a device in ``state``, whose
    newest accepted reading has event time ``newest_ts``? Also returns the next state.
    (Without event times, any seq seen is a repeat.)"""
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
    if not mask & bit:  # a gap filled (out of order): new, whatever its time
        return SeqVerdict(False, SeqState(high, mask | bit), False)
    if ts > newest_ts >= 0:
        return SeqVerdict(False, SeqState(seq, 1), True)
    return SeqVerdict(True, state, False)
