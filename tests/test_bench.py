"""The benchmark's smoke run: every contender drains a small input end to end through
the real broker and the report is written (no timing assertion: figures are for
`python -m bench`, on a quiet machine)."""

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
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.with_suffix(".json").read_text())
    for variant in ("single", "batch100"):
        rows = summary["variants"][variant]["contenders"]
        assert set(rows) == {"B0", "B1", "C"}
        assert all(row["cpu_us_per_reading"] > 0 for row in rows.values())
        assert set(summary["variants"][variant]["ratios"]) == {"C/B0", "C/B1"}
    assert "| single | C |" in out.with_suffix(".md").read_text()
