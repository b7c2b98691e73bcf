"""Topic administration through the Kafka admin API (aiokafka)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.settings import Settings
from streams.topics import TopicSpec, topic_specs

log = logging.getLogger(__name__)


class AdminError(RuntimeError):
    """The broker could not be reached or refused a request; the text says which."""


async def ensure_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Idempotent: existing topics are left as they are (their partition count is not
    changed, since that would move keys between partitions).
    """
    wanted = specs if specs is not None else topic_specs(settings.topic_prefix, settings.partitions)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.broker, request_timeout_ms=int(timeout * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (TimeoutError, KafkaConnectionError) as exc:
        await admin.close()
        raise AdminError(
            f"Kafka at {settings.broker} did not answer ({exc.__class__.__name__}): start it "
            "with `citystreams kafka start` or set CITYSTREAMS_BROKER."
        ) from None
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in wanted if s.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        s.name,
                        num_partitions=s.partitions,
                        replication_factor=settings.replication,
                        topic_configs=s.config,
                    )
                    for s in missing
                ]
            )
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code != TopicAlreadyExistsError.errno:  # another worker won the race
                    raise AdminError(f"creating topic {name} failed: error {code} {rest}")
        if created:
            log.info("created topics: %s", ", ".join(created))
        return created
    finally:
        await admin.close()
