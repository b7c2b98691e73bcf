"""The faust application: configuration and the worker entry point.

The pipeline's agents are wired onto the app by :func:`streams.runtime.wiring.build`; this
module only knows how to configure faust safely and run one worker.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import faust

from streams.kafka.admin import ensure_topics
from streams.kafka.clients import describe, faust_credentials
from streams.outputs import OUTPUT_BATCH_BYTES, OUTPUT_REQUEST_BYTES
from streams.runtime.internals import read_committed
from streams.settings import Settings
from streams.topics import OPERATOR_TOPICS, topic_specs

log = logging.getLogger(__name__)


GC_THRESHOLDS = (10_000, 10, 10)  # young, middle, old (Python's: 700, 10, 10)


def create_app(settings: Settings) -> faust.App:
    """A faust app configured for citystreams; it has no agents yet."""
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    read_committed()
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.broker}",
        # TLS and SCRAM for faust's consumer and producer (None: PLAINTEXT).
        broker_credentials=faust_credentials(settings),
        # The pipeline has no faust tables (streams/state.py keeps its own changelogs).
        store="memory://",
        datadir=str(settings.worker_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        # Our agents decode bytes themselves (orjson, dead-lettering what fails):
        # faust's codecs would commit a bad message's offset and raise into the agent.
        key_serializer="raw",
        value_serializer="raw",
        # faust's web server binds 0.0.0.0 and serves table contents: we serve
        # /metrics ourselves on the configured (loopback) address instead.
        web_enabled=False,
        web_bind=settings.bind,
        web_host=settings.bind,
        # A crashed worker's partitions move after 10 s, not faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type=None,
        producer_linger=0.005,
        # The pipeline hands its outputs over in batches (streams/outputs.py): room for
        # a few thousand records per partition and flush, within message.max.bytes.
        producer_max_batch_size=OUTPUT_BATCH_BYTES,
        producer_max_request_size=OUTPUT_REQUEST_BYTES,
    )


def run_worker(
    settings: Settings,
    build: Callable[[faust.App, Settings], Callable[[], Awaitable[None]] | None],
    loglevel: str | None = None,
) -> NoReturn:
    """Create the topics, build the app and run one worker until it is stopped."""
    log.info("Kafka: %s", describe(settings))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Source topics must exist before the consumer joins the group: faust ignores a
    # missing topic at assignment and does not notice it later.
    specs = topic_specs(settings.topic_prefix, settings.partitions, settings.app_id)
    mine = [s for s in specs if s.base not in OPERATOR_TOPICS]
    loop.run_until_complete(ensure_topics(settings, mine))
    app = create_app(settings)
    prepare = build(app, settings)
    if prepare is not None:
        loop.run_until_complete(prepare())
    # Python's cyclic GC runs a young collection every 700 container allocations; per
    # reading the pipeline allocates a few dozen (parsed JSON, windows, records), and
    # its state is millions of long-lived containers. Measured with 10,000 devices:
    # 15% less CPU per reading with these thresholds (14% with gateway batches), and
    # ~20% with 100,000 devices. freeze() leaves what start-up made (modules, the
    # registry) out of every collection.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=(loglevel or settings.log_level).upper(),
        quiet=True,
        override_logging=False,
    )
    worker.execute_from_commandline()  # ends the process with SystemExit
