"""Chat events, fanned out: to every watcher in this process, and to the other replicas sharing the store.

:class:`ChatEvents` is the hub. Anything that changes a chat (a route, a
run) calls :meth:`ChatEvents.publish` after its transaction committed,
with the stream events for the chat's watchers, a control notice for the
runners (the chat's status, generation and worker: a run elsewhere that no
longer holds the chat stops; a chat that became pending wakes every
replica's acquisition) and a lifecycle event for the owner's ``/watch``
feed. Publishing never blocks on a watcher: sinks take events and return
at once (see ``chats_api``), and the bridge to other replicas sends from a
thread of its own.

Each event is serialised once, here, and shared by every watcher.

Bridges, by store:

- PostgreSQL: ``NOTIFY convo_chat_events`` (from a sender thread, many
  notices in one statement) and ``LISTEN`` on a connection of its own. A
  notice holds at most 8000 bytes: larger batches are split, a long text
  or argument delta is cut into several (deltas concatenate, so nothing
  changes for the watcher), and a ``message`` event too long for a notice
  goes as a reference that the receiving replica reads back from the
  database. Any other oversized event (a huge tool result part) is left
  out for remote watchers; its durable message follows.
- Redis: ``PUBLISH`` / ``SUBSCRIBE`` on ``{prefix}:chat-events``.
- SQLite and memory: none; events reach this process only.

A replica ignores its own notices (each carries the sender's origin id).
If the listening connection drops, it reconnects; watchers may miss the
events of that gap (the stream's snapshot on reconnect has the durable ones).

Thread-safe.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import uuid
from typing import Any, Callable, Sequence

from attrs import frozen

from ..._log import log
from ..chats_wire import dumps

__all__ = ["ChatEvents", "Event"]

CHANNEL = "convo_chat_events"
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
PG_PAYLOAD_LIMIT = 7900


@frozen
class Event:
    """A stream event serialised once: its JSON text, its type, the message id of a ``message`` event, and for
    a run's ``message_part`` events their number in the run (so a watcher's snapshot and live parts never overlap)."""

    text: str
    kind: str
    message_id: int | None = None
    digest: int = 0
    seq: int = 0

    @classmethod
    def of(cls, event: dict) -> "Event":
        text = dumps(event)
        message = event.get("message") if event.get("type") == "message" else None
        return cls(text, event.get("type", ""), message.get("id") if message else None, hash(text))


class ChatEvents:
    """The event hub of one server process (see the module docstring).

    Sinks: ``add_sink(sink)`` where ``sink.deliver(chat_id, events)`` and
    ``sink.deliver_owner(owner_id, frame_text)`` take events from any
    thread without blocking. Control listeners: ``on_control(fn)``,
    ``fn(chat_id, control)`` on the publishing thread (local) or the
    bridge's thread (remote).
    """

    def __init__(self, store: Any = None) -> None:
        self.origin = uuid.uuid4().hex
        self._store = store
        self._lock = threading.Lock()
        self._sinks: tuple = ()
        self._control: tuple = ()
        self._bridge = store.bridge() if store is not None else None

    def start(self) -> None:
        if self._bridge is not None:
            self._bridge.start(self._remote, self.origin)

    def stop(self) -> None:
        if self._bridge is not None:
            self._bridge.stop()

    def add_sink(self, sink: Any) -> None:
        with self._lock:
            self._sinks = self._sinks + (sink,)

    def remove_sink(self, sink: Any) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def on_control(self, fn: Callable[[str, dict], None]) -> None:
        with self._lock:
            self._control = self._control + (fn,)

    def publish(self, chat_id: str, events: Sequence[dict | Event] = (), *, control: dict | None = None,
                owner_id: str | None = None, watch: tuple[str, dict] | None = None) -> list[Event]:
        """Deliver to this process's sinks and listeners, and send to the other replicas. Any thread.

        ``watch`` is ``(kind, chat_json)`` for the owner's feed.
        """
        serialised = [e if isinstance(e, Event) else Event.of(e) for e in events]
        watch_frame = None
        if watch is not None and owner_id is not None:
            watch_frame = dumps({"type": "data", "data": {"kind": watch[0], "chat": watch[1]}})
        self._deliver(chat_id, serialised, control, owner_id, watch_frame)
        if self._bridge is not None:
            self._bridge.send(_payload(self.origin, chat_id, serialised, control, owner_id, watch_frame))
        return serialised

    def _deliver(self, chat_id: str, events: list[Event], control: dict | None, owner_id: str | None,
                 watch_frame: str | None) -> None:
        sinks = self._sinks
        if events:
            for sink in sinks:
                try:
                    sink.deliver(chat_id, events)
                except Exception:  # a sink must never stop a publisher
                    log.error("chat_event_sink_failed", exc_info=True)
        if watch_frame is not None:
            for sink in sinks:
                try:
                    sink.deliver_owner(owner_id, watch_frame)
                except Exception:
                    log.error("chat_event_sink_failed", exc_info=True)
        if control is not None:
            for fn in self._control:
                try:
                    fn(chat_id, control)
                except Exception:
                    log.error("chat_control_listener_failed", exc_info=True)

    def _remote(self, payload: str) -> None:
        """A notice from another replica (on the bridge's thread)."""
        try:
            d = json.loads(payload)
        except ValueError:
            log.warning("chat_event_unreadable", size=len(payload))
            return
        if not isinstance(d, dict) or d.get("o") == self.origin:
            return
        chat_id = d.get("c")
        events = []
        for e in d.get("e") or ():
            if isinstance(e, dict) and "ref" in e:
                found = self._read_message(chat_id, e["ref"])
                if found is not None:
                    events.append(Event.of(found))
            elif isinstance(e, dict):
                events.append(Event.of(e))
        watch = d.get("w")
        frame = dumps({"type": "data", "data": watch}) if isinstance(watch, dict) else None
        self._deliver(chat_id, events, d.get("ctl"), d.get("u"), frame)

    def _read_message(self, chat_id: str, message_id: int) -> dict | None:
        from ..chats_wire import message_event

        try:
            _, messages, _ = self._store.snapshot(None, chat_id)
        except Exception:
            return None
        for m in messages:
            if m.id == message_id:
                return message_event(m.public())
        return None


def _payload(origin: str, chat_id: str, events: list[Event], control: dict | None, owner_id: str | None,
             watch_frame: str | None) -> dict:
    """What a bridge sends: kept as parts so a bridge can split it (see :func:`split_payload`)."""
    return {"o": origin, "c": chat_id, "e": events, "ctl": control, "u": owner_id, "w": watch_frame}


#: Numbers every notice: PostgreSQL delivers identical payloads sent in one transaction once, and two
#: pieces of one long delta can be identical.
_notice_numbers = itertools.count()


def render(payload: dict, events: Sequence[str]) -> str:
    """A payload as JSON text, events embedded as they were serialised (not encoded twice)."""
    head = {"o": payload["o"], "n": next(_notice_numbers), "c": payload["c"]}
    if payload.get("ctl") is not None:
        head["ctl"] = payload["ctl"]
    if payload.get("w") is not None:
        head["u"] = payload["u"]
        head["w"] = json.loads(payload["w"])["data"] if isinstance(payload["w"], str) else payload["w"]
    text = dumps(head)
    return text[:-1] + ',"e":[' + ",".join(events) + "]}"


def split_payload(payload: dict, limit: int) -> list[str]:
    """A payload as notices of at most ``limit`` bytes each (see the module docstring for what is cut)."""
    base = len(render({**payload, "e": []}, []).encode())
    pieces: list[str] = []
    for event in payload["e"]:
        text = event.text
        if len(text.encode()) + base + 2 <= limit:
            pieces.append(text)
            continue
        pieces.extend(_shrink(event, limit - base - 2))
    out, batch, size = [], [], 0
    first = True
    for piece in pieces:
        n = len(piece.encode()) + 1
        if batch and size + n + base > limit:
            out.append(render(payload if first else {**payload, "ctl": None, "w": None}, batch))
            first = False
            batch, size = [], 0
        batch.append(piece)
        size += n
    if batch or first:
        out.append(render(payload if first else {**payload, "ctl": None, "w": None}, batch))
    return out


def _shrink(event: Event, room: int) -> list[str]:
    d = json.loads(event.text)
    if d.get("type") == "message":
        return [dumps({"ref": d["message"]["id"]})]
    part = (d.get("message_part") or {}).get("part") or {}
    key = "text" if part.get("text") else "args_delta" if part.get("args_delta") else None
    if d.get("type") != "message_part" or key is None:
        log.debug("chat_event_too_big_for_notify", type=d.get("type"), size=len(event.text))
        return []
    whole = part[key]
    overhead = len(event.text.encode()) - len(json.dumps(whole, ensure_ascii=False).encode())
    step = max(64, (room - overhead) // 6)  # worst case 6 bytes per character once JSON-escaped
    out = []
    for i in range(0, len(whole), step):
        piece = dict(d, message_part=dict(d["message_part"], part=dict(part, **{key: whole[i:i + step]})))
        out.append(dumps(piece))
    return out


class _SenderThread:
    """A daemon thread sending the queued payloads in order, in batches."""

    def __init__(self, name: str, send: Callable[[list[dict]], None]) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._send = send
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def put(self, payload: dict) -> None:
        if not self._stopped:
            self._queue.put(payload)

    def stop(self) -> None:
        self._stopped = True
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= 500:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = ...
                    break
            if batch:
                try:
                    self._send(batch)
                except Exception as exc:  # the store's errors carry no password
                    log.warning("chat_events_not_sent", count=len(batch), error=f"{type(exc).__name__}: {exc}")
            if item is None:
                return


class _Bridge:
    """What both bridges share: a sender thread for outgoing events, a listener thread for incoming ones.

    A subclass gives ``_send(batch)`` and ``_listen()`` (which sets
    ``_ready`` once subscribed, and runs until ``_stop`` is set).
    """

    def __init__(self, store: Any, sender_name: str, listener_name: str) -> None:
        self._store = store
        self._sender = _SenderThread(sender_name, self._send)
        self._listener_name = listener_name
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self, receive: Callable[[str], None], origin: str) -> None:
        self._receive = receive
        self._sender.start()
        self._listener = threading.Thread(target=self._listen, name=self._listener_name, daemon=True)
        self._listener.start()
        self._ready.wait(10)

    def send(self, payload: dict) -> None:
        self._sender.put(payload)

    def stop(self) -> None:
        self._stop.set()
        self._sender.stop()
        if self._listener is not None:
            self._listener.join(timeout=5)

    def _send(self, batch: list[dict]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _listen(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class PostgresBridge(_Bridge):
    """``NOTIFY``/``LISTEN`` on ``convo_chat_events`` (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store, "convo-chat-notify", "convo-chat-listen")

    def _send(self, batch: list[dict]) -> None:
        notices: list[str] = []
        for payload in batch:
            notices.extend(split_payload(payload, PG_PAYLOAD_LIMIT))
        self._store.notify(CHANNEL, notices)

    def _listen(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._store.connect()
                conn.execute(f"LISTEN {CHANNEL}")
                self._ready.set()
                while not self._stop.is_set():
                    for notice in conn.notifies(timeout=0.5, stop_after=1000):
                        self._receive(notice.payload)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("chat_events_listen_failed", error=str(self._store._error(exc))[:300])
                    self._stop.wait(0.5)
            finally:
                self._ready.set()
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass


class RedisBridge(_Bridge):
    """``PUBLISH``/``SUBSCRIBE`` on ``{prefix}:chat-events``."""

    def __init__(self, store: Any) -> None:
        super().__init__(store, "convo-chat-publish", "convo-chat-subscribe")
        self._channel = store.k("chat-events")

    def _send(self, batch: list[dict]) -> None:
        def publish() -> None:
            pipe = self._store.r.pipeline(transaction=False)
            for payload in batch:
                pipe.publish(self._channel, render(payload, [e.text for e in payload["e"]]))
            pipe.execute()

        self._store._call(publish)

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._store.r.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                self._ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._receive(data.decode() if isinstance(data, bytes) else data)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("chat_events_subscribe_failed",
                                error=f"{type(exc).__name__}: {self._store._scrub(exc)[:200]}")
                    self._stop.wait(0.5)
            finally:
                self._ready.set()
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

