"""The staff inbox with 100,000 open tasks and 1,000 staff: query latency per staff member.

For each backend a fresh database is migrated; ``--engine-cases`` cases of a one-task
process (the task in a team's lane) start through the engine; the rest of ``--tasks`` are
copies of one such case's rows (its case row, task rows, open task and candidate group),
spread over ``--teams`` teams, a third of them claimed by a staff member and two thirds with
a due time within a week either side of now (starting 100,000 cases one by one would make
the setup the bench). ``--staff`` staff members belong to one or two teams each.

Timed for ``--samples`` random staff members: ``WorkflowEngine.list_tasks`` (the API's
``GET /api/tasks``, scope all, first 100) and the staff web inbox's query
(``web.inbox_query.inbox``: the first page of ``GET /``, with its tab counts). Printed per
backend: p50/p95/max in ms. Target: p95 <= 50 ms.

    .venv/bin/python bench/inbox.py                        # 100,000 tasks, SQLite and PostgreSQL
    .venv/bin/python bench/inbox.py --tasks 20000 --backend sqlite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, text  # noqa: E402

from bench.cluster import DEFAULT_PG, pg_reachable, pg_schema, sqlite_file  # noqa: E402
from engine import SYSTEM, Actor, Database, HandlerRegistry, WorkflowEngine  # noqa: E402
from engine.models import Case, OpenTask, TaskCandidate  # noqa: E402
from web.inbox_query import InboxFilter, inbox  # noqa: E402

BPMN = b"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  id="inbox_bench_defs" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="inbox_bench" name="Inbox bench" isExecutable="true">
    <bpmn:laneSet id="lanes">
      <bpmn:lane id="lane_team" name="team0"><bpmn:flowNodeRef>handle</bpmn:flowNodeRef></bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="handle" name="Handle the request"><bpmn:incoming>f1</bpmn:incoming>
      <bpmn:outgoing>f2</bpmn:outgoing></bpmn:userTask>
    <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="handle" />
    <bpmn:sequenceFlow id="f2" sourceRef="handle" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""


def populate(db: Database, engine: WorkflowEngine, tasks: int, engine_cases: int, teams: int, staff: int,
             rng: random.Random) -> None:
    engine.deploy([("inbox_bench.bpmn", BPMN)], SYSTEM)
    for i in range(min(engine_cases, tasks)):
        engine.start_case("inbox_bench", {"case_ref": f"C{i:06d}", "customer_name": f"Customer {i}"}, SYSTEM)
    copies = tasks - min(engine_cases, tasks)
    if copies <= 0:
        return
    with db.write() as s:
        template = s.scalar(select(func.min(Case.id)))
        task = s.scalars(select(OpenTask).where(OpenTask.case_id == template)).one()
        columns = [c.name for c in Case.__table__.columns if c.name != "id"]
        cols = ", ".join(columns)
        top = s.scalar(select(func.max(Case.id)))
        numbers = "n" if db.is_sqlite else "generate_series(1, :k) AS n(i)"
        prefix = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :k) " if db.is_sqlite else ""
        s.execute(text(f"{prefix}INSERT INTO cases ({cols}) SELECT {cols} FROM cases, {numbers} WHERE id = :t"),
                  {"k": copies, "t": template})
        s.execute(text("INSERT INTO case_tasks (case_id, task_id, seq, workflow, state, body) "
                       "SELECT c.id, t.task_id, t.seq, t.workflow, t.state, t.body FROM cases c "
                       "JOIN case_tasks t ON t.case_id = :t WHERE c.id > :top"), {"t": template, "top": top})
        ids = list(s.scalars(select(Case.id).where(Case.id > top).order_by(Case.id)))
        base = {c.name: getattr(task, c.key) for c in OpenTask.__table__.columns}
        now = dt.datetime.now(dt.UTC)
        open_rows: list[dict[str, Any]] = []
        candidates: list[dict[str, Any]] = []
        for cid in ids:
            tid = str(uuid.uuid4())
            team = f"team{rng.randrange(teams)}"
            row = dict(base, id=tid, case_id=cid, lane=team,
                       assignee=f"staff{rng.randrange(staff)}" if rng.random() < 1 / 3 else None,
                       due_at=now + dt.timedelta(minutes=rng.randint(-7 * 1440, 7 * 1440))
                       if rng.random() < 2 / 3 else None,
                       created_at=now - dt.timedelta(seconds=rng.randint(0, 30 * 86400)))
            open_rows.append(row)
            candidates.append({"task_id": tid, "group_name": team})
        for i in range(0, len(open_rows), 5000):
            s.execute(insert(OpenTask), open_rows[i:i + 5000])
            s.execute(insert(TaskCandidate), candidates[i:i + 5000])
    if not db.is_sqlite:
        with db.write() as s:
            s.execute(text("ANALYZE"))


def staff_actor(i: int, teams: int, rng: random.Random) -> Actor:
    groups = {"staff", f"team{rng.randrange(teams)}"}
    if rng.random() < 0.5:
        groups.add(f"team{rng.randrange(teams)}")
    return Actor(f"staff{i}", frozenset(groups))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(8)
    db = Database(url)
    db.migrate()
    engine = WorkflowEngine(db, HandlerRegistry())
    t0 = time.perf_counter()
    populate(db, engine, args.tasks, args.engine_cases, args.teams, args.staff, rng)
    setup = time.perf_counter() - t0
    with db.read() as s:
        open_count = s.scalar(select(func.count()).select_from(OpenTask)) or 0
    actors = [staff_actor(i, args.teams, rng) for i in range(args.staff)]
    sample = [rng.choice(actors) for _ in range(args.samples)]
    for a in sample[:10]:  # warm caches and connections
        engine.list_tasks(a)
    api_ms: list[float] = []
    page_ms: list[float] = []
    for a in sample:
        t = time.perf_counter()
        engine.list_tasks(a, "all")
        api_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        with db.read() as s:
            page = inbox(s, a, InboxFilter())
        page_ms.append((time.perf_counter() - t) * 1000)
        assert page.tasks or not page.counts.get("group"), "a staff member with group tasks saw none"
    db.engine.dispose()
    return {"backend": name, "open_tasks": open_count, "staff": args.staff, "setup_s": setup,
            "api_p50_ms": pct(api_ms, 0.5), "api_p95_ms": pct(api_ms, 0.95), "api_max_ms": max(api_ms),
            "page_p50_ms": pct(page_ms, 0.5), "page_p95_ms": pct(page_ms, 0.95), "page_max_ms": max(page_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000, help="open tasks in total")
    ap.add_argument("--engine-cases", type=int, default=1000, help="of them started through the engine")
    ap.add_argument("--staff", type=int, default=1000)
    ap.add_argument("--teams", type=int, default=50)
    ap.add_argument("--samples", type=int, default=200, help="random staff members timed")
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--json", action="store_true", help="print one JSON line per backend")
    args = ap.parse_args()
    results = []
    if args.backend in ("sqlite", "both"):
        with sqlite_file() as url:
            results.append(run_backend("sqlite", url, args))
    if args.backend in ("postgresql", "both"):
        if not pg_reachable(args.pg_url):
            print("WARNING: PostgreSQL unreachable: skipped", file=sys.stderr)
        else:
            with pg_schema(args.pg_url) as url:
                results.append(run_backend("postgresql", url, args))
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['backend']:<11} {r['open_tasks']:,} open tasks, {r['staff']:,} staff "
                  f"(setup {r['setup_s']:.0f} s): "
                  f"list_tasks p50 {r['api_p50_ms']:.1f} / p95 {r['api_p95_ms']:.1f} / max {r['api_max_ms']:.1f} ms; "
                  f"inbox page p50 {r['page_p50_ms']:.1f} / p95 {r['page_p95_ms']:.1f} / max {r['page_max_ms']:.1f} ms "
                  f"(target p95 <= 50 ms)")


if __name__ == "__main__":
    main()
