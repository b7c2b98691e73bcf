"""Topic administration through the Kafka admin API (aiokafka)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from streams.kafka.clients import client_kwargs
from streams.settings import Settings
from streams.topics import COPARTITIONED, TopicSpec, topic_specs

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
    wanted = (
        specs
        if specs is not None
        else topic_specs(settings.topic_prefix, settings.partitions, settings.app_id)
    )
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (TimeoutError, KafkaConnectionError) as exc:
        await admin.close()
        # aiokafka logs the cause (refused TLS handshake or SCRAM login) and raises a
        # bare connection error: name the settings that decide both.
        raise AdminError(
            f"Kafka at {settings.broker} did not answer ({exc.__class__.__name__}): start it "
            "with `citystreams kafka start` or set CITYSTREAMS_BROKER; with "
            f"CITYSTREAMS_SECURITY_PROTOCOL={settings.security_protocol}, check the "
            "CITYSTREAMS_SSL_* and CITYSTREAMS_SASL_* settings (the log above says why)."
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
                elif code == TopicAuthorizationFailedError.errno:
                    # A topic this principal may not see looks missing; creating it is
                    # refused whether or not it exists (Kafka does not say which).
                    raise AdminError(
                        f"not allowed to create topic {name} as "
                        f"{settings.sasl_username or 'this client'}: an admin creates the "
                        "topics (`citystreams topics create`), and deploy/kafka/ACLS.md "
                        "lists what each principal may see"
                    )
                elif code != TopicAlreadyExistsError.errno:  # another worker won the race
                    raise AdminError(f"creating topic {name} failed: error {code} {rest}")
        if created:
            log.info("created topics: %s", ", ".join(created))
        await _check_partitions(admin, settings, wanted)
        return created
    finally:
        await admin.close()


async def _check_partitions(
    admin: AIOKafkaAdminClient, settings: Settings, wanted: list[TopicSpec]
) -> None:
    """Input and state topics must have the configured partition count: partition p of
    each holds the same devices (streams/stages/routing.py), and one worker owns them all."""
    counts = {
        s.name: s.partitions
        for s in wanted
        if (s.base or s.name.removeprefix(settings.topic_prefix)) in COPARTITIONED
    }
    if not counts:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while counts:
        for topic in await admin.describe_topics(list(counts)):
            if topic.get("error_code", 0) != 0:
                continue  # just created: the broker's metadata may lag a moment
            have, want = len(topic.get("partitions") or []), counts.pop(topic["topic"])
            if have != want:
                raise AdminError(
                    f"topic {topic['topic']} has {have} partitions but {want} are configured "
                    f"(CITYSTREAMS_PARTITIONS): use a new CITYSTREAMS_TOPIC_PREFIX, or set "
                    f"CITYSTREAMS_PARTITIONS={have} if that is the intended count"
                )
        if counts and loop.time() > deadline:
            raise AdminError(f"topics not visible on {settings.broker}: {', '.join(counts)}")
        if counts:
            await asyncio.sleep(0.2)
