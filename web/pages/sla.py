"""SLA policies and business calendars for process owners (read-only for supervisors and auditors).

A saved policy becomes a new version when its rules change; running task clocks keep theirs.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from engine import InvalidInput, NotFound

from ..auth import services
from .common import actor, db, may_audit, may_deploy, may_supervise, require, staff_page

sla = Blueprint("sla", __name__)


def _service() -> Any:
    service = getattr(services(), "sla", None)
    if service is None:
        raise NotFound(_("SLA policies are not available in this installation."))
    return service


def _page(errors: list[dict[str, Any]] | None = None, entered: dict[str, Any] | None = None,
          status: int = 200, what: str = "policy") -> tuple[str, int]:
    me = actor()
    require(may_deploy(me) or may_supervise(me) or may_audit(me))
    service = _service()
    with db().read() as s:
        policies = [p.to_dict() for p in service.policies(s)]
        calendars = service.calendars(s)
    return render_template("sla.html", policies=policies, calendars=calendars, errors=errors or [],
                           errors_of=what, entered=entered or {}, may_edit=may_deploy(me)), status


@sla.get("/sla")
@staff_page
def index() -> tuple[str, int]:
    return _page()


@sla.post("/sla")
@staff_page
def save() -> Response | tuple[str, int]:
    me = actor()
    require(may_deploy(me))
    form = request.form
    entered = {k: form.get(k, "") for k in ("name", "target", "calendar", "warn_ratio", "escalation", "description")}
    errors: list[dict[str, Any]] = []
    data: dict[str, Any] = {"name": entered["name"].strip(), "target": entered["target"].strip(),
                            "calendar": entered["calendar"].strip(), "description": entered["description"].strip()}
    try:
        data["warn_ratio"] = float(entered["warn_ratio"]) if entered["warn_ratio"].strip() else 0.8
    except ValueError:
        errors.append({"field": "warn_ratio", "message": _("Enter a number.")})
    try:
        data["escalation"] = json.loads(entered["escalation"] or "[]")
    except ValueError as exc:
        errors.append({"field": "escalation", "message": _("Not valid JSON: %(error)s", error=str(exc))})
    if not errors:
        try:
            with db().write() as s:
                policy, changed = _service().set_policy(s, data, me)
        except InvalidInput as exc:
            errors = exc.errors or [{"field": "(form)", "message": exc.message}]
        else:
            if changed:
                flash(_("Policy %(name)s saved as version %(version)s.", name=policy.name, version=policy.version),
                      "success")
            else:
                flash(_("Policy %(name)s unchanged.", name=policy.name), "info")
            return redirect(url_for("sla.index") + f"#policy-{policy.name}")
    return _page(errors, entered, 422)


@sla.post("/sla/calendar")
@staff_page
def save_calendar_year() -> Response | tuple[str, int]:
    """Replace one year's public holidays and make-up working days (调休) of a business calendar."""
    me = actor()
    require(may_deploy(me))
    form = request.form
    entered = {k: form.get(k, "") for k in ("cal_name", "cal_year", "cal_holidays", "cal_makeup")}
    try:
        year = int(entered["cal_year"])
    except ValueError:
        return _page([{"field": "cal_year", "message": _("Enter a whole number.")}], entered, 422, "calendar")

    def dates(text: str) -> list[str]:
        return [d for d in text.replace(",", " ").split() if d]

    try:
        with db().write() as s:
            _service().set_calendar_year(s, entered["cal_name"].strip(), year, dates(entered["cal_holidays"]),
                                         dates(entered["cal_makeup"]), me)
    except InvalidInput as exc:
        return _page(exc.errors or [{"field": "(form)", "message": exc.message}], entered, 422, "calendar")
    flash(_("Calendar %(name)s: year %(year)s saved.", name=entered["cal_name"], year=year), "success")
    return redirect(url_for("sla.index") + "#calendars")
