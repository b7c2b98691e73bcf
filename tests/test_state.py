import tracemalloc

import orjson

from streams.state import DurableMap, compact


def new_map() -> DurableMap[dict[str, int]]:
    return DurableMap("state", orjson.dumps, orjson.loads, "state")


def test_compact_copies_into_an_allocation_of_its_own_size() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [compact(orjson.dumps([i, i])) for i in range(1000)]
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert kept[7] == b"[7,7]"
    # orjson's own buffers are 4 KiB each: 1,000 of them would be ~4 MB
    assert grown < 200_000


def test_collect_writes_each_changed_key_once_and_keeps_no_encoded_copy() -> None:
    m = new_map()
    m.set("d1", {"n": 1}, 3)
    m.set("d2", {"n": 2}, 4)
    m.set("d1", {"n": 5}, 3)
    writes = m.collect()
    assert sorted((w.partition, w.key, w.value) for w in writes) == [
        (3, b"d1", b'{"n":5}'),
        (4, b"d2", b'{"n":2}'),
    ]
    assert m.collect() == []
    assert m.cold == {} and len(m) == 2
    assert m.get("d1") == {"n": 5}


def test_collect_of_some_keys_leaves_the_others_dirty() -> None:
    m = new_map()
    m.set("d1", {"n": 1}, 0)
    m.set("d2", {"n": 2}, 1)
    assert [w.key for w in m.collect(["d2", "d3"])] == [b"d2"]
    assert [w.key for w in m.collect()] == [b"d1"]


def test_replace_loads_records_cold_and_decodes_on_first_get() -> None:
    m = new_map()
    m.set("gone", {"n": 0}, 9)
    partition_of = m.replace(
        {
            0: [(b"d1", b'{"n":1}'), (b"d2", b'{"n":2}'), (b"d1", b'{"n":3}')],
            1: [(b"d3", b'{"n":4}'), (b"d3", None)],
        }
    )
    assert partition_of == {"d1": 0, "d2": 0}
    assert len(m) == 2 and m.get("gone") is None and m.get("d3") is None
    assert m.cold == {"d1": b'{"n":3}', "d2": b'{"n":2}'}
    assert m.get("d1") == {"n": 3}
    assert m.cold == {"d2": b'{"n":2}'} and len(m) == 2
    assert dict(m.items()) == {"d1": {"n": 3}, "d2": {"n": 2}}
    assert m.collect() == []  # loaded state is the changelog's: nothing to write back


def test_past_its_budget_the_most_recently_written_keys_wait_encoded() -> None:
    m: DurableMap[dict[str, int]] = DurableMap("s", orjson.dumps, orjson.loads, "s", budget=2)
    for i in range(5):
        m.set(f"d{i}", {"n": i}, 0)
    writes = m.collect()
    assert [w.key for w in writes] == [b"d0", b"d1", b"d2", b"d3", b"d4"]  # all written
    assert sorted(m.live) == ["d0", "d1"] and sorted(m.cold) == ["d2", "d3", "d4"]
    assert m.cold["d4"] == writes[4].value  # the record just written, not encoded again
    m.set("d4", {"n": 40}, 0)  # touched again: decoded, then cold again after writing
    assert m.get("d3") == {"n": 3} and len(m.live) == 4
    assert [w.value for w in m.collect()] == [b'{"n":40}']
    assert sorted(m.live) == ["d0", "d1", "d3"] and m.get("d4") == {"n": 40}
    assert dict(m.items()) == {f"d{i}": {"n": 40 if i == 4 else i} for i in range(5)}
    assert len(m.live) == 4  # items() decodes cold keys for the caller, keeps none


def test_peek_decodes_a_cold_value_without_keeping_it_and_set_replaces_it() -> None:
    m = new_map()
    m.replace({0: [(b"d1", b'{"n":1}')]})
    assert m.peek("d1") == {"n": 1} and m.live == {} and len(m) == 1
    m.set("d1", {"n": 2}, 0)  # without a get first: the cold record is stale now
    assert m.cold == {} and len(m) == 1 and dict(m.items()) == {"d1": {"n": 2}}
    assert m.peek("d1") is m.get("d1")
