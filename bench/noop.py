"""B1: a faust agent that does nothing, on the same topic (faust's own cost per event).

``python -m bench.noop BROKER GROUP TOPIC``; faust commits as it acks; the bench stops
it once the group's committed offsets reach the end of the topic."""

from __future__ import annotations

import sys
import tempfile

import faust

broker, group, topic = sys.argv[1:4]
app = faust.App(
    group,
    broker=f"kafka://{broker}",
    store="memory://",
    datadir=tempfile.mkdtemp(prefix="bench-noop-"),
    web_enabled=False,
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    broker_commit_every=1000,
    broker_commit_interval=0.5,
)
source = app.topic(topic)


@app.agent(source)
async def nothing(stream: faust.StreamT[bytes]) -> None:
    async for _ in stream:
        pass


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
