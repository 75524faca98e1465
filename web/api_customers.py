"""REST API for customers (seed 002: access limited to staff whose role needs it).

Staff of the roles that talk to or visit customers see phone, e-mail and address in full;
everyone else sees them masked. Every response that shows unmasked personal data writes an
access record in the same transaction as the read."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from engine import NotFound
from engine.audit.access import record_access
from handlers.customers import customer_cases, customer_dict, product_dict, search_customers
from handlers.models import Customer, CustomerProduct

from .auth import current_actor, services
from .case_view import sees_personal_data
from .openapi import route
from .params import int_arg

api_customers = Blueprint("api_customers", __name__, url_prefix="/api/customers")

PERSONAL_FIELDS = ["phone", "email", "address"]
CUSTOMER = {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "gender": {"type": "string"}, "age": {},
    "phone": {"type": "string"}, "email": {"type": "string"}, "address": {"type": "string"},
    "masked": {"type": "boolean", "description": "true when phone, e-mail and address are masked"}}}




def _record_views(session: Any, actor: Any, rows: list[Customer], route_name: str) -> None:
    for row in rows:
        record_access(session, actor, f"customer {row.id}: {', '.join(PERSONAL_FIELDS)}",
                      detail={"customer_id": row.id, "fields": PERSONAL_FIELDS, "route": route_name})


@route(api_customers, "", "GET", "Customers (search by name, phone or id; by phone only for roles that see "
       "phone numbers); contact details masked unless the caller's role needs them", params={
           "q": {"type": "string", "description": "name, phone digits or customer id"},
           "limit": {"type": "integer"}, "offset": {"type": "integer"}})
def list_customers() -> Response:
    actor = current_actor()
    unmasked = sees_personal_data(actor)  # the one masking rule (web/case_view.py)
    limit, offset = int_arg("limit", 20, 1, 200), int_arg("offset", 0, 0, 10**9)
    db = services().db
    with (db.write() if unmasked else db.read()) as s:
        rows, total = search_customers(s, request.args.get("q", ""), limit, offset, by_phone=unmasked)
        if unmasked:
            _record_views(s, actor, rows, "GET /api/customers")
        items = [customer_dict(r, masked=not unmasked) for r in rows]
    return jsonify({"items": items, "total": total, "limit": limit, "offset": offset, "masked": not unmasked})


@route(api_customers, "/<int:customer_id>", "GET", "A customer with products and cases; contact details "
       "masked unless the caller's role needs them", responses={200: "object", 404: "Error"})
def get_customer(customer_id: int) -> Response:
    actor = current_actor()
    unmasked = sees_personal_data(actor)  # the one masking rule (web/case_view.py)
    db = services().db
    with (db.write() if unmasked else db.read()) as s:
        row = s.get(Customer, customer_id)
        if row is None:
            raise NotFound(f"customer {customer_id} not found")
        if unmasked:
            _record_views(s, actor, [row], f"GET /api/customers/{customer_id}")
        body = customer_dict(row, masked=not unmasked)
        body["products"] = [product_dict(p) for p in s.scalars(
            select(CustomerProduct).where(CustomerProduct.customer_id == customer_id).order_by(CustomerProduct.id))]
        body["cases"] = customer_cases(s, customer_id)
    return jsonify(body)
