"""Case references people can read on the phone: ``CMP-2026-000123`` (prefix, year, number).

Numbers count per prefix and year in China time; a counter row is taken with one conditional
``UPDATE … RETURNING`` so two cases started at the same moment never get the same number.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine import InvalidInput, ServiceContext

from .models import CaseLink, CaseReference, CaseReferenceCounter

PREFIXES = {"inquiry": "INQ", "complaint": "CMP", "dispatch": "REP", "installation": "INS", "emergency": "EMG"}
# Mainland China has one zone and no daylight saving: a fixed offset is exact.
CHINA = dt.timezone(dt.timedelta(hours=8), "CST")


def china_date(moment: dt.datetime) -> dt.date:
    return moment.astimezone(CHINA).date()


def insert_ignore(session: Session, model: Any, values: dict[str, Any]) -> None:
    """INSERT that does nothing when the primary key exists (both backends)."""
    dialect = session.get_bind().dialect.name
    stmt = (postgresql.insert(model) if dialect == "postgresql" else sqlite.insert(model)).values(**values)
    session.execute(stmt.on_conflict_do_nothing())


def next_number(session: Session, prefix: str, year: int) -> int:
    insert_ignore(session, CaseReferenceCounter, {"prefix": prefix, "year": year, "last": 0})
    return int(session.execute(
        update(CaseReferenceCounter)
        .where(CaseReferenceCounter.prefix == prefix, CaseReferenceCounter.year == year)
        .values(last=CaseReferenceCounter.last + 1)
        .returning(CaseReferenceCounter.last)
    ).scalar_one())


def new_reference(session: Session, procedure: str, now: dt.datetime, case_id: int | None = None) -> str:
    prefix = PREFIXES.get(procedure)
    if prefix is None:
        raise InvalidInput(f"unknown procedure '{procedure}' for a case reference",
                           [{"field": "procedure", "message": "one of " + ", ".join(PREFIXES)}])
    year = now.astimezone(CHINA).year
    ref = f"{prefix}-{year}-{next_number(session, prefix, year):06d}"
    session.add(CaseReference(ref=ref, procedure=procedure, case_id=case_id, created_at=now))
    session.flush()
    return ref


def reference_of_case(session: Session, case_id: int) -> str | None:
    return session.scalar(select(CaseReference.ref).where(CaseReference.case_id == case_id))


def assign_reference(ctx: ServiceContext, procedure: str) -> dict[str, Any]:
    """``case.assign_reference``: the case's reference (kept when the step runs again), the time
    of receipt, and whether intake already supplied everything the register form asks."""
    ref = reference_of_case(ctx.session, ctx.case_id)
    if ref is None:
        ref = _claim_reserved(ctx, procedure) or new_reference(ctx.session, procedure, ctx.now, ctx.case_id)
    received = ctx.data.get("received_at")
    return {
        "case_ref": ref,
        "received_at": received if isinstance(received, str) and received else ctx.now.isoformat(),
        "intake_complete": ctx.data.get("intake_complete") is True,
    }


def _claim_reserved(ctx: ServiceContext, procedure: str) -> str | None:
    """A linked case arrives with the reference its link reserved; taking it marks the link
    started in this same transaction, so a retried start can never create a second case."""
    linked = ctx.data.get("linked_from")
    if not isinstance(linked, dict) or not isinstance(linked.get("link_id"), int):
        return None
    link = ctx.session.get(CaseLink, linked["link_id"], with_for_update=True)
    if link is None or link.procedure != procedure:
        return None
    if link.target_case_id is not None and link.target_case_id != ctx.case_id:
        raise RuntimeError(f"link {link.id} already started case {link.target_case_id}")
    ref_row = ctx.session.get(CaseReference, link.target_ref)
    if ref_row is None or (ref_row.case_id is not None and ref_row.case_id != ctx.case_id):
        return None
    ref_row.case_id = ctx.case_id
    link.target_case_id = ctx.case_id
    link.status = "started"
    link.started_at = ctx.now
    link.error = None
    ctx.session.flush()
    return link.target_ref
