"""Scale-out on PostgreSQL: 4 gunicorn workers and 2 timer workers on one database.

The topology of docs/deployment.md, started for real: ``aftercare init`` migrates a fresh
schema once, then ``gunicorn -w 4 'app:create_app()'`` (embedded scheduler off) and two
``aftercare worker`` processes share it. Client threads drive complaints concurrently over
HTTP: start, register (form), a one-second timer fired by whichever worker claims it, then
resolve (form) -- every tenth resolve submitted twice at once from two clients. Afterwards
the database must show every case ended exactly once, no task completed twice, every timer
fired, and the clients must have seen no 5xx answer.

``AFTERCARE_SCALE_CASES`` sets the number of cases (default 1,000: about 100 s on two cores
with PostgreSQL on the same machine; set it lower for a quick run).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from bench.cluster import DEFAULT_PG, PASSWORD, Client, Cluster, Stats, pg_reachable, pg_schema, ready_task
from engine import Database
from engine.identity import add_user
from engine.models import Case, CaseEvent, OpenTask, Timer

CASES = int(os.environ.get("AFTERCARE_SCALE_CASES", "1000"))
THREADS = 8
TIMER_WAIT = 120.0


def drive_cases(cluster: Cluster, url: str, cases: int) -> dict[str, Any]:
    """Run ``cases`` scale complaints through the cluster; returns what the clients saw."""
    users = cluster.users
    tokens = {u: cluster.token(u) for u in users}
    stats = Stats()
    local = threading.local()

    def client() -> Client:
        if not hasattr(local, "client"):
            user = users[threading.get_ident() % len(users)]
            local.client = Client(cluster.port, tokens[user], stats)
        return local.client

    def start_and_register(i: int) -> int:
        c = client()
        inst = c.ok("POST", "/api/instances", {"process": "scale_complaint", "data": {"n": i}})
        task = ready_task(inst, "register")
        assert task, inst
        c.ok("POST", f"/api/tasks/{task}/complete",
             {"data": {"customer_name": f"客户 {i}", "category": "quality"}})
        return int(inst["id"])

    with ThreadPoolExecutor(THREADS) as pool:
        case_ids = list(pool.map(start_and_register, range(cases)))

    # The timers are fired by the timer workers (the web workers run no scheduler).
    eng = create_engine(url)
    deadline = time.monotonic() + TIMER_WAIT
    while time.monotonic() < deadline:
        with eng.connect() as conn:
            waiting = conn.scalar(select(func.count()).select_from(OpenTask).where(OpenTask.spec == "resolve"))
        if waiting == cases:
            break
        time.sleep(0.5)
    eng.dispose()

    double: dict[int, list[int]] = {}

    def resolve(case_id: int) -> None:
        c = client()
        inst = c.ok("GET", f"/api/instances/{case_id}")
        task = ready_task(inst, "resolve")
        assert task, inst
        body = {"data": {"resolution": "Replaced", "satisfied": True}}
        if case_id % 10:
            c.ok("POST", f"/api/tasks/{task}/complete", body)
            return
        # The same task submitted twice at once (a double click, two staff): one must win.
        other = Client(cluster.port, c.token, stats)
        with ThreadPoolExecutor(2) as two:
            statuses = [f.result()[0] for f in [two.submit(x.call, "POST", f"/api/tasks/{task}/complete", body)
                                                for x in (c, other)]]
        double[case_id] = sorted(statuses)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(resolve, case_ids))
    health = Client(cluster.port).call("GET", "/healthz")[0]
    return {"case_ids": case_ids, "stats": stats, "double": double, "health": health}


def test_four_web_workers_and_two_timer_workers_on_one_postgresql() -> None:
    if not pg_reachable(DEFAULT_PG):
        warnings.warn(f"PostgreSQL unreachable at {DEFAULT_PG}: the scale-out topology test was SKIPPED", stacklevel=1)
        pytest.skip(f"PostgreSQL unreachable at {DEFAULT_PG}: the scale-out topology test did NOT run")
    with pg_schema(DEFAULT_PG) as url, \
            Cluster(url, web=4, timer_workers=2, users=tuple(f"clerk{i}" for i in range(THREADS))) as cluster:
        seen = drive_cases(cluster, url, CASES)
        logs = cluster.logs()
        metrics = read_metrics(cluster, url)
        eng = create_engine(url)
        try:
            with eng.connect() as conn:
                statuses = dict(conn.execute(select(Case.status, func.count()).group_by(Case.status)).all())
                ended = conn.execute(select(CaseEvent.case_id, func.count()).where(CaseEvent.type == "case_completed")
                                     .group_by(CaseEvent.case_id)).all()
                completed = conn.execute(select(CaseEvent.task_id, func.count())
                                         .where(CaseEvent.type == "task_completed")
                                         .group_by(CaseEvent.task_id)).all()
                timers = dict(conn.execute(select(Timer.status, func.count()).group_by(Timer.status)).all())
                fired_events = conn.scalar(select(func.count()).select_from(CaseEvent)
                                           .where(CaseEvent.type == "timer_fired"))
                open_left = conn.scalar(select(func.count()).select_from(OpenTask))
        finally:
            eng.dispose()

    stats: Stats = seen["stats"]
    assert stats.server_errors == [], f"5xx answers: {stats.server_errors[:10]}\n{logs}"
    assert statuses == {"completed": CASES}, statuses
    assert len(ended) == CASES and all(n == 1 for _, n in ended), "a case ended more than once"
    assert {cid for cid, _ in ended} == set(seen["case_ids"])
    assert len(completed) == 2 * CASES, "register + resolve per case"
    assert all(n == 1 for _, n in completed), [t for t, n in completed if n > 1][:5]
    # Double submissions: exactly one 200; the loser gets a client error, never a 5xx.
    assert seen["double"] and all(s[0] == 200 and 400 <= s[1] < 500 for s in seen["double"].values()), seen["double"]
    # No lost timer: one firing per case, and no row left pending or claimed.
    assert fired_events == CASES
    assert timers.get("pending", 0) == 0 and timers.get("claimed", 0) == 0, timers
    assert open_left == 0
    assert seen["health"] == 200
    # Prometheus metrics from a web worker: the shared database's gauges after the run.
    assert "aftercare_timers_pending 0" in metrics and "aftercare_open_tasks 0" in metrics, metrics
    assert 'aftercare_cases{status="completed"} ' + str(CASES) in metrics


def read_metrics(cluster: Cluster, url: str) -> str:
    """GET /metrics as a supervisor (the scraper's account)."""
    db = Database(url)
    with db.write() as s:
        add_user(s, "scraper", PASSWORD, ["supervisor"])
    db.engine.dispose()
    status, body, _ = Client(cluster.port, cluster.token("scraper")).call("GET", "/metrics")
    assert status == 200, body
    return str(body)
