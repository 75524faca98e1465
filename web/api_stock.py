"""REST API for the warehouse: procurement requests and booking their goods in (seed 001 配件管理).

Booking an arrival puts the goods into stock and delivers ``stock_arrived`` to the repair or
installation case that raised the request, so a case waiting for parts moves on. Warehouse
staff and admins book; supervisors also read. The ``stock_arrived`` events sit in the
``warehouse`` lane of the bundled procedures, which is why dispatchers are not readers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from engine import Actor, Conflict, InvalidInput, NotFound
from handlers.models import CaseReference, Part, ProcurementRequest
from handlers.parts import receive_and_notify

from .auth import current_actor, services
from .openapi import SCHEMAS, route
from .params import int_arg

api_stock = Blueprint("api_stock", __name__, url_prefix="/api/procurement")

STOCK_READERS = frozenset({"warehouse", "admin", "supervisor"})
STOCK_CLERKS = frozenset({"warehouse", "admin"})
STATUSES = ("open", "received", "all")

_TEXT = {"type": "string", "nullable": True}
PROCUREMENT = {"type": "object", "required": ["request_id", "request_no", "status", "items"], "properties": {
    "request_id": {"type": "integer"}, "request_no": {"type": "string"}, "case_ref": _TEXT,
    "case_id": {"type": "integer", "nullable": True, "description": "the case holding case_ref"},
    "reason": {"type": "string"}, "location": {"type": "string"}, "status": {"type": "string"},
    "items": {"type": "array", "items": {"type": "object"}}, "expected_date": _TEXT, "requested_by": _TEXT,
    "created_at": _TEXT, "received_at": _TEXT,
    "delivered_to": {"type": "array", "items": {"type": "integer"},
                     "description": "after booking: the cases that took stock_arrived"}}}
SCHEMAS.setdefault("ProcurementRequest", PROCUREMENT)


def may_read_stock(actor: Actor | None) -> bool:
    return actor is not None and (actor.system or bool(actor.groups & STOCK_READERS))


def may_book_stock(actor: Actor | None) -> bool:
    return actor is not None and not actor.read_only and (actor.system or bool(actor.groups & STOCK_CLERKS))


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _dicts(session: Any, rows: list[ProcurementRequest]) -> list[dict[str, Any]]:
    """Requests with part names (the warehouse reads names, the lines carry numbers) and case ids."""
    parts = {i["part"] for r in rows for i in r.items or []}
    names = dict(session.execute(select(Part.part_no, Part.name).where(Part.part_no.in_(parts))).all()) if parts else {}
    refs = {r.case_ref for r in rows if r.case_ref}
    cases = dict(session.execute(select(CaseReference.ref, CaseReference.case_id)
                                 .where(CaseReference.ref.in_(refs))).all()) if refs else {}
    return [{"request_id": r.id, "request_no": r.request_no, "case_ref": r.case_ref, "case_id": cases.get(r.case_ref),
             "reason": r.reason, "location": r.location, "status": r.status,
             "items": [{"part": i["part"], "part_name": names.get(i["part"], ""), "quantity": i["quantity"]}
                       for i in r.items or []],
             "expected_date": _iso(r.expected_date), "requested_by": r.requested_by,
             "created_at": _iso(r.created_at), "received_at": _iso(r.received_at)} for r in rows]


def list_requests(status: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Open ones oldest first (the longest-waiting case first); received ones newest first."""
    q = select(ProcurementRequest)
    if status == "open":
        q = q.where(ProcurementRequest.status == "open").order_by(ProcurementRequest.created_at,
                                                                  ProcurementRequest.id)
    elif status == "received":
        q = q.where(ProcurementRequest.status == "received").order_by(ProcurementRequest.received_at.desc(),
                                                                      ProcurementRequest.id.desc())
    else:
        q = q.order_by(ProcurementRequest.id.desc())
    with services().db.read() as s:
        return _dicts(s, list(s.scalars(q.limit(limit).offset(offset))))


def book_arrival(request_id: int, actor: Actor) -> dict[str, Any]:
    """Book the goods of one request into stock and tell the waiting case; the request with
    ``delivered_to`` (the ids of the cases that took ``stock_arrived``)."""
    actor.require(STOCK_CLERKS, "booking a stock arrival")
    actor.require_writer()
    db = services().db
    with db.read() as s:
        req = s.get(ProcurementRequest, request_id)
        if req is None:
            raise NotFound(f"procurement request {request_id} not found")
        if req.status != "open":
            # receive() refuses this too (422); checked here first to answer 409 with when it happened
            when = f" at {req.received_at.isoformat()}" if req.received_at else ""
            raise Conflict(f"procurement request {req.request_no} is already {req.status}{when}; nothing was booked",
                           [{"field": "request_id", "message": f"{req.request_no} is {req.status}, not open"}])
    delivered = receive_and_notify(services().engine, request_id, actor)
    with db.read() as s:
        return {**_dicts(s, [s.get(ProcurementRequest, request_id)])[0], "delivered_to": delivered}


@route(api_stock, "", "GET", "Procurement requests (parts and products ordered for waiting cases or reorders)",
       params={"status": {"type": "string", "enum": list(STATUSES), "description": "default open"},
               "limit": {"type": "integer"}, "offset": {"type": "integer"}},
       responses={200: "object", 403: "Error", 422: "Error"})
def list_procurement() -> Response:
    actor = current_actor()
    assert actor is not None
    actor.require(STOCK_READERS, "reading procurement requests")
    status = request.args.get("status") or "open"
    if status not in STATUSES:
        raise InvalidInput(f"query parameter 'status' must be one of {', '.join(STATUSES)}",
                           [{"field": "status", "message": f"one of {', '.join(STATUSES)}"}])
    limit, offset = int_arg("limit", 100, 1, 500), int_arg("offset", 0, 0, 10**9)
    return jsonify({"items": list_requests(status, limit, offset), "status": status, "limit": limit,
                    "offset": offset})


@route(api_stock, "/<int:request_id>/receive", "POST",
       "Book the goods of a procurement request into stock; the waiting case gets stock_arrived",
       responses={200: "ProcurementRequest", 403: "Error", 404: "Error", 409: "Error"})
def receive_procurement(request_id: int) -> Response:
    actor = current_actor()
    assert actor is not None
    return jsonify(book_arrival(request_id, actor))
