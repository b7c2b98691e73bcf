"""The device record: the contract's kinds and their metrics, checking a record, and
reading and writing files of records (JSON Lines, CSV).

Everything here is a pure function over plain dicts in the contract's device record format
(``shared/contract.md``, ``schemas/device.schema.json``), so the ``registry`` command, the
simulator and the pipeline's registry (:class:`streams.stages.enrich.Registry`) share one
notion of a valid device without importing Kafka.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping

from streams.stages.validate import is_device_id, json_type

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = (
    "classroom_air",
    "wlan_ap",
    "cell_5g",
    "air_quality",
    "traffic",
    "reefer",
    "machine",
)

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
# fullmatch without anchors: with ``$`` a trailing newline would still match.

REQUIRED_FIELDS: tuple[str, ...] = ("device_id", "kind", "district", "site", "lat", "lon")
OPTIONAL_FIELDS: tuple[str, ...] = ("parent", "heartbeat_s")
# Output order of a record: contract fields first, then any additive fields as given.
FIELDS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS

# What each kind reports (the simulator's vocabulary, the rules', and the only metric
# names exported as city metrics to Prometheus: a closed set keeps the series bounded).
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "classroom_air": ("co2_ppm", "temperature_c", "humidity_pct"),
    "wlan_ap": ("clients", "throughput_mbps"),
    "cell_5g": ("prb_util_pct", "rsrp_dbm", "sinr_db", "connected_ues"),
    "air_quality": ("no2_ugm3", "pm10_ugm3"),
    "traffic": ("vehicles_per_min", "speed_kmh", "occupancy_pct"),
    "reefer": ("temperature_c", "setpoint_c", "power_kw"),
    "machine": ("vibration_mm_s", "temperature_c", "spindle_rpm"),
}

FORMATS: tuple[str, ...] = ("jsonl", "csv")


def count_by_kind(devices: Iterable[Mapping[str, object]]) -> dict[str, int]:
    """Devices per kind: every contract kind (0 if absent) in contract order, then any
    other kind seen; records without a string kind (tombstones) are not counted."""
    counts = dict.fromkeys(KINDS, 0)
    for device in devices:
        kind = device.get("kind")
        if isinstance(kind, str):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# --------------------------------------------------------------------------- checking


def _show(value: object, limit: int = 40) -> str:
    """A value for an error message: Python repr for text (``'tractor'``), JSON for the
    rest (``true``, ``null``), cut short so one huge cell cannot flood the error list."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        # Not JSON (a caller's own object) or an int too long to print.
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: object) -> int | float | None:
    """The value if it is a finite JSON number, else None."""
    # bool is an int subclass but ``true`` is no coordinate; ints are always finite (and
    # math.isfinite would overflow on a huge one).
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _check_coordinate(name: str, value: object, bound: int) -> str | None:
    number = _number(value)
    if number is None:
        return f"{name} must be a number, got {_show(value)}"
    if not -bound <= number <= bound:
        return f"{name} {_show(value)} is out of range -{bound}..{bound}"
    return None


def check_device(obj: object) -> str | None:
    """Why ``obj`` is not a valid device record, or None if it is.

    Follows ``schemas/device.schema.json``: the required fields, the device_id pattern,
    the kind enum, non-empty district and site, lat/lon in range; ``parent`` and
    ``heartbeat_s`` may be absent or null. Additionally a device may not be its own
    parent, since consumers walk parent chains. Unknown fields are allowed (additive
    contract changes). All problems are reported, joined by ``; ``, on one line.
    """
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {json_type(obj)}"
    problems: list[str] = []
    missing = [name for name in REQUIRED_FIELDS if name not in obj]
    if missing:
        problems.append("missing required field(s): " + ", ".join(missing))

    device_id = obj.get("device_id")
    if "device_id" in obj and not is_device_id(device_id):
        problems.append(f"device_id {_show(device_id)} does not match {DEVICE_ID_PATTERN}")

    if "kind" in obj and obj["kind"] not in KINDS:
        problems.append(f"kind {_show(obj['kind'])} is not one of {', '.join(KINDS)}")

    for name in ("district", "site"):
        value = obj.get(name)
        if name in obj and not (isinstance(value, str) and value):
            problems.append(f"{name} must be a non-empty string, got {_show(value)}")

    for name, bound in (("lat", 90), ("lon", 180)):
        if name in obj:
            problem = _check_coordinate(name, obj[name], bound)
            if problem:
                problems.append(problem)

    parent = obj.get("parent")
    if parent is not None:
        if not is_device_id(parent):
            problems.append(f"parent {_show(parent)} does not match {DEVICE_ID_PATTERN}")
        elif parent == device_id:
            problems.append(f"parent {_show(parent)} is the device itself")

    heartbeat = obj.get("heartbeat_s")
    if heartbeat is not None:
        number = _number(heartbeat)
        if number is None:
            problems.append(f"heartbeat_s must be a number, got {_show(heartbeat)}")
        elif number <= 0:
            problems.append(f"heartbeat_s must be positive, got {_show(heartbeat)}")

    return "; ".join(problems) or None


# --------------------------------------------------------------------------- parsing


class _Collector:
    """Accepts parsed objects from either format: tombstones, checks, normalisation and
    duplicate detection are the same for JSON Lines and CSV."""

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []
        self.errors: list[str] = []
        self._first_line: dict[str, int] = {}

    def error(self, line: int, text: str) -> None:
        self.errors.append(f"line {line}: {text}")

    def accept(self, line: int, obj: object) -> None:
        if isinstance(obj, dict) and "deleted" in obj:
            deleted = obj["deleted"]
            if deleted is True:
                self._tombstone(line, obj.get("device_id"))
                return
            if deleted is not False:
                self.error(line, f"deleted must be true or false, got {_show(deleted)}")
                return
            # ``"deleted": false`` is an ordinary record; the flag is not device data.
            obj = {key: value for key, value in obj.items() if key != "deleted"}
        problem = check_device(obj)
        if problem is not None or not isinstance(obj, dict):
            self.error(line, problem or "not a device record")
            return
        self._add(line, _normalise(obj))

    def _tombstone(self, line: int, device_id: object) -> None:
        if not is_device_id(device_id):
            self.error(
                line, f"tombstone device_id {_show(device_id)} does not match {DEVICE_ID_PATTERN}"
            )
            return
        # Other fields of a tombstone are ignored: the loader publishes a null value.
        self._add(line, {"device_id": device_id, "deleted": True})

    def _add(self, line: int, record: dict[str, object]) -> None:
        device_id = str(record["device_id"])
        if device_id in self._first_line:
            # Publishing both would make the later one win silently on the compacted
            # topic; a registry file listing a device twice is almost always a mistake.
            first = self._first_line[device_id]
            self.error(line, f"duplicate device_id {device_id!r} (first on line {first})")
            return
        try:
            # Lone surrogates (from \ud800 escapes) parse but cannot be published as UTF-8.
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, ValueError, RecursionError):
            self.error(line, "contains text that cannot be encoded as UTF-8")
            return
        self._first_line[device_id] = line
        self.records.append(record)


def _normalise(obj: dict[str, object]) -> dict[str, object]:
    """Contract fields first, coordinates as floats, null optionals dropped (they mean the
    same as absent, and CSV cannot tell the two apart), then additive fields as given."""
    record: dict[str, object] = {}
    for name in FIELDS:
        value = obj.get(name)
        if value is None:
            continue
        if name in ("lat", "lon") and isinstance(value, int | float):
            value = float(value)
        record[name] = value
    for key, value in obj.items():
        if key not in FIELDS:
            record[key] = value
    return record


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads would keep the last of two equal keys without a word.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _parse_jsonl(data: bytes, out: _Collector) -> None:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    # Split the bytes, not decoded text: one bad line must not cost the others, and
    # str.splitlines would also split at U+2028 inside JSON strings.
    for line, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.error(
                line, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            )
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            out.error(line, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except (ValueError, RecursionError) as exc:
            # Duplicate keys, NaN/Infinity, integers too long to convert, deep nesting.
            out.error(line, f"invalid JSON: {_message(exc)}")
            continue
        out.accept(line, obj)


def _message(exc: BaseException) -> str:
    # One error per line: keep only the first line of an exception's text.
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _csv_number(cell: str) -> object:
    # A strict pattern rather than float(): float() also takes "nan", "inf" and "1_000".
    # Anything else stays text so check_device reports it with the cell's content.
    if not _NUMBER_RE.fullmatch(cell):
        return cell
    if re.fullmatch(r"[+-]?\d+", cell) and len(cell) < 20:
        return int(cell)
    value = float(cell)
    return value if math.isfinite(value) else cell


def _csv_object(cells: dict[str, str]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for name, cell in cells.items():
        if name in ("lat", "lon", "heartbeat_s"):
            obj[name] = _csv_number(cell)
        elif name == "deleted":
            lowered = cell.lower()
            obj[name] = True if lowered in _TRUE else False if lowered in _FALSE else cell
        else:
            obj[name] = cell
    return obj


def _check_header(header: list[str]) -> str | None:
    named = [name for name in header if name]
    duplicates = sorted({name for name in named if named.count(name) > 1})
    if duplicates:
        return "duplicate column(s) in header: " + ", ".join(duplicates)
    # A file of tombstones only needs device_id and deleted.
    needed = ("device_id",) if "deleted" in named else REQUIRED_FIELDS
    missing = [name for name in needed if name not in named]
    if missing:
        hint = " (the file must be comma-separated)" if ";" in "".join(header) else ""
        return "header lacks column(s): " + ", ".join(missing) + hint
    return None


def _parse_csv(data: bytes, out: _Collector) -> None:
    if data.startswith(codecs.BOM_UTF8):  # spreadsheet exports often start with one
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A quoted cell may span lines, so lines cannot be decoded one by one: reject all.
        line = data.count(b"\n", 0, exc.start) + 1
        out.error(line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); file not read")
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    end = 0
    try:
        for row in reader:
            # line_num counts physical lines, so a row starts one after the previous end.
            line, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                problem = _check_header(header)
                if problem is not None:
                    out.error(line, problem)
                    return
                continue
            extra = [cell for cell in row[len(header) :] if cell.strip()]
            if extra:
                out.error(line, f"{len(row)} cells but the header has {len(header)} columns")
                continue
            # Empty cells mean absent; unnamed columns (a trailing comma) are ignored.
            cells = {name: cell.strip() for name, cell in zip(header, row, strict=False) if name}
            out.accept(line, _csv_object({k: v for k, v in cells.items() if v}))
    except csv.Error as exc:
        out.error(end + 1, f"unreadable CSV ({_message(exc)}); rest of file not read")


def parse_device_file(data: bytes, fmt: str) -> tuple[list[dict[str, object]], list[str]]:
    """Device records and tombstones from a registry file, and one error line per rejected
    record (``line 7: kind 'tractor' is not one of ...``).

    ``fmt`` is ``jsonl`` (one JSON object per line; ``{"device_id": "x", "deleted": true}``
    is a tombstone) or ``csv`` (a header row of field names; empty cells mean absent;
    lat, lon and heartbeat_s are converted to numbers; an optional ``deleted`` column with
    true/1/yes marks tombstones). Tombstones are returned as
    ``{"device_id": "x", "deleted": True}``. Bad input never raises: the good records are
    kept and every bad one is reported. An unknown ``fmt`` is a programming error and
    raises ValueError.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = _Collector()
    if fmt == "jsonl":
        _parse_jsonl(data, out)
    else:
        _parse_csv(data, out)
    logger.debug(
        "parsed %s registry: %d records, %d errors", fmt, len(out.records), len(out.errors)
    )
    return out.records, out.errors


def to_jsonl(devices: Iterable[Mapping[str, object]]) -> bytes:
    """Records as JSON Lines, UTF-8, readable umlauts (``Süd``), one record per line."""
    lines = [
        json.dumps(dict(device), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        for device in devices
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def format_from_path(path: str) -> str:
    """``csv`` for a ``.csv`` file (any case), otherwise ``jsonl``."""
    return "csv" if path.lower().endswith(".csv") else "jsonl"
