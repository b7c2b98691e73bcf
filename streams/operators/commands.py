"""``citystreams alerts ack`` and ``unack``, and the acknowledgements in a terminal.

Whether an id is an open episode is what the forwarder's state topic says (it holds
every episode whose events the forwarder committed, resolved ones as closed markers):
the same view Alertmanager is kept equal to.
"""

from __future__ import annotations

import asyncio
from typing import TextIO

import orjson

from streams.operators.acks import (
    ACK,
    DEFAULT_UNTIL_MS,
    UNACK,
    ack_record,
    describe_ack,
    silence_for,
)
from streams.operators.alertmanager import Alertmanager, AlertmanagerError
from streams.operators.episodes import Tracked
from streams.operators.forwarder import load_book, now_ms
from streams.settings import Settings
from streams.tools.publish import follow, publish
from streams.topics import ALERT_ACKS, topic_name


class AckError(Exception):
    """One line for the user, and the exit code (2: the id; 1: Alertmanager)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def open_episode(settings: Settings, alert_id: str) -> Tracked:
    book = await load_book(settings)
    tracked = book.get(alert_id)
    if tracked is None:
        raise AckError(
            f"no alert episode {alert_id!r} (unknown id; `citystreams alerts tail` shows ids)", 2
        )
    if not tracked.firing or tracked.closed_at is not None:
        raise AckError(f"alert episode {alert_id} is already resolved", 2)
    return tracked


def _managers(settings: Settings) -> list[Alertmanager]:
    urls = settings.alertmanager_urls
    if not urls:
        raise AckError("CITYSTREAMS_ALERTMANAGER_URL names no Alertmanager", 2)
    return [Alertmanager(url, settings.alertmanager_timeout_s) for url in urls]


async def _record(settings: Settings, record: dict[str, object]) -> None:
    topic = topic_name(settings.topic_prefix, ALERT_ACKS)
    await publish(settings, topic, [(str(record["alert_id"]).encode(), orjson.dumps(record))])


async def acknowledge(
    settings: Settings,
    alert_id: str,
    *,
    by: str,
    comment: str = "",
    until_ms: int | None = None,
    out: TextIO,
) -> None:
    """Silence the episode in every Alertmanager and record the acknowledgement.
    Nothing is recorded unless at least one Alertmanager took the silence."""
    tracked = await open_episode(settings, alert_id)
    managers = _managers(settings)
    now = now_ms()
    ends = now + (until_ms if until_ms is not None else DEFAULT_UNTIL_MS)
    silence = silence_for(alert_id, by=by, comment=comment, now_ms=now, until_ms=ends)
    made, failed = [], []
    for manager in managers:
        try:
            made.append(f"{await manager.post_silence(silence)} on {manager.url}")
        except AlertmanagerError as exc:
            failed.append(str(exc))
    if not made:
        raise AckError(f"not acknowledged: {'; '.join(failed)}", 1)
    record = ack_record(
        ACK,
        tracked.record,
        by=by,
        at=now,
        comment=comment,
        until=ends if until_ms is not None else None,
        silences=len(made),
    )
    await _record(settings, record)
    print(describe_ack(record), file=out)
    print(f"silence {', '.join(made)}", file=out)
    if failed:
        raise AckError(f"acknowledged, but no silence in: {'; '.join(failed)} (run again)", 1)


async def unacknowledge(settings: Settings, alert_id: str, *, by: str, out: TextIO) -> None:
    """Expire the episode's silences in every Alertmanager and record that."""
    tracked = await open_episode(settings, alert_id)
    expired, failed = 0, []
    for manager in _managers(settings):
        try:
            for silence in await manager.silences_for("alert_id", alert_id):
                await manager.expire_silence(str(silence["id"]))
                expired += 1
        except AlertmanagerError as exc:
            failed.append(str(exc))
    record = ack_record(UNACK, tracked.record, by=by, at=now_ms())
    await _record(settings, record)
    print(describe_ack(record) + f"; {expired} silence(s) expired", file=out)
    if failed:
        raise AckError(f"unacknowledged, but silences remain in: {'; '.join(failed)}", 1)


async def show_acks(
    settings: Settings, out: TextIO, *, prefix: str = "", from_beginning: bool = False
) -> None:
    """Follow ``alerts.acks``: a line per acknowledgement, as it happens."""
    topic = topic_name(settings.topic_prefix, ALERT_ACKS)
    async for value in follow(settings, topic, from_beginning):
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            print(prefix + describe_ack(record), file=out, flush=True)


async def with_acks(
    settings: Settings, out: TextIO, main: asyncio.Future[None], **kwargs: object
) -> None:
    """Run ``main`` (an alerts view) with the acknowledgements beside it, until it ends."""
    acks = asyncio.ensure_future(show_acks(settings, out, **kwargs))  # type: ignore[arg-type]
    try:
        await main
    finally:
        acks.cancel()
        await asyncio.gather(acks, return_exceptions=True)
