"""Read-only case browser (auditors; also admins and supervisors): every case, filterable and searchable."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from sqlalchemy import select

from engine.models import Case

from ..inbox_query import SEARCHED_KEYS, search_condition, summary_field
from .common import actor, db, engine, may_audit, may_supervise, require, staff_page

audit = Blueprint("audit", __name__)

PAGE_SIZE = 50
STATUSES = ("running", "waiting", "error", "completed", "cancelled")


@audit.get("/audit")
@staff_page
def cases() -> str:
    me = actor()
    require(may_audit(me) or may_supervise(me))
    process = request.args.get("process") or None
    status = request.args.get("status") if request.args.get("status") in STATUSES else None
    text = (request.args.get("q") or "").strip()[:100]
    page = max(1, request.args.get("page", 1, type=int) or 1)
    with db().read() as s:
        dialect = s.get_bind().dialect.name
        fields = [summary_field(dialect, k).label(k) for k in SEARCHED_KEYS]
        q = select(Case.id, Case.process_key, Case.version, Case.status, Case.created_at, Case.updated_at,
                   Case.started_by, *fields)
        if process:
            q = q.where(Case.process_key == process)
        if status:
            q = q.where(Case.status == status)
        if text:
            q = q.where(search_condition(s, text))
        rows = s.execute(q.order_by(Case.id.desc()).limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE)).all()
    return render_template("audit.html", rows=rows[:PAGE_SIZE], has_more=len(rows) > PAGE_SIZE, page=page,
                           process=process, status=status, q=text, statuses=STATUSES,
                           processes=engine().list_processes())
