"""REST API for SLA policies and business calendars: everyone logged in reads them, admins
and process owners change them (a change adds a policy version or a calendar version)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, jsonify, request

from engine import InvalidInput, Unavailable
from engine.sla import SlaService

from .auth import current_actor, services
from .openapi import route
from .params import json_object

api_sla = Blueprint("api_sla", __name__, url_prefix="/api/sla")

STEP = {"type": "object", "required": ["action"], "properties": {
    "after": {"type": "string", "description": "ISO 8601 duration after the breach, e.g. PT0S, PT4H"},
    "action": {"type": "string", "enum": ["notify_group", "raise_priority", "reassign_group"]},
    "group": {"type": "string"}, "levels": {"type": "integer", "minimum": 1}}}
POLICY_BODY = {"type": "object", "required": ["target"], "properties": {
    "target": {"type": "string", "description": "ISO 8601 duration, e.g. PT1H, P1D (one working day)"},
    "calendar": {"type": "string", "description": "'24x7' or the name of a business calendar"},
    "warn_ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},  # OpenAPI 3.0 form
    "escalation": {"type": "array", "items": STEP}, "description": {"type": "string"},
    "priority_targets": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "targets for cases of these priorities, e.g. {\"urgent\": \"PT12H\"}"}}}
CALENDAR_BODY = {"type": "object", "properties": {
    "timezone": {"type": "string"}, "hours": {"type": "object"}, "makeup_weekday": {"type": "string"},
    "years": {"type": "object"}}}
YEAR_BODY = {"type": "object", "required": ["holidays", "makeup_days"], "properties": {
    "holidays": {"type": "array", "items": {"type": "string", "format": "date"}},
    "makeup_days": {"type": "array", "items": {"type": "string", "format": "date"}}}}


def _sla() -> SlaService:
    sla = getattr(services(), "sla", None)
    if sla is None:
        raise Unavailable("SLA policies are not configured in this application")
    return sla


def _body() -> dict[str, Any]:
    return json_object(required=True)


@route(api_sla, "/policies", "GET", "SLA policies in force (newest version of each)", responses={200: "array"})
def list_policies() -> Response:
    current_actor()
    with services().db.read() as s:
        return jsonify([p.to_dict() for p in _sla().policies(s)])


@route(api_sla, "/policies/<name>", "GET", "One SLA policy with every version", responses={200: "object", 404: "Error"})
def get_policy(name: str) -> Response:
    current_actor()
    with services().db.read() as s:
        versions = _sla().versions(s, name)
        return jsonify({**versions[-1].to_dict(), "versions": [v.to_dict() for v in versions]})


@route(api_sla, "/policies/<name>", "PUT", "Set an SLA policy (a new version when its rules change)",
       body=POLICY_BODY, responses={200: "object", 201: "object", 403: "Error", 422: "Error"})
def put_policy(name: str) -> tuple[Response, int]:
    actor = current_actor()
    with services().db.write() as s:
        policy, changed = _sla().set_policy(s, _body(), actor, name=name)
    return jsonify({**policy.to_dict(), "changed": changed}), 201 if changed and policy.version == 1 else 200


@route(api_sla, "/calendars", "GET", "Business calendars ('24x7' is built in)", responses={200: "array"})
def list_calendars() -> Response:
    current_actor()
    with services().db.read() as s:
        return jsonify(_sla().calendars(s))


@route(api_sla, "/calendars/<name>", "GET", "One business calendar: hours, holidays and make-up days per year",
       responses={200: "object", 404: "Error"})
def get_calendar(name: str) -> Response:
    current_actor()
    with services().db.read() as s:
        return jsonify(_sla().calendar_info(s, name))


@route(api_sla, "/calendars/<name>", "PUT", "Replace a business calendar", body=CALENDAR_BODY,
       responses={200: "object", 403: "Error", 422: "Error"})
def put_calendar(name: str) -> Response:
    actor = current_actor()
    with services().db.write() as s:
        return jsonify(_sla().set_calendar(s, name, _body(), actor))


@route(api_sla, "/calendars/<name>/years/<int:year>", "PUT",
       "Replace one year's public holidays and make-up working days (调休) of a calendar", body=YEAR_BODY,
       responses={200: "object", 403: "Error", 422: "Error"})
def put_calendar_year(name: str, year: int) -> Response:
    actor = current_actor()
    body = _body()
    holidays, makeup = body.get("holidays"), body.get("makeup_days")
    if not isinstance(holidays, list) or not isinstance(makeup, list):
        raise InvalidInput("holidays and makeup_days are lists of dates",
                           [{"field": f, "message": "a list of YYYY-MM-DD dates"}
                            for f, v in (("holidays", holidays), ("makeup_days", makeup)) if not isinstance(v, list)])
    with services().db.write() as s:
        return jsonify(_sla().set_calendar_year(s, name, year, holidays, makeup, actor))


@route(api_sla, "/compliance", "GET", "SLA compliance per policy: closed task clocks met and breached",
       params={"since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"}},
       responses={200: "array"})
def compliance() -> Response:
    current_actor()
    bounds = {}
    for key in ("since", "until"):
        raw = request.args.get(key)
        if raw:
            try:
                value = dt.datetime.fromisoformat(raw)
            except ValueError:
                raise InvalidInput(f"'{key}' is not an ISO datetime", [{"field": key, "message": "ISO 8601"}]) from None
            bounds[key] = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    with services().db.read() as s:
        return jsonify(_sla().compliance(s, bounds.get("since"), bounds.get("until")))
