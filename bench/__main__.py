"""``python -m bench``: contenders side by side on the same input, on the real Kafka.

Loads a seeded input once per variant (single readings, and gateway batches of 100),
then drains it with each contender in turn, interleaved over rounds (B0 B1 Q C B0 B1 Q
C ...), each with a fresh consumer group, until the group has consumed the whole input.
Each contender is a process of its own: its CPU time and peak RSS come from
``os.wait4`` and ``VmHWM``. Reports CPU microseconds per reading, readings per second
and the ratios of citystreams (C) to the others, median and spread over the rounds, as
JSON and as a Markdown table.

Contenders:
- B0 ``bench/floor.py``: aiokafka getmany -> orjson -> validate -> dict windows -> produce;
- B1 ``bench/noop.py``: a faust agent that does nothing;
- Q  ``bench/quix.py``: Quix Streams doing B0's tumbling aggregation (its own venv,
  ``bench/quixenv.py``: not a dependency of the project);
- C  ``citystreams worker``: validation, enrichment, device and district windows, rules;
- C2 two ``citystreams worker`` processes in one group (the scaling run).

Then two runs of C alone: memory with ``--rss-devices`` registered devices, each with
open windows; and latency (``bench/latency.py``): an open-loop generator at 25%, 50%
and 80% of C's single-reading drain rate, p50/p99/p99.9 from a reading's Kafka
timestamp to the device aggregate it closed. ``--profile DIR`` samples C with py-spy
(``python -m bench.profile FILE`` prints the top entries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench import latency
from bench.quixenv import quix_python
from streams.devices import KIND_METRICS, KINDS
from streams.kafka.admin import ensure_topics
from streams.kafka.local import LocalKafka
from streams.settings import Settings
from streams.tools.publish import device_messages
from streams.topics import (
    DEVICES,
    METRICS_DEVICE,
    TELEMETRY_BY_DEVICE,
    TELEMETRY_RAW,
    TopicSpec,
    topic_name,
)

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
OUT = "bench.out"  # where B0 and Q write their windows
DRAIN_TIMEOUT_S = 3600.0  # a contender that has not drained the input by then is stuck
LIVE_TIMEOUT_S = 120.0  # for the latency run's worker to be live
DISTRICTS = ("Mitte", "Hamborn", "Walsum", "Meiderich", "Homberg", "Rheinhausen", "Süd")


@dataclass(slots=True)
class Run:
    contender: str
    variant: str
    round: int
    readings: int
    wall_s: float
    cpu_s: float
    rss_mb: float

    @property
    def cpu_us_per_reading(self) -> float:
        return self.cpu_s * 1e6 / self.readings

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.wall_s


RUN_FIELDS = ("contender", "variant", "round", "readings", "wall_s", "cpu_s", "rss_mb")


def fleet(devices: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    out = []
    for i in range(devices):
        out.append(
            {
                "device_id": f"bench-{i:06d}",
                "kind": KINDS[i % len(KINDS)],
                "district": DISTRICTS[i % len(DISTRICTS)],
                "site": f"site{i // 25:04d}",
                "lat": round(51.35 + rng.random() * 0.2, 5),
                "lon": round(6.70 + rng.random() * 0.1, 5),
                "heartbeat_s": 3600,
            }
        )
    return out


def readings(devices: list[dict[str, Any]], count: int, base: int) -> list[dict[str, Any]]:
    """``count`` readings, round-robin over the devices, 10 s apart per device; about
    200 bytes each, with the metrics of each device's kind."""
    rng = random.Random(2)
    out = []
    n = len(devices)
    for i in range(count):
        d = devices[i % n]
        names = KIND_METRICS[d["kind"]]
        out.append(
            {
                "device_id": d["device_id"],
                "ts": base + (i // n) * 10_000 + rng.randrange(1000),
                "seq": i // n + 1,
                "metrics": {m: round(rng.uniform(1, 900), 2) for m in names},
            }
        )
    return out


async def load(
    settings: Settings, devices: list[dict[str, Any]], rs: list[dict[str, Any]], batch: int
) -> int:
    """Write the input once; returns the number of messages."""
    await ensure_topics(settings)
    # The floor's and Q's output (the broker does not create topics on first use)
    await ensure_topics(settings, [TopicSpec(settings.topic_prefix + OUT, 6, {})])
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker,
        linger_ms=50,
        max_batch_size=1 << 20,
        max_request_size=4 << 20,
    )
    await producer.start()
    raw = settings.topic_prefix + TELEMETRY_RAW
    try:
        for key, value in device_messages(devices):
            await producer.send(settings.topic_prefix + DEVICES, value, key=key)
        messages = 0
        n = len(devices)
        if batch <= 1:
            for r in rs:
                await producer.send(raw, orjson.dumps(r), key=r["device_id"].encode())
                messages += 1
        else:
            # A gateway owns `batch` devices and sends one reading of each per round, so
            # a device's readings stay in order (one gateway, one partition).
            assert n % batch == 0, "devices must be a multiple of the batch size"
            for i in range(0, len(rs), batch):
                chunk = rs[i : i + batch]
                key = f"gw-{(i % n) // batch}".encode()
                await producer.send(raw, orjson.dumps({"readings": chunk}), key=key)
                messages += 1
        await producer.flush()
    finally:
        await producer.stop()
    return messages


async def consumed(broker: str, group: str, topics: list[str]) -> bool:
    """Whether ``group`` has committed the end of every partition of ``topics``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker)
    await admin.start()
    await consumer.start()
    try:
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        except KafkaError:  # the offsets topic or the group is still being made
            return False
        await consumer._client.force_metadata_update()  # what partitions_for_topic reads
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        if not tps:
            return False
        end = await consumer.end_offsets(tps)
        return all(end[tp] == 0 or (tp in offsets and offsets[tp].offset >= end[tp]) for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


def launch(
    args: list[str], env: dict[str, str], log_path: Path, python: str = sys.executable
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [python, *args],
        env=env,
        cwd=ROOT,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


def sample(pid: int, output: Path, logs: Path) -> subprocess.Popen[bytes]:
    """py-spy, sampling ``pid`` from outside until it exits: the worker runs unchanged,
    but its CPU time includes py-spy's pauses, so profiled runs are not figures."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with open(logs / f"{output.stem}.spy.log", "ab") as log_file:
        return subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "-o",
                str(output),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


class Child:
    """A contender's process; its CPU time and peak RSS come from wait4 when it ends
    (``Popen.poll`` would reap it first and lose them)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.usage: Any = None
        self.status: int | None = None  # the exit code, once it has exited
        self.peak_kb = 0

    def sample(self) -> None:
        """Peak RSS since exec (VmHWM). wait4's ru_maxrss would count the bench's own
        memory, which a forked child carries until it execs."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except OSError:
            pass

    def exited(self) -> bool:
        self.sample()
        if self.usage is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.usage = usage
                self.status = os.waitstatus_to_exitcode(status)
        return self.usage is not None

    def stop(self, grace_s: float = 60.0) -> tuple[float, float]:
        """SIGTERM if running, wait (SIGKILL after ``grace_s``); (CPU seconds, peak RSS
        MB)."""
        self.sample()
        if self.usage is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while not self.exited():
                if time.monotonic() > deadline:
                    log.warning("pid %d ignored SIGTERM for %.0f s: killed", self.proc.pid, grace_s)
                    os.kill(self.proc.pid, signal.SIGKILL)
                    _, _, self.usage = os.wait4(self.proc.pid, 0)
                    break
                time.sleep(0.1)
        usage = self.usage
        assert usage is not None
        return usage.ru_utime + usage.ru_stime, self.peak_kb / 1024


BASELINE: list[Path] = []  # --baseline: the checkout whose worker runs as Cb


async def drain(
    contender: str,
    settings: Settings,
    count: int,
    variant: str,
    rnd: int,
    logs: Path,
    profile: Path | None = None,
) -> Run:
    group = f"bench-{contender}-{variant}-{rnd}-{uuid.uuid4().hex[:6]}"
    raw = settings.topic_prefix + TELEMETRY_RAW
    # Cb: the worker of another checkout (--baseline), as C is run from this one
    root = BASELINE[0] if contender == "Cb" and BASELINE else ROOT
    env = dict(os.environ, PYTHONPATH=str(root))
    topics = [raw]
    python = sys.executable
    exits = contender in ("B0", "Q")  # they exit once they have read everything
    if contender in ("B0", "Q"):
        module = "bench.floor" if contender == "B0" else "bench.quix"
        args = ["-m", module, settings.broker, group, raw, settings.topic_prefix + OUT]
        if contender == "Q":
            python = str(quix_python())
    elif contender == "B1":
        args = ["-m", "bench.noop", settings.broker, group, raw]
    else:
        c = replace(settings, app_id=group, metrics_port=0, log_level="warning")
        await ensure_topics(c)  # the app's internal topics, before the clock starts
        env.update(c.to_env())
        args = ["-m", "streams", "worker"]
        topics.append(topic_name(c.topic_prefix, TELEMETRY_BY_DEVICE, c.app_id))
    workers = 2 if contender == "C2" else 1  # the scaling run: two workers, one group
    start = time.monotonic()
    children = [
        Child(
            launch(
                args,
                dict(env, CITYSTREAMS_INSTANCE_ID=f"w{i}"),
                logs / f"{group}-{i}.log",
                python,
            )
        )
        for i in range(workers)
    ]
    child = children[0]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    spy = None
    if profile is not None and contender == "C":
        spy = sample(child.proc.pid, profile / f"{contender}-{variant}-{rnd}.txt", logs)
    while True:
        await asyncio.sleep(0.25)
        if any(ch.exited() for ch in children):
            if exits and child.status == 0:
                break
            raise RuntimeError(f"{contender} failed: see {logs / (group + '-0.log')}")
        if not exits and await consumed(settings.broker, group, topics):
            break
        if time.monotonic() > deadline:
            for ch in children:
                await asyncio.to_thread(ch.stop)
            raise RuntimeError(f"{contender} did not finish in time: see {logs / group}-0.log")
    wall = time.monotonic() - start
    stopped = [await asyncio.to_thread(ch.stop) for ch in children]
    cpu = sum(c for c, _ in stopped)
    rss = max(r for _, r in stopped)
    if spy is not None:
        await asyncio.to_thread(spy.wait, 60)
    run = Run(contender, variant, rnd, count, wall, cpu, rss)
    log.info(
        "%s %s round %d: %.1f s, %.1f us CPU/reading, %.0f readings/s, %.0f MB",
        contender,
        variant,
        rnd,
        wall,
        run.cpu_us_per_reading,
        run.readings_per_s,
        rss,
    )
    return run


def fresh(settings: Settings) -> Settings:
    """Settings with topics of their own (6 partitions, as the issue's input)."""
    return replace(settings, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", partitions=6)


async def latency_runs(
    settings: Settings, drain_rate: float, seconds: float, logs: Path
) -> list[dict[str, Any]]:
    """One C worker on a live topic, fed at 25%, 50% and 80% of ``drain_rate``, each
    rate with devices of its own (so their event time starts afresh)."""
    fractions = (0.25, 0.5, 0.8)
    # Each device reads every `every` s at its rate, ten times at least in a run:
    # windows close every third reading, well before the 10 s idle timer would.
    every = min(2.0, seconds / 10)
    sizes = [max(30, int(drain_rate * f * every)) for f in fractions]
    devices = fleet(sum(sizes) + 30)
    base = int(time.time() * 1000) - 3600_000
    await load(settings, devices, [], 1)
    group = f"bench-latency-{uuid.uuid4().hex[:6]}"
    c = replace(settings, app_id=group, metrics_port=0, log_level="warning")
    await ensure_topics(c)
    env = dict(os.environ, PYTHONPATH=str(ROOT), **c.to_env())
    child = Child(launch(["-m", "streams", "worker"], env, logs / f"{group}.log"))
    raw = settings.topic_prefix + TELEMETRY_RAW
    windows = settings.topic_prefix + METRICS_DEVICE
    try:
        # Live once it has committed a probe reading of every partition.
        probe = devices[-30:]
        await latency.generate(settings.broker, raw, probe, base, 50.0, len(probe) / 50.0)
        live_by = time.monotonic() + LIVE_TIMEOUT_S
        while not await consumed(settings.broker, group, [raw]):
            if child.exited() or time.monotonic() > live_by:
                raise RuntimeError(f"the latency worker is not live: see {logs / group}.log")
            await asyncio.sleep(0.5)
        results = []
        first = 0
        for fraction, size in zip(fractions, sizes, strict=True):
            mine, first = devices[first : first + size], first + size
            result = await latency.measure(
                settings.broker,
                raw,
                windows,
                mine,
                base,
                drain_rate * fraction,
                seconds,
                int(settings.grace_s * 1000),
                warmup_s=min(5.0, seconds / 4),
            )
            results.append({"fraction": fraction, **asdict(result)})
        return results
    finally:
        await asyncio.to_thread(child.stop)


def summarise(runs: list[Run], contenders: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine(), "variants": {}}
    for variant in sorted({r.variant for r in runs}):
        rows: dict[str, Any] = {}
        by = {c: [r for r in runs if r.variant == variant and r.contender == c] for c in contenders}
        for c, rs in by.items():
            if rs:
                rows[c] = {
                    "cpu_us_per_reading": statistics.median(r.cpu_us_per_reading for r in rs),
                    "readings_per_s": statistics.median(r.readings_per_s for r in rs),
                    "rss_mb": max(r.rss_mb for r in rs),
                    "rounds": len(rs),
                }
        ratios = {}
        for base in ("B0", "B1", "Q", "Cb"):
            if by.get("C") and by.get(base):
                per_round = [
                    c.cpu_us_per_reading / b.cpu_us_per_reading
                    for c, b in zip(by["C"], by[base], strict=False)
                ]
                ratios[f"C/{base}"] = {
                    "median": statistics.median(per_round),
                    "min": min(per_round),
                    "max": max(per_round),
                }
        if by.get("C") and by.get("C2"):
            # throughput, not CPU: what a second worker adds
            per_round = [
                two.readings_per_s / one.readings_per_s
                for one, two in zip(by["C"], by["C2"], strict=False)
            ]
            ratios["C2/C readings/s"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
            }
        out["variants"][variant] = {"contenders": rows, "ratios": ratios}
    return out


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"Machine: {summary['machine']}", ""]
    lines.append("| variant | contender | CPU us / reading | readings / s | peak RSS MB |")
    lines.append("|---|---|---:|---:|---:|")
    for variant, v in summary["variants"].items():
        for c, row in v["contenders"].items():
            lines.append(
                f"| {variant} | {c} | {row['cpu_us_per_reading']:.1f} | "
                f"{row['readings_per_s']:,.0f} | {row['rss_mb']:.0f} |"
            )
    lines += [
        "",
        "| variant | ratio (CPU per reading) | median | min | max |",
        "|---|---|---:|---:|---:|",
    ]
    for variant, v in summary["variants"].items():
        for name, r in v["ratios"].items():
            lines.append(
                f"| {variant} | {name} | {r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} |"
            )
    if summary.get("latency"):
        lines += [
            "",
            "Latency, reading's Kafka timestamp to the device aggregate it closed "
            "(one C worker, open-loop generator):",
            "",
            "| load | readings / s | samples | p50 ms | p99 ms | p99.9 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in summary["latency"]:
            lines.append(
                f"| {r['fraction']:.0%} of C's drain rate | {r['achieved']:,.0f} | "
                f"{r['samples']:,} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['p999_ms']:.0f} | {r['max_ms']:.0f} |"
            )
    return "\n".join(lines) + "\n"


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contenders", default="B0,B1,Q,C")
    p.add_argument(
        "--scaling",
        default="batch100",
        help="variants where two C workers (C2) also drain the input ('' for none)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=30.0,
        help="per rate (25%%, 50%%, 80%% of C's single-reading drain rate); 0: no latency run",
    )
    p.add_argument(
        "--rss-devices",
        type=int,
        default=100_000,
        help="registered devices, each with open windows, for C's memory run (0: none)",
    )
    p.add_argument("--variants", default="single,batch100")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        type=lambda path: Path(path).resolve(),
        help="also run the worker of the checkout in DIR (contender Cb, ratio C/Cb): "
        "a change's cost, measured in the same run on the same input",
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--smoke", action="store_true", help="a few seconds: 5,000 readings, 1 round")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="sample C with py-spy into DIR (collapsed stacks; see bench/profile.py)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if args.smoke:
        args.readings, args.devices, args.rounds = 5_000, 500, 1
        args.latency_seconds, args.rss_devices = 8.0, 2_000
    contenders = args.contenders.split(",")
    if args.baseline:
        BASELINE[:] = [args.baseline]
        contenders.append("Cb")
    base_settings = Settings.from_env()
    kafka = None
    if "CITYSTREAMS_BROKER" not in os.environ:  # our own broker, stopped at the end
        from tests.conftest import free_port

        state = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
        port = free_port()
        base_settings = replace(
            base_settings,
            broker=f"127.0.0.1:{port}",
            state_dir=state,
            kafka_controller_port=free_port(),
        )
        kafka = LocalKafka(base_settings, port=port)
        kafka.start()
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    profile = Path(args.profile) if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    try:
        devices = fleet(args.devices)
        rs = readings(devices, args.readings, base=int(time.time() * 1000) - 3 * 3600_000)
        runs: list[Run] = []
        if "Q" in contenders:
            await asyncio.to_thread(quix_python)  # its venv, made before any clock starts
        scaling = set(filter(None, args.scaling.split(",")))
        for variant in filter(None, args.variants.split(",")):
            batch = 100 if variant == "batch100" else 1
            settings = fresh(base_settings)
            messages = await load(settings, devices, rs, batch)
            log.info("%s: %d readings in %d messages loaded", variant, len(rs), messages)
            for rnd in range(args.rounds):
                for c in contenders + (["C2"] if variant in scaling else []):
                    runs.append(await drain(c, settings, len(rs), variant, rnd, logs, profile))
        if args.rss_devices:
            # Memory: every registered device with open windows (two readings each,
            # 10 s apart: their windows stay open), in gateway batches.
            many = fleet(args.rss_devices)
            two = readings(many, 2 * len(many), base=int(time.time() * 1000) - 3600_000)
            settings = fresh(base_settings)
            await load(settings, many, two, 100)
            variant = f"devices{len(many) // 1000}k"
            runs.append(await drain("C", settings, len(two), variant, 0, logs))
        summary = summarise(runs, [*contenders, "C2"])
        singles = [r for r in runs if r.contender == "C" and r.variant == "single"]
        if args.latency_seconds and singles:
            rate = statistics.median(r.readings_per_s for r in singles)
            summary["latency"] = await latency_runs(
                fresh(base_settings), rate, args.latency_seconds, logs
            )
        summary["runs"] = [{k: getattr(r, k) for k in RUN_FIELDS} for r in runs]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(str(out) + ".json").write_text(  # noqa: ASYNC240 - once, at the end
            json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
        )
        table = markdown(summary)
        Path(str(out) + ".md").write_text(table)  # noqa: ASYNC240
        print(table)
        print(f"worker logs in {logs}")
        return 0
    finally:
        if kafka is not None:
            kafka.stop()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
