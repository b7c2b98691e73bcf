"""The pipeline's topology: topics, tables and agents, wired onto a faust app.

Stages read top to bottom in the order data flows; the logic of each stage lives in
pure modules (no faust) and the agents here only move records between topics.
"""

from __future__ import annotations

import faust

from streams.settings import Settings


def build(app: faust.App, settings: Settings) -> None:
    """Register every stage of the pipeline on ``app``."""
