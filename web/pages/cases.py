"""A case: its diagram with completed, active and waiting elements, data, history, linked cases,
timers and SLA state; starting a new case."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from engine import EngineError, InvalidInput
from engine.identity import may_work_task
from handlers.links import linked_case_ids

from ..case_view import (
    linked_cases,
    masked,
    pending_timers,
    personal_fields,
    record_personal_view,
    sees_personal_data,
    shown,
    sla_state,
)
from .common import actor, db, engine, may_audit, may_start_cases, may_supervise, may_work, require, staff_page

cases = Blueprint("cases", __name__)

_SLA_RANK = {"breached": 3, "warning": 2, "on_time": 1}


def worst_sla(tasks: list[dict[str, Any]]) -> str | None:
    states = [s for s in (sla_state(t) for t in tasks) if s]
    return max(states, key=lambda s: _SLA_RANK.get(s, 0)) if states else None


@cases.get("/instances/<int:case_id>")
@staff_page
def case(case_id: int) -> str:
    me = actor()
    found = engine().get_case(case_id, me)
    history = engine().history(case_id, me)
    markers = engine().element_states(case_id)
    links = []
    with db().read() as s:  # links the procedures made (handlers/links.py) and any listed in the data
        linked = list(dict.fromkeys([*linked_case_ids(s, case_id), *linked_cases(found["data"])]))
    for other in linked:
        try:
            c = engine().get_case(other, me)
            links.append({"id": other, "process": c["process"], "status": c["status"], "visible": True})
        except EngineError:
            links.append({"id": other, "visible": False})
    names = {ev["task"]: ev["payload"].get("name") for ev in history
             if ev["type"] == "task_opened" and isinstance(ev.get("payload"), dict)}
    visible_specs = {t["spec"] for t in found["tasks"]}
    # Open steps of other groups: named, so everyone sees where the case stands, but not linked.
    elsewhere = [names.get(spec) or spec for spec in markers["active"] if spec not in visible_specs]
    for t in found["tasks"]:
        t["sla"] = sla_state(t)
        t["workable"] = may_work_task(me, frozenset(t["candidate_groups"]), t["assignee"])
    record_personal_view(db(), me, f"case {case_id} page", personal_fields(found["data"]) + [
        f"history.{ev['seq']}.{f}" for ev in history for f in personal_fields(ev.get("payload"))], case_id)
    return render_template(
        "case.html", case=found, case_data=masked(found["data"], me), history=masked(history[::-1], me),
        markers=markers, timers=pending_timers(db(), case_id), links=links, task_names=names, elsewhere=elsewhere,
        case_sla=worst_sla(found["tasks"]), unmasked=sees_personal_data(me),
        may_retry=may_work(me) and found["status"] == "error",
        may_cancel=may_supervise(me) and found["status"] not in ("completed", "cancelled"),
    )


@cases.get("/instances/<int:case_id>/verify")
@staff_page
def verify(case_id: int) -> str:
    """The case's hash chain, its seal in the global chain and a replay of its history, checked now."""
    from engine.audit import records

    me = actor()
    found = engine().get_case(case_id, me)  # NotFound / Forbidden as for the case page
    report = records.verify_case(db(), case_id, engine().specs)
    if (report.get("replay") or {}).get("divergence"):  # both sides of a divergence show case data
        report = shown(report, me, f"verification of case {case_id} (divergence shown)", db(), case_id)
    return render_template("verify.html", case=found, report=report, may_export=may_audit(me))


@cases.post("/instances/<int:case_id>/retry")
@staff_page
def retry(case_id: int) -> Response:
    me = actor()
    if engine().retry(case_id, me)["status"] == "error":  # the step ran and failed again
        incident = next((ev["payload"] for ev in reversed(engine().history(case_id, me)) if ev["type"] == "incident"),
                        {})
        flash(_("The step failed again: %(message)s", message=incident.get("message", "")), "error")
    else:
        flash(_("The failed step was run again."), "success")
    return redirect(url_for("cases.case", case_id=case_id))


@cases.post("/instances/<int:case_id>/cancel")
@staff_page
def cancel(case_id: int) -> Response:
    require(may_supervise(actor()))
    reason = (request.form.get("reason") or "").strip()
    if not reason:
        raise InvalidInput(_("Give a reason for cancelling the case."), [{"field": "reason", "message": "required"}])
    engine().cancel(case_id, reason[:500], actor())
    flash(_("Case cancelled."), "success")
    return redirect(url_for("cases.case", case_id=case_id))


@cases.get("/instances/new")
@staff_page
def new_case() -> str:
    require(may_start_cases(actor()))
    return render_template("new_case.html", processes=engine().startable_processes(actor()))


@cases.post("/instances/new")
@staff_page
def start_case() -> Response:
    me = actor()
    require(may_start_cases(me))
    key = request.form.get("process") or ""
    started = engine().start_case(key, {}, me)
    flash(_("Case %(id)s started.", id=started["id"]), "success")
    for t in started.get("tasks", []):
        if may_work_task(me, frozenset(t["candidate_groups"]), t["assignee"]):
            return redirect(url_for("tasks.task", task_id=t["id"]))
    return redirect(url_for("cases.case", case_id=started["id"]))
