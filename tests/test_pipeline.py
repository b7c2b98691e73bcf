"""Small pure pieces of the pipeline's wiring (the rest is tested through the broker)."""

from __future__ import annotations

from streams.runtime.internals import InputView
from streams.runtime.rebalance import state_digest


def test_read_to_the_end_means_fetched_to_the_stable_end_and_all_of_it_processed() -> None:
    # A transaction's commit marker sits at offset 10: the fetch position moves past it,
    # no record 10 ever reaches the agent.
    done = InputView(fetched_at=1, position=11, end=11, delivered=9)
    assert done.caught_up(processed=9)
    assert not done.caught_up(processed=8)  # record 9 is handed over, not processed
    assert not InputView(1, position=7, end=11, delivered=6).caught_up(6)  # more to fetch
    assert not InputView(1, position=None, end=11, delivered=None).caught_up(None)
    assert InputView(1, position=0, end=0, delivered=None).caught_up(None)  # empty input


def test_state_digest_depends_on_content_not_order() -> None:
    a = {b"d1": b"[1]", b"d2": b"[2]"}
    assert state_digest(a) == state_digest(dict(reversed(list(a.items()))))
    assert state_digest(a) != state_digest({b"d1": b"[1]", b"d2": b"[3]"})
    assert state_digest({b"d1": b"2]", b"d": b"1["}) != state_digest({b"d1": b"", b"d": b"1[2]"})
