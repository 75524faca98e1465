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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import spiff
from .errors import Conflict, HandlerMissing, NotFound
from .history import GENESIS, event_hash
from .identity import SYSTEM, Actor, task_groups
from .models import (
    Case,
    CaseEvent,
    CaseTask,
    MessageSubscription,
    OpenTask,
    TaskCandidate,
    Timer,
    utcnow,
)
from .services import CommandInfo, HandlerRegistry, ServiceContext, current_command
from .specs import SpecStore, VersionSpec

log = logging.getLogger("aftercare.engine")

# Due date of a user task from its SLA policy name: (policy, opened at, case id, session) -> due.
DueCalculator = Callable[[str, dt.datetime, int, Session], dt.datetime | None]


@dataclass
class LiveCase:
    """A case's workflow plus what was last written for it, valid for ``lock_version``."""

    workflow: BpmnWorkflow
    spec: VersionSpec
    lock_version: int
    saved_tasks: set[str]
    open_tasks: set[str]
    timers: set[tuple[str, dt.datetime]]
    subscriptions: set[tuple[str, str]]


@dataclass
class Command:
    """The context one command runs in; ``record`` adds a history event."""

    session: Session
    case: Case
    live: LiveCase
    actor: Actor
    now: dt.datetime
    events: list[dict[str, Any]] = field(default_factory=list)
    incident: dict[str, Any] | None = None
    started: float = 0.0

    @property
    def workflow(self) -> BpmnWorkflow:
        return self.live.workflow

    def record(self, type_: str, task: Task | None = None, payload: dict[str, Any] | None = None,
               actor: str | None = None) -> None:
        self.events.append({
            "type": type_,
            "actor": actor if actor is not None else self.actor.username,
            "task_id": str(task.id) if task is not None else None,
            "task": (task.task_spec.bpmn_id or task.task_spec.name) if task is not None else None,
            "payload": payload or {},
        })


class _CaseCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[int, LiveCase] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, case_id: int) -> LiveCase | None:
        with self._lock:
            return self._items.pop(case_id, None)

    def put(self, case_id: int, live: LiveCase) -> None:
        with self._lock:
            self._items[case_id] = live
            self._items.move_to_end(case_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Runtime:
    def __init__(self, db: Any, specs: SpecStore, handlers: HandlerRegistry,
                 due_calculator: DueCalculator | None = None, cache_size: int = 2000) -> None:
        self.db = db
        self.specs = specs
        self.handlers = handlers
        self.due_calculator = due_calculator
        self.cache = _CaseCache(cache_size)
        self.on_commit: list[Callable[[Command], None]] = []

    # --- the door ---------------------------------------------------------------------------

    def execute(self, case_id: int, actor: Actor, apply: Callable[[Command], Any]) -> tuple[Case, Any]:
        """Run ``apply`` on the case under its lock and persist everything in one transaction."""
        with self.db.write() as session:
            case = session.execute(select(Case).where(Case.id == case_id).with_for_update()).scalar_one_or_none()
            if case is None:
                raise NotFound(f"case {case_id} not found")
            live = self._load(session, case)
            cmd = Command(session, case, live, actor, utcnow(), started=spiff.now_ts())
            # On any exception the half-changed workflow is dropped (it was taken out of the
            # cache) and the rollback leaves the database as the truth.
            result = self._run(cmd, apply)
            live.lock_version = case.lock_version
        self.cache.put(case_id, live)
        self._after_commit(cmd)
        return case, result

    def create(self, process_key: str, version: VersionSpec, data: dict[str, Any], actor: Actor,
               start: Callable[[Command], Any] | None = None) -> Case:
        """Start a case: same transaction shape as every other command."""
        with self.db.write() as session:
            wf = BpmnWorkflow(version.spec, version.subprocess_specs, script_engine=self.specs.script_engine())
            case = Case(process_key=process_key, process_version_id=version.id, version=version.version,
                        status="running", data={}, state="{}", lock_version=0, task_seq=0, event_seq=0,
                        last_hash=GENESIS, started_by=actor.username)
            session.add(case)
            session.flush()
            live = LiveCase(wf, version, 0, set(), set(), set(), set())
            cmd = Command(session, case, live, actor, utcnow(), started=0.0)

            def begin(c: Command) -> None:
                for t in c.workflow.get_tasks(state=TaskState.READY):
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
        info = CommandInfo(cmd.case.id, cmd.case.process_key, cmd.session, cmd.now)
        token = current_command.set(info)
        engine = cmd.workflow.script_engine
        engine.service_caller = lambda task, name, params: self._call_handler(cmd, task, name, params)
        try:
            result = apply(cmd)
            self._advance(cmd)
            self._save(cmd, info)
            return result
        finally:
            engine.service_caller = None
            current_command.reset(token)

    # --- engine steps -----------------------------------------------------------------------

    def _advance(self, cmd: Command) -> None:
        wf = cmd.workflow
        before_open = {str(t.id) for t in spiff.open_user_tasks(wf)}

        def did_complete(task: Task) -> None:
            ts = task.task_spec
            operation = getattr(ts, "operation_name", None)
            if operation is not None:
                result = task.data.get(ts.result_variable)
                cmd.record("service_task_completed", task, {"handler": operation, "result": result})
            elif getattr(ts, "dmnEngine", None) is not None:
                cmd.record("decision_evaluated", task, {"decision": ts.dmnEngine.decision_table.id})

        try:
            wf.do_engine_steps(did_complete_task=did_complete)
        except DBAPIError:
            raise  # the database itself failed: the whole command must fail
        except Exception as exc:  # a script or handler failed: record an incident, keep the rest
            task = getattr(exc, "task", None) if isinstance(exc, SpiffWorkflowException) else None
            if task is None:
                failed = wf.get_tasks(state=TaskState.ERROR)
                task = failed[-1] if failed else None
            self._raise_incident(cmd, task, exc)
        after_open = spiff.open_user_tasks(wf)
        for task in after_open:
            if str(task.id) not in before_open and str(task.id) not in cmd.live.open_tasks:
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

    def _load(self, session: Session, case: Case) -> LiveCase:
        cached = self.cache.take(case.id)
        if cached is not None and cached.lock_version == case.lock_version:
            return cached
        version = self.specs.get(session, case.process_version_id)
        rows = session.execute(
            select(CaseTask.workflow, CaseTask.body, CaseTask.task_id)
            .where(CaseTask.case_id == case.id).order_by(CaseTask.seq)
        ).all()
        wf = spiff.restore_workflow(version.spec, version.subprocess_specs, case.state,
                                    [(r[0], r[1]) for r in rows], self.specs.script_engine())
        open_ids = set(session.scalars(select(OpenTask.id).where(OpenTask.case_id == case.id)))
        timers = {(r[0], r[1]) for r in session.execute(
            select(Timer.task_id, Timer.due_at).where(Timer.case_id == case.id, Timer.status != "fired"))}
        subs = {(r[0], r[1]) for r in session.execute(
            select(MessageSubscription.task_id, MessageSubscription.message)
            .where(MessageSubscription.case_id == case.id))}
        return LiveCase(wf, version, case.lock_version, {r[2] for r in rows}, open_ids, timers, subs)

    def _save(self, cmd: Command, info: CommandInfo) -> None:
        session, case, live, wf = cmd.session, cmd.case, cmd.live, cmd.workflow
        now = cmd.now

        dirty, removed = spiff.changed_tasks(wf, cmd.started, live.saved_tasks)
        inserts, updates = [], []
        for key, task in dirty:
            tid = str(task.id)
            row = {"case_id": case.id, "task_id": tid, "workflow": key, "state": task.state,
                   "body": spiff.task_body(task)}
            if tid in live.saved_tasks:
                updates.append(row)
            else:
                case.task_seq += 1
                row["seq"] = case.task_seq
                inserts.append(row)
        if inserts:
            session.execute(CaseTask.__table__.insert(), inserts)
        if updates:
            session.execute(
                update(CaseTask.__table__)
                .where(CaseTask.__table__.c.case_id == _bp("b_case"), CaseTask.__table__.c.task_id == _bp("b_task"))
                .values(state=_bp("state"), body=_bp("body"), workflow=_bp("workflow")),
                [{"b_case": r["case_id"], "b_task": r["task_id"], "state": r["state"], "body": r["body"],
                  "workflow": r["workflow"]} for r in updates],
            )
        if removed:
            session.execute(delete(CaseTask).where(CaseTask.case_id == case.id, CaseTask.task_id.in_(removed)))
        live.saved_tasks = (live.saved_tasks - removed) | {r["task_id"] for r in inserts}

        self._save_open_tasks(cmd)
        self._save_timers(cmd)
        self._save_subscriptions(cmd)

        # Case header and status.
        last = wf.last_task
        case.data = _json_safe(dict(last.data)) if last is not None else case.data
        if case.status == "cancelled":
            pass
        elif wf.completed:
            case.status = "completed"
            case.ended_at = case.ended_at or now
        elif cmd.incident is not None or wf.get_tasks(state=TaskState.ERROR):
            case.status = "error"
        else:
            case.status = "running" if live.open_tasks else "waiting"
        case.state = spiff.workflow_header(wf)
        case.updated_at = now
        case.lock_version += 1

        for note in info.notes:
            cmd.events.append({"type": note.get("type", "note"), "actor": "system", "task_id": note.get("task_id"),
                               "task": note.get("task"), "payload": note.get("payload", {})})
        self._write_events(cmd)

    def _save_open_tasks(self, cmd: Command) -> None:
        session, case, live = cmd.session, cmd.case, cmd.live
        current = {str(t.id): t for t in spiff.open_user_tasks(cmd.workflow)}
        gone = live.open_tasks - current.keys()
        if gone:
            session.execute(delete(TaskCandidate).where(TaskCandidate.task_id.in_(gone)))
            session.execute(delete(OpenTask).where(OpenTask.id.in_(gone)))
        new_rows, candidate_rows = [], []
        for tid, task in current.items():
            if tid in live.open_tasks:
                continue
            info = spiff.user_task_info(task)
            due = None
            if info.sla_policy and self.due_calculator is not None:
                due = self.due_calculator(info.sla_policy, cmd.now, case.id, session)
            new_rows.append({
                "id": tid, "case_id": case.id, "process_key": case.process_key, "spec": info.spec,
                "name": info.name, "lane": info.lane, "form": info.form, "assignee": None,
                "priority": int(task.data.get("priority_rank", 0) or 0) if isinstance(
                    task.data.get("priority_rank", 0), int | float) else 0,
                "sla_policy": info.sla_policy, "due_at": due, "draft": None, "created_at": cmd.now,
            })
            for g in sorted(task_groups(info.lane)):
                candidate_rows.append({"task_id": tid, "group_name": g})
        if new_rows:
            session.execute(OpenTask.__table__.insert(), new_rows)
        if candidate_rows:
            session.execute(TaskCandidate.__table__.insert(), candidate_rows)
        live.open_tasks = set(current)

    def _save_timers(self, cmd: Command) -> None:
        session, case, live = cmd.session, cmd.case, cmd.live
        current = {(t.task_id, t.due_at): t for t in spiff.pending_timers(cmd.workflow)}
        gone = live.timers - current.keys()
        for task_id, due in gone:
            session.execute(delete(Timer).where(Timer.case_id == case.id, Timer.task_id == task_id,
                                                Timer.due_at == due, Timer.status != "fired"))
        rows = [{"case_id": case.id, "task_id": t.task_id, "spec": t.spec, "kind": t.kind, "due_at": t.due_at,
                 "status": "pending", "created_at": cmd.now}
                for key, t in current.items() if key not in live.timers]
        if rows:
            session.execute(Timer.__table__.insert(), rows)
        live.timers = set(current)

    def _save_subscriptions(self, cmd: Command) -> None:
        session, case, live = cmd.session, cmd.case, cmd.live
        current = set(spiff.waiting_messages(cmd.workflow))
        for task_id, _name in live.subscriptions - current:
            session.execute(delete(MessageSubscription).where(
                MessageSubscription.case_id == case.id, MessageSubscription.task_id == task_id))
        rows = [{"case_id": case.id, "task_id": t, "message": m} for t, m in current - live.subscriptions]
        if rows:
            session.execute(MessageSubscription.__table__.insert(), rows)
        live.subscriptions = current

    def _write_events(self, cmd: Command) -> None:
        case = cmd.case
        rows = []
        prev = case.last_hash or GENESIS
        for ev in cmd.events:
            case.event_seq += 1
            payload = _json_safe(ev["payload"])
            h = event_hash(prev, case.id, case.event_seq, ev["type"], cmd.now, ev["actor"], ev["task_id"],
                           ev["task"], payload)
            rows.append({"case_id": case.id, "seq": case.event_seq, "type": ev["type"], "at": cmd.now,
                         "actor": ev["actor"], "task_id": ev["task_id"], "task": ev["task"], "payload": payload,
                         "prev_hash": prev, "hash": h})
            prev = h
        if rows:
            cmd.session.execute(CaseEvent.__table__.insert(), rows)
        case.last_hash = prev

    def _after_commit(self, cmd: Command) -> None:
        for hook in self.on_commit:
            try:
                hook(cmd)
            except Exception:  # hooks are notifications (wake-ups); they must not undo a commit
                log.exception("after-commit hook failed")


def _bp(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


SYSTEM_ACTOR = SYSTEM


def require_open(cmd: Command, task_id: str) -> Task:
    task = spiff.find_task(cmd.workflow, task_id)
    if task is None or not task.task_spec.manual:
        raise NotFound(f"task {task_id} not found")
    if task.state != TaskState.READY:
        raise Conflict(f"task {task_id} is not open (state {spiff.state_name(task)})")
    return task
