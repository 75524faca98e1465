"""KPI reports on a generated history whose true values are known in advance.

October 2026 (Asia/Shanghai) holds 14 inquiries, 10 repair orders, 4 complaints and 5 spot
checks, written as history events; ``rebuild`` projects them into facts and every KPI is
asserted exactly. One test drives real repair and spot-check cases through the engine to
show that the projector extracts the same facts from live commands.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from engine import SYSTEM, Database, HandlerRegistry, WorkflowEngine
from engine.identity import Actor, ensure_groups
from engine.models import Case, CaseEvent, DefinitionFile, Deployment, Membership, ProcessVersion, User
from reports import exports
from reports import facts as F
from reports import kpis as K

ZONE = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 5, tzinfo=dt.UTC)  # every October deadline has passed, except one survey's
OCT = K.Period.month("2026-10", ZONE)
H = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
RATINGS = [5, 5, 4, 4, 3, 5, 4, 5, 2, 3]
SCORES = [5, 4, 3, 5, 2, 4]  # survey answers of repair orders 0..5


def local(month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=ZONE).astimezone(dt.UTC)


@pytest.fixture(autouse=True)
def _report_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFTERCARE_TIMEZONE", "Asia/Shanghai")


# --- writing history directly ------------------------------------------------------------------------


class CaseLog:
    def __init__(self, case_id: int, process: str) -> None:
        self.case_id, self.process = case_id, process
        self.events: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}

    def tid(self, name: str) -> str:
        return self.names.setdefault(name, f"{self.case_id}-{name}")

    def ev(self, at: dt.datetime, type_: str, task: str | None = None, actor: str = "system",
           **payload: Any) -> CaseLog:
        assert not self.events or at >= self.events[-1]["at"], "events are written in time order"
        self.events.append({"at": at, "type": type_, "task": task, "task_id": self.tid(task) if task else None,
                            "actor": actor, "payload": payload})
        return self

    def opened(self, at: dt.datetime, task: str, lane: str) -> CaseLog:
        return self.ev(at, "task_opened", task, name=task, lane=lane)

    def done(self, at: dt.datetime, task: str, actor: str, **data: Any) -> CaseLog:
        return self.ev(at, "task_completed", task, actor, data=data)

    def service(self, at: dt.datetime, task: str, handler: str, result: dict[str, Any]) -> CaseLog:
        return self.ev(at, "service_task_completed", task, handler=handler, result=result)


class History:
    """Cases and their events written straight into the tables (no engine, fast)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.logs: list[tuple[int, CaseLog]] = []
        self.ids: dict[str, int] = {}
        with db.write() as s:
            dep = Deployment(deployed_by="test")
            s.add(dep)
            s.flush()
            f = DefinitionFile(deployment_id=dep.id, name="x.bpmn", kind="bpmn", sha256="0" * 64, content="x")
            s.add(f)
            s.flush()
            self.versions = {}
            for key in ("inquiry", "complaint", "dispatch", "spot_check"):
                pv = ProcessVersion(key=key, version=1, name=key, deployment_id=dep.id, bpmn_file_id=f.id,
                                    fingerprint="0" * 64, bundle={})
                s.add(pv)
                s.flush()
                self.versions[key] = pv.id

    def case(self, name: str, process: str, start: dt.datetime, data: dict[str, Any], status: str = "completed",
             started_by: str = "agent") -> CaseLog:
        with self.db.write() as s:
            row = Case(process_key=process, process_version_id=self.versions[process], version=1, status=status,
                       data={**data, "case_ref": name}, state="{}", started_by=started_by, created_at=start,
                       updated_at=start)
            s.add(row)
            s.flush()
            case_id = row.id
        self.ids[name] = case_id
        log = CaseLog(case_id, process)
        log.ev(start, "case_started", actor=started_by, process=process, version=1, data={})
        self.logs.append((case_id, log))
        return log

    def write(self) -> None:
        rows = []
        for case_id, log in self.logs:
            for seq, ev in enumerate(log.events, 1):
                rows.append({"case_id": case_id, "seq": seq, "type": ev["type"], "at": ev["at"], "actor": ev["actor"],
                             "task_id": ev["task_id"], "task": ev["task"], "payload": ev["payload"],
                             "prev_hash": "0" * 64, "hash": "0" * 64})
        with self.db.write() as s:
            s.execute(CaseEvent.__table__.insert(), rows)


def inquiry(h: History, i: int, start: dt.datetime, reply_after: dt.timedelta | None, by_agent: bool = True,
            follow_on: str = "none", cancelled: bool = False) -> None:
    closed = reply_after is not None
    c = h.case(f"I{i}", "inquiry", start, {"follow_on": follow_on},
               status="completed" if closed else "cancelled" if cancelled else "running")
    c.service(start, "find_customer", F.CUSTOMER_HANDLER, {"customer_id": f"I{i}", "is_new": True})
    c.opened(start, "answer_inquiry", "hotline")
    if reply_after is not None:
        at = start + reply_after
        if by_agent:
            c.done(at, "answer_inquiry", "agent", answer="...", needs_lookup=False)
        else:
            c.service(at, "send_auto_reply", "notify.customer", {"sent": True})
        c.ev(at + dt.timedelta(minutes=1), "case_completed")
    if cancelled:
        c.ev(start + H, "case_cancelled", actor="boss", reason="duplicate")


def repair(h: History, d: int) -> None:
    start = local(10, 28, 8) if d == 9 else local(10, 3 + 2 * d, 8)
    tech = "tech" if d < 6 else "tech2"
    closes = d <= 7
    c = h.case(f"D{d}", "dispatch", start, {"customer_confirmed": True, "assignment": {"technician_id": tech}},
               status="completed" if closes else "waiting")
    c.service(start, "find_customer", F.CUSTOMER_HANDLER, {"customer_id": "I0" if d == 0 else f"D{d}"})
    c.opened(start, "contact_customer", "technician")
    c.ev(start, "sla_started", "contact_customer", policy="dispatch.contact", due=(start + 2 * H).isoformat())
    if d >= 8:
        c.ev(start + 2 * H, "sla_breached", "contact_customer", policy="dispatch.contact")
    contact = start + (H if d < 8 else 50 * H)
    c.done(contact, "contact_customer", tech, parts_needed=[])
    c.opened(contact, "on_site_repair", "technician")
    visit = start + 51 * H
    c.done(visit, "on_site_repair", tech, arrived_on_time=d not in (2, 5, 8), fixed_first_visit=d != 4)
    c.opened(visit, "customer_sign_off", "technician")
    sign = start + 52 * H
    c.done(sign, "customer_sign_off", tech, customer_confirmed=True, technician_rating=RATINGS[d])
    c.service(sign, "send_survey", F.SURVEY_HANDLER, {"survey_id": f"S{d}", "expires_at": (sign + 7 * DAY).isoformat()})
    if d <= 5:
        answered = sign + 3 * DAY
        c.ev(answered, "message_delivered", name=F.SURVEY_MESSAGE, correlation={"case_ref": f"D{d}"},
             payload={"survey_id": f"S{d}", "score": SCORES[d]})
        c.ev(answered, "case_completed")
    elif d <= 7:
        c.ev(sign + 7 * DAY, "timer_fired", F.SURVEY_EXPIRED)
        c.ev(sign + 7 * DAY, "case_completed")


def complaint(h: History, n: int) -> None:
    start = local(10, 8 + 3 * n, 9)
    data: dict[str, Any] = {"is_major": n in (0, 1)}
    if n == 3:
        data["supervisor_decision"] = "close"
    c = h.case(f"C{n}", "complaint", start, data, status="completed" if n in (0, 3) else "running")
    c.service(start, "find_customer", F.CUSTOMER_HANDLER, {"customer_id": ["D1", "D2", "X1", "X2"][n]})
    c.ev(start, "decision_evaluated", "decide_priority", decision="DecisionTable_complaint_priority")
    c.opened(start, "propose_solution", "complaints")
    c.ev(start, "sla_started", "propose_solution", policy="complaint.solution", due=(start + 48 * H).isoformat())
    if n == 0:
        c.done(start + 24 * H, "propose_solution", "handler").opened(start + 24 * H, "negotiate_solution", "complaints")
        c.done(start + 29 * H, "negotiate_solution", "handler", solution_accepted=True)
        c.opened(start + 29 * H, "implement_solution", "complaints")
        c.done(start + 30 * H, "implement_solution", "handler").opened(start + 30 * H, "follow_up_visit", "complaints")
        c.done(start + 31 * H, "follow_up_visit", "handler", issue_resolved=True)
        c.service(start + 31 * H, "send_survey", F.SURVEY_HANDLER, {"survey_id": "CS0"})
        c.ev(start + 40 * H, "message_delivered", name=F.SURVEY_MESSAGE, payload={"survey_id": "CS0", "score": 5})
        c.ev(start + 40 * H, "case_completed")
    elif n == 1:
        c.ev(start + 24 * H, "sla_paused", "propose_solution", policy="complaint.solution")
    elif n == 3:
        c.ev(start + 24 * H, "sla_paused", "propose_solution", policy="complaint.solution")
        c.ev(start + 96 * H, "sla_resumed", "propose_solution", policy="complaint.solution",
             due=(start + 120 * H).isoformat())
        c.done(start + 100 * H, "propose_solution", "handler")
        c.opened(start + 100 * H, "negotiate_solution", "complaints")
        c.done(start + 101 * H, "negotiate_solution", "handler", solution_accepted=True)
        c.opened(start + 101 * H, "implement_solution", "complaints")
        c.done(start + 102 * H, "implement_solution", "handler").opened(start + 102 * H, "follow_up_visit",
                                                                         "complaints")
        c.done(start + 103 * H, "follow_up_visit", "handler", issue_resolved=False)
        c.service(start + 103 * H, "send_survey", F.SURVEY_HANDLER, {"survey_id": "CS3"})
        c.ev(start + 110 * H, "message_delivered", name=F.SURVEY_MESSAGE, payload={"survey_id": "CS3", "score": 2})
        c.opened(start + 110 * H, "customer_care", "customer-care")
        c.done(start + 115 * H, "customer_care", "care", care_outcome="request_closure")
        c.opened(start + 115 * H, "supervisor_review", "supervisor")
        c.done(start + 120 * H, "supervisor_review", "boss", supervisor_decision="close", close_reason="...")
        c.ev(start + 120 * H, "case_completed")


SPOT_CHECKS = [("tech", "technician", "dispatch", True), ("tech", "technician", "dispatch", False),
               ("tech2", "technician", "dispatch", True), ("agent", "hotline", "inquiry", True),
               ("agent", "hotline", "inquiry", True)]


def spot_check(h: History, n: int) -> None:
    at = local(10, 25, 10 + n)
    staff, team, procedure, compliant = SPOT_CHECKS[n]
    c = h.case(f"SC{n}", "spot_check", at, {}, started_by="boss")
    c.opened(at, "check_service", "supervisor")
    c.done(at + H, "check_service", "boss", checked_case_ref=f"D{n}", procedure=procedure, checked_staff=staff,
           checked_team=team, checked_items=["greeting"], compliant=compliant)
    c.ev(at + H, "case_completed")


STAFF = {"tech": ("2027-01-01", 42), "tech2": ("2026-09-30", 30), "tech3": (None, 40)}


def add_staff(db: Database) -> None:
    from handlers.models import StaffCertification, StaffProfile

    with db.write() as s:
        ensure_groups(s, {g: g for g in ("staff", "hotline", "complaints", "customer-care", "supervisor",
                                         "technician")})
        for name, group in {"agent": "hotline", "handler": "complaints", "care": "customer-care",
                            "boss": "supervisor", "tech": "technician", "tech2": "technician",
                            "tech3": "technician"}.items():
            if s.scalar(select(User.id).where(User.username == name)) is not None:
                continue  # the app fixture's users
            user = User(username=name, password_hash="!", display_name=name)  # no logins here: no slow hashing
            s.add(user)
            s.flush()
            s.add_all([Membership(user_id=user.id, group_name=group), Membership(user_id=user.id, group_name="staff")])
        s.flush()
        for name, (valid_until, hours) in STAFF.items():
            s.add(StaffProfile(username=name, technician=True, skills=["cooling"], region="north",
                               max_open_orders=5, training_hours={"2026": hours, "2025": 10}))
            s.flush()
            if valid_until:
                s.add(StaffCertification(username=name, name="制冷维修 Refrigeration",
                                         valid_until=dt.date.fromisoformat(valid_until)))


def october(db: Database) -> History:
    h = History(db)
    for i in range(10):
        inquiry(h, i, local(10, 5 + i, 9), i * 600 * dt.timedelta(seconds=1), by_agent=i % 2 == 0,
                follow_on="complaint" if i == 9 else "none")
    inquiry(h, 10, local(10, 20, 10), None)  # never answered: its 48 h feedback is missed
    inquiry(h, 11, local(10, 21, 10), None, cancelled=True)  # a duplicate: promises nothing
    inquiry(h, 12, local(11, 1, 0, 30), 300 * dt.timedelta(seconds=1))  # November in China (still October in UTC)
    inquiry(h, 13, local(10, 31, 23, 30), 1200 * dt.timedelta(seconds=1))  # October in China
    for d in range(10):
        repair(h, d)
    for n in range(4):
        complaint(h, n)
    for n in range(5):
        spot_check(h, n)
    h.write()
    add_staff(db)
    totals = F.rebuild(db)
    assert totals["cases"] == 14 + 10 + 4 + 5
    return h


@pytest.fixture
def history(db: Database) -> History:
    return october(db)


def kpis(db: Database, period: K.Period = OCT, **filters: str) -> dict[str, dict[str, Any]]:
    with db.read() as s:
        return K.compute(s, period, K.Filters(**filters), NOW)


def counts(entry: dict[str, Any]) -> tuple[int, int]:
    return entry["numerator"], entry["denominator"]


# --- the KPIs, exactly ------------------------------------------------------------------------------


def test_every_kpi_of_october(db: Database, history: History) -> None:
    r = kpis(db)
    assert set(r) == set(K.KPI_KEYS)

    assert counts(r["satisfaction"]) == (5, 8)
    assert r["satisfaction"]["value"] == 5 / 8
    assert r["satisfaction"]["mean_score"] == 30 / 8
    assert (r["satisfaction"]["target"], r["satisfaction"]["met"]) == (0.85, False)

    assert counts(r["complaint_rate"]) == (4, 24)  # D1, D2, X1, X2 of 24 distinct customers
    assert r["complaint_rate"]["value"] == 4 / 24 and r["complaint_rate"]["met"] is None

    rt = r["first_response_time"]
    assert (rt["count"], rt["pending"], rt["numerator"]) == (11, 1, 8)
    assert rt["mean"] == pytest.approx(28200 / 11, rel=1e-12)
    assert rt["p90"] == 4800.0  # nearest rank 10 of 11
    assert (rt["target"], rt["met"]) == (3600.0, True)

    assert counts(r["feedback_48h_rate"]) == (20, 26)
    assert r["feedback_48h_rate"]["met"] is False
    assert counts(r["repair_timeliness_rate"]) == (7, 10)
    assert counts(r["first_visit_fix_rate"]) == (9, 10)
    assert r["first_visit_fix_rate"]["met"] is True  # exactly the 90 % target
    assert counts(r["survey_response_rate"]) == (8, 11)  # one survey is not yet due
    assert counts(r["complaint_satisfaction"]) == (1, 2)
    assert counts(r["major_complaints_48h_rate"]) == (1, 2)
    assert (r["major_complaints_48h_rate"]["target"], r["major_complaints_48h_rate"]["met"]) == (1.0, False)
    assert counts(r["compliance_rate"]) == (4, 5)
    assert counts(r["resolution_rate"]) == (19, 21)

    sla = r["sla_compliance"]
    assert counts(sla) == (10, 13)
    assert [(p["policy"], p["numerator"], p["denominator"]) for p in sla["policies"]] == [
        ("complaint.solution", 2, 3), ("dispatch.contact", 8, 10)]

    assert counts(r["technician_certified_rate"]) == (1, 3)
    assert r["technician_certified_rate"]["met"] is False
    hours = r["technician_training_hours"]
    assert hours["value"] == pytest.approx(112 / 3, rel=1e-12)
    assert (hours["numerator"], hours["denominator"], hours["min"], hours["met"]) == (2, 3, 30.0, False)


def test_filters_by_procedure_team_and_person(db: Database, history: History) -> None:
    repair_kpis = kpis(db, procedure="dispatch")
    assert counts(repair_kpis["feedback_48h_rate"]) == (8, 10)
    assert counts(repair_kpis["resolution_rate"]) == (8, 8)
    assert counts(repair_kpis["satisfaction"]) == (4, 6)
    assert counts(repair_kpis["sla_compliance"]) == (8, 10)
    assert counts(repair_kpis["complaint_rate"]) == (2, 10)  # repair customers who also complained
    assert repair_kpis["first_response_time"]["value"] is None

    tech = kpis(db, person="tech")
    assert counts(tech["first_visit_fix_rate"]) == (5, 6)
    assert counts(tech["repair_timeliness_rate"]) == (4, 6)
    assert counts(tech["compliance_rate"]) == (1, 2)
    assert counts(tech["satisfaction"]) == (4, 6)
    assert counts(tech["feedback_48h_rate"]) == (6, 6)
    assert counts(tech["technician_certified_rate"]) == (1, 1)

    hotline = kpis(db, team="hotline")
    assert hotline["first_response_time"]["count"] == 6  # automatic replies belong to no team
    assert hotline["first_response_time"]["mean"] == 2200.0
    assert counts(hotline["compliance_rate"]) == (2, 2)
    assert counts(kpis(db, team="technician")["compliance_rate"]) == (2, 3)
    assert counts(kpis(db, procedure="inquiry")["compliance_rate"]) == (2, 2)


def test_month_boundaries_are_in_the_company_time_zone(db: Database, history: History) -> None:
    november = kpis(db, K.Period.month("2026-11", ZONE))
    assert november["first_response_time"]["count"] == 1
    assert november["first_response_time"]["mean"] == 300.0
    assert counts(november["resolution_rate"]) == (1, 1)
    quarter = kpis(db, K.Period.quarter("2026-Q4", ZONE))
    assert quarter["first_response_time"]["count"] == 12


def test_empty_periods_give_null_values_with_reasons(db: Database, history: History) -> None:
    r = kpis(db, K.Period.month("2025-01", ZONE))
    for key in K.KPI_KEYS:
        if key.startswith("technician_"):
            continue  # staff, not cases: present in any period
        assert r[key]["value"] is None, key
        assert r[key]["reason"], key
        assert r[key]["met"] is None, key
    assert r["sla_compliance"]["policies"] == []
    assert counts(r["satisfaction"]) == (0, 0)
    nobody = kpis(db, person="nobody")
    assert nobody["technician_certified_rate"]["value"] is None
    assert nobody["technician_training_hours"]["reason"] == "no technicians"


def test_empty_database_divides_by_nothing(db: Database) -> None:
    r = kpis(db)
    assert all(r[k]["value"] is None and r[k]["reason"] for k in K.KPI_KEYS)


def test_drill_down_lists_the_cases_behind_a_number(db: Database, history: History) -> None:
    ids = history.ids

    def cases(key: str, part: str, **kw: Any) -> set[int]:
        with db.read() as s:
            out = K.drill(s, key, OCT, K.Filters(), NOW, part=part, **kw)
        assert out["total"] == len(out["cases"])
        return {c["case_id"] for c in out["cases"]}

    assert cases("feedback_48h_rate", "missed") == {ids[n] for n in ("I10", "D8", "D9", "C1", "C2", "C3")}
    assert len(cases("feedback_48h_rate", "denominator")) == 26
    assert cases("first_response_time", "missed") == {ids["I7"], ids["I8"], ids["I9"]}
    assert cases("sla_compliance", "missed", policy="dispatch.contact") == {ids["D8"], ids["D9"]}
    assert cases("major_complaints_48h_rate", "numerator") == {ids["C0"]}
    assert cases("complaint_rate", "numerator") == {ids[n] for n in ("D1", "D2", "C0", "C1", "C2", "C3")}
    with db.read() as s:
        staff = K.drill(s, "technician_certified_rate", OCT, K.Filters(), NOW, part="missed")
    assert [p["person"] for p in staff["staff"]] == ["tech2", "tech3"]


def test_technician_table_and_trends(db: Database, history: History) -> None:
    with db.read() as s:
        table = {r["person"]: r for r in K.technician_table(s, OCT)}
        trend = K.trends(s, K.Period.quarter("2026-Q4", ZONE).months(), K.Filters(), NOW)
    assert counts(table["tech"]["first_visit_fix"]) == (5, 6)
    assert counts(table["tech2"]["timeliness"]) == (3, 4)
    assert table["tech"]["rating"] == {"value": 26 / 6, "count": 6}
    assert table["tech2"]["rating"] == {"value": 14 / 4, "count": 4}
    assert table["tech3"]["visits"] == 0 and table["tech3"]["certified"] is False
    assert trend["labels"] == ["2026-10", "2026-11", "2026-12"]
    assert trend["series"]["first_visit_fix_rate"] == [0.9, None, None]
    assert trend["targets"]["satisfaction"] == 0.85


def test_monthly_and_quarterly_exports(db: Database, history: History) -> None:
    from openpyxl import load_workbook

    with db.read() as s:
        month = exports.monthly(s, OCT, K.Filters(), NOW)
        quarter = exports.quarterly(s, K.Period.quarter("2026-Q4", ZONE), K.Filters(), NOW)
    rows = list(csv.reader(io.StringIO(exports.to_csv(month).decode("utf-8-sig"))))
    fix = next(r for r in rows if r and r[0].startswith("一次修复率"))
    assert fix[1:4] == ["90.0 %", "9", "10"] and fix[5] == "达标 met"
    sat = next(r for r in rows if r and r[0].startswith("客户满意度"))
    assert sat[1:4] == ["62.5 %", "5", "8"] and sat[5] == "未达标 missed"
    book = load_workbook(io.BytesIO(exports.to_xlsx(quarter)))
    assert book.sheetnames == ["Summary", "kpis", "sla", "staff", "technicians"]
    sheet = book["kpis"]
    header = [c.value for c in sheet[2]]
    assert header[1:4] == ["2026-10", "2026-11", "2026-12"]
    first_visit = next(r for r in sheet.iter_rows(min_row=3, values_only=True) if r[0].startswith("一次修复率"))
    assert first_visit[1:5] == (0.9, None, None, 0.9)
    staff = {r[0]: r for r in book["staff"].iter_rows(min_row=3, values_only=True)}
    assert staff["tech"][1] == "technician"


# --- live: the projector inside real commands ----------------------------------------------------------


@pytest.fixture
def live(db: Database) -> WorkflowEngine:
    """The real repair-dispatch and spot-check procedures with stand-in handlers."""
    reg = HandlerRegistry()
    survey_ids = itertools.count(100)
    reg.register("case.assign_reference", lambda ctx, **p: {"case_ref": f"WX-{ctx.case_id}", "intake_complete": True})
    reg.register("customer.find_or_create", lambda ctx, **p: {"customer_id": 7, "is_new": False})
    reg.register("technician.assign", lambda ctx, **p: {"assigned": True, "technician_id": "tech",
                                                        "technician_name": "Tech"})
    reg.register("parts.reserve", lambda ctx, **p: {"all_reserved": True, "reservation_id": 1, "missing": []})
    for name in ("parts.consume", "parts.release", "procurement.request", "technician.check_manual_assignment"):
        reg.register(name, lambda ctx, **p: {})
    reg.register("survey.send", lambda ctx, **p: {"survey_id": next(survey_ids), "link": "-",
                                                  "expires_at": (ctx.now + 7 * DAY).isoformat()})
    expiry = lambda name: (dt.datetime.now(dt.UTC) + 7 * DAY).isoformat()  # noqa: E731
    engine = WorkflowEngine(db, reg, functions={"sla_due": expiry})
    F.install(engine)
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [root / "processes" / n for n in ("dispatch.bpmn", "dispatch_priority.dmn", "repair_skill.dmn",
                                              "spot_check.bpmn")]
    files += sorted((root / "forms").glob("dispatch-*.json")) + [root / "forms" / "spot-check.schema.json"]
    engine.deploy_paths(files, SYSTEM)
    return engine


INTAKE = {"intake_complete": True, "channel": "phone", "customer": {"name": "王女士", "phone": "13800000000",
                                                                      "address": "北京"},
          "region": "north", "product": {"model": "KFR-35"}, "fault_type": "no_power", "fault_description": "不开机",
          "urgency": "normal"}


def test_projector_extracts_facts_from_real_commands(db: Database, live: WorkflowEngine) -> None:
    tech = Actor("tech", frozenset({"technician", "staff"}))
    boss = Actor("boss", frozenset({"supervisor", "staff"}))
    case = live.start_case("dispatch", INTAKE, SYSTEM)
    assert [t["spec"] for t in case["tasks"]] == ["contact_customer"]
    case = live.complete_task(case["tasks"][0]["id"], {
        "contacted_at": "2026-10-01T10:00:00+08:00", "appointment_start": "2026-10-02T10:00:00+08:00",
        "appointment_end": "2026-10-02T12:00:00+08:00", "parts_needed": []}, tech)
    case = live.complete_task(case["tasks"][0]["id"], {
        "arrived_at": "2026-10-02T10:30:00+08:00", "arrived_on_time": False, "diagnosis": "电源板", "work_done": "更换",
        "parts_used": [], "fixed_first_visit": True}, tech)
    case = live.complete_task(case["tasks"][0]["id"], {"customer_confirmed": True, "technician_rating": 4}, tech)
    assert case["status"] == "waiting"  # for the survey answer
    assert live.deliver_message("survey_answered", {"case_ref": case["data"]["case_ref"]},
                                {"survey_id": 100, "score": 3}, SYSTEM) == [case["id"]]
    check = live.start_case("spot_check", {}, boss)
    check = live.complete_task(check["tasks"][0]["id"], {
        "checked_case_ref": case["data"]["case_ref"], "procedure": "dispatch", "checked_staff": "tech",
        "checked_team": "technician", "checked_items": ["greeting", "fees_explained"], "compliant": True}, boss)
    assert check["status"] == "completed"

    today = dt.datetime.now(dt.UTC).astimezone(ZONE).date()
    period = K.Period.between(today - dt.timedelta(days=1), today + dt.timedelta(days=1), zone=ZONE)
    now = dt.datetime.now(dt.UTC)
    with db.read() as s:
        r = K.compute(s, period, K.Filters(), now)
        live_facts = _facts(s)
    assert counts(r["first_visit_fix_rate"]) == (1, 1)
    assert counts(r["repair_timeliness_rate"]) == (0, 1)
    assert counts(r["feedback_48h_rate"]) == (1, 1)
    assert counts(r["survey_response_rate"]) == (1, 1)
    assert counts(r["satisfaction"]) == (0, 1)
    assert counts(r["resolution_rate"]) == (1, 1)
    assert counts(r["compliance_rate"]) == (1, 1)
    assert counts(r["complaint_rate"]) == (0, 1)
    assert live_facts[(case["id"], F.RATING, "")]["value"] == 4.0
    assert live_facts[(case["id"], F.FIRST_VISIT_FIX, "")]["person"] == "tech"
    assert live_facts[(case["id"], F.FIRST_VISIT_FIX, "")]["team"] == "technician"

    # Rebuilding from the recorded history gives the same facts as the live projection.
    F.rebuild(db)
    with db.read() as s:
        assert _facts(s) == live_facts


def _facts(s: Any) -> dict[tuple[int, str, str], dict[str, Any]]:
    rows = s.execute(select(F.FACTS)).mappings()
    return {(r["case_id"], r["kind"], r["key"]): {k: v for k, v in r.items() if k != "id"} for r in rows}


def test_history_json_payloads_survive_a_round_trip(db: Database, history: History) -> None:
    # Facts come from stored events only: the projection of the stored history is stable.
    with db.read() as s:
        before = _facts(s)
    F.rebuild(db, [history.ids["C3"], history.ids["D8"]])
    with db.read() as s:
        assert _facts(s) == before
    assert json.dumps(kpis(db)["sla_compliance"])  # the report is plain JSON


# --- API, pages and the command line ---------------------------------------------------------------------


def _signed_in(client: Any, app: Any, username: str) -> None:
    from engine.identity import open_session

    with app.extensions["aftercare"].db.write() as s:
        user_id = s.scalar(select(User.id).where(User.username == username))
        sid = open_session(s, user_id)
    with client.session_transaction() as sess:
        sess["user_id"], sess["sid"] = user_id, sid


def test_reports_api(app: Any, client: Any) -> None:
    from conftest import token_for
    from openpyxl import load_workbook

    history = october(app.extensions["aftercare"].db)
    auditor = token_for(client, "auditor")
    res = client.get("/api/reports/kpis?from=2026-10-01&to=2026-10-31", headers=auditor)
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    assert body["period"]["from"] == "2026-10-01" and body["period"]["to"] == "2026-10-31"
    assert set(body["kpis"]) == set(K.KPI_KEYS)
    assert counts(body["kpis"]["first_visit_fix_rate"]) == (9, 10)
    assert body["kpis"]["first_visit_fix_rate"]["target"] == 0.9
    assert counts(body["kpis"]["compliance_rate"]) == (4, 5)
    res = client.get("/api/reports/kpis?from=2026-10&to=2026-10&person=tech", headers=auditor)
    assert counts(res.get_json()["kpis"]["first_visit_fix_rate"]) == (5, 6)
    assert client.get("/api/reports/kpis", headers=token_for(client, "agent")).status_code == 403
    assert client.get("/api/reports/kpis").status_code == 401
    bad = client.get("/api/reports/kpis?from=2026-13-01", headers=auditor)
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "from"

    drill = client.get("/api/reports/kpis/first_visit_fix_rate/cases?from=2026-10&to=2026-10&part=missed",
                       headers=token_for(client, "boss")).get_json()
    assert [c["case_id"] for c in drill["cases"]] == [history.ids["D4"]]
    assert drill["cases"][0]["case_ref"] == "D4" and drill["cases"][0]["person"] == "tech"
    assert client.get("/api/reports/kpis/nonsense/cases", headers=auditor).status_code == 404

    owner = token_for(client, "owner")
    csv_res = client.get("/api/reports/monthly/2026-10?format=csv", headers=owner)
    assert csv_res.status_code == 200 and csv_res.mimetype == "text/csv"
    assert "attachment" in csv_res.headers["Content-Disposition"]
    assert "一次修复率 First-visit fix rate,90.0 %,9,10" in csv_res.get_data().decode("utf-8-sig")
    xlsx = client.get("/api/reports/quarterly/2026-Q4?format=xlsx", headers=owner)
    assert xlsx.status_code == 200
    assert load_workbook(io.BytesIO(xlsx.get_data()))["kpis"]["A3"].value.startswith("客户满意度")
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert "/api/reports/kpis" in paths and "/api/reports/kpis/{kpi}/cases" in paths


def test_dashboard_drill_down_and_print_pages(app: Any, client: Any) -> None:
    history = october(app.extensions["aftercare"].db)
    _signed_in(client, app, "boss")
    page = client.get("/reports?from=2026-10-01&to=2026-10-31")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="kpi-trend-data"' in html and "js/reports.js" in html and "vendor/chart.js" in html
    data = json.loads(html.split('id="kpi-trend-data">', 1)[1].split("</script>", 1)[0])
    assert data["labels"][-1] == "2026-10" and len(data["labels"]) == 12
    assert data["series"]["first_visit_fix_rate"][-1] == 0.9
    assert data["targets"]["first_visit_fix_rate"] == 0.9
    assert 'data-kpi="satisfaction"' in html and "kpi-missed" in html  # satisfaction 62.5 % < 85 %
    assert "<script>" not in html  # data blocks only: the CSP forbids inline scripts
    drill = client.get("/reports/kpi/sla_compliance?from=2026-10-01&to=2026-10-31&policy=dispatch.contact&part=missed")
    assert drill.status_code == 200
    text = drill.get_data(as_text=True)
    assert f"/instances/{history.ids['D8']}" in text and f"/instances/{history.ids['D9']}" in text
    assert f"/instances/{history.ids['D1']}" not in text
    printed = client.get("/reports/monthly/2026-10")
    assert printed.status_code == 200
    text = printed.get_data(as_text=True)
    assert "月度服务报告 Monthly service report · 2026-10" in text and "data-print" in text
    assert "css/reports.css" in text and "row-missed" in text and "format=xlsx" in text
    assert client.get("/reports/quarterly/2026-Q4?format=xlsx").status_code == 200
    _signed_in(client, app, "agent")
    assert client.get("/reports").status_code == 403


def test_report_command_line(app: Any, tmp_path: Any) -> None:
    from app import cli

    october(app.extensions["aftercare"].db)
    runner = app.test_cli_runner()
    out = runner.invoke(cli, ["report", "monthly", "2026-10"])
    assert out.exit_code == 0, out.output
    assert "一次修复率 First-visit fix rate | 90.0 % | 9 | 10" in out.output
    target = tmp_path / "q3.xlsx"
    out = runner.invoke(cli, ["report", "quarterly", "2026-Q4", "-o", str(target)])
    assert out.exit_code == 0, out.output
    assert target.read_bytes()[:2] == b"PK"  # a zip: the XLSX container
    out = runner.invoke(cli, ["report", "monthly", "2026-13"])
    assert out.exit_code != 0
    out = runner.invoke(cli, ["report", "rebuild"])
    assert out.exit_code == 0 and "33 cases" in out.output
