"""Timer firing: lateness, duplicates and losses with real worker processes.

For each backend: ``--timers`` pending timers, ``--due`` of them due within a ``--window``
of seconds (evenly spread, in random order of case), the rest due more than a day later
(background load on the timers table). The due ones belong to cases started through the
engine (start -> timer catch event -> end) with placeholder due dates; once all exist their
due dates are moved into the window (the timer row and the workflow's own timer value), so
the window does not depend on how long the setup took. The background ones are copies of
such a case's rows (starting 90,000 cases one by one would make the setup, not the firing,
the bench). Worker processes (``engine.scheduler.TimerWorker``; one on SQLite,
``--pg-workers`` on PostgreSQL) start ``--warmup`` seconds before the window, as a worker
that has been running would, and run until every due timer fired or a grace period ends.

Prints per backend: fired count, firing lateness (the firing command's time minus the due
time) p50/p99/max, duplicates (a case with more than one ``timer_fired`` event) and lost
(due timers never fired), with the target p99 <= 1 s.

    python bench/timers.py                       # 100,000 timers, 10,000 due in 10 s, both backends
    python bench/timers.py --timers 20000 --due 3000 --backend sqlite
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder comes first on sys.path, where a sibling module could shadow the
# standard library's (bench/http.py would hide `http`): import from the project root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from sqlalchemy import bindparam, create_engine, func, insert, select, text, update  # noqa: E402

from engine import SYSTEM, Database, HandlerRegistry, WorkflowEngine  # noqa: E402
from engine.models import Case, CaseEvent, Timer  # noqa: E402
from engine.sla import SlaService  # noqa: E402

DEFAULT_PG = os.environ.get("AFTERCARE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
                  id="timer_bench_defs" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="timer_bench" name="Timer bench" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:intermediateCatchEvent id="wait" name="Wait until due">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
      <bpmn:timerEventDefinition id="wait_def">
        <bpmn:timeDate xsi:type="bpmn:tFormalExpression">due</bpmn:timeDate>
      </bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="wait" />
    <bpmn:sequenceFlow id="f2" sourceRef="wait" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""


def build_engine(db: Database) -> WorkflowEngine:
    sla = SlaService(db)
    return WorkflowEngine(db, HandlerRegistry(), functions=sla.functions(), due_calculator=sla)


# --- setup ------------------------------------------------------------------------------------


def clone_background(db: Database, engine: WorkflowEngine, count: int, far: dt.datetime) -> None:
    """``count`` more cases waiting on timers due after ``far``: copies of one real case's rows."""
    if count <= 0:
        return
    template = engine.start_case("timer_bench", {"due": far.isoformat()}, SYSTEM)["id"]
    with db.write() as s:
        columns = [c.name for c in Case.__table__.columns if c.name != "id"]
        cols = ", ".join(columns)
        top = s.scalar(select(func.max(Case.id)))
        numbers = "generate_series(1, :k) AS n(i)" if not db.is_sqlite else "n"
        prefix = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :k) "
                  if db.is_sqlite else "")
        s.execute(text(f"{prefix}INSERT INTO cases ({cols}) SELECT {cols} FROM cases, {numbers} WHERE id = :t"),
                  {"k": count, "t": template})
        s.execute(text("INSERT INTO case_tasks (case_id, task_id, seq, workflow, state, body) "
                       "SELECT c.id, t.task_id, t.seq, t.workflow, t.state, t.body FROM cases c "
                       "JOIN case_tasks t ON t.case_id = :t WHERE c.id > :top"), {"t": template, "top": top})
        timer = s.execute(select(Timer.task_id, Timer.spec, Timer.kind).where(Timer.case_id == template)).one()
        ids = list(s.scalars(select(Case.id).where(Case.id > top).order_by(Case.id)))
        now = dt.datetime.now(dt.UTC)
        rows = [{"case_id": cid, "task_id": timer[0], "spec": timer[1], "kind": timer[2],
                 "due_at": far + dt.timedelta(milliseconds=i), "status": "pending", "created_at": now}
                for i, cid in enumerate(ids, start=1)]
        for i in range(0, len(rows), 5000):
            s.execute(insert(Timer), rows[i:i + 5000])


def create_due_cases(engine: WorkflowEngine, dues: list[dt.datetime], threads: int) -> list[int]:
    def start(due: dt.datetime) -> int:
        return int(engine.start_case("timer_bench", {"due": due.isoformat()}, SYSTEM)["id"])

    if threads <= 1:
        return [start(due) for due in dues]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(start, dues))


def move_into_window(db: Database, moves: list[tuple[int, dt.datetime, dt.datetime]]) -> None:
    """Give each case's timer its due time in the window: the timer row and the ISO value the
    workflow's timer event holds (the same text appears in its serialized task rows)."""
    with db.write() as s:
        table = Timer.__table__
        s.execute(update(table).where(table.c.case_id == bindparam("c")).values(due_at=bindparam("due")),
                  [{"c": case_id, "due": new} for case_id, _, new in moves])
        s.execute(text("UPDATE case_tasks SET body = replace(body, :old, :new) WHERE case_id = :c"),
                  [{"old": old.isoformat(), "new": new.isoformat(), "c": case_id} for case_id, old, new in moves])


# --- the run ----------------------------------------------------------------------------------


def run_backend(name: str, url: str, args: argparse.Namespace, workers: int, create_threads: int) -> dict[str, Any]:
    db = Database(url)
    db.migrate()
    engine = build_engine(db)
    engine.deploy([("timer_bench.bpmn", BPMN)], SYSTEM)
    background = args.timers - args.due
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    t = time.perf_counter()
    clone_background(db, engine, background - 1, far)
    print(f"[{name}] {background:,} background timers in {time.perf_counter() - t:.1f} s", flush=True)

    # The due cases start through the engine with placeholder due dates two days out; once all
    # exist, their due dates move into the window (timer row and the workflow's own timer value
    # alike), so the window does not depend on how long starting them took.
    placeholder = far + dt.timedelta(days=1)
    placeholders = [placeholder + dt.timedelta(milliseconds=i) for i in range(args.due)]
    t = time.perf_counter()
    case_ids = create_due_cases(engine, placeholders, create_threads)
    created_in = time.perf_counter() - t
    print(f"[{name}] {args.due:,} due cases started in {created_in:.1f} s", flush=True)
    window_start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.warmup + 3.0)
    step = args.window / max(1, args.due)
    dues = [window_start + dt.timedelta(seconds=i * step) for i in range(args.due)]
    random.Random(7).shuffle(dues)
    t = time.perf_counter()
    move_into_window(db, list(zip(case_ids, placeholders, dues, strict=True)))
    print(f"[{name}] due dates moved into the window in {time.perf_counter() - t:.1f} s; workers start, window "
          f"opens in {(window_start - dt.datetime.now(dt.UTC)).total_seconds():.0f} s", flush=True)
    engine.reset_caches()  # the workers are other processes: nothing of this process's cache helps them

    tmp = Path(tempfile.mkdtemp(prefix="timers-bench-"))
    stop_file = tmp / "stop"
    procs = []
    for i in range(workers):
        cmd = [sys.executable, __file__, "worker", url, f"{name}-w{i + 1}", "--stop-file", str(stop_file),
               "--preload", str(args.preload if args.preload is not None else args.due)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = window_start + dt.timedelta(seconds=args.window + args.grace)
    window_end = window_start + dt.timedelta(seconds=args.window)
    while dt.datetime.now(dt.UTC) < deadline:
        time.sleep(0.5)
        if dt.datetime.now(dt.UTC) > window_end:
            with db.read() as s:
                pending = s.scalar(select(func.count()).select_from(Timer).where(
                    Timer.status != "fired", Timer.due_at <= window_end))
            if pending == 0:
                break
    stop_file.write_text("stop")
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            out, _ = p.communicate()
        outputs.append(out)
    shutil.rmtree(tmp, ignore_errors=True)

    with db.read() as s:
        fired = s.execute(select(Timer.due_at, Timer.fired_at, Timer.claimed_by).where(
            Timer.status == "fired", Timer.due_at <= window_end)).all()
        lost = s.scalar(select(func.count()).select_from(Timer).where(
            Timer.status != "fired", Timer.due_at <= window_end))
        background_fired = s.scalar(select(func.count()).select_from(Timer).where(
            Timer.status == "fired", Timer.due_at > window_end))
        per_case = select(func.count().label("n")).where(CaseEvent.type == "timer_fired").group_by(
            CaseEvent.case_id).subquery()
        duplicates = s.scalar(select(func.coalesce(func.sum(per_case.c.n - 1), 0)))
        completed = s.scalar(select(func.count()).select_from(Case).where(Case.status == "completed"))
    lateness = sorted((f - d).total_seconds() for d, f, _ in fired)
    by_worker: dict[str, int] = {}
    for _, _, w in fired:
        by_worker[w or "?"] = by_worker.get(w or "?", 0) + 1
    db.dispose()
    return {
        "backend": name, "workers": workers, "timers": args.timers, "due": args.due, "window": args.window,
        "fired": len(fired), "completed": completed, "lost": lost, "duplicates": int(duplicates or 0),
        "background_fired": background_fired, "by_worker": by_worker, "created_in": created_in,
        "p50": _pct(lateness, 50), "p99": _pct(lateness, 99), "max": lateness[-1] if lateness else float("nan"),
        "mean": statistics.fmean(lateness) if lateness else float("nan"),
        "worker_output": [o.strip().splitlines()[-1] if o.strip() else "" for o in outputs],
    }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def report(r: dict[str, Any]) -> None:
    ok = r["p99"] <= 1.0 and r["duplicates"] == 0 and r["lost"] == 0
    print(f"\n== {r['backend']}: {r['workers']} worker process(es), {r['timers']:,} pending timers, "
          f"{r['due']:,} due within {r['window']:g} s")
    print(f"   fired {r['fired']:,}   duplicates {r['duplicates']}   lost {r['lost']}   "
          f"(cases completed {r['completed']:,}; background timers fired {r['background_fired']})")
    print(f"   lateness p50 {r['p50'] * 1000:.0f} ms   p99 {r['p99'] * 1000:.0f} ms   max {r['max'] * 1000:.0f} ms   "
          f"mean {r['mean'] * 1000:.0f} ms   -> target p99 <= 1000 ms: {'met' if ok else 'NOT met'}")
    print(f"   fired per worker: {r['by_worker']}; {'; '.join(r['worker_output'])}")


# --- worker process ---------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    import logging

    from engine.scheduler import TimerWorker

    parser = argparse.ArgumentParser(prog="timers.py worker")
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--preload", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    db = Database(args.url)
    engine = build_engine(db)
    from engine.process import tune_garbage_collector

    tune_garbage_collector()  # as create_app() does for `aftercare worker`
    worker = TimerWorker(engine, args.name, lease=30.0, sweep=5.0, threads=args.threads, preload=args.preload)
    worker.start()
    while not Path(args.stop_file).exists():
        time.sleep(0.1)
    worker.stop()
    print(f"{args.name}: fired {worker.fired}, cases preloaded {len(worker._preloaded)}", flush=True)
    db.dispose()
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timers", type=int, default=100_000, help="pending timers in total")
    parser.add_argument("--due", type=int, default=10_000, help="how many of them fall due in the window")
    parser.add_argument("--window", type=float, default=10.0, help="seconds over which the due timers spread")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds to wait after the window")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--pg-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="firing threads per worker (default: engine's)")
    parser.add_argument("--warmup", type=float, default=40.0,
                        help="seconds the workers run before the window opens (they load upcoming cases)")
    parser.add_argument("--preload", type=int, default=None,
                        help="cases each worker loads ahead of their timers (default: --due)")
    args = parser.parse_args()
    if args.due > args.timers:
        parser.error("--due cannot exceed --timers")
    results = []
    if args.backend in ("sqlite", "both"):
        tmp = Path(tempfile.mkdtemp(prefix="timers-bench-db-"))
        try:
            results.append(run_backend("sqlite", f"sqlite:///{tmp / 'bench.db'}", args, 1, 1))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.backend in ("postgresql", "both"):
        schema = f"timers_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in args.pg_url else "?"
        try:
            results.append(run_backend("postgresql", f"{args.pg_url}{sep}options=-csearch_path%3D{schema}", args,
                                       args.pg_workers, 4))
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    for r in results:
        report(r)
    return 0 if all(r["duplicates"] == 0 and r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
