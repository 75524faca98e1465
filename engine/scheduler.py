"""The timer worker: fires due timers exactly once, on time, through the engine's one door.

How it stays on time
--------------------
An APScheduler job sleeps until the earliest due timer. Commands that add an earlier timer
wake it through ``Runtime.on_commit`` (same process); on PostgreSQL they also ``NOTIFY``
other worker processes. A periodic sweep is the safety net for anything else (timers added
by another process on SQLite, clocks moved by hand).

How it stays exactly once
-------------------------
A worker claims due rows with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, an atomic
conditional ``UPDATE`` inside SQLite's write lock), oldest first, then fires each through
``WorkflowEngine.fire_timer``. Firing marks the row ``fired`` in the same transaction as the
case change, under the case's lock, and a row already ``fired`` is skipped; the lease only
keeps workers from getting in each other's way. A worker killed mid-fire leaves its rows
``claimed``: its transaction rolled back, the lease runs out, and another worker claims and
fires them once.

Timer start events
------------------
A process whose start event is a timer (a monthly KPI report, a quarterly survey) gets a
schedule row per occurrence in ``start_timers``. Firing an occurrence starts one case and
schedules the next occurrence in the same transaction, so an occurrence starts one case,
never two.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from calendar import monthrange
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
    CycleTimerEventDefinition,
    DurationTimerEventDefinition,
    TimeDateEventDefinition,
    TimerEventDefinition,
)
from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, func, or_, select, text, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from .calendars import parse_duration
from .identity import SYSTEM
from .models import Base, BigId, ProcessVersion, Timer, UtcDateTime, utcnow

if TYPE_CHECKING:
    from .runtime import Command
    from .workflow_engine import WorkflowEngine

log = logging.getLogger("aftercare.scheduler")

NOTIFY_CHANNEL = "aftercare_timers"
UNBOUNDED = -1


class StartTimer(Base):
    """One occurrence of a timer start event of a process: firing it starts one case."""

    __tablename__ = "start_timers"
    __table_args__ = (
        UniqueConstraint("process_key", "start_event", "due_at"),
        Index("ix_start_timers_due", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    process_key: Mapped[str] = mapped_column(String(255))
    start_event: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(20))  # date | duration | cycle
    source: Mapped[str] = mapped_column(Text)  # the expression as drawn
    schedule: Mapped[str] = mapped_column(Text)  # what it evaluated to when scheduled
    occurrence: Mapped[int] = mapped_column(Integer)  # 0, 1, 2 ... of this schedule
    remaining: Mapped[int] = mapped_column(Integer)  # occurrences left after this one; -1 unbounded
    due_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | claimed | fired | cancelled
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    fired_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


# --- claiming ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Claimed:
    due_at: dt.datetime
    id: int
    table: str  # "timers" | "start_timers"
    case_id: int | None = None


def claim_due(db: Any, worker: str, now: dt.datetime, lease: dt.timedelta, limit: int,
              table: type[Timer] | type[StartTimer] = Timer) -> list[Claimed]:
    """Claim up to ``limit`` due rows (pending, or claimed with an expired lease), oldest first."""
    t = table.__table__
    due = (select(t.c.id).where(t.c.status.in_(("pending", "claimed")), t.c.due_at <= now,
                                or_(t.c.status == "pending", t.c.lease_until < now))
           .order_by(t.c.due_at, t.c.id).limit(limit))
    if not db.is_sqlite:
        due = due.with_for_update(skip_locked=True)  # other workers' rows are skipped, not waited for
    # On SQLite the write transaction holds the database lock, so select-and-update is atomic.
    stmt = (update(t).where(t.c.id.in_(due.scalar_subquery()))
            .values(status="claimed", claimed_by=worker, lease_until=now + lease)
            .returning(t.c.id, t.c.due_at, t.c.case_id))
    with db.write() as session:
        rows = session.execute(stmt).all()
    return sorted(Claimed(_aware(r[1]), r[0], t.name, r[2]) for r in rows)


def release(db: Any, claimed: Claimed, retry_at: dt.datetime) -> None:
    """Keep a row that failed to fire claimed until ``retry_at`` (a back-off, not a loss)."""
    t = (Timer if claimed.table == "timers" else StartTimer).__table__
    with db.write() as session:
        session.execute(update(t).where(t.c.id == claimed.id, t.c.status == "claimed").values(lease_until=retry_at))


def next_due(db: Any) -> dt.datetime | None:
    """Earliest moment something may need firing (a pending row, or an expiring lease)."""
    found = []
    with db.read() as session:
        for table in (Timer, StartTimer):
            t = table.__table__
            found.append(session.scalar(select(func.min(t.c.due_at)).where(t.c.status == "pending")))
            found.append(session.scalar(select(func.min(t.c.lease_until)).where(t.c.status == "claimed")))
    values = [_aware(v) for v in found if v is not None]
    return min(values) if values else None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


# --- timer start events -------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Occurrences of a timer start event: ``first`` then every ``every`` (ISO duration)."""

    kind: str
    first: dt.datetime
    every: str | None
    count: int  # total occurrences, -1 unbounded

    def occurrence(self, n: int) -> dt.datetime:
        """The n-th occurrence (0 = ``first``), in UTC. Months are calendar months on the wall
        clock of ``first``'s offset, the day clamped to shorter months (31 Jan + P1M = 28 Feb)."""
        if n == 0 or self.every is None:
            return self.first.astimezone(dt.UTC)
        parts = parse_duration(self.every)
        local = self.first
        if parts.months:
            index = local.month - 1 + parts.months * n
            year, month = local.year + index // 12, index % 12 + 1
            local = local.replace(year=year, month=month, day=min(local.day, monthrange(year, month)[1]))
        step = dt.timedelta(weeks=parts.weeks, days=parts.days) + parts.time
        return (local + step * n).astimezone(dt.UTC)


def parse_schedule(kind: str, value: str, now: dt.datetime) -> Schedule:
    """Parse an evaluated timer expression (``R[n]/<start>/<duration>``, ``R[n]/<duration>``, a
    date or a duration)."""
    if kind == "cycle":
        parts = value.strip().upper().split("/")
        if len(parts) not in (2, 3) or not parts[0].startswith("R"):
            raise ValueError(f"not an ISO 8601 repeating interval: {value!r}")
        count = int(parts[0][1:]) if parts[0][1:] else UNBOUNDED
        if len(parts) == 2:
            every = parts[1]
            first = Schedule(kind, now, every, 2).occurrence(1)
        else:
            first = _moment(value.strip().split("/")[1])
            every = parts[2]
        parse_duration(every)
        return Schedule(kind, first, every, count)
    if kind == "duration":
        return Schedule(kind, Schedule(kind, now, value, 2).occurrence(1), None, 1)
    return Schedule(kind, _moment(value), None, 1)


def _moment(text: str) -> dt.datetime:
    """An ISO datetime keeping its UTC offset (month steps follow its wall clock); without an
    offset it is read the way SpiffWorkflow reads it."""
    parsed = dt.datetime.fromisoformat(text.strip())
    return parsed if parsed.tzinfo is not None else TimerEventDefinition.get_datetime(text.strip())


def timer_start_events(spec: Any) -> list[tuple[str, str, str]]:
    """(event id, kind, expression) of the top-level timer start events of a process spec."""
    found = []
    for ts in getattr(spec.start, "outputs", []):
        definition = getattr(ts, "event_definition", None)
        if isinstance(definition, CycleTimerEventDefinition):
            kind = "cycle"
        elif isinstance(definition, DurationTimerEventDefinition):
            kind = "duration"
        elif isinstance(definition, TimeDateEventDefinition):
            kind = "date"
        else:
            continue
        found.append((ts.bpmn_id or ts.name, kind, definition.expression))
    return found


def sync_start_timers(engine: WorkflowEngine, now: dt.datetime | None = None) -> int:
    """Make sure every deployed process with a timer start event has its next occurrence
    scheduled (and follows the newest version when its expression changed); returns how
    many rows were added."""
    now = now or utcnow()
    added = 0
    with engine.db.read() as session:
        latest = (select(ProcessVersion.key, func.max(ProcessVersion.version).label("v"))
                  .group_by(ProcessVersion.key).subquery())
        versions = list(session.execute(select(ProcessVersion.id, ProcessVersion.key).join(
            latest, (ProcessVersion.key == latest.c.key) & (ProcessVersion.version == latest.c.v))))
        wanted: list[tuple[str, str, str, str]] = []
        for version_id, key in versions:
            spec = engine.specs.get(session, version_id)
            for event_id, kind, expression in timer_start_events(spec.spec):
                wanted.append((key, event_id, kind, expression))
    _cancel_dropped(engine, {(k, e) for k, e, _, _ in wanted})
    for key, event_id, kind, expression in wanted:
        with engine.db.read() as session:
            rows = _schedule_rows(session, key, event_id)
        if not _needs_schedule(rows, expression):
            continue
        with engine.db.write() as session:
            if not engine.db.is_sqlite:  # workers sweep concurrently: one schedules, the others see it
                session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"start:{key}:{event_id}"})
            rows = _schedule_rows(session, key, event_id)
            if not _needs_schedule(rows, expression):
                continue
            for r in rows:
                if r.status == "pending":
                    r.status = "cancelled"  # the diagram's schedule changed: follow the new version
            try:
                value = engine.specs.script_engine().environment.evaluate(expression, {})
                schedule = parse_schedule(kind, str(value), now)
            except Exception as exc:  # a bad expression must not stop the other schedules
                log.error("timer start event %s of %s: cannot schedule %r: %s", event_id, key, expression, exc)
                continue
            n = _first_occurrence_from(schedule, now)
            if n is None:
                continue
            session.add(StartTimer(process_key=key, start_event=event_id, kind=kind, source=expression,
                                   schedule=str(value), occurrence=n, remaining=_remaining(schedule, n),
                                   due_at=schedule.occurrence(n), status="pending", created_at=now))
            added += 1
    return added


def _cancel_dropped(engine: WorkflowEngine, wanted: set[tuple[str, str]]) -> None:
    """A redeployment without the timer start event ends its schedule."""
    with engine.db.read() as session:
        live = set(session.execute(select(StartTimer.process_key, StartTimer.start_event)
                                   .where(StartTimer.status == "pending").distinct()).all())
    dropped = {tuple(r) for r in live} - wanted
    for key, event_id in dropped:
        with engine.db.write() as session:
            session.execute(update(StartTimer).where(
                StartTimer.process_key == key, StartTimer.start_event == event_id, StartTimer.status == "pending")
                .values(status="cancelled"))


def _schedule_rows(session: Session, key: str, event_id: str) -> list[StartTimer]:
    return list(session.scalars(select(StartTimer).where(
        StartTimer.process_key == key, StartTimer.start_event == event_id)
        .order_by(StartTimer.due_at.desc(), StartTimer.id.desc())))


def _needs_schedule(rows: list[StartTimer], expression: str) -> bool:
    """No schedule yet, or the live one comes from an older expression (a redeployment)."""
    live = [r for r in rows if r.status in ("pending", "claimed")]
    if live:
        return any(r.source != expression and r.status == "pending" for r in live)
    return not any(r.source == expression for r in rows)  # a finished schedule stays finished


def _first_occurrence_from(schedule: Schedule, now: dt.datetime) -> int | None:
    """The first occurrence at or after ``now`` (earlier ones happened before deployment)."""
    if schedule.every is None:
        return 0 if schedule.first >= now else None
    n = 0
    parts = parse_duration(schedule.every)
    if not parts.months and now > schedule.first:
        # Fixed-length steps (weeks, days, time on a UTC clock): jump close, then step.
        step = dt.timedelta(weeks=parts.weeks, days=parts.days) + parts.time
        if step > dt.timedelta(0):
            n = max(0, int((now - schedule.first) / step) - 1)
    while schedule.occurrence(n) < now:
        n += 1
        if schedule.count != UNBOUNDED and n >= schedule.count:
            return None
    return n


def _remaining(schedule: Schedule, n: int) -> int:
    return UNBOUNDED if schedule.count == UNBOUNDED else schedule.count - n - 1


class _AlreadyFired(Exception):
    pass


def fire_start_timer(engine: WorkflowEngine, row_id: int) -> int | None:
    """Start the case of one occurrence (through ``Runtime.create``); returns its id, or None
    when the occurrence was already fired or cancelled."""
    with engine.db.read() as session:
        row = session.get(StartTimer, row_id)
        if row is None or row.status in ("fired", "cancelled"):
            return None
        key, event_id = row.process_key, row.start_event

    def start(cmd: Command) -> None:
        session = cmd.session
        q = select(StartTimer).where(StartTimer.id == row_id)
        locked = session.scalars(q if engine.db.is_sqlite else q.with_for_update()).first()
        if locked is None or locked.status in ("fired", "cancelled"):
            raise _AlreadyFired
        locked.status, locked.fired_at, locked.case_id = "fired", cmd.now, cmd.case.id
        if locked.remaining != 0:
            schedule = parse_schedule(locked.kind, locked.schedule, locked.created_at)
            n = locked.occurrence + 1
            session.add(StartTimer(process_key=locked.process_key, start_event=locked.start_event, kind=locked.kind,
                                   source=locked.source, schedule=locked.schedule, occurrence=n,
                                   remaining=UNBOUNDED if locked.remaining == UNBOUNDED else locked.remaining - 1,
                                   due_at=schedule.occurrence(n), status="pending", created_at=locked.created_at))
        _arm_start_event(cmd, event_id)
        cmd.record("timer_fired", None, {"start_event": event_id, "occurrence": locked.occurrence,
                                         "due_at": locked.due_at.isoformat(), "kind": locked.kind}, actor="system")

    try:
        case = engine.runtime.create(key, {}, SYSTEM, start=start)
    except _AlreadyFired:
        return None
    return int(case.id)


def _arm_start_event(cmd: Command, event_id: str) -> None:
    """Let exactly one token through the timer start event of this occurrence's case."""
    for task in cmd.workflow.get_tasks():
        ts = task.task_spec
        if (ts.bpmn_id or ts.name) != event_id:
            continue
        if isinstance(getattr(ts, "event_definition", None), CycleTimerEventDefinition):
            # One cycle left, already due: SpiffWorkflow lets one token out and completes the event.
            past = (cmd.now - dt.timedelta(seconds=1)).isoformat()
            task._set_internal_data(event_value={"cycles": 1, "next": past, "duration": 1.0})
        else:
            task._set_internal_data(event_fired=True)


# --- the worker -------------------------------------------------------------------------------


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class TimerWorker:
    """Fires due timers of one database; embed it (``start()``) or run it (``run_forever()``).

    Firing is CPU-bound Python (the database waits are short), so threads mostly contend for
    the interpreter lock: the default is one firing thread, and PostgreSQL deployments scale
    with more worker processes. ``threads`` > 1 still fires timers of different cases in
    parallel where that helps (a slow database or network).
    """

    def __init__(self, engine: WorkflowEngine, name: str | None = None, *, lease: float = 60.0,
                 sweep: float = 10.0, batch: int = 200, threads: int | None = None, retry_delay: float = 30.0,
                 listen: bool = True, preload: int = 1000,
                 on_fired: Callable[[Claimed, Any], None] | None = None,
                 periodic: Sequence[tuple[str, float, Callable[[], Any]]] = ()) -> None:
        self.engine = engine
        # Other recurring work of the application (sending notices, expiring links...): the
        # engine runs it on the same scheduler without knowing what it is.
        self.periodic = list(periodic)
        self.db = engine.db
        self.name = name or default_worker_name()
        self.lease = dt.timedelta(seconds=lease)
        self.sweep_seconds = sweep
        self.batch = batch
        self.threads = threads if threads is not None else 1
        self.retry_delay = dt.timedelta(seconds=retry_delay)
        self.listen = listen and not self.db.is_sqlite
        self.on_fired = on_fired
        self.preload = preload
        self._preloaded: OrderedDict[int, None] = OrderedDict()
        # Idle time loads the cases of the next timers, so firing them needs no database load.
        cache = engine.runtime.cache
        cache.size = max(cache.size, 2 * preload)
        self.fired = 0
        self._scheduler: BaseScheduler | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._woken = threading.Event()
        self._running = threading.Lock()
        self._planned: dt.datetime | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._hook = self._on_commit

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> TimerWorker:
        """Run in background threads of this process (the embedded scheduler of ``aftercare run``)."""
        self._begin(BackgroundScheduler(daemon=True, timezone=dt.UTC))
        return self

    def run_forever(self) -> None:
        """Run in the foreground until interrupted (``aftercare worker``)."""
        self._begin(BlockingScheduler(timezone=dt.UTC))

    def _begin(self, scheduler: BaseScheduler) -> None:
        self._scheduler = scheduler
        self._stop.clear()
        if self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="timer-fire")
        self.engine.runtime.on_commit.append(self._hook)
        scheduler.add_job(self._sweep, IntervalTrigger(seconds=self.sweep_seconds, timezone=dt.UTC), id="sweep",
                          max_instances=1, coalesce=True, misfire_grace_time=None,
                          next_run_time=dt.datetime.now(dt.UTC))
        for job_name, seconds, job in self.periodic:
            scheduler.add_job(_logged(job_name, job), IntervalTrigger(seconds=seconds, timezone=dt.UTC),
                              id=f"periodic:{job_name}", max_instances=1, coalesce=True, misfire_grace_time=None)
        if self.listen:
            self._listener = threading.Thread(target=self._listen, name="timer-listen", daemon=True)
            self._listener.start()
        log.info("timer worker %s started (lease %ss, sweep %ss, %s thread(s))", self.name,
                 self.lease.total_seconds(), self.sweep_seconds, self.threads)
        scheduler.start()  # blocks for BlockingScheduler

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if self._hook in self.engine.runtime.on_commit:
            self.engine.runtime.on_commit.remove(self._hook)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None

    # -- waking --------------------------------------------------------------------------

    def wake(self, due: dt.datetime | None = None) -> None:
        """A timer due at ``due`` (now when None) was added: fire earlier than planned if needed."""
        due = due or dt.datetime.now(dt.UTC)
        with self._lock:
            if self._running.locked():
                self._woken.set()  # the running pass looks again before it sleeps
                return
            if self._planned is not None and self._planned <= due:
                return
            self._plan_locked(due)

    def _on_commit(self, cmd: Command) -> None:
        dues = [d for _, d in getattr(cmd.live, "timers", ())]
        extra = cmd.tx.info.get("timers_scheduled")
        if extra:
            dues.extend(extra)
        if dues:
            self.wake(min(dues))

    def _plan_locked(self, when: dt.datetime | None) -> None:
        self._planned = when
        if self._scheduler is None or when is None or self._stop.is_set():
            return
        self._scheduler.add_job(self._pass, DateTrigger(run_date=max(when, dt.datetime.now(dt.UTC)), timezone=dt.UTC),
                                id="fire", replace_existing=True, max_instances=1, misfire_grace_time=None,
                                coalesce=True)

    def _sweep(self) -> None:
        try:
            sync_start_timers(self.engine)
        except Exception:
            log.exception("scheduling timer start events failed")
        self._pass()

    def _pass(self) -> None:
        """Fire everything due, then sleep until the next due time."""
        if not self._running.acquire(blocking=False):
            self._woken.set()
            return
        upcoming: dt.datetime | None = None
        try:
            while not self._stop.is_set():
                self._woken.clear()
                self.run_due()
                upcoming = next_due(self.db)
                if self._woken.is_set() or (upcoming is not None and upcoming <= dt.datetime.now(dt.UTC)):
                    continue
                if self._warm(upcoming):
                    continue  # woken while warming: something is due earlier
                break
        except Exception:
            log.exception("timer pass failed; the sweep will try again")
            upcoming = None
        finally:
            # Under the lock, so a wake-up lands either before (seen here) or after (replans).
            with self._lock:
                self._running.release()
                if self._woken.is_set():
                    upcoming = dt.datetime.now(dt.UTC)
                self._plan_locked(upcoming)

    def _warm(self, until: dt.datetime | None) -> bool:
        """Preload the cases of the next pending timers until shortly before ``until``;
        True when interrupted by a wake-up."""
        if self.preload <= 0:
            return False
        margin = dt.timedelta(milliseconds=20)
        if until is not None and until - dt.datetime.now(dt.UTC) < 3 * margin:
            return False
        with self.db.read() as session:
            ids = list(session.scalars(select(Timer.case_id).where(Timer.status == "pending")
                                       .order_by(Timer.due_at).limit(self.preload)))
        for case_id in dict.fromkeys(ids):
            if self._woken.is_set() or self._stop.is_set():
                return self._woken.is_set()
            if until is not None and dt.datetime.now(dt.UTC) >= until - margin:
                return False
            if case_id in self._preloaded:
                continue
            try:
                self.engine.runtime.preload(case_id)
            except Exception:  # warming is an optimisation; firing will load the case itself
                log.debug("preloading case %s failed", case_id, exc_info=True)
            self._preloaded[case_id] = None
            while len(self._preloaded) > self.preload:
                self._preloaded.popitem(last=False)
        return False

    def _listen(self) -> None:
        """PostgreSQL: other processes NOTIFY when they add a timer; wake without waiting for the sweep."""
        import psycopg

        url = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    for note in conn.notifies(timeout=1.0, stop_after=None):
                        try:
                            self.wake(dt.datetime.fromisoformat(note.payload))
                        except ValueError:
                            self.wake()
                    # notifies() returned after its timeout: loop to check _stop
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("timer LISTEN connection lost (%s); retrying", exc)
                self._stop.wait(2.0)

    # -- firing --------------------------------------------------------------------------

    def run_due(self, now: dt.datetime | None = None) -> int:
        """Claim and fire, oldest first, every row due by ``now``; returns how many fired."""
        fired = 0
        while not self._stop.is_set():
            at = now or dt.datetime.now(dt.UTC)
            claimed = claim_due(self.db, self.name, at, self.lease, self.batch, Timer)
            claimed += claim_due(self.db, self.name, at, self.lease, max(1, self.batch // 10), StartTimer)
            if not claimed:
                break
            claimed.sort()
            if self._pool is None:
                results = [self._fire(c) for c in claimed]
            else:
                results = list(self._pool.map(self._fire, claimed))
            fired += sum(1 for r in results if r)
        self.fired += fired
        return fired

    def _fire(self, claimed: Claimed) -> bool:
        try:
            if claimed.table == "timers":
                result: Any = self.engine.fire_timer(claimed.id, SYSTEM, case_id=claimed.case_id)
            else:
                result = fire_start_timer(self.engine, claimed.id)
        except Exception:
            log.exception("firing %s %s failed; retrying after %ss", claimed.table, claimed.id,
                          self.retry_delay.total_seconds())
            try:
                release(self.db, claimed, dt.datetime.now(dt.UTC) + self.retry_delay)
            except Exception:
                log.exception("could not release %s %s; its lease will expire", claimed.table, claimed.id)
            return False
        if self.on_fired is not None:
            self.on_fired(claimed, result)
        return bool(result)


def _logged(name: str, job: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:  # a failing periodic job must not stop the scheduler; it runs again
            log.exception("periodic job %s failed", name)

    return run


def notify_new_timers(db: Any, horizon: float = 10.0) -> Callable[[Command], None]:
    """An ``on_commit`` hook: on PostgreSQL, tell worker processes (``LISTEN``) about a case's
    timers due within ``horizon`` seconds, so they fire them without waiting for a sweep."""

    def hook(cmd: Command) -> None:
        if db.is_sqlite:
            return
        dues = [d for _, d in getattr(cmd.live, "timers", ())]
        dues.extend(cmd.tx.info.get("timers_scheduled") or ())
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=horizon)
        dues = [d for d in dues if d <= soon]
        if not dues:
            return
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": min(dues).isoformat()})
            conn.commit()

    return hook


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def fire_all_due(engine: WorkflowEngine, now: dt.datetime | None = None, worker: str = "inline",
                 lease: float = 60.0, limit: int = 500) -> int:
    """Claim and fire every due timer once in this thread (``WorkflowEngine.fire_due_timers``)."""
    at = now or utcnow()
    fired = 0
    for claimed in claim_due(engine.db, worker, at, dt.timedelta(seconds=lease), limit, Timer):
        if engine.fire_timer(claimed.id, SYSTEM, case_id=claimed.case_id):
            fired += 1
    return fired


__all__ = ["Claimed", "StartTimer", "TimerWorker", "claim_due", "fire_all_due", "fire_start_timer", "next_due",
           "notify_new_timers", "sync_start_timers"]
