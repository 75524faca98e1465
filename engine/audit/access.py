"""Access records: who viewed unmasked personal data, who exported a case, who was denied.

Callers record in their own transaction (``record_access(session, ...)``), so the record exists
exactly when what it describes happened. Each record carries the hash of its content and is
sealed into the "access" global chain (see ``chain.py``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import InvalidInput
from ..identity import Actor
from ..models import AccessRecord, utcnow
from .chain import access_hash

VIEW_PERSONAL_DATA = "view_personal_data"
EXPORT = "export"
DENIED = "denied"
ACTIONS = (VIEW_PERSONAL_DATA, EXPORT, DENIED)

AUDIT_READERS = frozenset({"auditor", "admin"})


def record_access(session: Session, actor: Actor | str | None, what: str, case_id: int | None = None,
                  detail: dict[str, Any] | None = None, action: str = VIEW_PERSONAL_DATA,
                  at: dt.datetime | None = None) -> AccessRecord:
    """Record that ``actor`` saw or did ``what`` (e.g. "customer 12: phone, address").

    Call it in the same transaction as the read it describes; ``detail`` is free JSON (ids,
    fields shown, status code). Personal data itself does not belong in ``detail``."""
    username = actor.username if isinstance(actor, Actor) else (actor or "anonymous")
    at = at or utcnow()
    what = what[:500]
    detail = _json_safe(detail or {})
    record = AccessRecord(at=at, actor=username[:80], action=action, what=what, case_id=case_id, detail=detail,
                          hash=access_hash(at, username[:80], action, what, case_id, detail))
    session.add(record)
    session.flush()
    return record


def access_dict(r: AccessRecord) -> dict[str, Any]:
    return {"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "action": r.action, "what": r.what,
            "case": r.case_id, "detail": r.detail or {}, "sealed": r.global_seq is not None}


def list_access(session: Session, actor: Actor, *, who: str | None = None, action: str | None = None,
                case_id: int | None = None, since: dt.datetime | None = None, until: dt.datetime | None = None,
                limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """Access records, newest first; auditors and administrators only."""
    actor.require(AUDIT_READERS, "reading access records")
    if action is not None and action not in ACTIONS:
        raise InvalidInput(f"unknown action '{action}'",
                           [{"field": "action", "message": f"one of {', '.join(ACTIONS)}"}])
    q = select(AccessRecord)
    if who:
        q = q.where(AccessRecord.actor == who)
    if action:
        q = q.where(AccessRecord.action == action)
    if case_id is not None:
        q = q.where(AccessRecord.case_id == case_id)
    if since is not None:
        q = q.where(AccessRecord.at >= since)
    if until is not None:
        q = q.where(AccessRecord.at < until)
    total = session.scalar(select(func.count()).select_from(q.subquery()))
    limit = max(1, min(int(limit), 1000))
    rows = session.scalars(q.order_by(AccessRecord.at.desc(), AccessRecord.id.desc()).limit(limit).offset(offset))
    return {"records": [access_dict(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def _json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))
