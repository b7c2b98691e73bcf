"""`citystreams`: the command line.

Each subcommand is a small function taking the parsed arguments and the settings;
errors a user can fix are printed as one line (no traceback) and exit with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence

import orjson

from streams import __version__
from streams.admin import AdminError, ensure_topics
from streams.localkafka import KafkaError, LocalKafka
from streams.rules import RulesError
from streams.settings import Settings, SettingsError, settings_table

log = logging.getLogger("citystreams")

Command = Callable[[argparse.Namespace, Settings], int]


def _kafka(args: argparse.Namespace, settings: Settings) -> int:
    kafka = LocalKafka(settings, port=args.port)
    if args.action == "fetch":
        print(kafka.fetch())
        return 0
    if args.action == "start":
        if not kafka.is_fetched():
            print(
                "Fetching Apache Kafka from Maven Central (once; later starts are offline)...",
                file=sys.stderr,
                flush=True,
            )
        status = kafka.start()
        print(status.bootstrap)
        return 0
    if args.action == "stop":
        stopped = kafka.stop()
        print("stopped" if stopped else "not running")
        return 0
    status = kafka.status()
    if status.running:
        print(f"up (pid {status.pid}) {status.bootstrap}")
        return 0
    print(f"down {status.bootstrap}")
    return 3  # like `systemctl status`: scripts can test for "not running"


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    created = asyncio.run(ensure_topics(settings))
    print(f"created {len(created)} topic(s)" + (": " + ", ".join(created) if created else ""))
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import run_worker
    from streams.pipeline import build

    return run_worker(settings, build)


def _up(args: argparse.Namespace, settings: Settings) -> int:
    """Everything on one machine: the local Kafka, the topics, a worker."""
    from streams.app import run_worker
    from streams.pipeline import build

    kafka = LocalKafka(settings)
    if not kafka.is_fetched():
        print("Fetching Apache Kafka from Maven Central (once)...", file=sys.stderr, flush=True)
    print(f"Kafka: {kafka.start().bootstrap}", file=sys.stderr, flush=True)
    try:
        return run_worker(settings, build)
    finally:
        if not args.keep_kafka:
            kafka.stop()


def _registry(args: argparse.Namespace, settings: Settings) -> int:
    from streams import registry
    from streams.produce import device_messages, publish
    from streams.topics import DEVICES

    if args.action == "generate":
        fleet = registry.generate_fleet(seed=args.seed, scale=args.scale)
        data = registry.to_jsonl(fleet)
        if args.output == "-":
            sys.stdout.buffer.write(data)
        else:
            with open(args.output, "wb") as f:
                f.write(data)
        counts = ", ".join(f"{k} {n}" for k, n in registry.count_by_kind(fleet).items())
        print(f"{len(fleet)} devices ({counts})", file=sys.stderr)
        return 0
    if args.file is None:
        print("citystreams: registry load needs a FILE", file=sys.stderr)
        return 2
    with open(args.file, "rb") as f:
        data = f.read()
    records, errors = registry.parse_registry(data, registry.format_from_path(args.file))
    for error in errors:
        print(f"{args.file}: {error}", file=sys.stderr)
    if errors and not args.skip_invalid:
        print(
            f"citystreams: {len(errors)} invalid record(s), nothing published "
            "(--skip-invalid publishes the valid ones)",
            file=sys.stderr,
        )
        return 1
    asyncio.run(ensure_topics(settings))
    count = asyncio.run(
        publish(settings, settings.topic_prefix + DEVICES, device_messages(records))
    )
    print(f"published {count} device record(s) to {settings.topic_prefix + DEVICES}")
    return 0


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from streams.produce import publish, telemetry_messages
    from streams.topics import TELEMETRY_RAW

    with open(args.file, "rb") as f:
        messages, unkeyed = telemetry_messages(f.read())
    topic = settings.topic_prefix + TELEMETRY_RAW
    asyncio.run(ensure_topics(settings))
    count = asyncio.run(publish(settings, topic, messages))
    note = f" ({unkeyed} without a device_id key)" if unkeyed else ""
    print(f"sent {count} message(s) to {topic}{note}")
    return 0


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    """Alert events as they happen, a line each."""
    from streams.backtest import describe_alert
    from streams.produce import follow
    from streams.topics import ALERTS

    async def tail() -> int:
        shown = 0
        async for value in follow(settings, settings.topic_prefix + ALERTS, args.from_beginning):
            try:
                line = describe_alert(orjson.loads(value))
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
                line = f"(unreadable alert record: {value[:80]!r})"
            print(line, flush=True)
            shown += 1
            if args.count and shown >= args.count:
                return 0
        return 0

    return asyncio.run(tail())


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from streams import registry as reg
    from streams.backtest import backtest, report
    from streams.enrich import Registry
    from streams.produce import device_messages
    from streams.rules import load_rules

    ruleset = load_rules(Path(args.rules) if args.rules else None)
    if args.registry:
        with open(args.registry, "rb") as f:
            data = f.read()
        records, errors = reg.parse_registry(data, reg.format_from_path(args.registry))
        for error in errors:
            print(f"{args.registry}: {error}", file=sys.stderr)
    else:  # the simulated city's fleet
        records = reg.generate_fleet(seed=args.seed)
    devices = Registry()
    for key, value in device_messages(records):
        devices.apply(key, value)
    with open(args.input, "rb") as f:
        result = backtest(ruleset, devices, f)
    print(report(result))
    return 0


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    for name, value in sorted(dataclasses.asdict(settings).items()):
        print(f"{name} = {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citystreams",
        description="Real-time IoT streaming pipeline for a smart city.",
    )
    parser.add_argument("--version", action="version", version=f"citystreams {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = sub.add_parser("kafka", help="run the project's local Apache Kafka (KRaft)")
    kafka.add_argument("action", choices=["start", "stop", "status", "fetch"])
    kafka.add_argument(
        "--port", type=int, default=None, help="listener port (default: CITYSTREAMS_BROKER's)"
    )
    kafka.set_defaults(func=_kafka)

    topics = sub.add_parser("topics", help="manage the contract's topics")
    topics.add_argument("action", choices=["create"])
    topics.set_defaults(func=_topics)

    worker = sub.add_parser("worker", help="run one pipeline worker")
    worker.set_defaults(func=_worker)

    reg = sub.add_parser("registry", help="generate or publish device records")
    reg.add_argument("action", choices=["load", "generate"])
    reg.add_argument("file", nargs="?", help="load: a JSON Lines or CSV file of device records")
    reg.add_argument("--seed", type=int, default=1, help="generate: random seed (default 1)")
    reg.add_argument("--scale", type=float, default=1.0, help="generate: fleet size factor")
    reg.add_argument("-o", "--output", default="-", help="generate: output file (default stdout)")
    reg.add_argument(
        "--skip-invalid", action="store_true", help="load: publish the valid records anyway"
    )
    reg.set_defaults(func=_registry)

    send = sub.add_parser("send", help="publish telemetry from a JSON Lines file")
    send.add_argument("file")
    send.set_defaults(func=_send)

    alerts = sub.add_parser("alerts", help="follow the alerts topic in the terminal")
    alerts.add_argument("action", choices=["tail"])
    alerts.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest alert, not now"
    )
    alerts.add_argument("--count", type=int, default=0, help="stop after this many alerts")
    alerts.set_defaults(func=_alerts)

    backtest = sub.add_parser(
        "backtest", help="replay recorded telemetry through a rule set, offline"
    )
    backtest.add_argument("--rules", help="rules file (default: the shipped rules)")
    backtest.add_argument("--input", required=True, help="JSON Lines of telemetry (as sent)")
    backtest.add_argument(
        "--registry", help="device records, JSON Lines or CSV (default: the simulated fleet)"
    )
    backtest.add_argument("--seed", type=int, default=1, help="seed of the simulated fleet")
    backtest.set_defaults(func=_backtest)

    up = sub.add_parser("up", help="start Kafka, create the topics and run a worker")
    up.add_argument(
        "--keep-kafka", action="store_true", help="leave Kafka running when the worker stops"
    )
    up.set_defaults(func=_up)

    settings = sub.add_parser("settings", help="show the effective settings")
    settings.add_argument("--markdown", action="store_true", help="print the README's table")
    settings.set_defaults(func=_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"citystreams: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Command = args.func
    try:
        return func(args, settings)
    except (KafkaError, AdminError, SettingsError, RulesError) as exc:
        print(f"citystreams: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
