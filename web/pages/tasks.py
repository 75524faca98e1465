"""A task: its form rendered from the JSON Schema, errors beside the fields, drafts, claiming,
and the case context beside the form."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import get_timezone
from flask_babel import gettext as _
from sqlalchemy import select
from werkzeug.wrappers import Response

from engine import Conflict, FormInvalid
from engine.identity import may_work_task
from engine.models import CaseTask

from ..case_view import (
    earlier_answers,
    keep_masked_values,
    masked,
    personal_fields,
    record_personal_view,
    sees_personal_data,
)
from ..forms_render import parse_form, render_form
from ..i18n import current_language
from .common import actor, back, db, engine, staff_page

tasks = Blueprint("tasks", __name__)

# Bookkeeping for replays and the engine itself: on the case page, not beside a form.
INTERNAL_EVENTS = frozenset({"function_results", "engine_advanced"})


def _case_of_finished_task(task_id: str) -> int | None:
    with db().read() as s:
        return s.scalar(select(CaseTask.case_id).where(CaseTask.task_id == task_id).limit(1))


def _load(task_id: str) -> dict[str, Any] | Response:
    try:
        return engine().get_task(task_id, actor())
    except Conflict:
        case_id = _case_of_finished_task(task_id)
        flash(_("This task is no longer open."), "info")
        return redirect(url_for("cases.case", case_id=case_id) if case_id else url_for("inbox.index"))


def _page(task: dict[str, Any], values: dict[str, Any] | None = None, errors: list[dict[str, Any]] | None = None,
          status: int = 200) -> tuple[str, int]:
    me = actor()
    case = engine().get_case(task["instance"], me)
    history = engine().history(task["instance"], me)
    workable = may_work_task(me, frozenset(task["candidate_groups"]), task["assignee"])
    held_by_other = bool(task["assignee"]) and task["assignee"] != me.username
    # Prefilled values are case data too: masked for roles that do not need them (a value sent
    # back unchanged keeps the real one, see ``submit``).
    form_html = render_form(task.get("form"), masked(values if values is not None else task.get("data"), me), errors,
                            language=current_language(), tz=get_timezone(),
                            readonly=not workable or held_by_other, use_defaults=values is None)
    staff_history = [ev for ev in history if ev["type"] not in INTERNAL_EVENTS]
    names = {ev["task"]: ev["payload"].get("name") for ev in history
             if ev["type"] == "task_opened" and isinstance(ev.get("payload"), dict)}
    shown = personal_fields(case["data"]) + [f"history.{ev['seq']}.{f}" for ev in staff_history[-30:]
                                             for f in personal_fields(ev.get("payload"))] + \
        [f"form.{f}" for f in personal_fields(values if values is not None else task.get("data"))]
    record_personal_view(db(), me, f"task {task['id']} page", shown, task["instance"])
    return render_template(
        "task.html", task=task, case=case, case_data=masked(case["data"], me),
        answers=masked(earlier_answers(history), me), history=masked(staff_history[-30:][::-1], me),
        task_names=names, form_html=form_html, workable=workable, held_by_other=held_by_other,
        unmasked=sees_personal_data(me), errors=errors or [],
    ), status


@tasks.get("/tasks/<task_id>")
@staff_page
def task(task_id: str) -> Response | tuple[str, int]:
    loaded = _load(task_id)
    if isinstance(loaded, Response):
        return loaded
    return _page(loaded)


@tasks.post("/tasks/<task_id>")
@staff_page
def submit(task_id: str) -> Response | tuple[str, int]:
    loaded = _load(task_id)
    if isinstance(loaded, Response):
        return loaded
    me = actor()
    data = parse_form(loaded.get("form"), request.form, tz=get_timezone())
    try:
        data = keep_masked_values(data, loaded.get("data"), me)
    except FormInvalid as exc:
        return _page(loaded, data, exc.errors, 422)
    if request.form.get("action") == "draft":
        engine().save_draft(task_id, data, me)
        flash(_("Draft saved."), "success")
        return redirect(url_for("tasks.task", task_id=task_id))
    try:
        case = engine().complete_task(task_id, data, me)
    except FormInvalid as exc:
        return _page(loaded, data, exc.errors, 422)
    flash(_("Task “%(name)s” completed.", name=loaded["name"]), "success")
    for nxt in case.get("tasks", []):
        if may_work_task(me, frozenset(nxt["candidate_groups"]), nxt["assignee"]) and \
                nxt.get("assignee") in (None, me.username):
            return redirect(url_for("tasks.task", task_id=nxt["id"]))
    return redirect(url_for("cases.case", case_id=case["id"]))


@tasks.post("/tasks/<task_id>/claim")
@staff_page
def claim(task_id: str) -> Response:
    engine().claim(task_id, actor())
    flash(_("Task claimed."), "success")
    return back(url_for("tasks.task", task_id=task_id))


@tasks.post("/tasks/<task_id>/unclaim")
@staff_page
def unclaim(task_id: str) -> Response:
    engine().unclaim(task_id, actor())
    flash(_("Task returned to the group."), "success")
    return back(url_for("inbox.index"))
