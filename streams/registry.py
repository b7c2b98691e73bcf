"""The device registry: a generated demo fleet, and parsing and checking of registry files.

Everything here is a pure function over plain dicts in the contract's device record format
(``shared/contract.md``, ``schemas/device.schema.json``), so the registry command, the
simulator and the pipeline can share one notion of a valid device without importing Kafka.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from streams.validate import is_device_id, json_type

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

# Expected reporting interval per kind in the generated fleet.
HEARTBEAT_S: dict[str, int] = {
    "classroom_air": 60,
    "wlan_ap": 30,
    "cell_5g": 60,
    "air_quality": 60,
    "traffic": 30,
    "reefer": 120,
    "machine": 10,
}

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


@dataclass(frozen=True, slots=True)
class District:
    """A Duisburg Stadtbezirk: its official name (the record's ``district``), an ASCII
    slug for device ids, and an approximate centre."""

    name: str
    slug: str
    lat: float
    lon: float


DISTRICTS: tuple[District, ...] = (
    District("Walsum", "walsum", 51.5290, 6.7330),
    District("Hamborn", "hamborn", 51.4930, 6.7700),
    District("Meiderich/Beeck", "meiderich", 51.4700, 6.7900),
    District("Homberg/Ruhrort/Baerl", "homberg", 51.4600, 6.7000),
    District("Mitte", "mitte", 51.4330, 6.7700),
    District("Rheinhausen", "rheinhausen", 51.4000, 6.7100),
    District("Süd", "sued", 51.3600, 6.7600),
)
DISTRICT_NAMES: tuple[str, ...] = tuple(d.name for d in DISTRICTS)


# --------------------------------------------------------------------------- fleet


@dataclass(frozen=True, slots=True)
class _Plan:
    """Counts of sites per district at scale 1.0, roughly after the size of the district."""

    grundschulen: int
    gymnasien: int
    gesamtschulen: int
    cells: int
    aq_stations: int
    junctions: int


_PLANS: dict[str, _Plan] = {
    "walsum": _Plan(7, 1, 1, 22, 2, 10),
    "hamborn": _Plan(12, 3, 2, 32, 3, 16),
    "meiderich": _Plan(11, 2, 2, 28, 3, 14),
    "homberg": _Plan(9, 2, 1, 24, 2, 12),
    "mitte": _Plan(14, 5, 2, 48, 4, 24),
    "rheinhausen": _Plan(10, 2, 2, 28, 2, 14),
    "sued": _Plan(10, 3, 1, 30, 3, 14),
}


@dataclass(frozen=True, slots=True)
class _School:
    prefix: str  # site id prefix: gs Grundschule, gy Gymnasium, ge Gesamtschule
    rooms: tuple[int, int]  # instrumented classrooms, inclusive range
    aps: tuple[int, int]  # WLAN access points, inclusive range


_GRUNDSCHULE = _School("gs", (6, 12), (1, 2))
_GYMNASIUM = _School("gy", (14, 26), (2, 3))
_GESAMTSCHULE = _School("ge", (16, 28), (2, 3))


@dataclass(frozen=True, slots=True)
class _Port:
    slug: str  # district slug
    site: str
    lat: float
    lon: float
    reefers: int
    cranes: int


# Ruhrort's harbour (east bank, in Homberg/Ruhrort/Baerl) and logport I on the former
# Krupp steelworks site in Rheinhausen.
_PORTS: tuple[_Port, ...] = (
    _Port("homberg", "ruhrort-hafen", 51.4520, 6.7400, 70, 5),
    _Port("rheinhausen", "logport1", 51.3920, 6.7120, 180, 8),
)


@dataclass(frozen=True, slots=True)
class _Plant:
    slug: str
    number: int
    lat: float
    lon: float
    machines: int


# Steel and heavy industry along the Rhine: Bruckhausen (Hamborn), Walsum, Hüttenheim (Süd).
_PLANTS: tuple[_Plant, ...] = (
    _Plant("walsum", 1, 51.5270, 6.7120, 35),
    _Plant("hamborn", 1, 51.4970, 6.7380, 80),
    _Plant("sued", 1, 51.3570, 6.7280, 60),
)

_KM_PER_DEGREE_LAT = 111.32


def _jitter(rng: random.Random, lat: float, lon: float, radius_km: float) -> tuple[float, float]:
    # sqrt of a uniform draw spreads points evenly over the disc instead of piling them up
    # in the centre.
    distance = radius_km * math.sqrt(rng.random())
    angle = rng.uniform(0.0, 2.0 * math.pi)
    dlat = distance * math.cos(angle) / _KM_PER_DEGREE_LAT
    dlon = distance * math.sin(angle) / (_KM_PER_DEGREE_LAT * math.cos(math.radians(lat)))
    return round(lat + dlat, 5), round(lon + dlon, 5)


def _scaled(count: int, scale: float, minimum: int) -> int:
    return max(minimum, round(count * scale))


def _device(
    device_id: str,
    kind: str,
    district: District,
    site: str,
    position: tuple[float, float],
    parent: str | None = None,
) -> dict[str, object]:
    record: dict[str, object] = {
        "device_id": device_id,
        "kind": kind,
        "district": district.name,
        "site": site,
        "lat": position[0],
        "lon": position[1],
    }
    if parent is not None:
        record["parent"] = parent
    record["heartbeat_s"] = HEARTBEAT_S[kind]
    return record


class _Numbering:
    """City-wide running numbers per site type, so a site id such as ``gs017`` is unique
    across districts and can be used on its own in alerts."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def take(self, prefix: str) -> int:
        number = self._next.get(prefix, 1)
        self._next[prefix] = number + 1
        return number


def _school(
    rng: random.Random,
    district: District,
    school: _School,
    number: int,
    room_scale: float,
) -> list[dict[str, object]]:
    site = f"{school.prefix}{number:03d}"
    centre = _jitter(rng, district.lat, district.lon, 2.0)
    rooms = _scaled(rng.randint(*school.rooms), room_scale, 1)
    # A school never has more access points than instrumented rooms: an AP without
    # sensors behind it would be pointless in a scaled-down fleet.
    aps = min(rng.randint(*school.aps), rooms)
    devices: list[dict[str, object]] = []
    ap_ids: list[str] = []
    for index in range(1, aps + 1):
        ap_id = f"dui-{district.slug}-{site}-ap{index}"
        ap_ids.append(ap_id)
        devices.append(_device(ap_id, "wlan_ap", district, site, _jitter(rng, *centre, 0.05)))
    # Room numbers are sparse (not every room has a sensor yet), as in a real rollout.
    room_numbers = sorted(rng.sample(range(1, max(40, 2 * rooms) + 1), rooms))
    for room in room_numbers:
        devices.append(
            _device(
                f"dui-{district.slug}-{site}-r{room}-air",
                "classroom_air",
                district,
                site,
                _jitter(rng, *centre, 0.05),
                parent=rng.choice(ap_ids),
            )
        )
    return devices


def generate_fleet(seed: int = 1, scale: float = 1.0) -> list[dict[str, object]]:
    """A deterministic, realistic fleet of device records for all seven districts.

    ``scale`` multiplies the number of sites (schools, cells, counters, ...) and, below
    1.0, also the rooms per school, so a small scale gives a small fleet; every district
    keeps at least one Grundschule, 5G cell, air-quality station and traffic junction,
    so every kind and district is present at any scale. scale=1.0 gives about 2,300
    devices.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    rng = random.Random(seed)
    numbering = _Numbering()
    # Above 1.0 a bigger city has more schools, not classrooms of absurd size.
    room_scale = min(scale, 1.0)
    devices: list[dict[str, object]] = []
    for district in DISTRICTS:
        plan = _PLANS[district.slug]
        slug = district.slug
        for school, count, minimum in (
            (_GRUNDSCHULE, plan.grundschulen, 1),
            (_GYMNASIUM, plan.gymnasien, 0),
            (_GESAMTSCHULE, plan.gesamtschulen, 0),
        ):
            for _ in range(_scaled(count, scale, minimum)):
                number = numbering.take(school.prefix)
                devices.extend(_school(rng, district, school, number, room_scale))

        for _ in range(_scaled(plan.cells, scale, 1)):
            number = numbering.take("cell")
            devices.append(
                _device(
                    f"dui-{slug}-cell-5g-{number:04d}",
                    "cell_5g",
                    district,
                    f"cell{number:04d}",
                    _jitter(rng, district.lat, district.lon, 3.0),
                )
            )

        for index in range(1, _scaled(plan.aq_stations, scale, 1) + 1):
            devices.append(
                _device(
                    f"dui-{slug}-aq{index}",
                    "air_quality",
                    district,
                    f"aq-{slug}-{index}",
                    _jitter(rng, district.lat, district.lon, 2.5),
                )
            )

        for _ in range(_scaled(plan.junctions, scale, 1)):
            number = numbering.take("jct")
            site = f"jct{number:03d}"
            position = _jitter(rng, district.lat, district.lon, 2.5)
            # One counter per approach that is instrumented: usually one, sometimes two.
            for counter in range(1, rng.choice((1, 1, 2)) + 1):
                devices.append(
                    _device(
                        f"dui-{slug}-{site}-tc{counter}",
                        "traffic",
                        district,
                        site,
                        _jitter(rng, *position, 0.03),
                    )
                )

        for port in (p for p in _PORTS if p.slug == slug):
            # Reefers report over the terminal's own cellular link, hence no parent.
            for index in range(1, _scaled(port.reefers, scale, 1) + 1):
                devices.append(
                    _device(
                        f"dui-{slug}-{port.site}-reefer-{index:04d}",
                        "reefer",
                        district,
                        port.site,
                        _jitter(rng, port.lat, port.lon, 0.5),
                    )
                )
            for index in range(1, _scaled(port.cranes, scale, 1) + 1):
                devices.append(
                    _device(
                        f"dui-{slug}-{port.site}-crane{index:02d}",
                        "machine",
                        district,
                        port.site,
                        _jitter(rng, port.lat, port.lon, 0.5),
                    )
                )

        for plant in (p for p in _PLANTS if p.slug == slug):
            site = f"ind-{slug}-{plant.number}"
            for index in range(1, _scaled(plant.machines, scale, 1) + 1):
                devices.append(
                    _device(
                        f"dui-{slug}-ind{plant.number}-m{index:03d}",
                        "machine",
                        district,
                        site,
                        _jitter(rng, plant.lat, plant.lon, 0.7),
                    )
                )

    logger.debug("generated %d devices (seed=%d, scale=%s)", len(devices), seed, scale)
    return devices


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


def parse_registry(data: bytes, fmt: str) -> tuple[list[dict[str, object]], list[str]]:
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
