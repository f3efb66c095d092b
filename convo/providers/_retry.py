"""The retry policy shared by every HTTP service.

One :class:`RetryPolicy` decides whether a failed attempt is retried and
how long to wait first: exponential backoff with jitter, capped, and the
server's ``retry-after-ms`` / ``retry-after`` / ``x-should-retry`` headers
obeyed as the official SDKs do.
"""

from __future__ import annotations

import random
import time
from typing import Mapping

from attrs import field, frozen

from ..errors import ConfigurationError

__all__ = ["RETRY_STATUSES", "RetryPolicy"]

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

# A retry-after longer than this is not honoured: the backoff is used instead,
# as the official SDKs do, so a misbehaving header cannot stall a program.
_MAX_SERVER_DELAY = 60.0


def _positive(instance, attribute, value):
    if value < 0:
        raise ConfigurationError(f"RetryPolicy.{attribute.name} must be >= 0, got {value!r}")


@frozen
class RetryPolicy:
    """How a service retries transient failures.

    Args:
        max_attempts: attempts in all, the first included (1 disables retries).
        initial_delay: seconds before the first retry.
        max_delay: cap on any one backoff delay.
        multiplier: growth of the delay per attempt.
        jitter: fraction of the delay taken off at random (0 to 1), so many
            clients retrying together do not stampede.
        retry_statuses: HTTP statuses worth retrying.
        retry_connection_errors: whether refused, reset or timed-out
            connections are retried.

    Immutable, so one policy can be shared by any number of services and threads.
    """

    max_attempts: int = field(default=3, validator=_positive)
    initial_delay: float = field(default=0.5, validator=_positive)
    max_delay: float = field(default=8.0, validator=_positive)
    multiplier: float = field(default=2.0, validator=_positive)
    jitter: float = field(default=0.25, validator=_positive)
    retry_statuses: frozenset = field(default=RETRY_STATUSES, converter=frozenset)
    retry_connection_errors: bool = True

    def __attrs_post_init__(self):
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.jitter > 1:
            raise ConfigurationError("RetryPolicy.jitter must be between 0 and 1")

    @classmethod
    def none(cls) -> "RetryPolicy":
        """A policy that never retries."""
        return cls(max_attempts=1)

    def should_retry(self, attempt: int, status: int | None, headers: Mapping[str, str] | None = None) -> bool:
        """Whether to try again after ``attempt`` (1-based) failed.

        ``status`` None means a connection error. ``x-should-retry`` from the
        server overrides the status list either way.
        """
        if attempt >= self.max_attempts:
            return False
        if headers is not None:
            verdict = _header(headers, "x-should-retry")
            if verdict is not None:
                if verdict.strip().lower() == "true":
                    return True
                if verdict.strip().lower() == "false":
                    return False
        if status is None:
            return self.retry_connection_errors
        return status in self.retry_statuses

    def delay(self, attempt: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds to wait after ``attempt`` (1-based) failed.

        A server's ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP
        date) is used when present and at most a minute; otherwise capped
        exponential backoff with jitter.
        """
        server = _server_delay(headers) if headers is not None else None
        if server is not None and 0 <= server <= _MAX_SERVER_DELAY:
            return server
        base = min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)
        return base * (1 - self.jitter * random.random())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # plain dicts are case-sensitive; requests' headers are not
        lower = name.lower()
        for k, v in headers.items():
            if k.lower() == lower:
                return v
    return value


def _server_delay(headers: Mapping[str, str]) -> float | None:
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    import email.utils  # deferred: only HTTP-date retry-after values need it

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
