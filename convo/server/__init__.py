"""``convo serve``: a server that runs convo conversations for remote clients, speaking the Chucky protocol.

What it offers:

- :func:`create_app`: the ASGI app (Starlette): the Chucky WebSocket
  endpoint ``/ws``, ``GET /v1/sessions/{id}`` and ``/health``, for
  embedding in an application with its own server-side tools;
- :class:`ServerThread`: an app served by uvicorn on a background thread
  (a context manager);
- :func:`create_token`, :func:`create_budget`, :func:`verify_token`: the
  tokens clients connect with (also in :mod:`convo.remote`).

The modules behind it: :mod:`~convo.server.chucky` (the wire protocol, pure
functions), :mod:`~convo.server.auth` (tokens and the one place that
authorises), :mod:`~convo.server.budgets` (per-user window budgets on the
store's counters), :mod:`~convo.server.sessions` (a Convo per session, on
threads), :mod:`~convo.server.chucky_api` (the endpoint),
:mod:`~convo.server.app` and :mod:`~convo.server.runner`.

Needs the ``server`` extra (``pip install 'convo[server]'``: starlette,
uvicorn, PyJWT); importing this package itself loads none of them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerThread", "create_app", "create_budget", "create_token", "verify_token"]

_LAZY = {
    "create_app": ".app",
    "ServerThread": ".runner",
    "create_token": ".auth",
    "create_budget": ".auth",
    "verify_token": ".auth",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convo.server' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
