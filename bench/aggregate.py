"""What B0 (bench/floor.py) and Q (bench/quix.py) both compute, so they do the same work:
the input's limits and a reading folded into a window's per-metric aggregates.

No dependencies beyond the project's validation (Q imports it from its own venv)."""

from __future__ import annotations

from streams.stages.validate import Limits

WINDOW = 60_000
GRACE = 10_000
# No clock checks: the benchmark's input is hours old by design.
LIMITS = Limits(max_bytes=65_536, max_future_ms=1 << 62, max_past_ms=1 << 62)

Aggregate = dict[str, list[float]]  # metric -> [count, min, max, sum, last]


def fold(agg: Aggregate, metrics: dict[str, float]) -> Aggregate:
    """Add one reading's metrics to ``agg`` (in place); returns it."""
    for name, value in metrics.items():
        a = agg.get(name)
        if a is None:
            agg[name] = [1, value, value, value, value]
        else:
            a[0] += 1
            a[1] = min(a[1], value)
            a[2] = max(a[2], value)
            a[3] += value
            a[4] = value
    return agg
