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
            "key": None if key is None else key.decode("utf-8", "replace"),
            "payload_b64": base64.b64encode(reject.payload).decode("ascii"),
            "at": at_ms,
            "index": reject.position,
        }
    )
