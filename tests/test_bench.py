"""The benchmark's smoke run: every contender drains a small input end to end through
the real broker, two workers share one, the memory run and the latency run report, and
the tables are written (no timing assertion: figures are for `python -m bench`, on a
quiet machine). Quix Streams (contender Q) is installed in its own venv on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.kafka


def test_bench_smoke_run_reports_every_contender(broker: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = dict(os.environ, CITYSTREAMS_BROKER=broker, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.with_suffix(".json").read_text())
    for variant in ("single", "batch100"):
        rows = summary["variants"][variant]["contenders"]
        want = {"B0", "B1", "Q", "C"} | ({"C2"} if variant == "batch100" else set())
        assert set(rows) == want
        assert all(row["cpu_us_per_reading"] > 0 for row in rows.values())
        assert {"C/B0", "C/B1", "C/Q"} <= set(summary["variants"][variant]["ratios"])
    assert "C2/C readings/s" in summary["variants"]["batch100"]["ratios"]
    assert summary["variants"]["devices2k"]["contenders"]["C"]["rss_mb"] > 0
    latency = summary["latency"]
    assert [r["fraction"] for r in latency] == [0.25, 0.5, 0.8]
    assert all(r["samples"] > 0 and 0 <= r["p50_ms"] <= r["p99_ms"] for r in latency)
    table = out.with_suffix(".md").read_text()
    assert "| single | C |" in table and "| single | C/Q |" in table and "p99.9 ms" in table
