"""The timer worker: on time, woken early, exactly once across processes and crashes, catch-up
oldest first, and cycle timers that never fire twice for one occurrence."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import time_machine
from sqlalchemy import func, select
from timer_support import HERE, OWNER

from engine import SYSTEM, Database, WorkflowEngine
from engine.models import Case, CaseEvent, OutboxMessage, Timer
from engine.scheduler import StartTimer, TimerWorker, claim_due, sync_start_timers, wait_until
from engine.sla import SlaService

WORKER_SCRIPT = HERE / "timer_support.py"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def start_timed(engine: WorkflowEngine, due: dt.datetime) -> int:
    return int(engine.start_case("timed_step", {"due": due.isoformat()}, SYSTEM)["id"])


def timer_rows(db: Database) -> list[Timer]:
    with db.read() as s:
        return list(s.scalars(select(Timer).where(Timer.kind != "sla").order_by(Timer.id)))


def fired_events(db: Database) -> Counter[int]:
    with db.read() as s:
        return Counter(s.scalars(select(CaseEvent.case_id).where(CaseEvent.type == "timer_fired")))


def step_notices(db: Database) -> Counter[int | None]:
    with db.read() as s:
        return Counter(s.scalars(select(OutboxMessage.case_id).where(OutboxMessage.recipient == "customer")))


class WorkerProcess:
    """A worker in its own process (tests/timer_support.py), stopped by a file or killed."""

    def __init__(self, url: str, name: str, tmp: Path, *, lease: float = 60.0, sweep: float = 0.5,
                 threads: int | None = None, slow_marker: Path | None = None) -> None:
        self.stop_file = tmp / f"stop-{name}"
        cmd = [sys.executable, str(WORKER_SCRIPT), url, name, "--lease", str(lease), "--sweep", str(sweep),
               "--stop-file", str(self.stop_file)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k != "AFTERCARE_TEST_SLOW_MARKER"}
        if slow_marker is not None:
            env["AFTERCARE_TEST_SLOW_MARKER"] = str(slow_marker)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def stop(self) -> str:
        self.stop_file.write_text("stop")
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=10)


# --- claiming ------------------------------------------------------------------------------------


def test_claims_are_exclusive_and_expired_leases_are_claimed_again(sla_engine: WorkflowEngine, db: Any) -> None:
    base = now() + dt.timedelta(hours=1)
    ids = [start_timed(sla_engine, base + dt.timedelta(seconds=i)) for i in range(6)]
    later = base + dt.timedelta(minutes=1)
    lease = dt.timedelta(seconds=30)
    first = claim_due(db, "a", later, lease, 4)
    second = claim_due(db, "b", later, lease, 4)
    assert [c.case_id for c in first] == ids[:4]  # oldest first
    assert [c.case_id for c in second] == ids[4:]
    assert claim_due(db, "c", later, lease, 10) == []  # everything is leased
    # "a" died: once its lease runs out its rows go to whoever claims next.
    again = claim_due(db, "c", later + lease + dt.timedelta(seconds=1), lease, 10)
    assert sorted(c.id for c in again) == sorted(c.id for c in first + second)
    fired = [sla_engine.fire_timer(c.id, SYSTEM, case_id=c.case_id) for c in first]
    assert fired == [True] * 4
    assert [sla_engine.fire_timer(c.id, SYSTEM, case_id=c.case_id) for c in first] == [False] * 4  # once
    assert fired_events(db) == Counter({cid: 1 for cid in ids[:4]})


# --- real time ---------------------------------------------------------------------------------------


def test_worker_wakes_early_for_a_new_timer_and_fires_on_time(sla_engine: WorkflowEngine, sla: SlaService,
                                                              db: Any) -> None:
    with db.write() as s:
        sla.set_policy(s, {"name": "test.wait", "target": "PT0.4S"}, OWNER)
    # The sweep is a minute away: only the wake-up from the command can make it fire in time.
    worker = TimerWorker(sla_engine, "waker", sweep=60.0).start()
    try:
        time.sleep(0.3)  # the worker has swept once and sleeps with nothing planned
        case = sla_engine.start_case("sla_timer", {}, SYSTEM)
        assert wait_until(lambda: sla_engine.get_case(case["id"], SYSTEM)["status"] == "completed", 5.0)
    finally:
        worker.stop()
    [timer] = timer_rows(db)
    lateness = (timer.fired_at - timer.due_at).total_seconds()
    assert 0 <= lateness < 0.3, lateness
    assert timer.claimed_by == "waker" and worker.fired == 1


def test_catch_up_after_downtime_fires_every_overdue_timer_oldest_first(sla_engine: WorkflowEngine,
                                                                        db: Any) -> None:
    worker = TimerWorker(sla_engine, "catcher", sweep=60.0, threads=1)
    base = now() + dt.timedelta(seconds=1.5)
    dues = [base + dt.timedelta(milliseconds=25 * i) for i in range(24)]
    shuffled = dues[:]
    random.Random(3).shuffle(shuffled)
    for due in shuffled:  # created in random order while no worker runs
        start_timed(sla_engine, due)
    assert wait_until(lambda: now() > dues[-1] + dt.timedelta(seconds=0.5), 5.0)
    assert all(t.status == "pending" for t in timer_rows(db))
    worker.start()
    try:
        assert wait_until(lambda: all(t.status == "fired" for t in timer_rows(db)), 15.0)
    finally:
        worker.stop()
    rows = timer_rows(db)
    assert [t.due_at for t in sorted(rows, key=lambda t: t.fired_at)] == sorted(t.due_at for t in rows)
    assert all(n == 1 for n in fired_events(db).values()) and len(fired_events(db)) == 24
    assert step_notices(db) == Counter({t.case_id: 1 for t in rows})


# --- several processes ---------------------------------------------------------------------------


def test_two_worker_processes_fire_each_timer_exactly_once(db_url: str, sla_engine: WorkflowEngine,
                                                           db: Any, tmp_path: Path) -> None:
    pg = not db_url.startswith("sqlite")
    count = 2000 if pg else 300
    workers = [WorkerProcess(db_url, f"worker-{i}", tmp_path, threads=2 if pg else 1) for i in (1, 2)]
    try:
        # Each timer falls due 3 s after its case starts: the workers fire while cases still start.
        with ThreadPoolExecutor(4 if pg else 1) as pool:
            case_ids = list(pool.map(lambda _: start_timed(sla_engine, now() + dt.timedelta(seconds=3)),
                                     range(count)))
        assert wait_until(lambda: all(t.status == "fired" for t in timer_rows(db)), 60.0)
    finally:
        outputs = [w.stop() for w in workers]
    rows = timer_rows(db)
    events = fired_events(db)
    assert len(rows) == count
    assert max(events.values()) == 1, [cid for cid, n in events.items() if n > 1][:10]
    assert sum(events.values()) == len(rows)
    assert step_notices(db) == Counter({cid: 1 for cid in case_ids})  # the step after the timer ran once
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Case).where(Case.status == "completed")) == count
    by_worker = Counter(t.claimed_by for t in rows)
    assert set(by_worker) == {"worker-1", "worker-2"}, (by_worker, outputs)


def test_worker_process_is_woken_by_notify_on_postgresql(db_url: str, sla_engine: WorkflowEngine, db: Any,
                                                         tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; on SQLite a separate worker relies on its sweep")
    from engine.scheduler import notify_new_timers

    sla_engine.runtime.on_commit.append(notify_new_timers(db))
    worker = WorkerProcess(db_url, "listener", tmp_path, sweep=60.0)  # its sweep will not come in time
    try:
        assert worker.proc.stdout is not None and worker.proc.stdout.readline().startswith("ready")
        time.sleep(0.5)  # past its first sweep, which found nothing to plan
        case_id = start_timed(sla_engine, now() + dt.timedelta(seconds=1))
        assert wait_until(lambda: sla_engine.get_case(case_id, SYSTEM)["status"] == "completed", 10.0)
    finally:
        worker.stop()
    [timer] = timer_rows(db)
    assert timer.claimed_by == "listener" and (timer.fired_at - timer.due_at).total_seconds() < 0.5


def test_worker_killed_mid_fire_loses_nothing(db_url: str, sla_engine: WorkflowEngine, db: Any,
                                              tmp_path: Path) -> None:
    marker = tmp_path / "inside-the-fire"
    case_id = start_timed(sla_engine, now() + dt.timedelta(seconds=1))
    doomed = WorkerProcess(db_url, "doomed", tmp_path, lease=2.0, slow_marker=marker)
    try:
        assert wait_until(marker.exists, 20.0), doomed.stop()
        doomed.kill()  # SIGKILL while the firing transaction is open
    finally:
        if doomed.proc.poll() is None:
            doomed.kill()
    [timer] = timer_rows(db)
    assert (timer.status, timer.claimed_by) == ("claimed", "doomed")
    assert sla_engine.get_case(case_id, SYSTEM)["status"] == "waiting"
    assert fired_events(db) == Counter() and step_notices(db) == Counter()
    survivor = WorkerProcess(db_url, "survivor", tmp_path, lease=2.0)
    try:
        assert wait_until(lambda: sla_engine.get_case(case_id, SYSTEM)["status"] == "completed", 20.0)
    finally:
        survivor.stop()
    [timer] = timer_rows(db)
    assert (timer.status, timer.claimed_by) == ("fired", "survivor")
    assert fired_events(db) == Counter({case_id: 1}) and step_notices(db) == Counter({case_id: 1})


# --- cycles ----------------------------------------------------------------------------------------


def test_cycle_catch_fires_once_per_occurrence_even_when_catching_up(sla_engine: WorkflowEngine,
                                                                     sla_calls: list[Any], db: Any) -> None:
    t0 = dt.datetime(2026, 6, 1, 2, 0, tzinfo=dt.UTC)
    with time_machine.travel(t0, tick=False) as clock:
        case = sla_engine.start_case("cycle_catch", {}, SYSTEM)
        clock.move_to(t0 + dt.timedelta(hours=3, minutes=5))  # three occurrences overdue

        def drain() -> None:
            while sla_engine.fire_due_timers():
                pass

        # Two firing threads at once on the same overdue occurrences.
        threads = [threading.Thread(target=drain) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(sla_calls) == 3
        assert sla_engine.fire_due_timers() == 0
        clock.move_to(t0 + dt.timedelta(hours=4, minutes=1))
        drain()
        assert len(sla_calls) == 4
        sla_engine.complete_task(case["tasks"][0]["id"], {}, SYSTEM)  # the response ends: no more updates
        clock.move_to(t0 + dt.timedelta(hours=9))
        assert sla_engine.fire_due_timers() == 0
    assert len(sla_calls) == 4
    with db.read() as s:
        dues = list(s.scalars(select(Timer.due_at).where(Timer.case_id == case["id"], Timer.status == "fired")))
    assert len(dues) == len(set(dues))


def test_cycle_start_event_starts_one_case_per_occurrence(sla_engine: WorkflowEngine, sla: SlaService,
                                                          sla_calls: list[Any], db: Any) -> None:
    with db.write() as s:
        sla.set_policy(s, {"name": "test.report", "target": "PT0.25S"}, OWNER)
    workers = [TimerWorker(sla_engine, f"reporter-{i}", sweep=0.2, threads=2).start() for i in (1, 2)]
    try:
        time.sleep(2.0)
    finally:
        for w in workers:
            w.stop()
    with db.read() as s:
        rows = list(s.scalars(select(StartTimer).where(StartTimer.process_key == "cycle_start")
                              .order_by(StartTimer.occurrence)))
        cases = list(s.scalars(select(Case.id).where(Case.process_key == "cycle_start")))
        started = Counter(s.scalars(select(CaseEvent.case_id).where(
            CaseEvent.type == "timer_fired", CaseEvent.case_id.in_(cases))))
    fired = [r for r in rows if r.status == "fired"]
    assert len(fired) >= 3
    assert [r.occurrence for r in fired] == list(range(len(fired)))  # consecutive, none twice
    assert sorted(r.case_id for r in fired) == sorted(cases)  # one case per occurrence
    assert set(started.values()) == {1}
    assert len(sla_calls) == len(cases)
    gaps = [(b.due_at - a.due_at).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    assert all(abs(g - 0.25) < 1e-3 for g in gaps)  # occurrences keep their schedule
    assert sum(1 for r in rows if r.status in ("pending", "claimed")) == 1  # the next one is scheduled


def test_start_schedules_keep_calendar_months_on_their_own_wall_clock() -> None:
    from engine.scheduler import _first_occurrence_from, parse_schedule

    sh = dt.timezone(dt.timedelta(hours=8))
    monthly = parse_schedule("cycle", "R/2026-01-31T01:00:00+08:00/P1M", now())
    assert [monthly.occurrence(n).astimezone(sh) for n in range(3)] == [
        dt.datetime(2026, 1, 31, 1, tzinfo=sh), dt.datetime(2026, 2, 28, 1, tzinfo=sh),
        dt.datetime(2026, 3, 31, 1, tzinfo=sh)]
    quarterly = parse_schedule("cycle", "R4/2026-01-01T09:00:00+08:00/P3M", dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    assert _first_occurrence_from(quarterly, dt.datetime(2026, 5, 1, tzinfo=dt.UTC)) == 2  # 1 July
    assert _first_occurrence_from(quarterly, dt.datetime(2027, 1, 1, tzinfo=dt.UTC)) is None  # all four past
    minutely = parse_schedule("cycle", "R/2020-01-01T00:00:00+00:00/PT1M", now())
    at = dt.datetime(2026, 11, 23, 17, 0, 30, tzinfo=dt.UTC)
    n = _first_occurrence_from(minutely, at)
    assert minutely.occurrence(n) == dt.datetime(2026, 11, 23, 17, 1, tzinfo=dt.UTC) and minutely.occurrence(n - 1) < at


def test_start_schedule_follows_the_newest_version(sla_engine: WorkflowEngine, db: Any) -> None:
    assert sync_start_timers(sla_engine) == 1
    assert sync_start_timers(sla_engine) == 0  # already scheduled
    from timer_support import TIMER_PROCESSES

    changed = (TIMER_PROCESSES / "cycle_start.bpmn").read_text().replace(
        'sla_cycle("test.report")', '"R/2030-01-01T00:00:00+08:00/P1M"')
    sla_engine.deploy([("cycle_start.bpmn", changed)], SYSTEM)
    assert sync_start_timers(sla_engine) == 1
    with db.read() as s:
        rows = list(s.scalars(select(StartTimer).order_by(StartTimer.id)))
    assert [r.status for r in rows] == ["cancelled", "pending"]
    assert rows[1].due_at == dt.datetime(2029, 12, 31, 16, 0, tzinfo=dt.UTC)
    plain = re.sub(r"<bpmn:timerEventDefinition.*?</bpmn:timerEventDefinition>", "", changed, flags=re.S)
    sla_engine.deploy([("cycle_start.bpmn", plain)], SYSTEM)  # no timer start event any more
    assert sync_start_timers(sla_engine) == 0
    with db.read() as s:
        assert [r.status for r in s.scalars(select(StartTimer).order_by(StartTimer.id))] == ["cancelled"] * 2


# --- wiring ------------------------------------------------------------------------------------


def test_embedded_scheduler_runs_only_when_started(app: Any) -> None:
    from app import start_scheduler

    svc = app.extensions["aftercare"]
    assert svc.scheduler is None  # tests and AFTERCARE_SCHEDULER=off: nothing runs on its own
    worker = start_scheduler(app)
    try:
        assert start_scheduler(app) is worker and worker._scheduler is not None and worker._scheduler.running
        assert worker._hook in svc.engine.runtime.on_commit
    finally:
        worker.stop()
    assert worker._hook not in svc.engine.runtime.on_commit


@pytest.mark.parametrize("argv", [["worker", "--help"], ["run", "--help"]])
def test_cli_has_worker_and_run(argv: list[str]) -> None:
    from click.testing import CliRunner

    from app import cli

    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0 and ("lease" in result.output or "AFTERCARE_SCHEDULER" in result.output)
