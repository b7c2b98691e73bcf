from __future__ import annotations

from streams.stages.dedup import WIDTH, SeqState, check_seq


def run(seqs: list[int]) -> list[bool]:
    """Which of ``seqs`` are duplicates, fed in order to one device."""
    state: SeqState | None = None
    verdicts = []
    for seq in seqs:
        verdict = check_seq(state, seq)
        verdicts.append(verdict.duplicate)
        state = verdict.state
    return verdicts


def test_repeats_are_duplicates_new_ones_are_not() -> None:
    assert run([1, 2, 2, 3, 1]) == [False, False, True, False, True]


def test_out_of_order_within_the_window_is_not_a_duplicate() -> None:
    assert run([10, 7, 9, 8, 7, 10]) == [False, False, False, False, True, True]


def test_big_jump_forward_forgets_the_old_window() -> None:
    assert run([5, 5 + WIDTH + 3, 5]) == [False, False, False]  # 5 is now a counter reset


def test_counter_reset_is_accepted_and_flagged() -> None:
    state = check_seq(None, 50_000).state
    verdict = check_seq(state, 0)
    assert (verdict.duplicate, verdict.reset, verdict.state.high) == (False, True, 0)
    assert check_seq(verdict.state, 0).duplicate


def test_state_stays_two_small_integers() -> None:
    state: SeqState | None = None
    for seq in range(10 * WIDTH):
        state = check_seq(state, seq).state
    assert state is not None and state.mask.bit_length() <= WIDTH


def test_a_seen_seq_with_a_newer_event_time_is_a_restarted_counter() -> None:
    state = SeqState(40, (1 << 40) - 1)  # seqs 1 to 40 seen, the newest at ts 1,000
    verdict = check_seq(state, 1, ts=2_000, newest_ts=1_000)  # rebooted: seq 1 again, later
    assert (verdict.duplicate, verdict.reset, verdict.state) == (False, True, SeqState(1, 1))
    assert not check_seq(verdict.state, 2, ts=2_060, newest_ts=2_000).duplicate


def test_a_true_repeat_is_dropped_whatever_came_between() -> None:
    state = check_seq(None, 7, ts=1_000).state
    assert check_seq(state, 7, ts=1_000, newest_ts=1_000).duplicate  # same seq, same time
    state = check_seq(state, 8, ts=1_060, newest_ts=1_000).state
    assert check_seq(state, 7, ts=1_000, newest_ts=1_060).duplicate  # older than the newest


def test_an_unseen_seq_fills_its_gap_without_a_reset() -> None:
    state = check_seq(check_seq(None, 5).state, 7).state
    verdict = check_seq(state, 6, ts=9_000, newest_ts=1_000)
    assert (verdict.duplicate, verdict.reset, verdict.state.high) == (False, False, 7)
