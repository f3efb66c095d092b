"""Suite-wide settings."""

import os

# llama.cpp's OpenMP threads spin while they wait for each other; on a busy
# 2-core CI machine that makes generation 10-20x slower. A short spin fixes it
# with no loss when idle. It must be set before libgomp loads, i.e. before any
# test module imports llama_cpp; the CLI sets the same for its own process.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import pytest
import structlog


@pytest.fixture(autouse=True)
def _structlog_as_found():
    """Put structlog back as each test found it.

    ``structlog.testing.capture_logs()`` leaves structlog marked configured,
    after which convo sends its events to structlog (which prints them)
    instead of the silent stdlib logger: one test must not change what the
    next one sees.
    """
    was, saved = structlog.is_configured(), structlog.get_config()
    yield
    if was:
        structlog.configure(**saved)
    else:
        structlog.reset_defaults()
