"""Auditors step through a case event by event: the diagram marked as it stood after each event,
the data at that point and what changed since the event before (replayed from history)."""

from __future__ import annotations

from flask import Blueprint, render_template

from engine import NotFound

from ..case_view import masked, personal_fields, record_personal_view
from .common import actor, db, engine, staff_page

timetravel = Blueprint("timetravel", __name__)


@timetravel.get("/instances/<int:case_id>/at/<int:seq>")
@staff_page
def case_at(case_id: int, seq: int) -> str:
    from engine.audit import records

    me = actor()
    found = engine().get_case(case_id, me)  # NotFound / Forbidden as for the case page
    history = engine().history(case_id, me)
    if not history or not 1 <= seq <= history[-1]["seq"]:
        raise NotFound(f"case {case_id} has no event {seq}")
    state = records.case_at(db(), case_id, seq, seq - 1 if seq > 1 else None, engine().specs)
    markers = {k: state.get(k, []) for k in ("completed", "active", "waiting")}
    markers["error"] = state.get("failed", [])
    record_personal_view(db(), me, f"case {case_id} as of event {seq}", personal_fields(state.get("data")), case_id)
    return render_template(
        "timetravel.html", case=found, seq=seq, last_seq=history[-1]["seq"], state=state,
        event=masked(next(e for e in history if e["seq"] == seq), me), markers=markers,
        data=masked(state.get("data") or {}, me), diff=masked(state.get("diff") or [], me),
        events=masked(history, me),
    )
