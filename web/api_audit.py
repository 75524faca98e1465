"""REST API for auditors: verify a case (hash chain and replay), see it as it stood after any
event, export it as a self-contained bundle, list access records; plus the read-only guard for
auditors and the recorder of denied requests."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from engine import Actor, Forbidden, InvalidInput, Unauthenticated
from engine.audit import access, bundle, chain, records

from .auth import current_actor, services
from .case_view import shown
from .openapi import OPERATIONS, route
from .params import int_arg

log = logging.getLogger("aftercare.audit")

api_audit = Blueprint("api_audit", __name__, url_prefix="/api")

AUDIT_EXPORTERS = frozenset({"auditor", "admin"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})




def _time_arg(name: str) -> dt.datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        return records.parse_time(raw)
    except ValueError:
        raise InvalidInput(f"query parameter '{name}' must be an ISO date or time",
                           [{"field": name, "message": "expected e.g. 2026-01-31 or 2026-01-31T08:00:00+08:00"}]) \
            from None


def _visible_case(case_id: int, actor: Actor) -> None:
    services().engine.get_case(case_id, actor)  # NotFound / Forbidden as for the case itself


def _record(actor: Actor | str | None, what: str, action: str, case_id: int | None = None,
            detail: dict[str, Any] | None = None) -> None:
    svc = services()
    with svc.db.write() as s:
        access.record_access(s, actor, what, case_id=case_id, detail=detail, action=action)
    sealer = getattr(svc, "audit_sealer", None)
    if sealer is not None:
        sealer()


@route(api_audit, "/instances/<int:case_id>/verify", "GET",
       "Verify a case: its hash chain, its links into the global chain, and a replay of its history",
       params={"replay": {"type": "boolean", "description": "also replay the case (default true)"}},
       responses={200: "verification", 404: "Error"})
def verify_instance(case_id: int) -> Response:
    actor = current_actor()
    _visible_case(case_id, actor)
    with_replay = request.args.get("replay", "1").lower() not in ("0", "false", "no")
    engine = services().engine
    report = records.verify_case(services().db, case_id, engine.specs, with_replay=with_replay)
    if (report.get("replay") or {}).get("divergence"):  # both sides of a divergence show case data
        report = shown(report, actor, f"verification of case {case_id} (divergence shown)", services().db, case_id)
    return jsonify(report)


@route(api_audit, "/instances/<int:case_id>/at/<int:seq>", "GET",
       "The case as it stood after event seq: tasks and states, data, elements done, active and waiting",
       params={"diff_from": {"type": "integer", "description": "also list the data changes since this event"}},
       responses={200: "case state", 404: "Error"})
def instance_at(case_id: int, seq: int) -> Response:
    actor = current_actor()
    _visible_case(case_id, actor)
    diff_from = int_arg("diff_from")
    state = records.case_at(services().db, case_id, seq, diff_from, services().engine.specs)
    # As on the time-travel page: masked for roles that do not need it, else the view recorded.
    return jsonify(shown(state, actor, f"case {case_id} as of event {seq}", services().db, case_id))


@route(api_audit, "/instances/<int:case_id>/export", "GET",
       "A self-contained audit bundle of the case (definitions, events, hashes, state) for offline verification",
       responses={200: "bundle", 404: "Error"})
def export_instance(case_id: int) -> Response:
    actor = current_actor()
    actor.require(AUDIT_EXPORTERS, "exporting a case")
    svc = services()
    with svc.db.write() as s:
        data = bundle.export_case(s, case_id, actor.username, list(svc.engine.specs.functions))
        access.record_access(s, actor, f"export of case {case_id}", case_id=case_id, action=access.EXPORT,
                             detail={"events": len(data["events"]), "bundle_sha256": data["bundle_sha256"]})
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return Response(body, mimetype="application/json",
                    headers={"Content-Disposition": f'attachment; filename="case-{case_id}-audit.json"'})


@route(api_audit, "/audit/access", "GET", "Access records (auditors): views of personal data, exports, denials",
       params={"actor": {"type": "string"}, "action": {"type": "string", "enum": list(access.ACTIONS)},
               "case": {"type": "integer"}, "since": {"type": "string", "format": "date-time"},
               "until": {"type": "string", "format": "date-time"}, "limit": {"type": "integer"},
               "offset": {"type": "integer"}},
       responses={200: "access records", 403: "Error"})
def list_access_records() -> Response:
    actor = current_actor()
    with services().db.read() as s:
        return jsonify(access.list_access(
            s, actor, who=request.args.get("actor") or None, action=request.args.get("action") or None,
            case_id=int_arg("case"), since=_time_arg("since"), until=_time_arg("until"),
            limit=int_arg("limit") or 100, offset=int_arg("offset") or 0))


@route(api_audit, "/audit/head", "GET",
       "Heads of the global chains (events, access records) and how many records wait to be sealed",
       responses={200: "heads", 403: "Error"})
def chain_heads() -> Response:
    actor = current_actor()
    actor.require(AUDIT_EXPORTERS, "reading the audit ledger")
    with services().db.read() as s:
        return jsonify(chain.heads(s))


# --- auditors change nothing ------------------------------------------------------------------


@functools.cache
def _public_rules() -> frozenset[tuple[str, str]]:
    return frozenset((op.method, op.rule) for op in OPERATIONS if not op.auth)


@api_audit.before_app_request
def read_only_guard() -> None:
    """Refuse every state-changing API request of a read-only (auditor) account, whatever the route."""
    if request.method in SAFE_METHODS or not request.path.startswith("/api/") or request.url_rule is None:
        return
    if request.path.startswith("/api/auth/") or (request.method, request.url_rule.rule) in _public_rules():
        return
    try:
        actor = current_actor(optional=True)
    except (Unauthenticated, Forbidden):
        return  # the view reports it (and the denial is recorded there)
    if actor is not None and actor.read_only:
        raise Forbidden("auditors have read-only access")


# --- denied requests --------------------------------------------------------------------------


def record_denied(exc: Exception) -> None:
    """``Services.on_denied``: record who was refused what (401 and 403), in its own transaction."""
    try:
        actor = g.get("actor")
        status = getattr(exc, "status", None) or getattr(exc, "code", None)
        detail: dict[str, Any] = {"status": status, "method": request.method, "path": request.path,
                                  "reason": (getattr(exc, "message", None) or getattr(exc, "description", None)
                                             or str(exc))[:300],
                                  "ip": request.remote_addr}
        if actor is None:
            body = request.get_json(silent=True) if request.is_json else None
            if isinstance(body, dict) and isinstance(body.get("username"), str):
                detail["username"] = body["username"][:80]
        view_args = request.view_args or {}
        case_id = view_args.get("case_id") if isinstance(view_args.get("case_id"), int) else None
        _record(actor.username if actor is not None else "anonymous", f"{request.method} {request.path}"[:500],
                access.DENIED, case_id, detail)
    except Exception:  # recording must never turn a 403 into a 500
        log.exception("could not record a denied request")
