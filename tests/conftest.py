"""Suite-wide settings."""

import atexit
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


# --- stores: every backend the conformance suite runs against ---------------------------

from tests import store_kinds  # noqa: E402

# The Redis and PostgreSQL kinds (registered on import) and their session servers,
# real processes on 127.0.0.1, started only when a test asks for them.
from tests.store_servers import postgres_server, redis_server  # noqa: E402,F401


@pytest.fixture(params=sorted(store_kinds.KINDS))
def store_kind(request):
    """Each store backend in turn: a StoreKind that makes fresh stores of it."""
    kind = store_kinds.KINDS[request.param](request)
    yield kind
    kind.cleanup()


@pytest.fixture
def store(store_kind):
    """A fresh, empty store of each backend in turn, closed afterwards."""
    s = store_kind.make()
    yield s
    s.close()




def _quiet_llama_cpp_at_exit() -> None:
    # llama-cpp-python opens /dev/null twice at import (for its models' destructors) and never
    # closes it; Python reports that as an error when the interpreter exits, after every test
    # has run, under the suite's "warnings are errors" filter. Swap in wrappers that do not own
    # their descriptor (and so never warn), for destructors that still run at exit.
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    if utils is None:
        return
    for name in ("outnull_file", "errnull_file"):
        old = getattr(utils, name)
        setattr(utils, name, open(os.dup(old.fileno()), "w", closefd=False))
        old.close()


atexit.register(_quiet_llama_cpp_at_exit)
