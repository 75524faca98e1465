"""Process owners: processes and versions, bundle upload with errors against the element, the
bpmn-js modeler, and the form editor with a live preview."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import get_timezone
from flask_babel import gettext as _
from markupsafe import escape

from engine import DeploymentInvalid, NotFound

from ..auth import csrf_token
from ..forms_render import render_form
from ..i18n import current_language
from .common import actor, engine, may_audit, may_deploy, may_supervise, require, staff_page

processes = Blueprint("processes", __name__)

_FORM_REF = re.compile(r'name="formJsonSchemaFilename"\s+value="([^"]+)"')
_FORM_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.json$")


def _may_view() -> bool:
    me = actor()
    return may_deploy(me) or may_audit(me) or may_supervise(me)


@processes.get("/processes")
@staff_page
def index() -> str:
    require(_may_view())
    return render_template("processes.html", processes=engine().list_processes(), deploy_errors=None)


@processes.post("/processes")
@staff_page
def upload() -> Response | tuple[str, int]:
    me = actor()
    require(may_deploy(me))
    files = [(f.filename or "unnamed", f.read()) for f in request.files.getlist("files") if f.filename]
    try:
        deployed = engine().deploy(files, me)
    except DeploymentInvalid as exc:
        return render_template("processes.html", processes=engine().list_processes(), deploy_errors=exc.errors,
                               deploy_message=exc.message), 400
    if deployed:
        flash(_("Deployed: %(list)s", list=", ".join(f"{d['key']} v{d['version']}" for d in deployed)), "success")
    else:
        flash(_("Nothing changed: no new version was deployed."), "info")
    return redirect(url_for("processes.index"))


def forms_of(xml: str) -> list[str]:
    return sorted(set(_FORM_REF.findall(xml)))


@processes.get("/processes/<key>")
@staff_page
def process(key: str) -> str:
    require(_may_view())
    info = engine().get_process(key)
    version = request.args.get("version", type=int) or info["versions"][-1]["version"]
    filename, xml = engine().get_bpmn(key, version)
    return render_template("process.html", process=info, version=version, filename=filename, forms=forms_of(xml))


@processes.get("/processes/<key>/modeler")
@staff_page
def modeler(key: str) -> str:
    require(may_deploy(actor()))
    info = engine().get_process(key)
    filename, _xml = engine().get_bpmn(key)
    return render_template("modeler.html", process=info, filename=filename, csrf=csrf_token(),
                           bpmn_url=url_for("api.get_process_bpmn", key=key))


@processes.get("/processes/new/modeler")
@staff_page
def new_modeler() -> str:
    require(may_deploy(actor()))
    return render_template("modeler.html", process=None, filename="new-process.bpmn", csrf=csrf_token(),
                           bpmn_url="")


# --- forms ------------------------------------------------------------------------------------


def _processes_using(form_name: str) -> list[tuple[str, str]]:
    """(file name, XML) of the latest BPMN of every process whose user tasks use the form."""
    found = []
    for p in engine().list_processes():
        filename, xml = engine().get_bpmn(p["key"])
        if form_name in forms_of(xml):
            found.append((filename, xml))
    return found


@processes.route("/forms/<name>/edit", methods=["GET", "POST"])
@staff_page
def edit_form(name: str) -> Response | tuple[str, int]:
    me = actor()
    require(may_deploy(me))
    if not _FORM_NAME.match(name):
        raise NotFound(_("No such form."))
    errors: list[dict[str, Any]] = []
    if request.method == "POST":
        text = request.form.get("schema") or ""
        try:
            json.loads(text)
        except ValueError as exc:
            errors = [{"file": name, "element": None, "line": getattr(exc, "lineno", None),
                       "message": _("Not valid JSON: %(error)s", error=str(exc))}]
        if not errors:
            bundle = [(name, text.encode("utf-8")), *[(f, x.encode("utf-8")) for f, x in _processes_using(name)]]
            try:
                deployed = engine().deploy(bundle, me)
            except DeploymentInvalid as exc:
                errors = exc.errors
            else:
                if deployed:
                    flash(_("Form saved; new versions: %(list)s",
                            list=", ".join(f"{d['key']} v{d['version']}" for d in deployed)), "success")
                else:
                    flash(_("Form saved."), "success")
                return redirect(url_for("processes.edit_form", name=name))
    else:
        try:
            text = engine().get_form(name)
        except NotFound:
            text = json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name,
                               "type": "object", "properties": {}, "required": []}, indent=2)
    preview = _preview_html(text)
    used_by = [f for f, _x in _processes_using(name)]
    return render_template("form_edit.html", name=name, schema_text=text, preview=preview, errors=errors,
                           used_by=used_by), (400 if errors else 200)


def _preview_html(text: str) -> str:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        problem = _("Not valid JSON: %(error)s", error=str(exc))
        return f'<p class="field-error">{escape(problem)}</p>'
    if not isinstance(schema, dict):
        problem = _("A form schema is a JSON object.")
        return f'<p class="field-error">{escape(problem)}</p>'
    return str(render_form(schema, {}, None, language=current_language(), tz=get_timezone()))


@processes.post("/forms/preview")
@staff_page
def preview() -> Response:
    require(may_deploy(actor()))
    return Response(_preview_html(request.form.get("schema") or request.get_data(as_text=True)),
                    mimetype="text/html")
