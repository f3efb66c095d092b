"""The recorded real API traffic in tests/fixtures/recorded/ (copied unchanged from shared/fixtures).

A missing or empty fixture folder is an error, never an empty parametrisation:
a test suite that silently runs zero replay cases would pass for the wrong reason.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDED = FIXTURES / "recorded"
PACKS = FIXTURES / "packs"


class MissingFixtures(RuntimeError):
    """The fixture files the suite replays are not there."""


def recorded_files(prefix_filter=None) -> list[Path]:
    """The recordings, sorted; raises when there are none (or none pass the filter)."""
    files = sorted(RECORDED.glob("*.json"))
    if not files:
        raise MissingFixtures(f"no recordings in {RECORDED}: copy shared/fixtures/recorded there unchanged")
    chosen = [f for f in files if prefix_filter is None or prefix_filter(f)]
    if not chosen:
        raise MissingFixtures(f"no recording in {RECORDED} matches the filter")
    return chosen


def load(path: Path) -> dict:
    return json.loads(path.read_text())
