"""`citystreams`: the command line.

Each subcommand is a small function taking the parsed arguments and the settings;
errors a user can fix are printed as one line (no traceback) and exit with 1, or with 2
for a bad argument, setting or file (main() turns the exceptions into that line).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from streams import __version__
from streams.kafka.admin import AdminError, ensure_topics
from streams.kafka.local import KafkaError, LocalKafka
from streams.settings import Settings, SettingsError, settings_table
from streams.stages.rules import RulesError

if TYPE_CHECKING:
    from streams.tools.simulate import City
    from streams.topics import TopicSpec

log = logging.getLogger("citystreams")

Command = Callable[[argparse.Namespace, Settings], int]
# What the broker's authorizer answers when no ACL allows a request.
_REFUSED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _kafka(args: argparse.Namespace, settings: Settings) -> int:
    security = None
    if args.secure is not None:
        from streams.kafka.local import BrokerSecurity

        security = BrokerSecurity.from_dir(Path(args.secure))
    kafka = LocalKafka(settings, port=args.port, security=security)
    if args.action == "fetch":
        print(kafka.fetch(progress=_progress))
        return 0
    if args.action == "start":
        if not kafka.is_fetched():
            print(
                "Fetching Apache Kafka from Maven Central (once; later starts are offline)...",
                file=sys.stderr,
                flush=True,
            )
        status = kafka.start(progress=_progress)
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
    from streams.runtime.app import run_worker
    from streams.runtime.wiring import build

    return run_worker(settings, build)


DEFAULT_SCENARIOS = (
    "unventilated_classroom@2",
    "cell_outage@3",
    "uplink_failure@4",
    "reefer_unplugged@5",
    "bearing_failure@6",
    "smog@8",
    "bad_data@2",
)


def _city(
    args: argparse.Namespace, speed: float, start: int | None = None
) -> tuple[list[dict[str, Any]], City, int]:
    """The fleet, the simulated city and its event-time start (``start``, else from the
    arguments)."""
    from streams import devices as records_of
    from streams.tools.demo import now_ms, start_for
    from streams.tools.fleet import generate_fleet
    from streams.tools.simulate import City, parse_injection

    if args.registry:
        with open(args.registry, "rb") as f:
            data = f.read()
        file_format = records_of.format_from_path(args.registry)
        fleet, errors = records_of.parse_device_file(data, file_format)
        if errors:
            raise SettingsError(f"{args.registry}: {errors[0]} ({len(errors)} error(s))")
    else:
        fleet = generate_fleet(seed=args.seed, scale=args.scale)
    if start is None:
        start = args.start if args.start is not None else start_for(speed, args.duration, now_ms())
    scenarios = args.scenario if args.scenario is not None else list(DEFAULT_SCENARIOS)
    try:
        injections = [parse_injection(text, start) for text in scenarios]
        city = City(fleet, seed=args.seed, start_ms=start, injections=injections, batch=args.batch)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return fleet, city, start


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from streams.tools.demo import Progress, registry_for, run_city
    from streams.tools.publish import device_messages, publish
    from streams.tools.simulate import describe_scenarios
    from streams.topics import DEVICES

    if args.list_scenarios:
        print(describe_scenarios())
        return 0
    fleet, city, _ = _city(args, args.speed)

    async def run() -> None:
        await ensure_topics(settings)
        if not args.no_registry:
            devices = device_messages(registry_for(fleet, args.speed))
            await publish(settings, settings.topic_prefix + DEVICES, devices)
        await run_city(
            settings,
            city,
            fleet,
            speed=args.speed,
            duration_s=args.duration,
            progress=Progress(),
        )

    asyncio.run(run())
    counts = city.counts
    print(f"sent {counts.readings} readings in {counts.messages} messages; bad data: {counts.bad}")
    return 0


def _up(args: argparse.Namespace, settings: Settings) -> int:
    """The city in one command: Kafka, topics, registry, a worker, the simulator.

    A run on a state directory that a previous ``up`` used continues its city's event
    time (never back: the pipeline's state remembers it); see streams/tools/demo.py."""
    from streams.tools.demo import CityMark, mark_path, now_ms, read_mark, resume, start_for, up

    # The live view is the output here: the clients' chatter (retries while a new topic
    # gets its leaders, group changes) goes to the worker log, not the terminal.
    for name in ("aiokafka", "streams.kafka.admin"):
        logging.getLogger(name).setLevel(logging.ERROR)
    kafka = None
    if not args.external_kafka:
        kafka = LocalKafka(settings)
        if not kafka.is_fetched():
            print(
                "Fetching Apache Kafka from Maven Central (once; about 80 MB)...",
                file=sys.stderr,
                flush=True,
            )
        print(f"Starting Kafka on {settings.broker}...", file=sys.stderr, flush=True)
        kafka.start(progress=_progress)
    try:
        now = now_ms()
        current = CityMark(
            event_ms=0,
            seed=args.seed,
            scale=args.scale,
            registry=str(Path(args.registry).resolve()) if args.registry else None,
            topic_prefix=settings.topic_prefix,
            app_id=settings.app_id,
        )
        previous = read_mark(mark_path(settings.state_dir))
        start, note = resume(
            previous,
            current,
            planned_ms=start_for(args.speed, args.duration, now),
            explicit_ms=args.start,
            now_ms=now,
            window_ms=settings.window_s * 1000,
            district_window_ms=settings.district_window_s * 1000,
            where=str(settings.state_dir),
        )
        if previous is not None and previous.same_topics(current):
            current = dataclasses.replace(current, event_ms=previous.event_ms)
        fleet, city, _ = _city(args, args.speed, start)
        return asyncio.run(
            up(
                settings,
                fleet,
                city,
                speed=args.speed,
                duration_s=args.duration,
                out=sys.stdout,
                mark=current,
                note=note,
                ungrouped=args.ungrouped,
            )
        )
    except KeyboardInterrupt:
        return 130
    finally:
        if kafka is not None and not args.keep_kafka:
            kafka.stop()


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    """Any topic of the contract, decoded, a record per line."""
    from streams.topics import ALL_TOPICS

    if args.topic not in ALL_TOPICS:
        print(f"citystreams: {args.topic!r} is not one of {', '.join(ALL_TOPICS)}", file=sys.stderr)
        return 2

    def render(value: bytes) -> str:
        try:
            return orjson.dumps(orjson.loads(value), option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONDecodeError:
            return f"(not JSON, {len(value)} bytes) {value[:120]!r}"

    return _print_topic(settings, args.topic, args, render)


def _registry(args: argparse.Namespace, settings: Settings) -> int:
    from streams import devices as records_of
    from streams.tools.fleet import generate_fleet
    from streams.tools.publish import device_messages, publish
    from streams.topics import DEVICES

    if args.action == "generate":
        fleet = generate_fleet(seed=args.seed, scale=args.scale)
        data = records_of.to_jsonl(fleet)
        if args.output == "-":
            sys.stdout.buffer.write(data)
        else:
            with open(args.output, "wb") as f:
                f.write(data)
        counts = ", ".join(f"{k} {n}" for k, n in records_of.count_by_kind(fleet).items())
        print(f"{len(fleet)} devices ({counts})", file=sys.stderr)
        return 0
    if args.file is None:
        print("citystreams: registry load needs a FILE", file=sys.stderr)
        return 2
    with open(args.file, "rb") as f:
        data = f.read()
    records, errors = records_of.parse_device_file(data, records_of.format_from_path(args.file))
    for error in errors:
        print(f"{args.file}: {error}", file=sys.stderr)
    if errors and not args.skip_invalid:
        print(
            f"citystreams: {len(errors)} invalid record(s), nothing published "
            "(--skip-invalid publishes the valid ones)",
            file=sys.stderr,
        )
        return 1
    # Only the topic it writes: the registry publisher may see no other (see
    # deploy/kafka/ACLS.md), and would take the rest for missing ones to create.
    asyncio.run(ensure_topics(settings, _specs(settings, DEVICES)))
    count = asyncio.run(
        publish(settings, settings.topic_prefix + DEVICES, device_messages(records))
    )
    print(f"published {count} device record(s) to {settings.topic_prefix + DEVICES}")
    return 0


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from streams.tools.publish import publish, telemetry_messages
    from streams.topics import TELEMETRY_RAW

    with open(args.file, "rb") as f:
        messages, unkeyed = telemetry_messages(f.read())
    topic = settings.topic_prefix + TELEMETRY_RAW
    asyncio.run(ensure_topics(settings, _specs(settings, TELEMETRY_RAW)))  # see _registry
    count = asyncio.run(publish(settings, topic, messages))
    note = f" ({unkeyed} without a device_id key)" if unkeyed else ""
    print(f"sent {count} message(s) to {topic}{note}")
    return 0


def _specs(settings: Settings, base: str) -> list[TopicSpec]:
    """The spec of one topic of ``topics create``."""
    from streams.topics import topic_specs

    specs = topic_specs(settings.topic_prefix, settings.partitions, settings.app_id)
    return [s for s in specs if s.base == base]


def _acls(args: argparse.Namespace, settings: Settings) -> int:
    """The ACLs of each principal (deploy/kafka/ACLS.md): shown as kafka-acls.sh
    commands, or created with the current (admin) credentials."""
    from streams.kafka import acls as model
    from streams.topics import ALL_TOPICS

    if args.markdown:
        print(model.acl_markdown(model.example_acls(Settings.from_env({}))))
        return 0
    acls = [  # in the order of deploy/kafka/ACLS.md
        *model.ingest_acls(settings, args.ingest),
        *model.registry_acls(settings, args.registry),
        *model.pipeline_acls(settings, args.pipeline),
        *model.forwarder_acls(settings, args.forwarder),
        *model.operator_acls(settings, args.operator),
    ]
    for spec in args.consumer or []:
        user, _, rest = spec.partition(":")
        group, _, topics = rest.partition(":")
        names = [t for t in topics.split(",") if t]
        unknown = [t for t in names if t not in ALL_TOPICS]
        if not user or not names or unknown:
            print(
                f"citystreams: --consumer {spec!r}: expected USER:GROUP:TOPIC[,TOPIC...] "
                f"with topics among {', '.join(ALL_TOPICS)}",
                file=sys.stderr,
            )
            return 2
        try:
            acls += model.consumer_acls(settings, user, names, group or None)
        except ValueError as exc:
            print(f"citystreams: --consumer {spec!r}: {exc}", file=sys.stderr)
            return 2
    if args.action == "show":
        print(model.acl_commands(acls))
        return 0
    count = asyncio.run(model.create_acls(settings, acls))
    print(f"{count} ACL(s) in place")
    return 0


def _print_topic(
    settings: Settings, topic: str, args: argparse.Namespace, render: Callable[[bytes], str]
) -> int:
    """Records of ``topic`` as they arrive, a line each; stops after ``args.count``."""
    from streams.tools.publish import follow

    async def run() -> int:
        shown = 0
        async for value in follow(settings, settings.topic_prefix + topic, args.from_beginning):
            print(render(value), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
        return 0

    return asyncio.run(run())


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    """Alert events as they happen: a line per group of one status, rule and district
    within 30 s of arrival (streams/tools/floods.py), or a line each with ``--ungrouped``;
    acknowledgements as they are made. ``forward``, ``ack`` and ``unack``: see
    streams/operators/."""
    from streams.operators.commands import with_acks
    from streams.tools.demo import show_alerts
    from streams.tools.floods import AlertGroups

    if args.action != "tail":
        return _operators(args, settings)
    groups = AlertGroups(ungrouped=args.ungrouped)
    view = show_alerts(
        settings, sys.stdout, groups, from_beginning=args.from_beginning, count=args.count
    )

    async def run() -> None:
        await with_acks(
            settings, sys.stdout, asyncio.ensure_future(view), from_beginning=args.from_beginning
        )

    asyncio.run(run())
    return 0


def _operators(args: argparse.Namespace, settings: Settings) -> int:
    """``alerts forward``, ``alerts ack ID``, ``alerts unack ID``."""
    from streams.operators.acks import parse_until
    from streams.operators.commands import AckError, acknowledge, unacknowledge
    from streams.operators.forwarder import run_forwarder

    if args.action == "forward":
        return run_forwarder(settings)
    if not args.alert_id or not args.by:
        print(f"citystreams: alerts {args.action} needs ALERT_ID and --by NAME", file=sys.stderr)
        return 2
    try:
        until = parse_until(args.until) if args.until else None
        if args.action == "ack":
            work = acknowledge(
                settings,
                args.alert_id,
                by=args.by,
                comment=args.comment,
                until_ms=until,
                out=sys.stdout,
            )
        else:
            work = unacknowledge(settings, args.alert_id, by=args.by, out=sys.stdout)
        asyncio.run(work)
    except ValueError as exc:
        print(f"citystreams: {exc}", file=sys.stderr)
        return 2
    except AckError as exc:
        print(f"citystreams: {exc}", file=sys.stderr)
        return exc.code
    return 0


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    from streams import devices as records_of
    from streams.stages.enrich import Registry
    from streams.stages.rules import load_rules
    from streams.tools.backtest import backtest, registry_beside, report
    from streams.tools.fleet import generate_fleet
    from streams.tools.publish import device_messages

    ruleset = load_rules(Path(args.rules) if args.rules else None)
    with open(args.input, "rb") as recording:
        path = args.registry
        if path is None:  # the recording's own, next to it, else the simulated city's
            found = registry_beside(Path(args.input))
            path = None if found is None else str(found)
            _progress(
                f"backtest: device records from {found} (next to the recording; "
                "--registry names others)"
                if found is not None
                else f"backtest: no device records next to {args.input}: the simulated "
                f"city's fleet (seed {args.seed}; --registry names a file)"
            )
        if path:
            with open(path, "rb") as f:
                data = f.read()
            records, errors = records_of.parse_device_file(data, records_of.format_from_path(path))
            for error in errors:
                print(f"{path}: {error}", file=sys.stderr)
        else:  # the simulated city's fleet
            records = generate_fleet(seed=args.seed)
        devices = Registry()
        for key, value in device_messages(records):
            devices.apply(key, value)
        result = backtest(ruleset, devices, recording)
    print(report(result))
    return 0


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    for name, value in sorted(dataclasses.asdict(settings).items()):
        print(f"{name} = {value}")
    return 0


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line too (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _alerts_parser(sub: Any) -> None:
    """``alerts tail|forward|ack|unack`` (a function of its own: build_parser is long)."""
    alerts = sub.add_parser(
        "alerts",
        help="follow alerts in the terminal; forward them to Alertmanager; acknowledge one",
    )
    alerts.add_argument(
        "action",
        choices=["tail", "forward", "ack", "unack"],
        help="tail: print alerts and acknowledgements; forward: keep Alertmanager equal to "
        "the open episodes; ack/unack ALERT_ID: acknowledge an episode (a silence) or undo it",
    )
    alerts.add_argument("alert_id", nargs="?", help="ack, unack: the episode's alert_id")
    alerts.add_argument("--by", help="ack, unack: who (recorded and shown)")
    alerts.add_argument("--comment", default="", help="ack: why, or what is being done")
    alerts.add_argument(
        "--until",
        help="ack: silence for this long (30m, 2h, 1d; default: until the episode resolves)",
    )
    alerts.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest alert, not now"
    )
    alerts.add_argument("--count", type=int, default=0, help="stop after this many alerts")
    alerts.add_argument(
        "--ungrouped",
        action="store_true",
        help="a line per alert event (default: one line per status, rule and district "
        "for the events that arrive within 30 s)",
    )
    alerts.set_defaults(func=_alerts)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    kafka.add_argument(
        "--secure",
        metavar="DIR",
        help="start: a SASL_SSL listener with DIR/server.pem (key and chain), DIR/ca.pem and "
        "SCRAM users DIR/users/<name> (password files; `admin` is the super user)",
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

    _alerts_parser(sub)

    backtest = sub.add_parser(
        "backtest", help="replay recorded telemetry through a rule set, offline"
    )
    backtest.add_argument("--rules", help="rules file (default: the shipped rules)")
    backtest.add_argument("--input", required=True, help="JSON Lines of telemetry (as sent)")
    backtest.add_argument(
        "--registry",
        help="device records, JSON Lines or CSV (default: the recording's, next to it: "
        "classroom-devices.jsonl or devices.jsonl for classroom-co2.jsonl; else the "
        "simulated fleet)",
    )
    backtest.add_argument("--seed", type=int, default=1, help="seed of the simulated fleet")
    backtest.set_defaults(func=_backtest)

    def city_options(p: argparse.ArgumentParser, speed: float) -> None:
        p.add_argument("--seed", type=int, default=1, help="same seed, same city (default 1)")
        p.add_argument("--scale", type=float, default=1.0, help="fleet size (1.0: 2,273 devices)")
        p.add_argument("--registry", help="device records to simulate instead of a generated fleet")
        p.add_argument(
            "--speed",
            type=float,
            default=speed,
            help=f"event time per wall time (default {speed:g})",
        )
        p.add_argument("--duration", type=float, help="stop after this many seconds")
        p.add_argument("--start", type=int, help="event-time start, epoch ms (default: see README)")
        p.add_argument("--batch", type=int, default=0, help="gateway batches of up to N readings")
        p.add_argument(
            "--scenario",
            action="append",
            metavar="NAME[@MINUTES[:DEVICE_ID]]",
            help="inject a scenario MINUTES of event time after the start (repeatable); "
            "default: " + " ".join(DEFAULT_SCENARIOS),
        )

    simulate = sub.add_parser("simulate", help="send a simulated city's telemetry")
    city_options(simulate, 1.0)
    simulate.add_argument("--list-scenarios", action="store_true", help="explain each scenario")
    simulate.add_argument(
        "--no-registry", action="store_true", help="do not publish the fleet's device records"
    )
    simulate.set_defaults(func=_simulate)

    up = sub.add_parser("up", help="the city in one command: Kafka, worker, simulator, live view")
    city_options(up, 10.0)
    up.add_argument(
        "--keep-kafka", action="store_true", help="leave Kafka running when everything stops"
    )
    up.add_argument(
        "--external-kafka", action="store_true", help="use the Kafka at CITYSTREAMS_BROKER"
    )
    up.add_argument(
        "--ungrouped",
        action="store_true",
        help="a line per alert event in the live view (default: grouped as by alerts tail)",
    )
    up.set_defaults(func=_up)

    tail = sub.add_parser("tail", help="print a topic's records, decoded")
    tail.add_argument("topic", help="a topic name without the prefix, e.g. metrics.district")
    tail.add_argument("--from-beginning", action="store_true", help="from the oldest record")
    tail.add_argument("--count", type=int, default=0, help="stop after this many records")
    tail.set_defaults(func=_tail)

    acls = sub.add_parser("acls", help="the Kafka ACLs of each principal (deploy/kafka/ACLS.md)")
    acls.add_argument(
        "action",
        choices=["show", "apply"],
        nargs="?",
        default="show",
        help="show: kafka-acls.sh commands; apply: create them (with admin credentials)",
    )
    acls.add_argument("--pipeline", default="pipeline", help="the workers' SCRAM user")
    acls.add_argument("--ingest", default="ingest", help="the telemetry senders' SCRAM user")
    acls.add_argument("--registry", default="registry", help="the registry publisher's user")
    acls.add_argument("--forwarder", default="forwarder", help="alerts forward's SCRAM user")
    acls.add_argument("--operator", default="operator", help="alerts ack/unack's SCRAM user")
    acls.add_argument(
        "--consumer",
        action="append",
        metavar="USER:GROUP:TOPIC[,TOPIC...]",
        help="a downstream consumer, its group (may be empty) and topics (repeatable)",
    )
    acls.add_argument("--markdown", action="store_true", help="print deploy/kafka/ACLS.md's table")
    acls.set_defaults(func=_acls)

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
    except KafkaConnectionError as exc:
        # aiokafka has logged why (unreachable, TLS handshake, SCRAM login refused).
        print(
            f"citystreams: no connection to Kafka at {settings.broker} ({exc}): check "
            "CITYSTREAMS_BROKER and, with CITYSTREAMS_SECURITY_PROTOCOL="
            f"{settings.security_protocol}, the CITYSTREAMS_SSL_* and CITYSTREAMS_SASL_* "
            "settings",
            file=sys.stderr,
        )
        return 1
    except _REFUSED as exc:
        who = settings.sasl_username or "this client"
        print(
            f"citystreams: Kafka refused {who}: {exc} (no ACL allows it; "
            "deploy/kafka/ACLS.md lists each principal's)",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        # A file of the command line that cannot be read or written (send, registry
        # load, registry generate -o, backtest --input/--registry, ...).
        log.debug("%s", exc, exc_info=True)  # CITYSTREAMS_LOG_LEVEL=debug: the traceback
        if exc.filename is not None:
            print(f"citystreams: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"citystreams: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
