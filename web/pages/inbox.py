"""The inbox: my tasks and my groups' tasks, filtered, searched and paginated."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from ..case_view import masked, record_personal_view
from ..inbox_query import PAGE_SIZE, SCOPES, STATES, InboxFilter, scope_counts
from ..inbox_query import inbox as query_inbox
from .common import actor, db, engine, staff_page

inbox = Blueprint("inbox", __name__)

PRIORITIES = tuple(range(6))  # raised by SLA escalation steps


def _int(name: str, default: int | None) -> int | None:
    try:
        return int(request.args.get(name, ""))
    except ValueError:
        return default


@inbox.get("/")
@staff_page
def index() -> Response | str:
    me = actor()
    if me.read_only:
        return redirect(url_for("audit.cases"))
    scope = request.args.get("scope", "all")
    state = request.args.get("state")
    f = InboxFilter(
        scope=scope if scope in SCOPES else "all",
        process=request.args.get("process") or None,
        priority=_int("priority", None),
        state=state if state in STATES else None,
        search=(request.args.get("q") or "").strip()[:100] or None,
        page=max(1, _int("page", 1) or 1),
        page_size=PAGE_SIZE,
    )
    with db().read() as s:
        counts = scope_counts(s, me)
        result = query_inbox(s, me, f, counts=counts)
    shown = [f"case {t['instance']}.customer_phone" for t in result.tasks if t["case"].get("customer_phone")]
    record_personal_view(db(), me, "inbox", shown, None, {"cases": sorted({t["instance"] for t in result.tasks})})
    for task in result.tasks:
        task["case"] = masked(task["case"], me)
    return render_template("inbox.html", result=result, f=f, counts=counts, processes=engine().list_processes(),
                           priorities=PRIORITIES, states=STATES)
