"""REST API under /api: thin views over the engine's public functions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from engine import InvalidInput
from engine.identity import authenticate, issue_token, revoke_token

from .auth import current_actor, services
from .case_view import keep_masked_values, sees_personal_data, shown
from .openapi import document, route
from .params import int_arg, json_object

api = Blueprint("api", __name__, url_prefix="/api")

OBJ = {"type": "object"}


def _shown(body: Any, what: str, case_id: int | None) -> Any:
    """A response with case data: masked for roles that do not need phone numbers and
    addresses, the view recorded for those that do (SPEC, seed 002)."""
    return shown(body, current_actor(), what, services().db, case_id)


def _form_data(task_id: str, data: Any) -> Any:
    """Form data as submitted, with fields sent back as their masked text keeping the real value."""
    actor = current_actor()
    if not isinstance(data, dict) or sees_personal_data(actor):  # nothing was shown masked: no read needed
        return data
    current = services().engine.get_task(task_id, actor).get("data") or {}
    return keep_masked_values(data, current, actor)


def _json_body() -> dict[str, Any]:
    return json_object()


@route(api, "/openapi.json", "GET", "This API's OpenAPI 3 document", auth=False)
def openapi_document() -> Response:
    return jsonify(document("Aftercare API", "1"))


@route(api, "/auth/token", "POST", "Exchange username and password for a bearer token", auth=False,
       body={"type": "object", "required": ["username", "password"],
             "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
       responses={200: "token", 401: "Error", 422: "Error"})
def auth_token() -> tuple[Response, int]:
    body = _json_body()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise InvalidInput("username and password are required",
                           [{"field": f, "message": "required string"} for f in ("username", "password")
                            if not isinstance(body.get(f), str)])
    svc = services()
    svc.login_throttle.check(username, request.remote_addr or "")
    with svc.db.write() as s:
        try:
            user = authenticate(s, username, password)
        except Exception:
            svc.login_throttle.failed(username, request.remote_addr or "")
            raise
        token = issue_token(s, user)
    svc.login_throttle.succeeded(username, request.remote_addr or "")
    return jsonify({"token": token, "token_type": "Bearer"}), 200


@route(api, "/auth/token", "DELETE", "Revoke the bearer token this request carries (sign out a client)",
       responses={204: "revoked", 401: "Error"})
def revoke_auth_token() -> tuple[str, int]:
    current_actor()  # a valid bearer token, or 401
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise InvalidInput("send the token to revoke as 'Authorization: Bearer <token>'",
                           [{"field": "Authorization", "message": "bearer token required"}])
    with services().db.write() as s:
        revoke_token(s, header[7:].strip())
    return "", 204


@route(api, "/me", "GET", "The calling user and their groups")
def me() -> Response:
    actor = current_actor()
    return jsonify({"username": actor.username, "groups": sorted(actor.groups)})


# --- processes ------------------------------------------------------------------------------


@route(api, "/processes", "GET", "Deployed processes (latest versions)")
def list_processes() -> Response:
    current_actor()
    return jsonify({"processes": services().engine.list_processes()})


@route(api, "/processes", "POST", "Deploy BPMN, DMN and form files as one bundle", multipart=True,
       body={"type": "object",
             "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}},
       responses={201: "deployed", 400: "Error"})
def deploy_processes() -> tuple[Response, int]:
    actor = current_actor()
    uploads = request.files.getlist("files")
    files = [(f.filename or "unnamed", f.read()) for f in uploads]
    deployed = services().engine.deploy(files, actor)
    return jsonify({"deployed": deployed}), 201


@route(api, "/processes/<key>", "GET", "A process and its versions", responses={200: "process", 404: "Error"})
def get_process(key: str) -> Response:
    current_actor()
    return jsonify(services().engine.get_process(key))


@route(api, "/processes/<key>/bpmn", "GET", "BPMN XML of a version (latest by default)",
       params={"version": {"type": "integer"}}, responses={200: "xml", 404: "Error"})
def get_process_bpmn(key: str) -> Response:
    current_actor()
    version = int_arg("version", 0) or None
    name, xml = services().engine.get_bpmn(key, version)
    return Response(xml, mimetype="application/xml", headers={"X-Filename": name})


@route(api, "/forms/<name>", "GET", "A deployed form's JSON Schema (latest)", responses={200: "object", 404: "Error"})
def get_form(name: str) -> Response:
    current_actor()
    return Response(services().engine.get_form(name), mimetype="application/json")


# --- instances ------------------------------------------------------------------------------


@route(api, "/instances", "POST", "Start a case of a process",
       body={"type": "object", "required": ["process"],
             "properties": {"process": {"type": "string"}, "data": OBJ}},
       responses={201: "Instance", 404: "Error", 422: "Error"})
def start_instance() -> tuple[Response, int]:
    actor = current_actor()
    body = _json_body()
    process = body.get("process")
    if not isinstance(process, str) or not process:
        raise InvalidInput("process is required", [{"field": "process", "message": "required string"}])
    case = services().engine.start_case(process, body.get("data"), actor)
    return jsonify(_shown(case, f"case {case['id']} (started)", case["id"])), 201


@route(api, "/instances/<int:case_id>", "GET", "A case", responses={200: "Instance", 404: "Error"})
def get_instance(case_id: int) -> Response:
    return jsonify(_shown(services().engine.get_case(case_id, current_actor()), f"case {case_id}", case_id))


@route(api, "/instances/<int:case_id>/history", "GET", "A case's history events",
       responses={200: "history", 404: "Error"})
def get_history(case_id: int) -> Response:
    events = services().engine.history(case_id, current_actor())
    return jsonify({"events": _shown(events, f"case {case_id} history", case_id)})


@route(api, "/instances/<int:case_id>/retry", "POST", "Run a failed service task again",
       responses={200: "Instance", 409: "Error"})
def retry_instance(case_id: int) -> Response:
    return jsonify(_shown(services().engine.retry(case_id, current_actor()), f"case {case_id} (retried)", case_id))


@route(api, "/instances/<int:case_id>/cancel", "POST", "Cancel a case (supervisors)",
       body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
       responses={200: "Instance", 409: "Error", 422: "Error"})
def cancel_instance(case_id: int) -> Response:
    actor = current_actor()
    # The engine checks the caller before the reason: a caller who may not cancel learns nothing more.
    case = services().engine.cancel(case_id, _json_body().get("reason"), actor)
    return jsonify(_shown(case, f"case {case_id} (cancelled)", case_id))


# --- tasks ----------------------------------------------------------------------------------


@route(api, "/tasks", "GET", "Open user tasks the caller may see",
       params={"scope": {"type": "string", "enum": ["mine", "group", "all"]}, "process": {"type": "string"},
               "limit": {"type": "integer"}, "offset": {"type": "integer"}})
def list_tasks() -> Response:
    actor = current_actor()
    tasks = services().engine.list_tasks(actor, request.args.get("scope", "all"), request.args.get("process"),
                                         int_arg("limit", 100), int_arg("offset", 0))
    return jsonify({"tasks": tasks})


@route(api, "/tasks/<task_id>", "GET", "A task with its form and data", responses={200: "Task", 404: "Error"})
def get_task(task_id: str) -> Response:
    task = services().engine.get_task(task_id, current_actor())
    return jsonify(_shown(task, f"task {task_id}", task["instance"]))


@route(api, "/tasks/<task_id>/claim", "POST", "Claim a task", responses={200: "Task", 409: "Error"})
def claim_task(task_id: str) -> Response:
    return jsonify(services().engine.claim(task_id, current_actor()))


@route(api, "/tasks/<task_id>/unclaim", "POST", "Give a claimed task back to its group",
       responses={200: "Task", 409: "Error"})
def unclaim_task(task_id: str) -> Response:
    return jsonify(services().engine.unclaim(task_id, current_actor()))


@route(api, "/tasks/<task_id>/assign", "POST", "Assign a task to a user (supervisors)",
       body={"type": "object", "properties": {"assignee": {"type": "string", "nullable": True}}},
       responses={200: "Task", 409: "Error"})
def assign_task(task_id: str) -> Response:
    actor = current_actor()
    assignee = _json_body().get("assignee")
    if assignee is not None and not isinstance(assignee, str):
        raise InvalidInput("assignee must be a username or null", [{"field": "assignee", "message": "expected string"}])
    return jsonify(services().engine.assign(task_id, assignee, actor))


@route(api, "/tasks/<task_id>/draft", "POST", "Save form data as a draft without completing",
       body={"type": "object", "properties": {"data": OBJ}}, responses={200: "Task", 409: "Error"})
def save_draft(task_id: str) -> Response:
    actor = current_actor()
    data = _form_data(task_id, _json_body().get("data") or {})
    return jsonify(services().engine.save_draft(task_id, data, actor))


@route(api, "/tasks/<task_id>/complete", "POST", "Complete a task with its form data",
       body={"type": "object", "properties": {"data": OBJ}},
       responses={200: "Instance", 403: "Error", 409: "Error", 422: "Error"})
def complete_task(task_id: str) -> Response:
    actor = current_actor()
    body = _json_body()
    case = services().engine.complete_task(task_id, _form_data(task_id, body.get("data", {})), actor)
    return jsonify(_shown(case, f"case {case['id']} (task {task_id} completed)", case["id"]))


# --- messages -------------------------------------------------------------------------------


@route(api, "/messages", "POST", "Deliver a message to the cases waiting for it",
       body={"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string"}, "correlation": OBJ, "payload": OBJ}},
       responses={202: "delivered", 422: "Error"})
def deliver_message() -> tuple[Response, int]:
    actor = current_actor()
    body = _json_body()
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("name is required", [{"field": "name", "message": "required string"}])
    delivered = services().engine.deliver_message(name, body.get("correlation"), body.get("payload"), actor)
    return jsonify({"delivered_to": delivered}), 202


# --- staff notices --------------------------------------------------------------------------


@route(api, "/notifications", "GET", "The caller's staff notices (escalations, reminders), newest first",
       params={"limit": {"type": "integer"}})
def list_notifications() -> Response:
    actor = current_actor()
    from sqlalchemy import select

    from engine.models import OutboxMessage

    limit = max(1, min(int_arg("limit", 50), 200))
    with services().db.read() as s:
        rows = s.scalars(select(OutboxMessage)
                         .where(OutboxMessage.channel == "staff", OutboxMessage.recipient == actor.username)
                         .order_by(OutboxMessage.id.desc()).limit(limit)).all()
        return jsonify({"notifications": [
            {"id": r.id, "instance": r.case_id, "subject": r.subject, "body": r.body, "template": r.template,
             "created_at": r.created_at.isoformat(), "delivered": r.status == "sent"} for r in rows]})
