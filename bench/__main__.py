"""``python -m bench``: contenders side by side on the same input, on the real Kafka.

Loads a seeded input once per variant (single readings, and gateway batches of 100),
then drains it with each contender in turn, interleaved over rounds (B0 B1 C B0 B1 C
...), each with a fresh consumer group, until the group has consumed the whole input.
Each contender is a process of its own: its CPU time and peak RSS come from
``os.wait4``. Reports CPU microseconds per reading, readings per second and the ratios
of citystreams (C) to the floor (B0) and to faust doing nothing (B1), median and spread
over the rounds, as JSON and as a Markdown table.

Contenders:
- B0 ``bench/floor.py``: aiokafka getmany -> orjson -> validate -> dict windows -> produce;
- B1 ``bench/noop.py``: a faust agent that does nothing;
- C  ``citystreams worker``: validation, enrichment, device and district windows, rules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.admin import ensure_topics
from streams.localkafka import LocalKafka
from streams.produce import device_messages
from streams.registry import KIND_METRICS, KINDS
from streams.settings import Settings
from streams.topics import DEVICES, TELEMETRY_BY_DEVICE, TELEMETRY_RAW, topic_name

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
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
        if batch <= 1:
            for r in rs:
                await producer.send(raw, orjson.dumps(r), key=r["device_id"].encode())
                messages += 1
        else:
            for i in range(0, len(rs), batch):
                chunk = rs[i : i + batch]
                key = f"gw-{(i // batch) % 97}".encode()
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
        offsets = await admin.list_consumer_group_offsets(group)
        await consumer._client.force_metadata_update()  # what partitions_for_topic reads
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        if not tps:
            return False
        end = await consumer.end_offsets(tps)
        return all(end[tp] == 0 or (tp in offsets and offsets[tp].offset >= end[tp]) for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


def launch(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


class Child:
    """A contender's process; its CPU time and peak RSS come from wait4 when it ends
    (``Popen.poll`` would reap it first and lose them)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.usage: Any = None
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
            pid, _, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.usage = usage
        return self.usage is not None

    def stop(self) -> tuple[float, float]:
        """SIGTERM if running, wait; (CPU seconds, peak RSS MB)."""
        self.sample()
        if self.usage is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            _, _, self.usage = os.wait4(self.proc.pid, 0)
        return self.usage.ru_utime + self.usage.ru_stime, self.peak_kb / 1024


async def drain(
    contender: str, settings: Settings, count: int, variant: str, rnd: int, logs: Path
) -> Run:
    group = f"bench-{contender}-{variant}-{rnd}-{uuid.uuid4().hex[:6]}"
    raw = settings.topic_prefix + TELEMETRY_RAW
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    topics = [raw]
    if contender == "B0":
        args = [
            "-m",
            "bench.floor",
            settings.broker,
            group,
            raw,
            settings.topic_prefix + "bench.out",
        ]
    elif contender == "B1":
        args = ["-m", "bench.noop", settings.broker, group, raw]
    else:
        c = replace(settings, app_id=group, metrics_port=0, log_level="warning")
        await ensure_topics(c)  # the app's internal topics, before the clock starts
        env.update(c.to_env())
        args = ["-m", "streams", "worker"]
        topics.append(topic_name(c.topic_prefix, TELEMETRY_BY_DEVICE, c.app_id))
    start = time.monotonic()
    child = Child(launch(args, env, logs / f"{group}.log"))
    while True:
        await asyncio.sleep(0.25)
        if child.exited():
            if contender == "B0":
                break  # the floor exits once it has read everything
            raise RuntimeError(f"{contender} exited early: see {logs / (group + '.log')}")
        if contender != "B0" and await consumed(settings.broker, group, topics):
            break
    wall = time.monotonic() - start
    cpu, rss = await asyncio.to_thread(child.stop)
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
        for base in ("B0", "B1", "Q"):
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
    return "\n".join(lines) + "\n"


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contenders", default="B0,B1,C")
    p.add_argument("--variants", default="single,batch100")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--smoke", action="store_true", help="a few seconds: 5,000 readings, 1 round")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if args.smoke:
        args.readings, args.devices, args.rounds = 5_000, 500, 1
    contenders = args.contenders.split(",")
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
    try:
        devices = fleet(args.devices)
        rs = readings(devices, args.readings, base=int(time.time() * 1000) - 3 * 3600_000)
        runs: list[Run] = []
        for variant in args.variants.split(","):
            batch = 100 if variant == "batch100" else 1
            settings = replace(
                base_settings, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", partitions=6
            )
            messages = await load(settings, devices, rs, batch)
            log.info("%s: %d readings in %d messages loaded", variant, len(rs), messages)
            for rnd in range(args.rounds):
                for c in contenders:
                    runs.append(await drain(c, settings, len(rs), variant, rnd, logs))
        summary = summarise(runs, contenders)
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
