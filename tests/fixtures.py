"""Access to the recorded real API traffic in ../shared/fixtures/recorded/ (read-only)."""

from __future__ import annotations

import json
from pathlib import Path

RECORDED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "recorded"


def recorded_files(prefix_filter=None) -> list[Path]:
    files = sorted(RECORDED.glob("*.json"))
    return [f for f in files if prefix_filter is None or prefix_filter(f)]


def load(path: Path) -> dict:
    return json.loads(path.read_text())
