"""Dead-letter records: a rejected reading as data, with everything needed to re-drive it."""

from __future__ import annotations

import base64

import orjson

from streams.validate import Reject


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
    return orjson.dumps(
        {
            "reason": reject.reason,
            "detail": reject.detail,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": _key_text(key),
            "payload_b64": base64.b64encode(reject.payload).decode("ascii"),
            "at": at_ms,
            "index": reject.position,
        }
    )


def _key_text(key: bytes | None) -> str | None:
    """The original key as text; null when there was none or it is not UTF-8 (the
    payload is still there to re-drive the reading)."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None
