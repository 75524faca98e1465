"""The monthly report (seed 001) and the quarterly evaluation (seed 004) as tables, written as
CSV or XLSX; the print-ready HTML page renders the same tables."""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from engine.models import utcnow

from . import kpis as K
from .labels import KPIS, both, fmt_target, fmt_value, kpi_name, procedure_name, word

# A cell: (value, format) with format pct | sec | hours | num | int | text.
Cell = tuple[Any, str]


@dataclass
class Table:
    key: str
    title: str
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    missed_rows: set[int] = field(default_factory=set)  # rows whose KPI missed its target


@dataclass
class ReportDoc:
    kind: str  # monthly | quarterly
    title: str
    period: K.Period
    filters: K.Filters
    generated_at: dt.datetime
    tables: list[Table]
    kpis: dict[str, dict[str, Any]]

    @property
    def filename(self) -> str:
        return f"aftercare-{self.kind}-{self.period.label}"


def _kpi_cells(key: str, e: dict[str, Any]) -> list[Cell]:
    kind = KPIS[key][2]
    met = e.get("met")
    return [(e.get("value"), kind), (e.get("numerator"), "int"), (e.get("denominator"), "int"),
            (fmt_target(key, e.get("target")), "text"),
            (word("yes") if met else word("no") if met is False else word("na"), "text"),
            (e.get("reason") or "", "text")]


def kpi_table(report: dict[str, dict[str, Any]]) -> Table:
    t = Table("kpis", word("kpi"), [word("kpi"), word("value"), word("numerator"), word("denominator"),
                                    word("target"), word("met"), word("reason")])
    for key in K.KPI_KEYS:
        e = report[key]
        t.rows.append([(kpi_name(key), "text"), *_kpi_cells(key, e)])
        if e.get("met") is False:
            t.missed_rows.add(len(t.rows) - 1)
        if key == "first_response_time" and e.get("p90") is not None:
            t.rows.append([(f"  {word('p90')}", "text"), (e["p90"], "sec"), (None, "int"), (None, "int"),
                           ("", "text"), ("", "text"), ("", "text")])
    return t


def sla_table(entry: dict[str, Any]) -> Table:
    t = Table("sla", word("sla"), [word("policy"), word("due"), word("kept"), word("rate")])
    for p in entry.get("policies", []):
        t.rows.append([(p["policy"], "text"), (p["denominator"], "int"), (p["numerator"], "int"), (p["value"], "pct")])
    return t


def technician_table(rows: list[dict[str, Any]]) -> Table:
    t = Table("technicians", word("technicians"), [word("person"), word("visits"), word("first_visit_fix"),
                                                   word("timeliness"), word("rating"), word("certified"),
                                                   word("training_hours")])
    for r in rows:
        fix, on_time, rating = r.get("first_visit_fix") or {}, r.get("timeliness") or {}, r.get("rating") or {}
        certified = r.get("certified")
        t.rows.append([(r["person"], "text"), (r.get("visits") or 0, "int"), (fix.get("value"), "pct"),
                       (on_time.get("value"), "pct"), (rating.get("value"), "num"),
                       ("" if certified is None else word("true") if certified else word("false"), "text"),
                       (r.get("training_hours"), "hours")])
        if fix.get("met") is False:
            t.missed_rows.add(len(t.rows) - 1)
    return t


def procedure_table(rows: list[dict[str, Any]]) -> Table:
    t = Table("procedures", word("by_procedure"), [word("procedure"), word("served"), word("closed"),
                                                   kpi_name("resolution_rate"), kpi_name("feedback_48h_rate"),
                                                   kpi_name("satisfaction"), kpi_name("sla_compliance")])
    for r in rows:
        t.rows.append([(procedure_name(r["procedure"]), "text"), (r["served"], "int"), (r["closed"], "int"),
                       (r["resolution_rate"]["value"], "pct"), (r["feedback_48h_rate"]["value"], "pct"),
                       (r["satisfaction"]["value"], "pct"), (r["sla_compliance"]["value"], "pct")])
    return t


def people_table(rows: list[dict[str, Any]]) -> Table:
    cols = ("first_reply_mean", "feedback", "first_visit_fix", "timeliness", "rating", "satisfaction", "compliance",
            "sla_rate")
    fmt = {"first_reply_mean": "sec", "rating": "num"}
    t = Table("staff", word("staff"), [word("person"), word("team"), *(word(k) for k in cols)])
    for r in rows:
        t.rows.append([(r["person"], "text"), (", ".join(r.get("groups", [])), "text"),
                       *(((r.get(k) or {}).get("value"), fmt.get(k, "pct")) for k in cols)])
    return t


def monthly(session: Session, period: K.Period, f: K.Filters | None = None,
            now: dt.datetime | None = None) -> ReportDoc:
    f = f or K.Filters()
    now = now or utcnow()
    report = K.compute(session, period, f, now)
    tables = [kpi_table(report), sla_table(report["sla_compliance"]),
              technician_table(K.technician_table(session, period, f)),
              procedure_table(K.by_procedure(session, period, f, now))]
    return ReportDoc("monthly", word("monthly"), period, f, now, tables, report)


def quarterly(session: Session, period: K.Period, f: K.Filters | None = None,
              now: dt.datetime | None = None) -> ReportDoc:
    f = f or K.Filters()
    now = now or utcnow()
    months = period.months()
    per_month = K.compute_many(session, months, f, now)
    report = K.compute(session, period, f, now)
    t = Table("kpis", word("kpi"), [word("kpi"), *(m.label for m in months), f"{word('quarter')} {period.label}",
                                    word("target"), word("met")])
    for key in K.KPI_KEYS:
        kind = KPIS[key][2]
        e = report[key]
        met = e.get("met")
        t.rows.append([(kpi_name(key), "text"), *((pm[key]["value"], kind) for pm in per_month), (e["value"], kind),
                       (fmt_target(key, e.get("target")), "text"),
                       (word("yes") if met else word("no") if met is False else word("na"), "text")])
        if met is False:
            t.missed_rows.add(len(t.rows) - 1)
    tables = [t, sla_table(report["sla_compliance"]), people_table(K.people_table(session, period, f, now)),
              technician_table(K.technician_table(session, period, f))]
    return ReportDoc("quarterly", word("quarterly"), period, f, now, tables, report)


# --- writers --------------------------------------------------------------------------------------


def cell_text(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    if fmt in ("pct", "sec", "hours"):
        return fmt_value(value, fmt)
    if fmt == "num":
        return f"{value:.2f}"
    return str(value)


def _heading(doc: ReportDoc) -> list[list[str]]:
    f = doc.filters
    filters = "; ".join(f"{k}={v}" for k, v in f.to_dict().items() if v) or word("all")
    return [[doc.title, doc.period.label], [word("period"), doc.period.to_dict()["from"], doc.period.to_dict()["to"]],
            [word("filters"), filters], [word("generated"), doc.generated_at.isoformat(timespec="seconds")]]


def to_csv(doc: ReportDoc) -> bytes:
    """UTF-8 with a byte-order mark so spreadsheet programs read the Chinese text correctly."""
    buf = io.StringIO()
    w = csv.writer(buf)
    for row in _heading(doc):
        w.writerow(row)
    for table in doc.tables:
        w.writerow([])
        w.writerow([table.title])
        w.writerow(table.headers)
        for row in table.rows:
            w.writerow([cell_text(v, fmt) for v, fmt in row])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


_XLSX_FORMATS = {"pct": "0.0%", "num": "0.00", "hours": "0.0", "int": "0"}


def to_xlsx(doc: ReportDoc) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill

    wb = Workbook()
    summary = wb.active
    summary.title = "Summary"
    for row in _heading(doc):
        summary.append(row)
    summary["A1"].font = Font(bold=True, size=14)
    missed_fill = PatternFill("solid", fgColor="FDE2E1")
    for table in doc.tables:
        ws = wb.create_sheet(table.key[:31])
        ws.append([table.title])
        ws["A1"].font = Font(bold=True)
        ws.append(table.headers)
        for c in ws[2]:
            c.font = Font(bold=True)
        for i, row in enumerate(table.rows):
            values = []
            for v, fmt in row:
                if fmt == "sec" and v is not None:
                    values.append(round(v / 60, 2))  # minutes
                else:
                    values.append(v)
            ws.append(values)
            for cell, (_v, fmt) in zip(ws[ws.max_row], row, strict=True):
                if fmt in _XLSX_FORMATS:
                    cell.number_format = _XLSX_FORMATS[fmt]
                elif fmt == "sec":
                    cell.number_format = '0.0" min"'
                if i in table.missed_rows:
                    cell.fill = missed_fill
        ws.column_dimensions["A"].width = 40
        for col in "BCDEFGHIJK":
            ws.column_dimensions[col].width = 16
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def to_text(doc: ReportDoc) -> str:
    """A plain-text rendering for the command line."""
    lines = [" ".join(r) for r in _heading(doc)]
    for table in doc.tables:
        lines += ["", table.title, " | ".join(table.headers)]
        for i, row in enumerate(table.rows):
            mark = "  ✗" if i in table.missed_rows else ""
            lines.append(" | ".join(cell_text(v, fmt) for v, fmt in row) + mark)
    return "\n".join(lines) + "\n"


CONTENT_TYPES = {"csv": "text/csv; charset=utf-8",
                 "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def render(doc: ReportDoc, fmt: str) -> bytes:
    if fmt == "csv":
        return to_csv(doc)
    if fmt == "xlsx":
        return to_xlsx(doc)
    raise ValueError(f"unknown export format {fmt!r}")


__all__ = ["CONTENT_TYPES", "ReportDoc", "Table", "both", "monthly", "quarterly", "render", "to_csv", "to_text",
           "to_xlsx"]
