"""Acknowledgements, pure: the record on ``alerts.acks``, the silence that goes with it,
and how a terminal shows them.

An acknowledgement is two things. A record on the compacted topic ``alerts.acks``
(keyed by alert_id; the newest record per episode is its acknowledgement state, so a
downstream service reads the topic whole and knows who acknowledged what), and an
Alertmanager silence whose one matcher is ``alert_id="<id>"``: notifications of that
episode stop, through escalations, until it resolves (the forwarder then expires the
silence) or ``--until`` passes. The ``alerts`` topic itself is left as the contract
defines it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from streams.operators.episodes import iso

ACK = "ack"
UNACK = "unack"
# Without --until a silence lasts until the episode resolves (the forwarder expires
# it then); this bounds it should the forwarder never see the resolution.
DEFAULT_UNTIL_MS = 30 * 24 * 3600 * 1000
CREATED_BY = "citystreams"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_until(text: str) -> int:
    """``"2h"``, ``"1h30m"``, ``"3d"`` -> milliseconds; ValueError otherwise."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"--until {text!r}: expected a duration like 30m, 2h, 1h30m or 3d")
    total = sum(float(n) * _UNIT_MS[u] for n, u in parts)
    if total <= 0:
        raise ValueError(f"--until {text!r}: must be longer than 0")
    return int(total)


def ack_record(
    action: str,
    episode: dict[str, Any],
    *,
    by: str,
    at: int,
    comment: str = "",
    until: int | None = None,
    silences: int = 0,
) -> dict[str, Any]:
    """The value of an ``alerts.acks`` record (schemas/alert-ack.schema.json), carrying
    the episode's identity so that a reader needs nothing else to show it."""
    return {
        "alert_id": episode["alert_id"],
        "action": action,
        "by": by,
        "comment": comment,
        "at": at,
        "until": until,
        "rule": episode["rule"],
        "severity": episode["severity"],
        "device_id": episode.get("device_id"),
        "district": episode.get("district"),
        "site": episode.get("site"),
        "silences": silences,
    }


def silence_for(
    alert_id: str, *, by: str, comment: str, now_ms: int, until_ms: int
) -> dict[str, Any]:
    """The Alertmanager silence of one episode (API v2's ``postableSilence``)."""
    return {
        "matchers": [{"name": "alert_id", "value": alert_id, "isRegex": False, "isEqual": True}],
        "startsAt": iso(now_ms),
        "endsAt": iso(until_ms),
        "createdBy": by,
        "comment": f"acknowledged by {by} with citystreams" + (f": {comment}" if comment else ""),
    }


def describe_ack(record: dict[str, Any]) -> str:
    """One acknowledgement as a terminal line (``alerts tail``, ``up``)."""
    at = record.get("at")
    stamp = (
        datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(at, int)
        else "-" * 19
    )
    action = "ACKED" if record.get("action") == ACK else "UNACKED"
    line = (
        f"{stamp}  {action:8}  {record.get('severity', '?'):8}  {record.get('rule', '?'):28}  "
        f"{record.get('device_id', '?')}: by {record.get('by', '?')}"
    )
    until = record.get("until")
    if record.get("action") == ACK and isinstance(until, int):
        line += f" until {datetime.fromtimestamp(until / 1000, UTC):%Y-%m-%d %H:%M} UTC"
    if record.get("comment"):
        line += f" ({record['comment']})"
    return line + f"  ({record.get('alert_id', '?')})"
