from __future__ import annotations

from streams.dedup import WIDTH, SeqState, check_seq


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
