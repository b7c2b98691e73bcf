"""README's examples, run as written: what they show is what they print."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

README = ROOT / "README.md"
BEGIN, END = "<!-- backtest-example -->", "<!-- /backtest-example -->"


def fenced(text: str) -> list[str]:
    """The lines of the first fenced block of ``text``."""
    match = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert match, f"no fenced block in {text[:80]!r}"
    return match[1].splitlines()


def backtest_example(readme: str) -> tuple[str, list[str]]:
    """The backtest command of README's Alerts section and the output it shows.

    Between the markers: a fenced block of ``$ citystreams backtest ...`` and its output.
    """
    assert BEGIN in readme, f"README has no {BEGIN} block"
    lines = fenced(readme.split(BEGIN, 1)[1].split(END, 1)[0])
    assert lines[0].startswith("$ citystreams backtest "), lines[0]
    return lines[0].removeprefix("$ "), lines[1:]


def test_readme_backtest_example_prints_what_it_shows(tmp_path: Path) -> None:
    command, shown = backtest_example(README.read_text(encoding="utf-8"))
    argv = shlex.split(command)
    assert argv[0] == "citystreams"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAMS_")}
    env |= {"CITYSTREAMS_STATE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "streams", *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert len(printed) == len(shown), result.stdout
    for got, expected in zip(printed, shown, strict=True):
        if expected.endswith(" ..."):  # the README cuts a long summary short
            assert got.startswith(expected.removesuffix(" ...")), (got, expected)
        else:
            assert got == expected
    assert printed[-1].startswith("1 episode(s) from 60 reading(s)"), result.stdout
