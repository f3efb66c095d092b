"""convo's logger: silent by default, and controlled by whichever logging the application set up.

convo logs through structlog with snake_case event names. An application
that configured structlog (``structlog.configure(...)``) gets convo's events
through its own configuration. Otherwise the events go to the standard
library's ``logging`` logger named ``"convo"``, which has a ``NullHandler``:
nothing is printed unless the application configured ``logging`` (then
``logging.getLogger("convo").setLevel(...)`` and handlers work as usual).

Unconfigured structlog would print every level to stdout, mixed into the
user's output; a library must never do that, hence this module.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["STDLIB_LOGGER", "log"]

STDLIB_LOGGER = logging.getLogger("convo")
STDLIB_LOGGER.addHandler(logging.NullHandler())

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL}


def _render(event: str, fields: dict[str, Any]) -> str:
    if not fields:
        return event
    return event + " " + " ".join(f"{k}={v!r}" for k, v in fields.items())


class _Logger:
    """structlog's logger when the application configured structlog, else stdlib ``logging``.

    The choice is made at each call, so configuring either kind of logging
    after convo was imported takes effect at once. Thread-safe.
    """

    __slots__ = ("_structlog",)

    def __init__(self) -> None:
        self._structlog = structlog.get_logger("convo")

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._structlog, method)(event, **fields)
            return
        level = _LEVELS[method]
        if not STDLIB_LOGGER.isEnabledFor(level):
            return
        exc_info = fields.pop("exc_info", method == "exception")
        STDLIB_LOGGER.log(level, _render(event, fields), exc_info=exc_info,
                          extra={"convo_event": event, "convo_fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit("exception", event, fields)


log = _Logger()
"""The logger every convo module uses."""
