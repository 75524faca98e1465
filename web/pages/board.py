"""Supervisors' team board: open tasks by SLA state and assignee, and reassigning them."""

from __future__ import annotations

from collections import Counter

from flask import Blueprint, flash, render_template, request
from flask_babel import gettext as _
from sqlalchemy import select
from werkzeug.wrappers import Response

from engine.models import OpenTask, User, utcnow
from engine.sla import SlaClock

from ..case_view import masked, sla_state, sla_state_of
from ..inbox_query import STATES, InboxFilter, scope_counts
from ..inbox_query import inbox as query_inbox
from .common import actor, back, db, engine, may_supervise, require, staff_page

board = Blueprint("board", __name__)

COLUMNS = ("breached", "warning", "on_time", "paused", None)


@board.get("/board")
@staff_page
def index() -> str:
    me = actor()
    require(may_supervise(me))
    now = utcnow()
    matrix: dict[str, Counter[str | None]] = {}
    with db().read() as s:
        rows = s.execute(select(OpenTask.assignee, OpenTask.due_at, OpenTask.created_at, SlaClock.warn_at,
                                SlaClock.paused_since).outerjoin(SlaClock, SlaClock.task_id == OpenTask.id))
        for assignee, due, created, warn_at, paused_since in rows:
            state = sla_state_of(due, warn_at, paused_since is not None, created, now)
            matrix.setdefault(assignee or "", Counter())[state] += 1
        users = [(u, d) for u, d in s.execute(select(User.username, User.display_name).where(User.active)
                                                 .order_by(User.username))]
        state = request.args.get("state")
        f = InboxFilter(scope="all", process=request.args.get("process") or None,
                        state=state if state in STATES else None, page=request.args.get("page", 1, type=int) or 1)
        counts = scope_counts(s, me)
        result = query_inbox(s, me, f, now=now, counts=counts)
    for t in result.tasks:
        t["case"] = masked(t["case"], me)
        t["sla"] = sla_state(t, now)
    totals: Counter[str | None] = Counter()
    for c in matrix.values():
        totals.update(c)
    rows = sorted(matrix.items(), key=lambda kv: (kv[0] == "", -kv[1]["breached"], -sum(kv[1].values())))
    return render_template("board.html", rows=rows, totals=totals, columns=COLUMNS, result=result, f=f,
                           users=users, processes=engine().list_processes(), states=STATES)


@board.post("/board/assign")
@staff_page
def assign() -> Response:
    me = actor()
    require(may_supervise(me))
    task_id = request.form.get("task_id") or ""
    assignee = (request.form.get("assignee") or "").strip() or None
    engine().assign(task_id, assignee, me)
    if assignee:
        flash(_("Task assigned to %(user)s.", user=assignee), "success")
    else:
        flash(_("Task returned to its group."), "success")
    return back("/board")
