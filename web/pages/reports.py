"""KPI dashboard: monthly trends with targets, SLA compliance per policy, the technician table,
drill-down to the cases behind a number, and the print-ready monthly report and quarterly
evaluation with their CSV and XLSX downloads."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from engine.models import Group, User
from reports import exports
from reports import kpis as K
from reports import labels as L

from ..api_reports import REPORT_READERS, export_response, query_from_request
from ..i18n import current_language
from .common import actor, db, require, staff_page

reports = Blueprint("reports", __name__)

TREND_MONTHS = 12
CARD_KEYS = K.KPI_KEYS


def _reader() -> None:
    me = actor()
    require(bool(me.groups & REPORT_READERS) or me.system)


def _helpers(lang: str) -> dict[str, Any]:
    return {
        "lang": lang,
        "kpi_name": lambda key: L.kpi_name(key, lang),
        "word": lambda key: L.word(key, lang),
        "proc_name": lambda key: L.procedure_name(key, lang),
        "fmt": lambda value, kind: L.fmt_value(value, kind),
        "kpi_format": lambda key: L.KPIS[key][2],
        "fmt_target": L.fmt_target,
        "cell": exports.cell_text,
        "t": lambda zh, en: zh if lang == "zh" else en,
    }


def link_args(q: Any) -> dict[str, dict[str, str]]:
    """Query arguments that keep the period and filters in links (without empty ones)."""
    period = {"from": q.period.to_dict()["from"], "to": q.period.to_dict()["to"]}
    filters = {k: v for k, v in q.filters.to_dict().items() if v}
    return {"period_args": period, "filter_args": filters, "link_args": {**period, **filters}}


def _choices(session: Any) -> dict[str, Any]:
    groups = [g for g in session.scalars(select(Group.name).order_by(Group.name)) if g != "staff"]
    users = list(session.scalars(select(User.username).where(User.active).order_by(User.username)))
    return {"groups": groups, "users": users, "procedures": list(L.PROCEDURES)}


@reports.get("/reports")
@staff_page
def index() -> str:
    _reader()
    q = query_from_request()
    lang = current_language()
    last_month = q.period.months()[-1]
    months: list[K.Period] = []  # the trend: twelve months up to the period's last month
    y, m = (int(x) for x in last_month.label.split("-"))
    for _ in range(TREND_MONTHS):
        months.insert(0, K.Period.month(f"{y:04d}-{m:02d}"))
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    with db().read() as s:
        report = K.compute(s, q.period, q.filters)
        trend = K.trends(s, months, q.filters)
        techs = K.technician_table(s, q.period, q.filters)
        choices = _choices(s)
    chart_data = {
        **trend,
        "names": {k: L.kpi_name(k, lang) for k in K.TREND_KEYS},
        "formats": {k: L.KPIS[k][2] for k in K.TREND_KEYS},
        "better": {k: ("lower" if k in K.LOWER_IS_BETTER else "higher") for k in K.TREND_KEYS},
        "labels_target": L.word("target", lang),
        "sla": [{"policy": p["policy"], "value": p["value"]} for p in report["sla_compliance"]["policies"]],
    }
    quarter = f"{last_month.label[:4]}-Q{(int(last_month.label[5:7]) - 1) // 3 + 1}"
    return render_template("reports/dashboard.html", q=q, report=report, chart_data=chart_data, techs=techs,
                           month=last_month.label, quarter=quarter, args=request.args, **choices, **link_args(q),
                           **_helpers(lang))


@reports.get("/reports/kpi/<kpi>")
@staff_page
def drill(kpi: str) -> str:
    _reader()
    q = query_from_request()
    part = request.args.get("part") or "denominator"
    page = max(1, request.args.get("page", 1, type=int) or 1)
    per_page = 100
    with db().read() as s:
        out = K.drill(s, kpi, q.period, q.filters, part=part, policy=request.args.get("policy") or None,
                      limit=per_page, offset=(page - 1) * per_page)
        entry = K.compute(s, q.period, q.filters, keys=(kpi,))[kpi] if kpi in K.KPI_KEYS else {}
    lang = current_language()
    return render_template("reports/drill.html", q=q, kpi=kpi, part=part, out=out, entry=entry, page=page,
                           pages=max(1, -(-out["total"] // per_page)), policy=request.args.get("policy") or "",
                           parts=K.PARTS, args=request.args, **link_args(q), **_helpers(lang))


def _document(kind: str, label: str) -> exports.ReportDoc:
    q_filters = K.Filters(procedure=request.args.get("procedure") or None, team=request.args.get("team") or None,
                          person=request.args.get("person") or None)
    period = K.Period.month(label) if kind == "monthly" else K.Period.quarter(label)
    with db().read() as s:
        return exports.monthly(s, period, q_filters) if kind == "monthly" else exports.quarterly(s, period, q_filters)


@reports.get("/reports/monthly/<month>")
@staff_page
def monthly(month: str) -> str | Response:
    _reader()
    return _print_or_download("monthly", month)


@reports.get("/reports/quarterly/<quarter>")
@staff_page
def quarterly(quarter: str) -> str | Response:
    _reader()
    return _print_or_download("quarterly", quarter)


def _print_or_download(kind: str, label: str) -> str | Response:
    doc = _document(kind, label)
    fmt = (request.args.get("format") or "html").lower()
    if fmt != "html":
        return export_response(doc, fmt)
    keep = {k: v for k, v in doc.filters.to_dict().items() if v}
    view_args = request.view_args or {}
    urls = {f"{f}_url": url_for(str(request.endpoint), **view_args, **keep, format=f) for f in ("csv", "xlsx")}
    return render_template("reports/print.html", doc=doc, **urls, **_helpers(current_language()))
