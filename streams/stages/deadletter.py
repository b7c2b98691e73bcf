"""Dead-letter records: a rejected reading as data, with everything needed to re-drive it."""

from __future__ import annotations

import base64
from typing import Any, Final

import orjson

from streams.stages.validate import Reject

# A rejected message can be as large as the broker accepts (about 1 MB); its base64 is a
# third larger and would not fit a Kafka record itself, so the dead letter would fail
# and hold up the partition. Longer payloads keep their first bytes and their length;
# topic, partition and offset still find the whole original.
PAYLOAD_MAX: Final = 65_536


def deadletter_record(
    reject: Reject,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    at_ms: int,
) -> bytes:
    """The contract's dead-letter record, serialised. ``index`` is an additive field:
    the reading's position in a gateway batch (null for a whole message)."""
    payload = reject.payload
    record: dict[str, Any] = {
        "reason": reject.reason,
        "detail": reject.detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _key_text(key),
        "payload_b64": base64.b64encode(payload[:PAYLOAD_MAX]).decode("ascii"),
        "at": at_ms,
        "index": reject.position,
    }
    if len(payload) > PAYLOAD_MAX:
        record["payload_bytes"] = len(payload)
    return orjson.dumps(record)


def _key_text(key: bytes | None) -> str | None:
    """The original key as text; null when there was none or it is not UTF-8 (the
    payload is still there to re-drive the reading)."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None
