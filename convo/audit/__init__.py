"""Audit trails: every request, reply, tool call and tool result of a conversation tree, kept durably.

- :class:`JSONLAuditLog` appends one JSON line per event to a file, each
  line chained to the one before by its hash, with rotation;
  :func:`verify` (``convo logs verify FILE``) finds an edited, removed or
  reordered line and says where.
- :class:`StoreAuditLog` writes the same records to a table of the
  conversations' SQLite or PostgreSQL store, queryable by conversation and
  time.
- ``convo logs FILE|STORE-URL`` shows either as a tree of conversations
  with turns, tool calls and cost, or one conversation's timeline.

Both are listeners: give one to the root conversation and it hears every
sub-convo::

    from convo.audit import JSONLAuditLog, verify

    with JSONLAuditLog("audit.jsonl") as audit:
        lead = convo.Convo(listener=audit)
        lead.run("...")
    assert verify("audit.jsonl").ok

The record format (version 1) is in :mod:`convo.audit.events`, the file
and its hash chain in :mod:`convo.audit.jsonl`, the table in
:mod:`convo.audit.store`, the checks in :mod:`convo.audit.verify`, and
what ``convo logs`` prints in :mod:`convo.audit.view`. API keys never reach a record; ``redact=``
masks tool inputs and outputs and message text before anything is
written. An audit failure never breaks a turn unless the sink has
``strict=True``: then the send or tool call fails first
(:class:`AuditWriteFailed`).
"""

from __future__ import annotations

from .events import FORMAT_VERSION, AuditWriteFailed
from .jsonl import JSONLAuditLog, read_records
from .store import StoreAuditLog
from .verify import Finding, VerifyReport, verify

__all__ = [
    "FORMAT_VERSION",
    "AuditWriteFailed",
    "Finding",
    "JSONLAuditLog",
    "StoreAuditLog",
    "VerifyReport",
    "read_records",
    "verify",
]
