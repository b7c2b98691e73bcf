"""The simulated city's fleet: Duisburg's districts, schools, port and plants, generated
as device records (a seeded, reproducible demo registry)."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

logger = logging.getLogger(__name__)

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
