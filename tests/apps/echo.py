"""A worker whose one agent copies `echo.in` to `echo.out`, upper-cased.

It runs through the project's own app factory and worker entry point, so a test of
it proves that a citystreams worker consumes from and produces to the real broker.
"""

from __future__ import annotations

import os

import faust

from streams.runtime.app import run_worker
from streams.settings import Settings

ECHO_IN = "echo.in"
ECHO_OUT = "echo.out"


def build(app: faust.App, settings: Settings) -> None:
    source = app.topic(settings.topic_prefix + ECHO_IN)
    sink = app.topic(settings.topic_prefix + ECHO_OUT)

    @app.agent(source)
    async def shout(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            # The pid says which worker handled it: tests check the partitions are shared.
            value = bytes(event.value).upper() + b"|" + str(os.getpid()).encode()
            await sink.send(key=event.key, value=value)


if __name__ == "__main__":
    raise SystemExit(run_worker(Settings.from_env(), build))
