"""Validation of untrusted telemetry: raw Kafka bytes in, readings and rejects out.

Pure functions, no faust: this is the first step of the hot path. A message is parsed
once with orjson and checked by hand (about 1.6 us for a 200-byte reading, against
~12 us for a ``faust.Record`` decode). Nothing here raises on input: every problem is a
:class:`Reject` with a reason from :data:`REASONS` and a human-readable detail, and a
gateway batch with one bad reading rejects that reading only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import orjson

# --- dead-letter reasons (the contract's, plus the ones this project documents) --------
TOO_LARGE: Final = "too_large"  # message over the size limit
INVALID_UTF8: Final = "invalid_utf8"  # bytes that are not UTF-8
INVALID_JSON: Final = "invalid_json"  # empty, not JSON, NaN/Infinity, nesting too deep
SCHEMA: Final = "schema"  # parsed, but not a telemetry envelope or batch
TS_FUTURE: Final = "ts_future"  # event time too far ahead of the worker's clock
TS_PAST: Final = "ts_past"  # event time too far behind the worker's clock
UNKNOWN_DEVICE: Final = "unknown_device"  # not in the device registry
LATE: Final = "late"  # behind its device's watermark: its window has closed
REASONS: Final = (
    TOO_LARGE,
    INVALID_UTF8,
    INVALID_JSON,
    SCHEMA,
    TS_FUTURE,
    TS_PAST,
    UNKNOWN_DEVICE,
    LATE,
)

MAX_METRICS: Final = 64
MAX_BATCH: Final = 1000
# A sensor value beyond this is a bug or an attack, not a measurement; it also keeps
# sums in the windows far from float overflow.
MAX_ABS_VALUE: Final = 1e15
MAX_ID_LEN: Final = 64

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
_DEVICE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class Reading(NamedTuple):
    """A valid reading. A NamedTuple: cheap to build on the hot path, immutable."""

    device_id: str
    ts: int  # event time, epoch milliseconds
    seq: int | None
    metrics: dict[str, float]


class Reject(NamedTuple):
    """A message or a reading of a batch that cannot be used, and why."""

    reason: str
    detail: str
    payload: bytes  # the original message, or the one reading of a batch
    position: int | None = None  # index in the gateway batch, None for a whole message


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 65536
    max_future_ms: int = 300_000
    max_past_ms: int = 86_400_000


class Parsed(NamedTuple):
    readings: list[Reading]
    rejects: list[Reject]
    batch: bool  # a gateway batch (each reject's payload is its own reading)


def parse_message(value: bytes | None, now_ms: int, limits: Limits) -> Parsed:
    """Split one Kafka message into valid readings and rejects; never raises."""
    if value is None:
        return Parsed([], [Reject(INVALID_JSON, "empty message (null value)", b"")], False)
    if len(value) > limits.max_bytes:
        return Parsed(
            [], [Reject(TOO_LARGE, f"{len(value)} bytes > limit {limits.max_bytes}", value)], False
        )
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        reason = INVALID_UTF8 if "UTF-8" in text or "surrogate" in text else INVALID_JSON
        return Parsed([], [Reject(reason, text[:200], value)], False)
    if type(doc) is not dict:
        return Parsed(
            [], [Reject(SCHEMA, f"expected a JSON object, got {json_type(doc)}", value)], False
        )
    readings: list[Reading] = []
    rejects: list[Reject] = []
    batch = doc.get("readings")
    if batch is None:
        single = check_envelope(doc, now_ms, limits)
        if isinstance(single, Reading):
            readings.append(single)
        else:
            rejects.append(Reject(single[0], single[1], value))
        return Parsed(readings, rejects, False)
    if "device_id" in doc:
        detail = "both `readings` and `device_id`: batch or envelope?"
        return Parsed([], [Reject(SCHEMA, detail, value)], False)
    if type(batch) is not list:
        detail = f"`readings` must be an array, got {json_type(batch)}"
        return Parsed([], [Reject(SCHEMA, detail, value)], False)
    if not 1 <= len(batch) <= MAX_BATCH:
        detail = f"`readings` must hold 1 to {MAX_BATCH} envelopes, got {len(batch)}"
        return Parsed([], [Reject(SCHEMA, detail, value)], False)
    for index, item in enumerate(batch):
        if type(item) is not dict:
            result: Reading | tuple[str, str] = (
                SCHEMA,
                f"readings[{index}]: expected an object, got {json_type(item)}",
            )
        else:
            result = check_envelope(item, now_ms, limits)
        if isinstance(result, Reading):
            readings.append(result)
        else:
            reason, detail = result
            rejects.append(Reject(reason, detail, orjson.dumps(item), index))
    return Parsed(readings, rejects, True)


def check_envelope(doc: dict[str, Any], now_ms: int, limits: Limits) -> Reading | tuple[str, str]:
    """One telemetry envelope: a :class:`Reading`, or ``(reason, detail)``."""
    device_id = doc.get("device_id")
    if type(device_id) is not str:
        if device_id is None:
            return SCHEMA, "missing `device_id`"
        return SCHEMA, f"`device_id` must be a string, got {json_type(device_id)}"
    if _DEVICE_ID.fullmatch(device_id) is None:
        return SCHEMA, f"`device_id` {_show(device_id)} must be 1-64 of A-Z a-z 0-9 _ . : -"

    ts = parse_ts(doc.get("ts"))
    if type(ts) is str:
        return SCHEMA, ts
    assert type(ts) is int
    if ts - now_ms > limits.max_future_ms:
        return TS_FUTURE, f"`ts` {ts} is {(ts - now_ms) / 1000:.0f} s ahead of the worker's clock"
    if now_ms - ts > limits.max_past_ms:
        return TS_PAST, f"`ts` {ts} is {(now_ms - ts) / 1000:.0f} s behind the worker's clock"

    seq = doc.get("seq")
    if seq is not None:
        if type(seq) is float and seq.is_integer():  # JSON Schema: 42.0 is an integer
            seq = int(seq)
        if type(seq) is not int or seq < 0:
            return SCHEMA, f"`seq` must be a non-negative integer, got {_show(seq)}"

    metrics = doc.get("metrics")
    if type(metrics) is not dict:
        if metrics is None:
            return SCHEMA, "missing `metrics`"
        return SCHEMA, f"`metrics` must be an object, got {json_type(metrics)}"
    if not 1 <= len(metrics) <= MAX_METRICS:
        return SCHEMA, f"`metrics` must hold 1 to {MAX_METRICS} entries, got {len(metrics)}"
    values: dict[str, float] = {}
    for name, raw in metrics.items():
        kind = type(raw)
        if kind is float:
            value: float = raw
        elif kind is int:
            value = float(raw)
        else:
            return SCHEMA, f"metric {_show(name)} must be a number, got {json_type(raw)}"
        if _METRIC_NAME.fullmatch(name) is None:
            return SCHEMA, f"metric name {_show(name)} must match [a-z][a-z0-9_]{{0,63}}"
        if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
            return SCHEMA, f"metric {name} = {raw!r} is outside ±{MAX_ABS_VALUE:g}"
        values[name] = value
    return Reading(device_id, ts, seq, values)


def parse_ts(raw: object) -> int | str:
    """Event time in epoch ms, or the problem as text (a str) when it is unusable."""
    if type(raw) is float and raw.is_integer() and abs(raw) < 2**53:
        raw = int(raw)  # JSON Schema: 1795780800123.0 is an integer
    if type(raw) is int:
        if raw < 0:
            return f"`ts` must not be negative, got {raw}"
        return raw
    if type(raw) is str:
        if len(raw) > 40 or _RFC3339.fullmatch(raw) is None:
            return f"`ts` {_show(raw)} is not an RFC 3339 time with a UTC offset"
        try:
            # RFC 3339 allows a lower-case t and z; fromisoformat does not.
            parsed = datetime.fromisoformat(raw.upper())
        except ValueError:
            return f"`ts` {_show(raw)} is not an RFC 3339 time"
        if parsed.tzinfo is None:
            return f"`ts` {_show(raw)} has no UTC offset"
        # Integer arithmetic: float seconds * 1000 can land one millisecond low.
        ms: int = (parsed - _EPOCH) // _MS
        if ms < 0:
            return f"`ts` {_show(raw)} is before 1970"
        return ms
    if raw is None:
        return "missing `ts`"
    return f"`ts` must be epoch milliseconds (integer) or RFC 3339, got {json_type(raw)}"


def json_type(value: object) -> str:
    """The JSON type name of a parsed value, for error details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_device_id(value: object) -> bool:
    """The contract's device id: 1 to 64 of ``A-Z a-z 0-9 _ . : -``."""
    return isinstance(value, str) and _DEVICE_ID.fullmatch(value) is not None


def _show(value: object) -> str:
    """A bounded, escaped rendering: details must stay readable and small whatever arrives."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
