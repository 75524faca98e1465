"""Technician assignment (seed 003: only certified technicians, 100 % 持证上岗).

A technician qualifies when their profile is a technician's, their account is active, they
have the skill, work in the region, and hold a certification still valid on the day of the
case. Among those, the one with the fewest open work orders gets the job, provided they are
below their own limit. When nobody qualifies the result is ``{"assigned": False}`` and the
diagram routes the order to a dispatcher for manual assignment.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, union
from sqlalchemy.orm import Session

from engine import FormInvalid, ServiceContext
from engine.models import Case, OpenTask, User

from .models import StaffCertification, StaffProfile, TechnicianAssignment
from .references import china_date

ACTIVE_CASE = ("running", "waiting", "error")


def region_covers(area: str, place: str) -> bool:
    """Whether a technician's or warehouse's area (``上海``) covers a case's region, which people
    write as precisely as they like (``上海市浦东新区``)."""
    area, place = (area or "").strip().lower(), (place or "").strip().lower()
    return bool(area) and place.startswith(area)


def open_loads(session: Session, usernames: list[str]) -> dict[str, int]:
    """Open work orders per technician: active cases assigned to them by ``technician.assign``
    or holding an open task claimed by (or routed to) them."""
    if not usernames:
        return {}
    active = select(Case.id).where(Case.status.in_(ACTIVE_CASE))
    assigned = (select(TechnicianAssignment.username.label("username"), TechnicianAssignment.case_id.label("case_id"))
                .where(TechnicianAssignment.username.in_(usernames), TechnicianAssignment.case_id.in_(active)))
    claimed = (select(OpenTask.assignee.label("username"), OpenTask.case_id.label("case_id"))
               .where(OpenTask.assignee.in_(usernames)))
    both = union(assigned, claimed).subquery()
    rows = session.execute(select(both.c.username, func.count()).group_by(both.c.username))
    loads = dict.fromkeys(usernames, 0)
    loads.update({u: int(n) for u, n in rows})
    return loads


def valid_certifications(session: Session, usernames: list[str], on: dt.date) -> dict[str, list[StaffCertification]]:
    out: dict[str, list[StaffCertification]] = {}
    for cert in session.scalars(select(StaffCertification).where(StaffCertification.username.in_(usernames),
                                                                 StaffCertification.valid_until >= on)
                                .order_by(StaffCertification.valid_until.desc())):
        out.setdefault(cert.username, []).append(cert)
    return out


def candidates(session: Session, skill: str, region: str, on: dt.date, certified_only: bool = True,
               lock: bool = False) -> list[dict[str, Any]]:
    """Every technician who could take the job, with their load, best first (free ones only)."""
    q = (select(StaffProfile, User.display_name).join(User, User.username == StaffProfile.username)
         .where(StaffProfile.technician.is_(True), User.active.is_(True)).order_by(StaffProfile.username))
    if lock:  # serialise concurrent assignments so two orders do not both see the same free slot
        q = q.with_for_update(of=StaffProfile)
    profiles = [(p, name) for p, name in session.execute(q).all()
                if (not skill or skill in (p.skills or [])) and (not region or region_covers(p.region, region))]
    names = [p.username for p, _ in profiles]
    certs = valid_certifications(session, names, on)
    loads = open_loads(session, names)
    out = []
    for profile, display in profiles:
        valid = certs.get(profile.username, [])
        if certified_only and not valid:
            continue
        load = loads.get(profile.username, 0)
        if load >= profile.max_open_orders:
            continue
        out.append({"username": profile.username, "name": display or profile.username, "region": profile.region,
                    "load": load, "certification": valid[0].name if valid else None,
                    "certified_until": valid[0].valid_until.isoformat() if valid else None})
    out.sort(key=lambda c: (c["load"], c["username"]))
    return out


def assign(ctx: ServiceContext, work_type: str = "repair", skill: str = "", region: str = "", priority: str = "",
           product_model: str = "", certified_only: bool = True, case_ref: str = "") -> dict[str, Any]:
    """``technician.assign``: {assigned, technician_id, technician_name, ...}."""
    on = china_date(ctx.now)
    found = candidates(ctx.session, str(skill or ""), str(region or ""), on, certified_only is not False, lock=True)
    if not found:
        return {"assigned": False, "technician_id": None, "technician_name": None, "certified": False,
                "reason": f"no free certified technician with skill '{skill}' in region '{region}'"}
    best = found[0]
    # A repeated assignment of the same case replaces the earlier one (it no longer counts as load).
    for old in ctx.session.scalars(select(TechnicianAssignment).where(TechnicianAssignment.case_id == ctx.case_id,
                                                                      TechnicianAssignment.work_type == work_type)):
        ctx.session.delete(old)
    ctx.session.add(TechnicianAssignment(case_id=ctx.case_id, case_ref=str(case_ref or ""), username=best["username"],
                                         work_type=work_type, assigned_at=ctx.now))
    ctx.session.flush()
    return {"assigned": True, "technician_id": best["username"], "technician_name": best["name"],
            "certified": best["certification"] is not None, "certification": best["certification"],
            "certified_until": best["certified_until"], "region": best["region"], "open_load": best["load"],
            "work_type": work_type, "priority": priority}


def check_manual_assignment(ctx: ServiceContext) -> None:
    """Completion check of the dispatcher's manual assignment: the technician named must be an
    active technician holding a certification valid today (seed 003: only certified technicians;
    the form's "certified" box is the dispatcher's word, this is the record's). Refuses with the
    field named; the dispatcher may still pick someone outside the region, skill or load limit."""
    assignment = ctx.data.get("assignment")
    username = str(assignment.get("technician_id") or "").strip() if isinstance(assignment, dict) else ""
    field = "assignment.technician_id"
    profile = ctx.session.scalar(select(StaffProfile).join(User, User.username == StaffProfile.username)
                                 .where(StaffProfile.username == username, StaffProfile.technician.is_(True),
                                        User.active.is_(True)))
    if profile is None:
        raise FormInvalid(f"'{username}' is not an active technician",
                          [{"field": field, "message": f"no active technician '{username}'"}])
    if not valid_certifications(ctx.session, [username], china_date(ctx.now)):
        raise FormInvalid(f"{username} holds no valid certification",
                          [{"field": field, "message": f"{username} holds no certification valid today"}])

