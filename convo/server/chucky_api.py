"""The Chucky API: its WebSocket endpoint (``/ws``) and the HTTP route to read a session.

Handlers are thin: parse with :mod:`convo.server.chucky`, authorise with
:mod:`convo.server.auth`, run with :mod:`convo.server.sessions`, serialise
with :mod:`convo.server.chucky` again. :func:`routes` is what
:mod:`convo.server.app` mounts.

One connection, on the server's event loop:

1. accept the upgrade (no subprotocol, any Origin, ``type`` and ``vessel``
   query parameters accepted and ignored); verify ``?token=``; take one of
   the user's session slots; check the window budget is not already spent.
   Any failure: an ``error`` frame with its code, then close (1008 policy,
   1013 try again later for ``CONCURRENCY_LIMIT``).
2. send ``control``/``ready`` at once (the Python SDK waits for it before
   its ``init``; the others send ``init`` first, which is fine).
3. read frames until the client leaves: ``init`` and turns go to the
   session's queue; ``tool_result``, ``ping`` and ``control`` are answered
   here. A bad frame gets an ``error`` frame (``PROTOCOL_ERROR``,
   ``VALIDATION_ERROR`` or ``TOOL_EXECUTION_ERROR``) and the connection
   stays up, except for an oversized frame (closed with 1009).

Frames to the client go through one queue per connection, drained by one
sender task, so a slow client only slows itself; one that lets more than
``max_outbox_frames`` pile up is disconnected (1008). Protocol-level pings
(every 20 s, from uvicorn) find vanished clients.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .._log import log
from ..errors import StoreError
from .auth import AuthError, SessionNotFound, load_owned
from .budgets import UserBudget, WindowExhausted
from .chucky import (
    Control,
    ErrorCode,
    Ignored,
    Ping,
    ProtocolError,
    ToolResultFrame,
    error_frame,
    fit_frame,
    parse_client_frame,
    pong_frame,
    ready_frame,
)
from ._loop import LoopBatch
from .context import ServerContext
from .sessions import Session

__all__ = ["routes"]

# WebSocket close codes (RFC 6455 section 7.4.1).
NORMAL, POLICY, TOO_BIG, TRY_LATER = 1000, 1008, 1009, 1013

_CLOSE = object()


class _Connection:
    """One client connection: its outgoing queue and its session. Runs on the event loop."""

    def __init__(self, websocket: WebSocket, ctx: ServerContext) -> None:
        self.ws = websocket
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.closing = False
        self.close_code = NORMAL
        self.session: Session | None = None
        # Frames from worker threads come in bursts (a reply then the result; stream events):
        # one wake-up of the loop per burst, not per frame.
        self._from_threads = LoopBatch(self.loop, self._enqueue_all)

    # --- outgoing (send() may be called from any thread) -------------------------------------

    def send(self, frame: dict) -> None:
        try:
            text = fit_frame(frame, self.ctx.settings.max_frame_bytes)
        except ProtocolError as exc:
            text = fit_frame(error_frame(ErrorCode.UNKNOWN_ERROR, exc.message))
        if threading.get_ident() == self.loop_thread:
            self._enqueue(text)
        else:
            self._from_threads.post(text)

    def _enqueue_all(self, texts: list[str]) -> None:
        for text in texts:
            self._enqueue(text)

    def fatal(self, code: ErrorCode, message: str, details: dict | None = None) -> None:
        """Send an error frame, then close (any thread)."""
        self.send(error_frame(code, message, details))
        close = TRY_LATER if code == ErrorCode.CONCURRENCY_LIMIT else POLICY
        if threading.get_ident() == self.loop_thread:
            self._close_after_flush(close)
        else:
            try:  # after the error frame: its delivery was scheduled before this, and the loop runs callbacks in order
                self.loop.call_soon_threadsafe(self._close_after_flush, close)
            except RuntimeError:
                pass

    def _enqueue(self, text: str) -> None:
        if self.closing:
            return
        if self.outbox.qsize() >= self.ctx.settings.max_outbox_frames:
            log.warning("client_too_slow", session_id=self.session.session_id if self.session else None,
                        frames=self.outbox.qsize())
            self.closing = True
            self.close_code = POLICY
            self.outbox.put_nowait(_CLOSE)
            if self.session is not None:
                self.session.shutdown("the client was too slow to read its frames")
            return
        self.outbox.put_nowait(text)

    def _close_after_flush(self, code: int) -> None:
        if not self.closing:
            self.closing = True
            self.close_code = code
            self.outbox.put_nowait(_CLOSE)

    async def sender(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if item is _CLOSE:
                    await self.ws.close(self.close_code)
                    return
                await self.ws.send_text(item)
        except Exception:  # the client vanished mid-send: the receive loop sees the disconnect
            self.closing = True

    # --- the connection's life --------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        sender = asyncio.ensure_future(self.sender())
        try:
            await self._serve()
        finally:
            if self.session is not None:
                self.session.shutdown()
            self._close_after_flush(NORMAL)
            try:
                await asyncio.wait_for(sender, timeout=5)
            except (asyncio.TimeoutError, Exception):
                sender.cancel()

    async def _serve(self) -> None:
        ctx = self.ctx
        try:
            principal = ctx.principal(self.ws.query_params.get("token"))
        except AuthError as exc:
            self.fatal(ErrorCode.AUTHENTICATION_ERROR, str(exc))
            await self._drain_until_closed()
            return
        if not ctx.slots.acquire(principal.key):
            self.fatal(ErrorCode.CONCURRENCY_LIMIT, f"concurrency limit: {ctx.slots.limit} sessions are already "
                                                     "open for this user; close one first")
            await self._drain_until_closed()
            return
        try:
            refused = await self.loop.run_in_executor(ctx.io, _budget_refusal, ctx, principal) \
                if principal.budget is not None else None
            if refused is not None:
                self.fatal(*refused)
                await self._drain_until_closed()
                return
            self.session = Session(ctx, principal, self.send, self.fatal)
            self.send(ready_frame())
            await self._receive()
        finally:
            ctx.slots.release(principal.key)

    async def _drain_until_closed(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
        except (WebSocketDisconnect, RuntimeError):
            return

    async def _receive(self) -> None:
        session = self.session
        limit = self.ctx.settings.max_frame_bytes
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            if self.closing:
                continue
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            try:
                frame = parse_client_frame(raw, limit)
            except ProtocolError as exc:
                if "limit" in exc.details:
                    self.fatal(exc.code, exc.message, exc.details)
                    self.close_code = TOO_BIG
                else:
                    self.send(error_frame(exc.code, exc.message, exc.details))
                continue
            if isinstance(frame, Ping):
                self.send(pong_frame(frame.timestamp))
            elif isinstance(frame, ToolResultFrame):
                outcome = session.deliver_tool_result(frame)
                if outcome == "unknown":
                    self.send(error_frame(ErrorCode.PROTOCOL_ERROR, f"no tool call {frame.call_id[:100]!r} is "
                                                                    "waiting for a result", {"callId": frame.call_id[:100]}))
                elif outcome == "malformed":
                    self.send(error_frame(ErrorCode.TOOL_EXECUTION_ERROR, f"tool result {frame.call_id[:100]!r} "
                                                                          f"is malformed: {frame.malformed}",
                                          {"callId": frame.call_id[:100]}))
            elif isinstance(frame, Control):
                if frame.action == "close":
                    session.shutdown("the client closed the session")
                    self._close_after_flush(NORMAL)
                elif frame.action != "end_input":
                    self.send(error_frame(ErrorCode.PROTOCOL_ERROR, f"unknown control action {frame.action[:50]!r}"))
            elif isinstance(frame, Ignored):
                pass
            else:
                session.submit(frame)


def _budget_refusal(ctx: ServerContext, principal: Any) -> tuple | None:
    """(code, message, details) when the user's window budget is already spent (run on a thread)."""
    try:
        UserBudget(ctx.store, principal).check()
    except WindowExhausted as exc:
        return ErrorCode.BUDGET_EXCEEDED, str(exc), exc.details()
    except StoreError as exc:
        return ErrorCode.SESSION_ERROR, f"the session store failed ({type(exc).__name__})", None
    return None


async def websocket_endpoint(websocket: WebSocket) -> None:
    """``/ws``: one Chucky session per connection."""
    await _Connection(websocket, websocket.app.state.convo).run()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token")


def _not_found(session_id: str) -> JSONResponse:
    return JSONResponse({"error": {"code": str(ErrorCode.SESSION_ERROR), "message": f"session {session_id!r} not found"}},
                        status_code=404)


def _session_view(stored: Any) -> dict:
    from ..usage import CumulativeUsage

    usage = CumulativeUsage.from_dict(stored.state["own_usage"]) if stored.state.get("own_usage") else None
    return {
        "sessionId": stored.id,
        "model": stored.state.get("model"),
        "createdAt": stored.created.isoformat(),
        "updatedAt": stored.updated.isoformat(),
        "messageCount": len(stored.messages),
        "totalCostUsd": float(usage.total_cost_usd) if usage is not None else 0.0,
        "messages": [m.to_dict() for m in stored.messages],
    }


async def session_endpoint(request: Request) -> JSONResponse:
    """``GET /v1/sessions/{id}``: a session's history and cost, for its owner only (anyone else: 404)."""
    ctx: ServerContext = request.app.state.convo
    session_id = request.path_params["session_id"]
    try:
        principal = ctx.principal(_bearer(request))
    except AuthError as exc:
        return JSONResponse({"error": {"code": str(ErrorCode.AUTHENTICATION_ERROR), "message": str(exc)}},
                            status_code=401)

    def load() -> dict | None:
        try:
            return _session_view(load_owned(ctx.store, principal, session_id))
        except SessionNotFound:
            return None

    view = await asyncio.get_running_loop().run_in_executor(ctx.io, load)
    return _not_found(session_id) if view is None else JSONResponse(view)


def routes() -> list:
    """The Chucky API's routes, for :func:`convo.server.app.build_app` to mount."""
    return [
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/v1/sessions/{session_id}", session_endpoint, methods=["GET"]),
    ]
