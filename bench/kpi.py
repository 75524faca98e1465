"""KPI reports over a large department's year: 1,000,000 history events on SQLite and PostgreSQL.

For each backend: a fresh database is migrated; a year (2026) of inquiries, repair orders,
complaints and spot checks is written as history events shaped like the procedures' own
(task ids, form fields, handler results, SLA and survey events); ``reports.facts.rebuild``
projects them into ``kpi_facts``; then the one-year report (every KPI of SPEC.md for 2026)
is timed, cold and warm, with the monthly trend and the technician table beside it.

    .venv/bin/python bench/kpi.py                 # 1,000,000 events, SQLite and PostgreSQL
    .venv/bin/python bench/kpi.py --events 200000 --skip-pg
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402

from engine import Database  # noqa: E402
from engine.models import Case, CaseEvent, DefinitionFile, Deployment, Group, Membership, ProcessVersion, User  # noqa: E402
from reports import facts as F  # noqa: E402
from reports import kpis as K  # noqa: E402

PG_URL = os.environ.get("AFTERCARE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
YEAR = 2026
H = dt.timedelta(hours=1)
TECHS = [f"tech{i:02d}" for i in range(1, 41)]
AGENTS = [f"agent{i:02d}" for i in range(1, 21)]
HANDLERS = [f"handler{i:02d}" for i in range(1, 9)]
ZERO = "0" * 64

Event = tuple[int, int, str, dt.datetime, str, str | None, str | None, dict[str, Any]]


class CaseGen:
    """The events of one case, in time order, shaped like the procedures record them."""

    def __init__(self, case_id: int, start: dt.datetime, actor: str, process: str) -> None:
        self.id, self.start, self.events = case_id, start, []
        self.ev(start, "case_started", actor, None, {"process": process, "version": 1, "data": {"channel": "phone"}})

    def ev(self, at: dt.datetime, type_: str, actor: str = "system", task: str | None = None,
           payload: dict[str, Any] | None = None) -> None:
        tid = f"{self.id:x}-{task}"[:36] if task else None
        self.events.append((self.id, len(self.events) + 1, type_, at, actor, tid, task, payload or {}))

    def opened(self, at: dt.datetime, task: str, lane: str) -> None:
        self.ev(at, "task_opened", "system", task, {"name": task, "lane": lane})

    def done(self, at: dt.datetime, task: str, actor: str, **data: Any) -> None:
        self.ev(at, "task_completed", actor, task, {"data": data})

    def service(self, at: dt.datetime, task: str, handler: str, result: dict[str, Any], actor: str = "system") -> None:
        self.ev(at, "service_task_completed", actor, task, {"handler": handler, "result": result})

    def sla(self, at: dt.datetime, task: str, policy: str, target: dt.timedelta) -> None:
        self.ev(at, "sla_started", "system", task, {"policy": policy, "version": 1, "calendar": "24x7",
                                                   "target": "PT2H", "start": at.isoformat(),
                                                   "warn_at": (at + target * 0.8).isoformat(),
                                                   "due": (at + target).isoformat()})


def inquiry(g: CaseGen, r: random.Random, customer: str) -> dict[str, Any]:
    s, agent = g.start, r.choice(AGENTS)
    g.service(s, "assign_reference", "case.assign_reference", {"case_ref": f"ZX{g.id}", "intake_complete": False})
    g.opened(s, "register_inquiry", "hotline")
    t = s + dt.timedelta(minutes=r.randint(1, 10))
    g.done(t, "register_inquiry", agent, channel="phone", question="安装后漏水怎么办?")
    g.service(t, "find_customer", "customer.find_or_create", {"customer_id": customer, "is_new": False}, agent)
    g.service(t, "faq_auto_reply", "faq.auto_reply", {"confident": False, "answer": None}, agent)
    g.opened(t, "answer_inquiry", "hotline")
    g.sla(t, "answer_inquiry", "inquiry.first_reply", H)
    if r.random() < 0.03:
        return {"follow_on": "none"}  # still open
    t += dt.timedelta(seconds=r.expovariate(1 / 1800))
    g.done(t, "answer_inquiry", agent, answer="...", needs_lookup=False)
    g.opened(t, "wrap_up_inquiry", "hotline")
    follow_on = "complaint" if r.random() < 0.05 else "none"
    t += dt.timedelta(minutes=2)
    g.done(t, "wrap_up_inquiry", agent, anything_else=False, follow_on=follow_on)
    g.ev(t, "case_completed")
    return {"follow_on": follow_on}


def repair(g: CaseGen, r: random.Random, customer: str) -> dict[str, Any]:
    s, tech = g.start, r.choice(TECHS)
    g.service(s, "assign_reference", "case.assign_reference", {"case_ref": f"WX{g.id}", "intake_complete": True})
    g.service(s, "find_customer", "customer.find_or_create", {"customer_id": customer, "is_new": False})
    g.ev(s, "decision_evaluated", "system", "decide_priority", {"decision": "DecisionTable_dispatch_priority"})
    g.service(s, "assign_technician", "technician.assign", {"assigned": True, "technician_id": tech})
    g.opened(s, "contact_customer", "technician")
    g.sla(s, "contact_customer", "dispatch.contact", 2 * H)
    t = s + dt.timedelta(minutes=r.expovariate(1 / 70))
    if t > s + 2 * H:
        g.ev(s + 2 * H, "sla_breached", "system", "contact_customer", {"policy": "dispatch.contact"})
    g.done(t, "contact_customer", tech, parts_needed=[])
    g.opened(t, "on_site_repair", "technician")
    t += dt.timedelta(hours=r.uniform(4, 30))
    g.done(t, "on_site_repair", tech, arrived_on_time=r.random() < 0.93, fixed_first_visit=r.random() < 0.91,
           parts_used=[], diagnosis="...", work_done="...")
    g.opened(t, "customer_sign_off", "technician")
    t += H
    g.done(t, "customer_sign_off", tech, customer_confirmed=True, technician_rating=r.choice([5, 5, 5, 4, 4, 3, 2]))
    survey = f"S{g.id}"
    g.service(t, "send_survey", "survey.send", {"survey_id": survey, "expires_at": (t + 7 * 24 * H).isoformat()},
              tech)
    if r.random() < 0.82:
        t += dt.timedelta(hours=r.uniform(1, 100))
        g.ev(t, "message_delivered", "customer", None, {"name": "survey_answered", "correlation": {},
                                                         "payload": {"survey_id": survey,
                                                                     "score": r.choice([5, 5, 4, 4, 4, 3, 2, 1])}})
    else:
        t += 7 * 24 * H
        g.ev(t, "timer_fired", "system", "survey_expired", {})
    g.ev(t, "case_completed")
    return {"customer_confirmed": True, "assignment": {"technician_id": tech}}


def complaint(g: CaseGen, r: random.Random, customer: str) -> dict[str, Any]:
    s, handler = g.start, r.choice(HANDLERS)
    major = r.random() < 0.15
    g.service(s, "assign_reference", "case.assign_reference", {"case_ref": f"TS{g.id}", "intake_complete": True})
    g.service(s, "find_customer", "customer.find_or_create", {"customer_id": customer, "is_new": False})
    g.opened(s, "classify_complaint", "complaints")
    t = s + H
    g.done(t, "classify_complaint", handler, category="service", severity="high" if major else "normal")
    g.ev(t, "decision_evaluated", "system", "decide_priority", {"decision": "DecisionTable_complaint_priority"})
    g.opened(t, "propose_solution", "complaints")
    g.sla(t, "propose_solution", "complaint.solution", 48 * H)
    t += dt.timedelta(hours=r.uniform(2, 60))
    g.done(t, "propose_solution", handler, solution="...")
    g.opened(t, "negotiate_solution", "complaints")
    t += dt.timedelta(hours=r.uniform(0.5, 8))
    g.done(t, "negotiate_solution", handler, solution_accepted=True)
    g.opened(t, "implement_solution", "complaints")
    t += dt.timedelta(hours=r.uniform(1, 20))
    g.done(t, "implement_solution", handler)
    g.opened(t, "follow_up_visit", "complaints")
    t += H
    g.done(t, "follow_up_visit", handler, issue_resolved=True, visit_method="phone")
    g.service(t, "send_survey", "survey.send", {"survey_id": f"C{g.id}", "expires_at": (t + 168 * H).isoformat()},
              handler)
    t += dt.timedelta(hours=r.uniform(1, 48))
    g.ev(t, "message_delivered", "customer", None, {"name": "survey_answered", "correlation": {},
                                                     "payload": {"survey_id": f"C{g.id}",
                                                                 "score": r.choice([5, 4, 4, 3, 2])}})
    g.ev(t, "case_completed")
    return {"is_major": major}


def spot_check(g: CaseGen, r: random.Random, customer: str) -> dict[str, Any]:
    staff = r.choice(TECHS + AGENTS)
    g.opened(g.start, "check_service", "supervisor")
    g.done(g.start + H, "check_service", "boss", checked_case_ref="WX1", procedure="dispatch", checked_staff=staff,
           checked_team="technician" if staff.startswith("tech") else "hotline", checked_items=["greeting"],
           compliant=r.random() < 0.9)
    g.ev(g.start + H, "case_completed")
    return {}


MIX = [("inquiry", inquiry, 0.47), ("dispatch", repair, 0.36), ("complaint", complaint, 0.12),
       ("spot_check", spot_check, 0.05)]


def generate(target_events: int, seed: int = 7) -> Iterator[tuple[dict[str, Any], list[Event]]]:
    """Cases spread over the year until ``target_events`` events are written."""
    r = random.Random(seed)
    year_start = dt.datetime(YEAR, 1, 1, tzinfo=dt.UTC) - 8 * H
    seconds = 365 * 24 * 3600 - 30 * 24 * 3600  # leave room for the last cases to finish
    customers = [f"cust{i}" for i in range(60000)]
    written, case_id = 0, 0
    names, makers, weights = zip(*[(n, m, w) for n, m, w in MIX], strict=True)
    while written < target_events:
        case_id += 1
        i = r.choices(range(len(names)), weights)[0]
        start = year_start + dt.timedelta(seconds=r.randrange(seconds))
        g = CaseGen(case_id, start, "boss" if names[i] == "spot_check" else r.choice(AGENTS), names[i])
        data = makers[i](g, r, r.choice(customers))
        events = g.events[: target_events - written]
        written += len(events)
        status = "completed" if events[-1][2] == "case_completed" else "running"
        yield ({"id": case_id, "process_key": names[i], "status": status, "data": data, "created_at": start,
                "updated_at": events[-1][3], "started_by": events[0][4]}, events)


# --- writing ------------------------------------------------------------------------------------------


def prepare(db: Database) -> dict[str, int]:
    from handlers.models import StaffCertification, StaffProfile

    with db.write() as s:
        dep = Deployment(deployed_by="bench")
        s.add(dep)
        s.flush()
        f = DefinitionFile(deployment_id=dep.id, name="bench.bpmn", kind="bpmn", sha256=ZERO, content="-")
        s.add(f)
        s.flush()
        versions = {}
        for key, *_ in MIX:
            pv = ProcessVersion(key=key, version=1, name=key, deployment_id=dep.id, bpmn_file_id=f.id,
                                fingerprint=ZERO, bundle={})
            s.add(pv)
            s.flush()
            versions[key] = pv.id
        for g in ("staff", "technician", "hotline", "complaints", "supervisor"):
            if s.get(Group, g) is None:
                s.add(Group(name=g, title=g))
        s.flush()
        for name in TECHS + AGENTS + HANDLERS + ["boss"]:
            group = ("technician" if name.startswith("tech") else "hotline" if name.startswith("agent")
                     else "complaints" if name.startswith("handler") else "supervisor")
            u = User(username=name, password_hash="!", display_name=name)
            s.add(u)
            s.flush()
            s.add_all([Membership(user_id=u.id, group_name=group), Membership(user_id=u.id, group_name="staff")])
        s.flush()
        for i, name in enumerate(TECHS):
            s.add(StaffProfile(username=name, technician=True, skills=["cooling"], region="north",
                               max_open_orders=5, training_hours={str(YEAR): 30 + i % 20}))
            s.flush()
            if i % 10:
                s.add(StaffCertification(username=name, name="制冷维修", valid_until=dt.date(YEAR + 1, 6, 30)))
    return versions


def write_history(db: Database, target_events: int) -> tuple[int, int, float]:
    versions = prepare(db)
    started = time.perf_counter()
    cases: list[dict[str, Any]] = []
    events: list[Event] = []
    n_cases = n_events = 0

    def flush() -> None:
        nonlocal cases, events
        if not cases:
            return
        with db.write() as s:
            s.execute(insert(Case), [{**c, "process_version_id": versions[c["process_key"]], "version": 1,
                                      "state": "{}", "data": c["data"]} for c in cases])
            if db.is_sqlite:
                s.execute(insert(CaseEvent), [
                    {"case_id": e[0], "seq": e[1], "type": e[2], "at": e[3], "actor": e[4], "task_id": e[5],
                     "task": e[6], "payload": e[7], "prev_hash": ZERO, "hash": ZERO} for e in events])
            else:  # COPY: the fast path for a million rows
                raw = s.connection().connection.driver_connection
                with raw.cursor() as cur, cur.copy(
                        "COPY case_events (case_id, seq, type, at, actor, task_id, task, payload, prev_hash, hash) "
                        "FROM STDIN") as cp:
                    for e in events:
                        cp.write_row((*e[:7], json.dumps(e[7], ensure_ascii=False), ZERO, ZERO))
        cases, events = [], []

    for case, evs in generate(target_events):
        cases.append(case)
        events.extend(evs)
        n_cases += 1
        n_events += len(evs)
        if len(events) >= 50000:
            flush()
    flush()
    return n_cases, n_events, time.perf_counter() - started


# --- the report -----------------------------------------------------------------------------------------


def timed(db: Database, label: str, fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    with db.read() as s:
        out = fn(s)
    return time.perf_counter() - started, out


def run(url: str, target_events: int, name: str) -> dict[str, Any]:
    db = Database(url)
    db.migrate()
    n_cases, n_events, t_write = write_history(db, target_events)
    print(f"[{name}] wrote {n_cases:,} cases, {n_events:,} events in {t_write:.1f} s", flush=True)
    started = time.perf_counter()
    totals = F.rebuild(db, chunk=1000)
    t_rebuild = time.perf_counter() - started
    print(f"[{name}] rebuilt {totals['facts']:,} facts from {totals['events']:,} events in {t_rebuild:.1f} s",
          flush=True)
    if not db.is_sqlite:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE kpi_facts"))
    year = K.Period.year(YEAR)
    now = dt.datetime(YEAR + 1, 1, 15, tzinfo=dt.UTC)
    t_cold, report = timed(db, "year", lambda s: K.compute(s, year, K.Filters(), now))
    t_warm, _ = timed(db, "year", lambda s: K.compute(s, year, K.Filters(), now))
    t_person, _ = timed(db, "person", lambda s: K.compute(s, year, K.Filters(person="tech07"), now))
    t_proc, _ = timed(db, "procedure", lambda s: K.compute(s, year, K.Filters(procedure="dispatch"), now))
    t_trend, _ = timed(db, "trend", lambda s: K.trends(s, year.months(), K.Filters(), now))
    t_tech, _ = timed(db, "technicians", lambda s: K.technician_table(s, year))
    with db.read() as s:
        n_facts = s.scalar(select(func.count()).select_from(F.FACTS))
    db.dispose()
    return {"name": name, "cases": n_cases, "events": n_events, "facts": n_facts, "write": t_write,
            "rebuild": t_rebuild, "cold": t_cold, "warm": t_warm, "person": t_person, "procedure": t_proc,
            "trend": t_trend, "technicians": t_tech, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--pg-url", default=PG_URL)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run(f"sqlite:///{tmp}/kpi.db", args.events, "SQLite"))
    if not args.skip_pg:
        schema = f"kpi_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            results.append(run(f"{args.pg_url}?options=-csearch_path%3D{schema}", args.events, "PostgreSQL"))
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print()
    print(f"{'backend':<12}{'events':>11}{'facts':>10}{'year report':>13}{'warm':>8}{'1 person':>10}"
          f"{'1 procedure':>13}{'12-month trend':>16}{'technicians':>13}")
    for r in results:
        print(f"{r['name']:<12}{r['events']:>11,}{r['facts']:>10,}{r['cold']:>12.3f}s{r['warm']:>7.3f}s"
              f"{r['person']:>9.3f}s{r['procedure']:>12.3f}s{r['trend']:>15.3f}s{r['technicians']:>12.3f}s")
    print("target: one-year report under 2 s on each backend")
    sample = results[0]["report"]
    print("one-year values (first backend): " + ", ".join(
        f"{k}={sample[k]['value']:.3f}" for k in ("satisfaction", "first_visit_fix_rate", "survey_response_rate",
                                                  "feedback_48h_rate", "sla_compliance")
        if sample[k]["value"] is not None))


if __name__ == "__main__":
    main()
