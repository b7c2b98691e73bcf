"""The virtualenv of contender Q (``bench/quix.py``): Quix Streams, kept out of the
project's own dependencies.

:func:`quix_python` makes the venv once, at ``$CITYSTREAMS_BENCH_VENV`` or
``ROOT/.bench-venv``, and returns its interpreter; later calls only read a marker
file. The contender runs with ``PYTHONPATH=ROOT`` (as bench runs every contender), so
the venv needs no copy of the project: ``streams.stages.validate`` needs only orjson.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

log = logging.getLogger("bench.quixenv")
ROOT = Path(__file__).resolve().parent.parent

# Pinned exactly: the newest release on PyPI for Python 3.11 when Q was written, so
# that every round and every machine measures the same Quix Streams (a new release may
# change its defaults: commit interval, state store, consumer settings).
QUIXSTREAMS = "quixstreams==3.28.1"
# The project's own range (pyproject.toml): streams.stages.validate parses with it.
ORJSON = "orjson>=3.10,<4"
REQUIREMENTS = (QUIXSTREAMS, ORJSON)
MARKER = "citystreams-bench-venv.txt"


def venv_dir() -> Path:
    return Path(os.environ.get("CITYSTREAMS_BENCH_VENV", ROOT / ".bench-venv"))


def venv_python(directory: Path) -> Path:
    if sys.platform == "win32":
        return directory / "Scripts" / "python.exe"
    return directory / "bin" / "python"


def _wanted() -> str:
    """What the marker holds: the requirements and the interpreter's version, since
    the contender must run on the same Python as the project."""
    version = ".".join(map(str, sys.version_info[:2]))
    return "\n".join([f"python=={version}", *REQUIREMENTS]) + "\n"


def _ready(directory: Path) -> bool:
    marker = directory / MARKER
    python = venv_python(directory)
    try:
        if marker.read_text() != _wanted():
            return False
    except OSError:
        return False
    # The interpreter a venv links to can go away (a Python upgraded under it): then
    # the venv does not work any more and is made again.
    return python.exists() and python.resolve().exists()


def quix_python() -> Path:
    """The interpreter of the Quix Streams venv, made (about 20 s, from PyPI) if it is
    missing, incomplete or for other versions; otherwise returned at once."""
    directory = venv_dir()
    python = venv_python(directory)
    if _ready(directory):
        log.debug("Quix Streams venv %s is ready", directory)
        return python
    start = time.monotonic()
    log.info("making the Quix Streams venv %s (%s)", directory, ", ".join(REQUIREMENTS))
    if directory.exists():
        shutil.rmtree(directory)  # half made, or for other versions
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *REQUIREMENTS,
        ],
        check=True,
    )
    subprocess.run([str(python), "-c", "import orjson, quixstreams"], check=True)
    (directory / MARKER).write_text(_wanted())  # last: a venv without it is made again
    log.info("Quix Streams venv made in %.0f s", time.monotonic() - start)
    return python


if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    log.info("Quix Streams python: %s", quix_python())
