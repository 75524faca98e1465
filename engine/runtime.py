"""The one door: every change to a case is a command run by ``Runtime.execute``.

A command locks the case row, loads the case (from a version-checked in-process cache or
from its task rows), applies the change, runs engine steps, and in the same transaction
writes the changed task rows, the case header, history events, the open-task projection,
pending timers, message subscriptions and the outbox.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import search, spiff
from .audit import clock as audit_clock
from .audit import recorded
from .db import Transaction
from .errors import Conflict, Forbidden, HandlerMissing, NotFound
from .fastsql import Rows, Statement, fetch_all, parse_json, parse_time
from .history import COMMAND_EVENT_TYPES, GENESIS, canonical, chain_hash
from .identity import SYSTEM, Actor, may_start, task_groups
from .models import (
    Case,
    CaseTask,
    OpenTask,
    TaskCandidate,
    utcnow,
)
from .services import CommandInfo, HandlerRegistry, ServiceContext, current_command
from .specs import SpecStore, VersionSpec

log = logging.getLogger("aftercare.engine")

# Due date of a user task from its SLA policy name: (policy, opened at, case id, session) -> due.
DueCalculator = Callable[[str, dt.datetime, int, Session], dt.datetime | None]


@runtime_checkable
class TaskClock(Protocol):
    """A due calculator that also keeps SLA clocks (engine/sla.py): told, inside the command,
    when tasks with a policy open and close, and after the open tasks are saved (pauses)."""

    def __call__(self, policy: str, opened_at: dt.datetime, case_id: int, session: Session) -> dt.datetime | None:
        ...

    def task_opened(self, cmd: Command, task_id: str, spec: str,
                    policy: str) -> tuple[dt.datetime | None, dt.datetime | None]:
        """Start the task's clock; returns (due, warn_at), None without a known policy."""
        ...

    def tasks_closed(self, cmd: Command, task_ids: list[str]) -> None: ...

    def tasks_saved(self, cmd: Command) -> None: ...

    def load_open(self, session: Session, open_tasks: dict[str, OpenInfo]) -> None: ...


@dataclass
class OpenInfo:
    """What the open-task projection holds for one task (kept in memory with the case)."""

    name: str
    spec: str
    lane: str | None
    form: str | None
    assignee: str | None
    priority: int
    sla_policy: str | None
    due_at: dt.datetime | None
    created_at: dt.datetime
    groups: tuple[str, ...] = ()
    warn_at: dt.datetime | None = None  # SLA warning time (engine/sla.py)
    sla_paused: bool = False


@dataclass
class LiveCase:
    """A case's workflow plus what was last written for it, valid for ``lock_version``."""

    workflow: BpmnWorkflow
    spec: VersionSpec
    lock_version: int
    saved_tasks: set[str]
    open_tasks: dict[str, OpenInfo]
    timers: set[tuple[str, dt.datetime]]
    subscriptions: set[tuple[str, str]]
    # spiff.row_key of unfinished task rows as written by this process (not loaded: a
    # restored case writes its unfinished rows once more)
    row_keys: dict[str, spiff.RowKey] = field(default_factory=dict)


@dataclass
class CaseRow:
    """The case header, read and written with plain statements (the ORM is too slow per command)."""

    id: int
    process_key: str
    process_version_id: int
    version: int
    status: str
    data: dict[str, Any]
    state: str
    lock_version: int
    task_seq: int
    event_seq: int
    last_hash: str
    started_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    ended_at: dt.datetime | None
    tasks: list[dict[str, Any]] = field(default_factory=list)  # open tasks after the command

    def to_dict(self) -> dict[str, Any]:
        return instance_dict(self, self.tasks)


@dataclass
class Command:
    """The context one command runs in; ``record`` adds a history event."""

    tx: Transaction
    case: CaseRow
    live: LiveCase
    actor: Actor
    now: dt.datetime
    events: list[dict[str, Any]] = field(default_factory=list)
    incident: dict[str, Any] | None = None
    started: float = 0.0
    first: list[Any] | None = None  # rows of the statement sent with the lock (Runtime.execute)
    # PostgreSQL: rows of Runtime.prefetch statements, read in the lock's round trip.
    prefetched: dict[Statement, list[Any]] = field(default_factory=dict)
    loaded: tuple[Any, ...] = ()  # the header's data, status and ended_at as read, before the change

    def __post_init__(self) -> None:
        case = self.case
        self.loaded = (case.data, case.status, getattr(case, "ended_at", None))

    @property
    def workflow(self) -> BpmnWorkflow:
        return self.live.workflow

    @property
    def session(self) -> Session:
        """An ORM session in the command's transaction (made on first use)."""
        return self.tx.session

    def record(self, type_: str, task: Task | None = None, payload: dict[str, Any] | None = None,
               actor: str | None = None) -> None:
        self.events.append({
            "type": type_,
            "actor": actor if actor is not None else self.actor.username,
            "task_id": spiff.task_key(task) if task is not None else None,
            "task": (task.task_spec.bpmn_id or task.task_spec.name) if task is not None else None,
            "payload": payload or {},
        })


class _CaseCache:
    """Loaded cases of this process, most recently used last; also which case holds each open
    task of them (so a command on a task knows before any round trip whether it will load)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[int, LiveCase] = OrderedDict()
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, case_id: int) -> LiveCase | None:
        with self._lock:
            live = self._items.pop(case_id, None)
            if live is not None:
                self._forget(live)
            return live

    def put(self, case_id: int, live: LiveCase) -> None:
        with self._lock:
            old = self._items.pop(case_id, None)
            if old is not None:
                self._forget(old)
            self._items[case_id] = live
            for tid in live.open_tasks:
                self._tasks[tid] = case_id
            while len(self._items) > self.size:
                self._forget(self._items.popitem(last=False)[1])

    def holds(self, case_id: int) -> bool:
        return case_id in self._items

    def holds_task(self, task_id: str) -> bool:
        return task_id in self._tasks

    def _forget(self, live: LiveCase) -> None:
        for tid in live.open_tasks:
            self._tasks.pop(tid, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._tasks.clear()


# Statements of the hot path (see engine/fastsql.py); the same text runs on SQLite and PostgreSQL.
_CASES = Case.__table__
_TASKS = CaseTask.__table__
_OPEN = OpenTask.__table__
_CANDIDATES = TaskCandidate.__table__
_CASE_COLUMNS = ("id", "process_key", "process_version_id", "version", "status", "data", "state", "lock_version",
                 "task_seq", "event_seq", "last_hash", "started_by", "created_at", "updated_at", "ended_at")
_SELECT_CASE = Statement(f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases WHERE id = :id")
_SELECT_CASE_LOCKED = Statement(f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases WHERE id = :id FOR UPDATE")
_SELECT_CASE_OF_OPEN_TASK = Statement(
    f"SELECT {', '.join('c.' + c for c in _CASE_COLUMNS)} FROM open_tasks o JOIN cases c ON c.id = o.case_id "
    "WHERE o.id = :id")
# Whether the task is still open is decided on the locked case's workflow, not on this row.
_SELECT_CASE_OF_OPEN_TASK_LOCKED = Statement(_SELECT_CASE_OF_OPEN_TASK.sql + " FOR UPDATE OF c")


def _update_case(with_data: bool, with_status: bool) -> Statement:
    # ``data`` (a large value) and ``status`` (indexed) are set only when they changed: writing
    # them unchanged costs a JSON write and an index entry on each command.
    sets = ["state = :state", "lock_version = :lock_version", "task_seq = :task_seq", "event_seq = :event_seq",
            "last_hash = :last_hash", "updated_at = :updated_at"]
    if with_data:
        sets.append("data = :data")
    if with_status:
        sets += ["status = :status", "ended_at = :ended_at"]
    return Statement(f"UPDATE cases SET {', '.join(sets)} WHERE id = :id", json_params=("data",),
                     time_params=("updated_at", "ended_at"))


_UPDATE_CASE = {(d, st): _update_case(d, st) for d in (False, True) for st in (False, True)}
_UPSERT_TASKS = Statement(
    "INSERT INTO case_tasks (case_id, task_id, seq, workflow, state, body) "
    "VALUES (:case_id, :task_id, :seq, :workflow, :state, :body) "
    "ON CONFLICT (case_id, task_id) DO UPDATE SET workflow = excluded.workflow, state = excluded.state, "
    "body = excluded.body")
_WRITE_TASKS = Rows(_UPSERT_TASKS, "INSERT INTO case_tasks (case_id, task_id, seq, workflow, state, body)",
                    "(:case_id, :task_id, :seq, :workflow, :state, :body)",
                    "ON CONFLICT (case_id, task_id) DO UPDATE SET workflow = excluded.workflow, "
                    "state = excluded.state, body = excluded.body")
_DELETE_TASK = Statement("DELETE FROM case_tasks WHERE case_id = :case_id AND task_id = :task_id")
_DELETE_OPEN = Statement("DELETE FROM open_tasks WHERE id = :id")  # candidates go with it (ON DELETE CASCADE)
_INSERT_OPEN = Statement(
    "INSERT INTO open_tasks (id, case_id, process_key, spec, name, lane, form, assignee, priority, sla_policy, "
    "due_at, draft, created_at) VALUES (:id, :case_id, :process_key, :spec, :name, :lane, :form, :assignee, "
    ":priority, :sla_policy, :due_at, :draft, :created_at)",
    json_params=("draft",), time_params=("due_at", "created_at"))
_INSERT_CANDIDATE = Statement("INSERT INTO task_candidates (task_id, group_name) VALUES (:task_id, :group_name)")
_INSERT_EVENT = Statement(
    "INSERT INTO case_events (case_id, seq, type, at, actor, task_id, task, payload, prev_hash, hash) "
    "VALUES (:case_id, :seq, :type, :at, :actor, :task_id, :task, :payload, :prev_hash, :hash)",
    time_params=("at",))  # payload: JSON text already
_WRITE_EVENTS = Rows(_INSERT_EVENT,
                     "INSERT INTO case_events (case_id, seq, type, at, actor, task_id, task, payload, prev_hash, hash)",
                     "(:case_id, :seq, :type, :at, :actor, :task_id, :task, :payload, :prev_hash, :hash)")
# Loading a case that is not in the cache (another process changed it, or it was evicted).
_LOAD_TASKS = Statement("SELECT workflow, body, task_id FROM case_tasks WHERE case_id = :case_id ORDER BY seq")
_LOAD_CANDIDATES = Statement(
    "SELECT c.task_id, c.group_name FROM task_candidates c JOIN open_tasks o ON o.id = c.task_id "
    "WHERE o.case_id = :case_id")
_LOAD_OPEN = Statement(
    "SELECT id, name, spec, lane, form, assignee, priority, sla_policy, due_at, created_at FROM open_tasks "
    "WHERE case_id = :case_id")
# SLA checkpoints (kind "sla") are kept by the task clock, not by the workflow's timers.
_LOAD_TIMERS = Statement(
    "SELECT task_id, due_at FROM timers WHERE case_id = :case_id AND status <> 'fired' AND kind <> 'sla'")
_LOAD_SUBSCRIPTIONS = Statement("SELECT task_id, message FROM message_subscriptions WHERE case_id = :case_id")
_LOAD_ALL = (_LOAD_TASKS, _LOAD_CANDIDATES, _LOAD_OPEN, _LOAD_TIMERS, _LOAD_SUBSCRIPTIONS)
_CASE_OF_OPEN_TASK = Statement("SELECT case_id FROM open_tasks WHERE id = :task_id")
_BY_TASK: dict[Statement, Statement] = {}


def _by_task(stmt: Statement) -> Statement:
    """``stmt`` (keyed by ``:case_id``) for the case holding the open task ``:task_id``."""
    found = _BY_TASK.get(stmt)
    if found is None:
        found = _BY_TASK[stmt] = Statement(stmt.sql.replace(":case_id", f"({_CASE_OF_OPEN_TASK.sql})"),
                                           stmt.json_params, stmt.time_params)
    return found


_DELETE_TIMER = Statement(
    "DELETE FROM timers WHERE case_id = :case_id AND task_id = :task_id AND due_at = :due_at "
    "AND status <> 'fired'", time_params=("due_at",))
_INSERT_TIMER = Statement(
    "INSERT INTO timers (case_id, task_id, spec, kind, due_at, status, created_at) "
    "VALUES (:case_id, :task_id, :spec, :kind, :due_at, 'pending', :created_at)",
    time_params=("due_at", "created_at"))
_DELETE_SUBSCRIPTION = Statement("DELETE FROM message_subscriptions WHERE case_id = :case_id AND task_id = :task_id")
_INSERT_SUBSCRIPTION = Statement(
    "INSERT INTO message_subscriptions (case_id, task_id, message) VALUES (:case_id, :task_id, :message)")
_FROM_VERSION = {"process_version_id": "id", "version": "version"}  # columns of process_versions
_START_CASE = Statement(
    f"INSERT INTO cases ({', '.join(_CASE_COLUMNS[1:])}) "
    f"SELECT {', '.join(_FROM_VERSION.get(c, ':' + c) for c in _CASE_COLUMNS[1:])} "
    "FROM process_versions WHERE key = :process_key ORDER BY version DESC LIMIT 1 "
    "RETURNING id, process_version_id, version",
    json_params=("data",), time_params=("created_at", "updated_at", "ended_at"))
_SET_ASSIGNEE = Statement("UPDATE open_tasks SET assignee = :assignee WHERE id = :id")


class Runtime:
    def __init__(self, db: Any, specs: SpecStore, handlers: HandlerRegistry,
                 due_calculator: DueCalculator | None = None, cache_size: int = 2000,
                 search_paths: tuple[search.SearchPath, ...] = ()) -> None:
        self.db = db
        self.search_paths = search_paths  # places of case data kept in case_search (engine/search.py)
        self.specs = specs
        self.handlers = handlers
        self.due_calculator = due_calculator
        self.task_clock: TaskClock | None = due_calculator if isinstance(due_calculator, TaskClock) else None
        self.cache = _CaseCache(cache_size)
        self.on_commit: list[Callable[[Command], None]] = []
        # Reads (keyed by ``:case_id``) listeners want in a command; on PostgreSQL they go with the
        # case's lock (no round trip of their own) and listeners find them in ``cmd.prefetched``.
        self.prefetch: list[Statement] = []
        # Projections (e.g. report facts) written from the command's events in its own transaction.
        self.event_listeners: list[Callable[[Command, list[dict[str, Any]]], None]] = []

    # --- the door ---------------------------------------------------------------------------

    def execute(self, case_id: int, actor: Actor, apply: Callable[[Command], Any],
                first: tuple[Statement, Mapping[str, Any]] | None = None) -> tuple[CaseRow, Any]:
        """Run ``apply`` on the case under its lock and persist everything in one transaction.

        ``first`` is a statement to run right after the lock, sent with it (on PostgreSQL the
        transaction's BEGIN, the lock and this statement are one round trip); ``apply`` finds
        its rows in ``cmd.first``."""
        prefetched: dict[Statement, list[Any]] = {}
        with self.db.command() as tx:
            if self.db.is_sqlite:  # BEGIN IMMEDIATE holds the lock already
                row = _SELECT_CASE.execute(tx, {"id": case_id}).fetchone()
                found = first[0].execute(tx, first[1]).fetchall() if first is not None else None
            else:
                reads = [(_SELECT_CASE_LOCKED, {"id": case_id}), *([first] if first else [])]
                ahead = self._reads_ahead(not self.cache.holds(case_id))
                results = fetch_all(tx, reads + [(stmt, {"case_id": case_id}) for stmt in ahead])
                row = results[0][0] if results[0] else None
                found = results[1] if first is not None else None
                prefetched = dict(zip(ahead, results[len(reads):], strict=True))
            if row is None:
                raise NotFound(f"case {case_id} not found")
            cmd, result = self._execute_locked(tx, actor, apply, row, found, prefetched)
        self.cache.put(case_id, cmd.live)
        self._after_commit(cmd)
        return cmd.case, result

    def execute_for_task(self, task_id: str, actor: Actor, apply: Callable[[Command], Any]) -> tuple[CaseRow, Any]:
        """Like ``execute`` for the case that holds the open task ``task_id``."""
        prefetched: dict[Statement, list[Any]] = {}
        with self.db.command() as tx:
            # The case row comes with the lookup (locked on PostgreSQL, and sent with the BEGIN).
            if self.db.is_sqlite:
                [rows] = fetch_all(tx, [(_SELECT_CASE_OF_OPEN_TASK, {"id": task_id})])
            else:
                ahead = self._reads_ahead(not self.cache.holds_task(task_id))
                rows, *results = fetch_all(tx, [(_SELECT_CASE_OF_OPEN_TASK_LOCKED, {"id": task_id}),
                                                *[(_by_task(stmt), {"task_id": task_id}) for stmt in ahead],
                                                *([(_CASE_OF_OPEN_TASK, {"task_id": task_id})] if ahead else [])])
                # The reads found the task's case by its open-task row, after the lock: theirs if
                # that row still names the locked case (only a command holding the lock changes it).
                if ahead and rows and results[-1] and results[-1][0][0] == rows[0][0]:
                    prefetched = dict(zip(ahead, results[:-1], strict=True))
            found = rows[0] if rows else None
            case_id = found[0] if found else None
            if case_id is None:
                known = tx.connection.execute(
                    select(_TASKS.c.case_id).where(_TASKS.c.task_id == task_id).limit(1)).scalar()
                if known is None:
                    raise NotFound(f"task {task_id} not found")
                raise Conflict(f"task {task_id} is not open")
            cmd, result = self._execute_locked(tx, actor, apply, found, None, prefetched)
        self.cache.put(case_id, cmd.live)
        self._after_commit(cmd)
        return cmd.case, result

    def preload(self, case_id: int) -> None:
        """Load a case into the cache ahead of a command on it (the timer worker warms the cases
        of timers due soon); harmless when stale, the command checks ``lock_version``."""
        with self.db.read() as session:
            row = _SELECT_CASE.execute(session, {"id": case_id}).fetchone()
            if row is None:
                return
            live = self._load(session, CaseRow(**dict(zip(_CASE_COLUMNS, row, strict=True))))
        self.cache.put(case_id, live)

    def _reads_ahead(self, load: bool) -> list[Statement]:
        """PostgreSQL: reads to send with a command's lock, keyed by ``:case_id``: the case's
        rows when this process does not hold it (a guess: another process may have changed
        it since), and what listeners asked for (``prefetch``)."""
        return [*(_LOAD_ALL if load else ()), *self.prefetch]

    def _execute_locked(self, tx: Transaction, actor: Actor, apply: Callable[[Command], Any], row: Any,
                        first: list[Any] | None = None,
                        prefetched: dict[Statement, list[Any]] | None = None) -> tuple[Command, Any]:
        """Run ``apply`` on the locked case whose header is ``row``."""
        case = CaseRow(**dict(zip(_CASE_COLUMNS, row, strict=True)))
        case.data = parse_json(case.data) or {}
        case.created_at, case.updated_at, case.ended_at = (
            parse_time(case.created_at), parse_time(case.updated_at), parse_time(case.ended_at))
        prefetched = prefetched or {}
        live = self._load(tx, case, prefetched)
        cmd = Command(tx, case, live, actor, utcnow(), started=spiff.now_ts(), first=first,
                      prefetched=prefetched)
        # On any exception the half-changed workflow is dropped (it was taken out of the
        # cache) and the rollback leaves the database as the truth.
        result = self._run(cmd, apply)
        live.lock_version = case.lock_version
        return cmd, result

    def create(self, process_key: str, data: dict[str, Any], actor: Actor,
               start: Callable[[Command], Any] | None = None) -> CaseRow:
        """Start a case of the latest version: same transaction shape as every other command."""
        with self.db.command() as tx:
            now = utcnow()
            values = {"process_key": process_key, "status": "running", "data": {}, "state": "{}", "lock_version": 0,
                      "task_seq": 0, "event_seq": 0, "last_hash": GENESIS, "started_by": actor.username,
                      "created_at": now, "updated_at": now, "ended_at": None}
            # The case row of the latest version, inserted in the statement that finds the version.
            found = _START_CASE.execute(tx, values).fetchone()
            if found is None:
                raise NotFound(f"process '{process_key}' is not deployed")
            new_id, version_id, number = found
            version = self.specs.get(tx, version_id)
            if not may_start(actor, version.starters):
                raise Forbidden(f"starting a case of '{process_key}' requires one of the groups: "
                                f"{', '.join(sorted(version.starters or ()))}")
            wf = spiff.new_workflow(version.spec, version.subprocess_specs, self.specs.script_engine())
            case = CaseRow(id=new_id, process_version_id=version_id, version=number, **values)
            live = LiveCase(wf, version, 0, set(), {}, set(), set())
            cmd = Command(tx, case, live, actor, now, started=spiff.now_ts())

            def begin(c: Command) -> None:
                for t in spiff.ready_tasks(c.workflow):
                    t.data.update(data)
                c.record("case_started", None, {"process": process_key, "version": version.version,
                                                 "data": data})
                if start is not None:
                    start(c)

            self._run(cmd, begin)
            live.lock_version = case.lock_version
        self.cache.put(case.id, live)
        self._after_commit(cmd)
        return case

    def _run(self, cmd: Command, apply: Callable[[Command], Any]) -> Any:
        info = CommandInfo(cmd.case.id, cmd.case.process_key, cmd.tx, cmd.now)
        token = current_command.set(info)
        engine = cmd.workflow.script_engine
        engine.service_caller = lambda task, name, params: self._call_handler(cmd, task, name, params)
        # Timers see the command's time and expression functions are logged, so a replay can
        # reproduce this command from its events alone (engine/audit).
        clock_token = audit_clock.set_clock(cmd.now)
        calls_token = recorded.start()
        recorded.record_functions(engine.environment.functions)
        try:
            result = apply(cmd)
            self._advance(cmd)
            self._save(cmd, info)
            return result
        finally:
            engine.service_caller = None
            recorded.stop(calls_token)
            audit_clock.reset_clock(clock_token)
            current_command.reset(token)

    # --- engine steps -----------------------------------------------------------------------

    def _advance(self, cmd: Command) -> None:
        wf = cmd.workflow

        def did_complete(task: Task) -> None:
            ts = task.task_spec
            operation = getattr(ts, "operation_name", None)
            if operation is not None:
                result = task.data.get(ts.result_variable)
                cmd.record("service_task_completed", task, {"handler": operation, "result": result})
            elif getattr(ts, "dmnEngine", None) is not None:
                cmd.record("decision_evaluated", task, {"decision": ts.dmnEngine.decision_table.id})

        try:
            spiff.run_engine_steps(wf, did_complete)
        except DBAPIError:
            raise  # the database itself failed: the whole command must fail
        except Exception as exc:  # a script or handler failed: record an incident, keep the rest
            task = getattr(exc, "task", None) if isinstance(exc, SpiffWorkflowException) else None
            if task is None:
                failed = wf.get_tasks(state=TaskState.ERROR)
                task = failed[-1] if failed else None
            self._raise_incident(cmd, task, exc)
        for task in spiff.open_user_tasks(wf):
            if spiff.task_key(task) not in cmd.live.open_tasks:
                info = spiff.user_task_info(task)
                cmd.record("task_opened", task, {"name": info.name, "lane": info.lane}, actor="system")
        if wf.completed and cmd.case.status not in ("completed", "cancelled"):
            cmd.record("case_completed", None, {}, actor="system")

    def _raise_incident(self, cmd: Command, task: Task | None, exc: Exception) -> None:
        original = getattr(exc, "exception", None) or exc
        handler = getattr(task.task_spec, "operation_name", None) if task is not None else None
        message = getattr(original, "message", None) or str(original)
        incident = {
            "handler": handler,
            "element": (task.task_spec.bpmn_id or task.task_spec.name) if task is not None else None,
            "error": type(original).__name__,
            "message": message.split("\n")[0][:500],
        }
        if task is not None and task.state == TaskState.ERROR:
            incident["task_id"] = str(task.id)
        cmd.incident = incident
        cmd.record("incident", task, incident, actor="system")
        log.warning("incident in case %s at %s: %s", cmd.case.id, incident["element"], incident["message"])

    def _call_handler(self, cmd: Command, task: Task, name: str, params: dict[str, Any]) -> Any:
        handler = self.handlers.get(name)
        if handler is None:
            raise HandlerMissing(f"no handler registered for '{name}'")
        ctx = ServiceContext(
            session=cmd.session, case_id=cmd.case.id, process_key=cmd.case.process_key,
            task_spec=task.task_spec.bpmn_id or task.task_spec.name, data=task.data,
            actor=cmd.actor.username, now=cmd.now,
        )
        # A savepoint keeps the user's completion when the handler fails half-way.
        with cmd.session.begin_nested():
            result = handler(ctx, **params)
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"handler '{name}' must return a JSON object, got {type(result).__name__}")
        return result

    # --- load and save ----------------------------------------------------------------------

    def _load(self, source: Transaction | Session, case: CaseRow,
              prefetched: Mapping[Statement, list[Any]] | None = None) -> LiveCase:
        cached = self.cache.take(case.id)
        if cached is not None and cached.lock_version == case.lock_version:
            return cached
        version = self.specs.get(source, case.process_version_id)
        key = {"case_id": case.id}
        header = json.loads(case.state)
        if prefetched and _LOAD_TASKS in prefetched:  # read with the lock
            rows, candidates, open_rows, timer_rows, sub_rows = (prefetched[q] for q in _LOAD_ALL)
        else:
            queries = [(_LOAD_TASKS, key), (_LOAD_CANDIDATES, key), (_LOAD_OPEN, key)]
            if spiff.header_waits(header):  # timer and subscription rows exist only for waiting tasks
                queries += [(_LOAD_TIMERS, key), (_LOAD_SUBSCRIPTIONS, key)]
            rows, candidates, open_rows, *waiting = fetch_all(source, queries)
            timer_rows, sub_rows = waiting or ([], [])
        wf = spiff.restore_workflow(version.spec, version.subprocess_specs, header,
                                    [(r[0], r[1]) for r in rows], self.specs.script_engine())
        groups: dict[str, list[str]] = {}
        for tid, group in candidates:
            groups.setdefault(tid, []).append(group)
        open_tasks = {
            r[0]: OpenInfo(r[1], r[2], r[3], r[4], r[5], r[6], r[7], parse_time(r[8]), parse_time(r[9]),
                           tuple(sorted(groups.get(r[0], []))))
            for r in open_rows
        }
        if self.task_clock is not None and any(i.sla_policy for i in open_tasks.values()):
            self.task_clock.load_open(source.session if isinstance(source, Transaction) else source, open_tasks)
        timers = {(r[0], parse_time(r[1])) for r in timer_rows}
        subs = {(r[0], r[1]) for r in sub_rows}
        return LiveCase(wf, version, case.lock_version, {r[2] for r in rows}, open_tasks, timers, subs)

    def _save(self, cmd: Command, info: CommandInfo) -> None:
        case, live, wf = cmd.case, cmd.live, cmd.workflow
        now = cmd.now

        row_keys = live.row_keys
        dirty, removed = spiff.changed_tasks(wf, cmd.started, live.saved_tasks, row_keys)
        rows = []
        advanced = False
        for key, task in dirty:
            tid = spiff.task_key(task)
            advanced = advanced or task.last_state_change >= cmd.started
            seq = 0
            if tid not in live.saved_tasks:
                case.task_seq += 1
                seq = case.task_seq
                live.saved_tasks.add(tid)
            rows.append({"case_id": case.id, "task_id": tid, "seq": seq, "workflow": key, "state": task.state,
                         "body": spiff.task_body(task)})
            row = None if task.has_state(TaskState.FINISHED_MASK) else spiff.row_key(task)
            if row is None:
                row_keys.pop(tid, None)
            else:
                row_keys[tid] = row
        live.saved_tasks -= removed
        for tid in removed:
            row_keys.pop(tid, None)

        # Everything the command writes goes in one batch: one round trip on PostgreSQL (reads
        # of listeners on the way take the writes so far along).
        with cmd.tx.batch():
            self._save_open_tasks(cmd)
            self._save_timers(cmd)
            self._save_subscriptions(cmd)

            # Case header and status.
            old_data, old_status, old_ended = cmd.loaded
            last = wf.last_task
            if last is not None and last.data != case.data:
                case.data = _json_safe(last.data)
            if case.status == "cancelled":
                pass
            elif wf.completed:
                case.status = "completed"
                case.ended_at = case.ended_at or now
            elif cmd.incident is not None or (case.status == "error" and wf.get_tasks(state=TaskState.ERROR)):
                case.status = "error"
            else:
                case.status = "running" if live.open_tasks else "waiting"
            case.state = spiff.workflow_header(wf)
            case.updated_at = now
            case.lock_version += 1

            for note in info.notes:
                cmd.events.append({"type": note.get("type", "note"), "actor": "system", "task_id": note.get("task_id"),
                                   "task": note.get("task"), "payload": note.get("payload", {})})
            calls = recorded.current()
            if calls:
                cmd.events.append({"type": recorded.EVENT_TYPE, "actor": "system", "task_id": None, "task": None,
                                   "payload": {"calls": calls}})
            if advanced and not any(e["type"] in COMMAND_EVENT_TYPES for e in cmd.events):
                # e.g. a due timer noticed by another command: replays need to know when it ran on.
                cmd.events.insert(0, {"type": "engine_advanced", "actor": "system", "task_id": None, "task": None,
                                      "payload": {}})
            if cmd.events:
                for listener in self.event_listeners:
                    listener(cmd, cmd.events)
            case.tasks = self.open_task_dicts(cmd)
            _WRITE_TASKS.write(cmd.tx, rows)
            _DELETE_TASK.executemany(cmd.tx, [{"case_id": case.id, "task_id": t} for t in sorted(removed)])
            self._write_events(cmd)
            data_changed = case.data != old_data
            if data_changed and self.search_paths:
                search.write_changes(cmd.tx, case.id, old_data, case.data, self.search_paths)
            update = _UPDATE_CASE[data_changed, (case.status, case.ended_at) != (old_status, old_ended)]
            update.execute(cmd.tx, {
                "id": case.id, "status": case.status, "data": case.data, "state": case.state,
                "lock_version": case.lock_version, "task_seq": case.task_seq, "event_seq": case.event_seq,
                "last_hash": case.last_hash, "updated_at": case.updated_at, "ended_at": case.ended_at,
            })
            cmd.tx.commit_with_batch()  # nothing writes after this in a command

    @staticmethod
    def _route(cmd: Command, task: Task, expression: str | None) -> str | None:
        """A user task's ``assignee`` property is an expression naming the user who gets the task
        when it opens (e.g. the technician a handler chose); the lane's group still sees it."""
        if not expression:
            return None
        try:
            value = task.workflow.script_engine.evaluate(task, expression)
        except Exception as exc:  # a routing rule that does not apply leaves the task to its group
            log.warning("case %s: assignee of %s not set (%s)", cmd.case.id, task.task_spec.bpmn_id, exc)
            return None
        if not isinstance(value, str) or not value.strip():
            return None
        cmd.record("task_routed", task, {"assignee": value.strip(), "rule": expression}, actor="system")
        return value.strip()[:80]

    def _save_open_tasks(self, cmd: Command) -> None:
        case, live = cmd.case, cmd.live
        current = {spiff.task_key(t): t for t in spiff.open_user_tasks(cmd.workflow)}
        gone = [tid for tid in live.open_tasks if tid not in current]
        timed = [tid for tid in gone if live.open_tasks[tid].sla_policy]
        for tid in gone:
            del live.open_tasks[tid]
        if timed and self.task_clock is not None:
            self.task_clock.tasks_closed(cmd, timed)
        new_rows, candidate_rows = [], []
        for tid, task in current.items():
            if tid in live.open_tasks:
                continue
            info = spiff.user_task_info(task)
            due = warn_at = None
            if info.sla_policy and self.task_clock is not None:
                due, warn_at = self.task_clock.task_opened(cmd, tid, info.spec, info.sla_policy)
            elif info.sla_policy and self.due_calculator is not None:
                due = self.due_calculator(info.sla_policy, cmd.now, case.id, cmd.session)
            rank = task.data.get("priority_rank", 0)
            priority = int(rank) if isinstance(rank, int | float) and not isinstance(rank, bool) else 0
            groups = tuple(sorted(task_groups(info.lane)))
            assignee = self._route(cmd, task, info.properties.get("assignee"))
            live.open_tasks[tid] = OpenInfo(info.name, info.spec, info.lane, info.form, assignee, priority,
                                            info.sla_policy, due, cmd.now, groups, warn_at)
            new_rows.append({
                "id": tid, "case_id": case.id, "process_key": case.process_key, "spec": info.spec,
                "name": info.name, "lane": info.lane, "form": info.form, "assignee": assignee, "priority": priority,
                "sla_policy": info.sla_policy, "due_at": due, "draft": None, "created_at": cmd.now,
            })
            for g in groups:
                candidate_rows.append({"task_id": tid, "group_name": g})
        if gone or new_rows:
            with cmd.tx.batch():
                _DELETE_OPEN.executemany(cmd.tx, [{"id": tid} for tid in gone])
                _INSERT_OPEN.executemany(cmd.tx, new_rows)
                _INSERT_CANDIDATE.executemany(cmd.tx, candidate_rows)
        if self.task_clock is not None and any(i.sla_policy for i in live.open_tasks.values()):
            self.task_clock.tasks_saved(cmd)  # pauses and resumes while the case waits on the customer

    def _save_timers(self, cmd: Command) -> None:
        case, live = cmd.case, cmd.live
        if not live.timers and not cmd.workflow.event_manager.tasks:
            return
        current = {(t.task_id, t.due_at): t for t in spiff.pending_timers(cmd.workflow)}
        gone = live.timers - current.keys()
        _DELETE_TIMER.executemany(cmd.tx, [{"case_id": case.id, "task_id": task_id, "due_at": due}
                                           for task_id, due in sorted(gone)])
        _INSERT_TIMER.executemany(cmd.tx, [
            {"case_id": case.id, "task_id": t.task_id, "spec": t.spec, "kind": t.kind, "due_at": t.due_at,
             "created_at": cmd.now} for key, t in current.items() if key not in live.timers])
        live.timers = set(current)

    def _save_subscriptions(self, cmd: Command) -> None:
        case, live = cmd.case, cmd.live
        if not live.subscriptions and not cmd.workflow.event_manager.tasks:
            return
        current = set(spiff.waiting_messages(cmd.workflow))
        _DELETE_SUBSCRIPTION.executemany(cmd.tx, [{"case_id": case.id, "task_id": t}
                                                  for t, _name in sorted(live.subscriptions - current)])
        _INSERT_SUBSCRIPTION.executemany(cmd.tx, [{"case_id": case.id, "task_id": t, "message": m}
                                                  for t, m in sorted(current - live.subscriptions)])
        live.subscriptions = current

    def _write_events(self, cmd: Command) -> None:
        case = cmd.case
        rows = []
        prev = case.last_hash or GENESIS
        at = cmd.now.astimezone(dt.UTC).isoformat()
        for ev in cmd.events:
            case.event_seq += 1
            # The payload is stored as the very text the hash covers (serialized once).
            payload = _canonical_payload(ev["payload"])
            h = chain_hash(prev, case.id, case.event_seq, ev["type"], at, ev["actor"], ev["task_id"], ev["task"],
                           payload)
            rows.append({"case_id": case.id, "seq": case.event_seq, "type": ev["type"], "at": cmd.now,
                         "actor": ev["actor"], "task_id": ev["task_id"], "task": ev["task"], "payload": payload,
                         "prev_hash": prev, "hash": h})
            prev = h
        _WRITE_EVENTS.write(cmd.tx, rows)
        case.last_hash = prev

    # --- what a command returns -------------------------------------------------------------

    @staticmethod
    def open_task_dicts(cmd: Command) -> list[dict[str, Any]]:
        """Open tasks as the API shows them, from memory at the end of a command."""
        case = cmd.case
        return [open_task_dict(tid, case.id, case.process_key, info)
                for tid, info in sorted(cmd.live.open_tasks.items(), key=lambda kv: (kv[1].created_at, kv[0]))]

    @staticmethod
    def set_assignee(cmd: Command, task_id: str, assignee: str | None) -> None:
        _SET_ASSIGNEE.execute(cmd.tx, {"id": task_id, "assignee": assignee})
        cmd.live.open_tasks[task_id].assignee = assignee

    def _after_commit(self, cmd: Command) -> None:
        for hook in self.on_commit:
            try:
                hook(cmd)
            except Exception:  # hooks are notifications (wake-ups); they must not undo a commit
                log.exception("after-commit hook failed")


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def open_task_dict(task_id: str, case_id: int, process_key: str, info: OpenInfo) -> dict[str, Any]:
    groups = list(info.groups) or sorted(task_groups(info.lane))
    return {
        "id": task_id, "instance": case_id, "process": process_key, "name": info.name, "spec": info.spec,
        "lane": info.lane, "candidate_groups": groups, "assignee": info.assignee,
        "state": "claimed" if info.assignee else "ready", "due": _iso(info.due_at),
        "created_at": _iso(info.created_at), "form_name": info.form, "priority": info.priority,
        "sla_policy": info.sla_policy, "warn_at": _iso(info.warn_at), "sla_state": sla_state(info),
    }


def sla_state(info: OpenInfo, now: dt.datetime | None = None) -> str | None:
    """on_time | warning | breached | paused for a task with an SLA policy, else None."""
    if info.sla_policy is None or info.due_at is None:
        return None
    if info.sla_paused:
        return "paused"
    now = now or utcnow()
    if now >= info.due_at:
        return "breached"
    if info.warn_at is not None and now >= info.warn_at:
        return "warning"
    return "on_time"


def instance_dict(case: Any, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": case.id, "process": case.process_key, "version": case.version, "status": case.status,
        "data": case.data or {}, "tasks": tasks, "created_at": _iso(_aware(case.created_at)),
        "updated_at": _iso(_aware(case.updated_at)), "ended_at": _iso(_aware(case.ended_at)),
        "started_by": case.started_by,
    }


_JSON_DEFAULT_STR = json.JSONEncoder(default=str).encode


def _json_safe(value: Any) -> Any:
    return json.loads(_JSON_DEFAULT_STR(value))


def _plain_json(value: Any, depth: int = 0) -> bool:
    """True when ``value`` encodes to JSON as it is and reads back the same: objects with
    string keys, arrays, strings, numbers, booleans and null."""
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if depth > 50:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain_json(v, depth + 1) for v in value)
    return False


def _canonical_payload(payload: Any) -> str:
    # The hash covers what is stored and read back, so anything JSON would change on the way
    # (dates, non-string keys, sets) goes through a JSON round trip first.
    return canonical(payload if _plain_json(payload) else _json_safe(payload))



SYSTEM_ACTOR = SYSTEM


def require_open(cmd: Command, task_id: str) -> Task:
    task = spiff.find_task(cmd.workflow, task_id)
    if task is None or not task.task_spec.manual:
        raise NotFound(f"task {task_id} not found")
    if task.state != TaskState.READY:
        raise Conflict(f"task {task_id} is not open (state {spiff.state_name(task)})")
    return task
