"""REST API of the KPI reports under /api/reports (supervisors, admins, auditors, process owners)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request

from engine import Actor, InvalidInput
from reports import exports
from reports import kpis as K

from .auth import current_actor, services
from .openapi import route
from .params import int_arg

api_reports = Blueprint("api_reports", __name__, url_prefix="/api/reports")

REPORT_READERS = frozenset({"admin", "supervisor", "auditor", "process-owner"})

_TEXT = {"type": "string"}
FILTER_PARAMS: dict[str, dict[str, Any]] = {
    "from": {"type": "string", "description": "first day, YYYY-MM-DD or YYYY-MM (default: this month)"},
    "to": {"type": "string", "description": "last day, inclusive, YYYY-MM-DD or YYYY-MM"},
    "procedure": {"type": "string", "description": "process key: inquiry, complaint, dispatch, installation, ..."},
    "team": {"type": "string", "description": "group (lane) whose work is measured"},
    "person": {"type": "string", "description": "username whose work is measured"},
}


@dataclass(frozen=True)
class ReportQuery:
    period: K.Period
    filters: K.Filters


def require_reader(actor: Actor) -> None:
    actor.require(REPORT_READERS, "reading reports")


def reader() -> Actor:
    actor = current_actor()
    assert actor is not None
    require_reader(actor)
    return actor


def _arg(name: str) -> str | None:
    value = (request.args.get(name) or "").strip()
    if len(value) > 120:
        raise InvalidInput(f"query parameter '{name}' is too long", [{"field": name, "message": "at most 120 chars"}])
    return value or None


def query_from_request() -> ReportQuery:
    period = K.period_from_args(_arg("from"), _arg("to"))
    return ReportQuery(period, K.Filters(procedure=_arg("procedure"), team=_arg("team"), person=_arg("person")))




@route(api_reports, "/kpis", "GET", "Every KPI of the specification with its target, for a period and filters",
       params=FILTER_PARAMS, responses={200: "object", 422: "Error"})
def kpis() -> Response:
    reader()
    q = query_from_request()
    with services().db.read() as s:
        return jsonify(K.report(s, q.period, q.filters))


@route(api_reports, "/kpis/<kpi>/cases", "GET", "Drill-down: the cases (or technicians) behind a KPI's number",
       params={**FILTER_PARAMS,
               "part": {"type": "string", "enum": list(K.PARTS), "description": "which cases (default denominator)"},
               "policy": {"type": "string", "description": "SLA policy (sla_compliance only)"},
               "limit": {"type": "integer"}, "offset": {"type": "integer"}},
       responses={200: "object", 404: "Error", 422: "Error"})
def kpi_cases(kpi: str) -> Response:
    reader()
    q = query_from_request()
    with services().db.read() as s:
        out = K.drill(s, kpi, q.period, q.filters, part=request.args.get("part") or "denominator",
                      policy=_arg("policy"), limit=int_arg("limit", 200, 1, 1000),
                      offset=int_arg("offset", 0, 0, 10**9))
    return jsonify({"period": q.period.to_dict(), "filters": q.filters.to_dict(), **out})


@route(api_reports, "/trends", "GET", "Monthly series of the case KPIs over the period (12 months by default)",
       params=FILTER_PARAMS, responses={200: "object", 422: "Error"})
def trends() -> Response:
    reader()
    q = query_from_request()
    with services().db.read() as s:
        return jsonify({"period": q.period.to_dict(), "filters": q.filters.to_dict(),
                        **K.trends(s, q.period.months(), q.filters)})


@route(api_reports, "/technicians", "GET", "Per technician: first-visit fix, timeliness, rating, certification",
       params=FILTER_PARAMS, responses={200: "object", 422: "Error"})
def technicians() -> Response:
    reader()
    q = query_from_request()
    with services().db.read() as s:
        return jsonify({"period": q.period.to_dict(), "technicians": K.technician_table(s, q.period, q.filters)})


def export_response(doc: exports.ReportDoc, fmt: str) -> Response:
    if fmt not in exports.CONTENT_TYPES:
        raise InvalidInput(f"unknown format {fmt!r}", [{"field": "format", "message": "csv or xlsx"}])
    body = exports.render(doc, fmt)
    return Response(body, content_type=exports.CONTENT_TYPES[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{doc.filename}.{fmt}"'})


_EXPORT_PARAMS = {"format": {"type": "string", "enum": ["csv", "xlsx", "json"]},
                  "procedure": _TEXT, "team": _TEXT, "person": _TEXT}


@route(api_reports, "/monthly/<month>", "GET", "The monthly service report (seed 001) as CSV, XLSX or JSON",
       params=_EXPORT_PARAMS, responses={200: "object", 422: "Error"})
def monthly(month: str) -> Response:
    reader()
    return _export("monthly", K.Period.month(month))


@route(api_reports, "/quarterly/<quarter>", "GET", "The quarterly evaluation (seed 004) as CSV, XLSX or JSON",
       params=_EXPORT_PARAMS, responses={200: "object", 422: "Error"})
def quarterly(quarter: str) -> Response:
    reader()
    return _export("quarterly", K.Period.quarter(quarter))


def _export(kind: str, period: K.Period) -> Response:
    f = K.Filters(procedure=_arg("procedure"), team=_arg("team"), person=_arg("person"))
    fmt = (request.args.get("format") or "json").lower()
    with services().db.read() as s:
        doc = exports.monthly(s, period, f) if kind == "monthly" else exports.quarterly(s, period, f)
    if fmt == "json":
        return jsonify({"kind": doc.kind, "title": doc.title, "period": period.to_dict(), "filters": f.to_dict(),
                        "kpis": doc.kpis, "tables": [
                            {"key": t.key, "title": t.title, "headers": t.headers,
                             "rows": [[v for v, _fmt in row] for row in t.rows]} for t in doc.tables]})
    return export_response(doc, fmt)
