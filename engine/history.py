"""History events and their per-case hash chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

GENESIS = "0" * 64

# Events that record what a command was given (replay feeds them back in) ...
INPUT_EVENT_TYPES = frozenset({"case_started", "task_completed", "message_delivered", "timer_fired", "retried",
                               "case_cancelled"})
# ... and every event that starts a command of its own (replay splits commands by them).
COMMAND_EVENT_TYPES = INPUT_EVENT_TYPES | {"task_claimed", "task_unclaimed", "task_assigned", "task_draft_saved",
                                           "engine_advanced"}


# json.dumps with options builds an encoder on every call; this one is built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode


def canonical(event: dict[str, Any]) -> str:
    return _CANONICAL(event)


def event_hash(prev_hash: str, case_id: int, seq: int, type_: str, at: dt.datetime, actor: str | None,
               task_id: str | None, task: str | None, payload: dict[str, Any]) -> str:
    """The chain hash of an event: SHA-256 of the previous hash and the event's canonical JSON
    (sorted keys: actor, at, case, payload, seq, task, task_id, type)."""
    return chain_hash(prev_hash, case_id, seq, type_, at.astimezone(dt.UTC).isoformat(), actor, task_id, task,
                      canonical(payload))


_encode_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) does to a str


def _quote(value: str | None) -> str:
    return "null" if value is None else _encode_string(value)


def chain_hash(prev_hash: str, case_id: int, seq: int, type_: str, at_iso: str, actor: str | None,
               task_id: str | None, task: str | None, payload_json: str) -> str:
    """``event_hash`` for a payload already in canonical JSON (what the command path stores),
    so the payload is serialized once."""
    q = _quote
    body = (f'{{"actor":{q(actor)},"at":{q(at_iso)},"case":{int(case_id)},"payload":{payload_json},'
            f'"seq":{int(seq)},"task":{q(task)},"task_id":{q(task_id)},"type":{q(type_)}}}')
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def event_dict(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq, "type": row.type, "at": row.at.isoformat(), "actor": row.actor,
        "task_id": row.task_id, "task": row.task, "payload": row.payload, "hash": row.hash,
        "prev_hash": row.prev_hash,
    }
