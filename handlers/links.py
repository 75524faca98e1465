"""Linked cases: an inquiry that turns into a complaint or a repair order starts a new case.

A handler must not start another case inside its own command (that would be a second command
through the one door, in a transaction that is not yet committed). So ``case.link`` only
writes, in the source command's transaction:

- a ``case_links`` row (status ``pending``) with the start data, and
- the new case's reference, reserved now so the source case can show it at once.

After the source command commits, an ``on_commit`` hook (``install``) starts the pending links
of that case, each as its own command. The new case's ``case.assign_reference`` takes the
reserved reference and marks the link ``started`` in the same transaction that creates the
case; a link is claimed (``pending`` → ``starting``) by a conditional update before the start,
so two workers never start the same link. If the process dies between the two commits, the
link stays ``pending`` (or ``starting`` past its lease) and ``start_pending_links`` picks it up
again (``aftercare links resume`` runs it).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from sqlalchemy import or_, select, update

from engine import ServiceContext
from engine.identity import actor_for_username
from engine.models import utcnow

from .models import CaseLink
from .references import PREFIXES, new_reference

log = logging.getLogger("aftercare.links")

CLAIM_LEASE = dt.timedelta(minutes=5)
# Cases whose last command wrote links: the hook then has work to do (others cost nothing).
_dirty: set[int] = set()
_dirty_lock = threading.Lock()


def start_data(procedure: str, source_ref: str, source_case: int, link_id: int, customer: Any, product: Any,
               summary: str, channel: Any) -> dict[str, Any]:
    """What the new case starts with: the register form pre-filled, never ``intake_complete``
    (staff confirm the registration)."""
    data: dict[str, Any] = {
        "linked_from": {"case_ref": source_ref, "case_id": source_case, "link_id": link_id},
        "customer": customer if isinstance(customer, dict) else {},
        "product": product if isinstance(product, dict) else {},
    }
    if channel:
        data["channel"] = channel
    if procedure == "complaint":
        data["description"] = summary
    elif procedure == "dispatch":
        data["fault_description"] = summary
    elif procedure == "inquiry":
        data["question"] = summary
    else:
        data["summary"] = summary
    return data


def link(ctx: ServiceContext, procedure: str = "", source_ref: str = "", customer: Any = None, product: Any = None,
         summary: str = "") -> dict[str, Any]:
    """``case.link``: {case_ref, link_id, procedure}; the new case starts after this command commits."""
    if procedure not in PREFIXES:
        raise ValueError(f"cannot link to unknown procedure '{procedure}'")
    target_ref = new_reference(ctx.session, procedure, ctx.now)
    row = CaseLink(source_case_id=ctx.case_id, source_ref=str(source_ref or ""), procedure=procedure,
                   target_ref=target_ref, start_data={}, started_by=ctx.actor, status="pending", created_at=ctx.now)
    ctx.session.add(row)
    ctx.session.flush()
    row.start_data = start_data(procedure, row.source_ref, ctx.case_id, row.id, customer, product,
                                str(summary or ""), ctx.data.get("channel"))
    with _dirty_lock:
        _dirty.add(ctx.case_id)
    return {"case_ref": target_ref, "link_id": row.id, "procedure": procedure, "status": "pending"}


def _claim(engine: Any, link_id: int, now: dt.datetime) -> CaseLink | None:
    with engine.db.write() as s:
        claimed = s.execute(
            update(CaseLink).where(CaseLink.id == link_id, or_(
                CaseLink.status == "pending",
                (CaseLink.status == "starting") & (CaseLink.claimed_at < now - CLAIM_LEASE)))
            .values(status="starting", claimed_at=now, attempts=CaseLink.attempts + 1)
            .execution_options(synchronize_session=False)).rowcount
        return s.get(CaseLink, link_id) if claimed == 1 else None


def start_link(engine: Any, link_id: int) -> int | None:
    """Start one claimed-able link; returns the new case id (None when someone else has it)."""
    from engine import SYSTEM

    link_row = _claim(engine, link_id, utcnow())
    if link_row is None:
        return None
    try:
        with engine.db.read() as s:
            actor = actor_for_username(s, link_row.started_by) if link_row.started_by else SYSTEM
    except Exception:  # the agent's account is gone: the system starts it on their behalf
        actor = SYSTEM
    try:
        case = engine.start_case(link_row.procedure, dict(link_row.start_data), actor)
    except Exception as exc:
        log.exception("starting linked %s case %s failed", link_row.procedure, link_row.target_ref)
        with engine.db.write() as s:
            s.execute(update(CaseLink).where(CaseLink.id == link_id, CaseLink.target_case_id.is_(None))
                      .values(status="failed", error=str(exc)[:1000]))
        return None
    # Normally the new case's assign_reference marked the link already (same transaction as the
    # case); a diagram without that step gets it marked here.
    with engine.db.write() as s:
        s.execute(update(CaseLink).where(CaseLink.id == link_id, CaseLink.target_case_id.is_(None))
                  .values(status="started", target_case_id=int(case["id"]), started_at=utcnow()))
    return int(case["id"])


def start_pending_links(engine: Any, source_case_id: int | None = None, limit: int = 100) -> list[int]:
    """Start pending links (of one source case, or all); returns the ids of the new cases."""
    now = utcnow()
    with engine.db.read() as s:
        q = select(CaseLink.id).where(or_(CaseLink.status == "pending",
                                          (CaseLink.status == "starting") & (CaseLink.claimed_at < now - CLAIM_LEASE)))
        if source_case_id is not None:
            q = q.where(CaseLink.source_case_id == source_case_id)
        ids = list(s.scalars(q.order_by(CaseLink.id).limit(limit)))
    started = []
    for link_id in ids:
        case_id = start_link(engine, link_id)
        if case_id is not None:
            started.append(case_id)
    return started


def install(engine: Any) -> None:
    """Start the links a command wrote right after it commits (idempotent)."""
    if any(getattr(h, "__name__", "") == "start_links_after_commit" for h in engine.runtime.on_commit):
        return

    def start_links_after_commit(cmd: Any) -> None:
        with _dirty_lock:
            if cmd.case.id not in _dirty:
                return
            _dirty.discard(cmd.case.id)
        start_pending_links(engine, cmd.case.id)

    engine.runtime.on_commit.append(start_links_after_commit)


def links_of(session: Any, case_id: int) -> list[dict[str, Any]]:
    """Links from and to a case, for case views."""
    rows = session.scalars(select(CaseLink).where(or_(CaseLink.source_case_id == case_id,
                                                      CaseLink.target_case_id == case_id)).order_by(CaseLink.id))
    return [{"link_id": r.id, "source_case_id": r.source_case_id, "source_ref": r.source_ref,
             "procedure": r.procedure, "target_ref": r.target_ref, "target_case_id": r.target_case_id,
             "status": r.status} for r in rows]


def linked_case_ids(session: Any, case_id: int) -> list[int]:
    """The cases started from this one and the case this one was started from, oldest link first."""
    rows = session.execute(select(CaseLink.source_case_id, CaseLink.target_case_id)
                           .where(or_(CaseLink.source_case_id == case_id, CaseLink.target_case_id == case_id))
                           .order_by(CaseLink.id)).all()
    return [other for source, target in rows for other in (source, target) if other is not None and other != case_id]

