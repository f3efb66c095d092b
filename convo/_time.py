"""The one clock convo reads: timezone-aware UTC, so stored and logged times compare across machines."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["now"]


def now() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(timezone.utc)
