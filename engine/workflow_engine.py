"""The engine's public face: deploy definitions, run cases through the one door, and read them.

``web/`` and the CLI call these functions only; none of them hands out SpiffWorkflow objects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from SpiffWorkflow.util.task import TaskState
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import forms, spiff
from .db import Database
from .definitions import SourceFile, parse_bundle, read_source
from .errors import Conflict, Forbidden, FormInvalid, HandlerMissing, InvalidInput, NotFound
from .fastsql import Statement, parse_time
from .history import event_dict
from .identity import DEPLOYERS, SYSTEM, Actor, groups_of, may_see_task, may_start, may_work_task
from .models import (
    Case,
    CaseEvent,
    CaseTask,
    DefinitionFile,
    Deployment,
    MessageSubscription,
    OpenTask,
    ProcessVersion,
    TaskCandidate,
    Timer,
    User,
    utcnow,
)
from .runtime import (
    Command,
    DueCalculator,
    OpenInfo,
    Runtime,
    instance_dict,
    open_task_dict,
    require_open,
    sla_state,
)
from .services import HandlerRegistry, ServiceContext
from .sla import SLA_TIMER_KIND, SlaService
from .specs import SpecStore

# Marks a timer fired once: the row is only returned to the one command that changes it.
_MARK_TIMER_FIRED = Statement("UPDATE timers SET status = 'fired', fired_at = :now WHERE id = :id "
                              "AND status <> 'fired' RETURNING task_id, kind, due_at", time_params=("now",))

CASE_READERS = frozenset({"admin", "supervisor", "auditor", "process-owner"})


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class WorkflowEngine:
    def __init__(self, db: Database, handlers: HandlerRegistry | None = None,
                 functions: Mapping[str, Callable[..., Any]] | None = None,
                 due_calculator: DueCalculator | None = None,
                 search_paths: Sequence[tuple[str, ...]] = ()) -> None:
        self.db = db
        self.handlers = handlers or HandlerRegistry()
        self.specs = SpecStore(functions)
        # Places of case data the application searches (kept in case_search by each command).
        self.runtime = Runtime(db, self.specs, self.handlers, due_calculator, search_paths=tuple(search_paths))

    # --- definitions ------------------------------------------------------------------------

    def deploy(self, uploaded: list[tuple[str, bytes | str]], actor: Actor) -> list[dict[str, Any]]:
        """Validate and store a bundle all-or-nothing; only changed processes get a new version."""
        actor.require(DEPLOYERS, "deploying")
        try:
            with self.db.write() as session:
                return self._deploy(session, uploaded, actor)
        except IntegrityError as exc:
            raise Conflict("another deployment of the same process happened at the same time; retry") from exc

    def _deploy(self, session: Session, uploaded: list[tuple[str, bytes | str]], actor: Actor) -> list[dict[str, Any]]:
        known = self._latest_files(session)
        files, processes = parse_bundle(uploaded, list(known.values()), self.handlers.names())
        deployment: Deployment | None = None

        def ensure_deployment() -> Deployment:
            nonlocal deployment
            if deployment is None:
                deployment = Deployment(deployed_by=actor.username)
                session.add(deployment)
                session.flush()
            return deployment

        file_ids: dict[str, int] = {}
        for src in files:
            previous = known.get(src.name)
            if previous is not None and previous.sha256 == src.sha256 and previous.file_id is not None:
                file_ids[src.name] = previous.file_id
                continue
            row = DefinitionFile(deployment_id=ensure_deployment().id, name=src.name, kind=src.kind,
                                 sha256=src.sha256, content=src.content)
            session.add(row)
            session.flush()
            file_ids[src.name] = row.id

        def fid(src: SourceFile) -> int:
            return src.file_id if src.file_id is not None and src.name not in file_ids else file_ids[src.name]

        deployed = []
        for proc in processes:
            latest = session.scalars(select(ProcessVersion).where(ProcessVersion.key == proc.key)
                                     .order_by(ProcessVersion.version.desc()).limit(1)).first()
            if latest is not None and latest.fingerprint == proc.fingerprint:
                continue
            version = (latest.version if latest else 0) + 1
            bundle = {
                "bpmn": [fid(f) for f in proc.bpmn_files],
                "dmn": [fid(f) for f in proc.dmn_files],
                "forms": {name: fid(f) for name, f in proc.forms.items()},
            }
            session.add(ProcessVersion(key=proc.key, version=version, name=proc.name,
                                       deployment_id=ensure_deployment().id, bpmn_file_id=fid(proc.bpmn),
                                       fingerprint=proc.fingerprint, bundle=bundle))
            deployed.append({"key": proc.key, "version": version})
        session.flush()
        return deployed

    def deploy_paths(self, paths: list[str | Path], actor: Actor = SYSTEM) -> list[dict[str, Any]]:
        """Deploy files and folders (folders contribute their .bpmn, .dmn and .json files)."""
        uploaded: list[tuple[str, bytes]] = []
        for p in map(Path, paths):
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.suffix.lower() in (".bpmn", ".dmn", ".json") and f.is_file():
                        uploaded.append((f.name, f.read_bytes()))
            elif p.is_file():
                uploaded.append((p.name, p.read_bytes()))
            else:
                raise NotFound(f"no such file or folder: {p}")
        return self.deploy(uploaded, actor)

    def _latest_files(self, session: Session) -> dict[str, SourceFile]:
        latest_ids = select(func.max(DefinitionFile.id)).group_by(DefinitionFile.name)
        out: dict[str, SourceFile] = {}
        for row in session.scalars(select(DefinitionFile).where(DefinitionFile.id.in_(latest_ids))):
            src = read_source(row.name, row.content)
            if src is not None:
                src.file_id = row.id
                out[row.name] = src
        return out

    def list_processes(self) -> list[dict[str, Any]]:
        with self.db.read() as session:
            latest = (select(ProcessVersion.key, func.max(ProcessVersion.version).label("v"))
                      .group_by(ProcessVersion.key).subquery())
            rows = session.scalars(select(ProcessVersion).join(
                latest, (ProcessVersion.key == latest.c.key) & (ProcessVersion.version == latest.c.v))
                .order_by(ProcessVersion.key))
            return [{"key": r.key, "name": r.name, "version": r.version, "deployed_at": _iso(r.deployed_at)}
                    for r in rows]

    def startable_processes(self, actor: Actor) -> list[dict[str, Any]]:
        """The latest processes ``actor`` may start a case of (a process may name its starter groups)."""
        processes = self.list_processes()
        with self.db.read() as session:
            return [p for p in processes if may_start(actor, self.specs.latest(session, p["key"]).starters)]

    def get_process(self, key: str) -> dict[str, Any]:
        with self.db.read() as session:
            rows = list(session.scalars(select(ProcessVersion).where(ProcessVersion.key == key)
                                        .order_by(ProcessVersion.version)))
            if not rows:
                raise NotFound(f"process '{key}' is not deployed")
            return {"key": key, "name": rows[-1].name,
                    "versions": [{"version": r.version, "deployed_at": _iso(r.deployed_at),
                                  "deployed_by": session.get(Deployment, r.deployment_id).deployed_by}
                                 for r in rows]}

    def get_bpmn(self, key: str, version: int | None = None) -> tuple[str, str]:
        """(file name, XML) of a process version, the latest when ``version`` is None."""
        with self.db.read() as session:
            q = select(ProcessVersion).where(ProcessVersion.key == key)
            q = q.where(ProcessVersion.version == version) if version else q.order_by(ProcessVersion.version.desc())
            pv = session.scalars(q.limit(1)).first()
            if pv is None:
                raise NotFound(f"process '{key}' version {version or 'latest'} not found")
            f = session.get(DefinitionFile, pv.bpmn_file_id)
            return f.name, f.content

    def get_form(self, name: str) -> str:
        with self.db.read() as session:
            row = session.scalars(select(DefinitionFile)
                                  .where(DefinitionFile.name == name, DefinitionFile.kind == "form")
                                  .order_by(DefinitionFile.id.desc()).limit(1)).first()
            if row is None:
                raise NotFound(f"form '{name}' not found")
            return row.content

    # --- commands ---------------------------------------------------------------------------

    def start_case(self, process_key: str, data: dict[str, Any] | None, actor: Actor) -> dict[str, Any]:
        actor.require_writer()
        if data is not None and not isinstance(data, dict):
            raise InvalidInput("data must be a JSON object", [{"field": "data", "message": "expected an object"}])
        errors = forms.data_errors(data or {}, "data.")
        if errors:
            raise InvalidInput(f"{len(errors)} data field(s) are invalid", errors)
        return self.runtime.create(process_key, dict(data or {}), actor).to_dict()

    def claim(self, task_id: str, actor: Actor) -> dict[str, Any]:
        def apply(cmd: Command) -> dict[str, Any]:
            info = self._open_info(cmd, task_id)
            self._check_may_work(task_id, info, actor)
            if info.assignee and info.assignee != actor.username:
                raise Conflict(f"task {task_id} is held by {info.assignee}")
            if info.assignee != actor.username:
                self.runtime.set_assignee(cmd, task_id, actor.username)
                cmd.record("task_claimed", spiff.find_task(cmd.workflow, task_id), {})
            return open_task_dict(task_id, cmd.case.id, cmd.case.process_key, info)

        return self.runtime.execute_for_task(task_id, actor, apply)[1]

    def unclaim(self, task_id: str, actor: Actor) -> dict[str, Any]:
        def apply(cmd: Command) -> dict[str, Any]:
            info = self._open_info(cmd, task_id)
            self._check_may_work(task_id, info, actor)
            if info.assignee and info.assignee != actor.username and not actor.groups & {"admin", "supervisor"}:
                raise Conflict(f"task {task_id} is held by {info.assignee}")
            if info.assignee is not None:
                self.runtime.set_assignee(cmd, task_id, None)
                cmd.record("task_unclaimed", spiff.find_task(cmd.workflow, task_id), {})
            return open_task_dict(task_id, cmd.case.id, cmd.case.process_key, info)

        return self.runtime.execute_for_task(task_id, actor, apply)[1]

    def assign(self, task_id: str, assignee: str | None, actor: Actor) -> dict[str, Any]:
        """Supervisors hand a task to someone (or back to the group)."""
        actor.require({"admin", "supervisor"}, "reassigning tasks")
        assignee_groups = self._assignee_groups(assignee) if assignee is not None else None

        def apply(cmd: Command) -> dict[str, Any]:
            info = self._open_info(cmd, task_id)
            if assignee_groups is not None and not assignee_groups & ({"admin", "supervisor"} | set(info.groups)):
                raise InvalidInput(f"{assignee} is not in the groups that work task {task_id}", [{
                    "field": "assignee",
                    "message": f"not a member of {', '.join(sorted(info.groups))} (nor a supervisor)"}])
            self.runtime.set_assignee(cmd, task_id, assignee)
            cmd.record("task_assigned", spiff.find_task(cmd.workflow, task_id), {"assignee": assignee})
            return open_task_dict(task_id, cmd.case.id, cmd.case.process_key, info)

        return self.runtime.execute_for_task(task_id, actor, apply)[1]

    def _assignee_groups(self, username: str) -> frozenset[str]:
        """The groups of an active user who may work tasks; InvalidInput naming ``assignee``
        for an unknown, disabled or read-only (auditor) user."""
        with self.db.read() as session:
            user = session.scalar(select(User).where(User.username == username))
            groups = groups_of(session, user.id) if user is not None and user.active else None
        if groups is None:
            raise InvalidInput(f"no active user '{username}'",
                               [{"field": "assignee", "message": "unknown or disabled user"}])
        if Actor(username, groups).read_only:
            raise InvalidInput(f"{username} has read-only access", [{"field": "assignee", "message": "read-only user"}])
        return groups

    def save_draft(self, task_id: str, data: dict[str, Any], actor: Actor) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise InvalidInput("data must be a JSON object", [{"field": "data", "message": "expected an object"}])
        errors = forms.data_errors(data)  # a draft is stored as it is; the same rule as a completion
        if errors:
            raise FormInvalid(f"{len(errors)} form field(s) are invalid", errors)

        def apply(cmd: Command) -> dict[str, Any]:
            info = self._open_info(cmd, task_id)
            self._check_may_work(task_id, info, actor)
            if info.assignee and info.assignee != actor.username:
                raise Conflict(f"task {task_id} is held by {info.assignee}")
            cmd.session.execute(update(OpenTask).where(OpenTask.id == task_id).values(draft=data))
            cmd.record("task_draft_saved", spiff.find_task(cmd.workflow, task_id), {"fields": sorted(data)})
            return open_task_dict(task_id, cmd.case.id, cmd.case.process_key, info)

        return self.runtime.execute_for_task(task_id, actor, apply)[1]

    def complete_task(self, task_id: str, data: dict[str, Any] | None, actor: Actor) -> dict[str, Any]:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise InvalidInput("data must be a JSON object", [{"field": "data", "message": "expected an object"}])

        def apply(cmd: Command) -> None:
            if cmd.case.status == "error":
                raise Conflict(f"case {cmd.case.id} has an open incident; retry it first")
            task = require_open(cmd, task_id)
            info = self._open_info(cmd, task_id)
            self._check_may_work(task_id, info, actor)
            if info.assignee and info.assignee != actor.username and not actor.system:
                raise Conflict(f"task {task_id} is held by {info.assignee}")
            schema = cmd.live.spec.forms.get(info.form) if info.form else None
            forms.validate_submission(schema, data)
            undeclared = [] if actor.system else forms.undeclared_errors(schema, data)  # staff fill in the form
            if undeclared:
                raise FormInvalid(f"{len(undeclared)} field(s) are not on the form of task {task_id}", undeclared)
            check = spiff.spec_properties(task.task_spec).get("completionCheck")
            if check:  # a handler that knows the domain refuses what a schema cannot (FormInvalid)
                self._run_completion_check(cmd, task, check, data)
            task.data.update(data)
            task.run()
            cmd.record("task_completed", task, {"data": data})

        case, _ = self.runtime.execute_for_task(task_id, actor, apply)
        return case.to_dict()

    def _run_completion_check(self, cmd: Command, task: Any, name: str, data: dict[str, Any]) -> None:
        handler = self.handlers.get(name)
        if handler is None:
            raise HandlerMissing(f"no handler registered for completion check '{name}'")
        handler(ServiceContext(session=cmd.session, case_id=cmd.case.id, process_key=cmd.case.process_key,
                               task_spec=task.task_spec.bpmn_id or task.task_spec.name, data={**task.data, **data},
                               actor=cmd.actor.username, now=cmd.now))

    def deliver_message(self, name: str, correlation: dict[str, Any] | None, payload: dict[str, Any] | None,
                        actor: Actor) -> list[int]:
        """Deliver to every waiting case whose data matches ``correlation``; returns their ids."""
        actor.require_writer()
        correlation = correlation or {}
        payload = payload or {}
        if not isinstance(correlation, dict) or not isinstance(payload, dict) or not name:
            raise InvalidInput("invalid message", [{
                "field": "name/correlation/payload",
                "message": "name is required; correlation and payload are objects"}])
        errors = forms.data_errors(payload, "payload.")
        if errors:
            raise InvalidInput(f"{len(errors)} payload field(s) are invalid", errors)
        instance = correlation.get("instance")
        if "instance" in correlation and (type(instance) is not int or not 0 < instance < 2**63):
            raise InvalidInput("invalid message", [{
                "field": "correlation.instance", "message": "must be a case id (a positive integer)"}])
        with self.db.read() as session:
            q = select(MessageSubscription.case_id).where(MessageSubscription.message == name).distinct()
            if instance is not None:
                q = q.where(MessageSubscription.case_id == instance)
            candidates = sorted(set(session.scalars(q)))
            if not actor.system:
                # A staff member speaks for the customer only in cases they may read: a message
                # names no case for them to reach otherwise (and a named one must be readable).
                visible = [c for c in candidates if self._may_read(session, session.get(Case, c), actor)]
                if instance is not None and candidates and not visible:
                    raise Forbidden(f"case {instance} is not visible to {actor.username}")
                candidates = visible
        delivered = []
        for case_id in candidates:
            def apply(cmd: Command) -> bool:
                data = cmd.case.data or {}
                for k, v in correlation.items():
                    if k == "instance":
                        continue
                    if data.get(k) != v:
                        return False
                if not spiff.deliver_message(cmd.workflow, name, payload):
                    return False
                cmd.record("message_delivered", None, {"name": name, "correlation": correlation, "payload": payload})
                return True

            try:
                _, ok = self.runtime.execute(case_id, actor, apply)
            except NotFound:
                continue
            if ok:
                delivered.append(case_id)
        return delivered

    def fire_timer(self, timer_id: int, actor: Actor = SYSTEM, case_id: int | None = None) -> bool:
        """Fire one timer row (a diagram's timer event or an SLA checkpoint) once: the row is
        marked fired in the command that fires it, under the case's lock."""
        if case_id is None:
            with self.db.read() as session:
                timer = session.get(Timer, timer_id)
                if timer is None:
                    raise NotFound(f"timer {timer_id} not found")
                case_id = timer.case_id

        def apply(cmd: Command) -> bool:
            row = cmd.first[0] if cmd.first else None
            if row is None:  # gone with its task, or already fired by another worker
                return False
            task_id, kind, due_at = row[0], row[1], parse_time(row[2])
            if kind == SLA_TIMER_KIND:
                clock = self.runtime.task_clock
                return clock.fire(cmd, task_id) if isinstance(clock, SlaService) else False
            fired = spiff.fire_timer(cmd.workflow, task_id)
            if fired:
                cmd.record("timer_fired", spiff.find_task(cmd.workflow, task_id),
                           {"timer": timer_id, "due_at": due_at.isoformat(), "kind": kind}, actor=actor.username)
                cmd.live.timers.discard((task_id, due_at))
            return fired

        # Marked fired with the case's lock, in the same round trip; fired_at is when the firing
        # command began.
        _, fired = self.runtime.execute(case_id, actor, apply, first=(_MARK_TIMER_FIRED, {"id": timer_id,
                                                                                          "now": utcnow()}))
        return bool(fired)

    def fire_due_timers(self, now: dt.datetime | None = None, limit: int = 500) -> int:
        """Claim and fire every timer due by ``now``, oldest first, in this thread; returns how
        many fired (``engine.scheduler.TimerWorker`` does the same continuously)."""
        from .scheduler import fire_all_due

        return fire_all_due(self, now or utcnow(), limit=limit)

    def retry(self, case_id: int, actor: Actor) -> dict[str, Any]:
        actor.require_writer()
        self._require_case_access(case_id, actor, write=True)

        def apply(cmd: Command) -> None:
            failed = cmd.workflow.get_tasks(state=TaskState.ERROR)
            if cmd.case.status != "error" and not failed:
                raise Conflict(f"case {case_id} has no incident to retry")
            for task in failed:
                task._set_state(TaskState.READY)
            spiff.reset_frontier(cmd.workflow)  # failed tasks are finished: look at the whole case again
            cmd.record("retried", None, {"tasks": [t.task_spec.bpmn_id or t.task_spec.name for t in failed]})

        return self.runtime.execute(case_id, actor, apply)[0].to_dict()

    def cancel(self, case_id: int, reason: str | None, actor: Actor) -> dict[str, Any]:
        actor.require({"admin", "supervisor"}, "cancelling a case")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("a reason is required to cancel a case",
                               [{"field": "reason", "message": "required text"}])
        reason = reason.strip()[:500]

        def apply(cmd: Command) -> None:
            if cmd.case.status in ("completed", "cancelled"):
                raise Conflict(f"case {case_id} has already ended")
            cmd.workflow.cancel()
            cmd.case.status = "cancelled"
            cmd.case.ended_at = cmd.now
            cmd.record("case_cancelled", None, {"reason": reason})

        return self.runtime.execute(case_id, actor, apply)[0].to_dict()

    # --- reads ------------------------------------------------------------------------------

    def get_case(self, case_id: int, actor: Actor) -> dict[str, Any]:
        with self.db.read() as session:
            case = session.get(Case, case_id)
            if case is None:
                raise NotFound(f"case {case_id} not found")
            self._check_case_read(session, case, actor)
            tasks = self._task_rows(session, select(OpenTask).where(OpenTask.case_id == case_id))
            return self._case_dict(case, [t for t in tasks if may_see_task(actor, frozenset(t["candidate_groups"]),
                                                                           t["assignee"])])

    def history(self, case_id: int, actor: Actor) -> list[dict[str, Any]]:
        with self.db.read() as session:
            case = session.get(Case, case_id)
            if case is None:
                raise NotFound(f"case {case_id} not found")
            self._check_case_read(session, case, actor)
            rows = session.scalars(select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(CaseEvent.seq))
            return [event_dict(r) for r in rows]

    def list_tasks(self, actor: Actor, scope: str = "all", process: str | None = None,
                   limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        if scope not in ("mine", "group", "all"):
            raise InvalidInput("invalid scope", [{"field": "scope", "message": "one of mine, group, all"}])
        limit = max(1, min(int(limit), 500))
        q = select(OpenTask)
        mine = OpenTask.assignee == actor.username
        in_groups = OpenTask.id.in_(select(TaskCandidate.task_id).where(TaskCandidate.group_name.in_(actor.groups)))
        if scope == "mine":
            q = q.where(mine)
        elif scope == "group":
            q = q.where(in_groups)
        elif not actor.sees_all:
            q = q.where(or_(mine, in_groups))
        if process:
            q = q.where(OpenTask.process_key == process)
        # NULLS LAST rather than "due_at IS NULL" first: PostgreSQL can then walk the due_at index.
        q = q.order_by(OpenTask.due_at.asc().nulls_last(), OpenTask.created_at, OpenTask.id)
        with self.db.read() as session:
            return self._task_rows(session, q.limit(limit).offset(offset))

    def get_task(self, task_id: str, actor: Actor, with_form: bool = True) -> dict[str, Any]:
        with self.db.read() as session:
            row = session.get(OpenTask, task_id)
            if row is None:
                if session.scalar(select(CaseTask.case_id).where(CaseTask.task_id == task_id).limit(1)) is not None:
                    raise Conflict(f"task {task_id} is not open")
                raise NotFound(f"task {task_id} not found")
            task = self._task_rows(session, select(OpenTask).where(OpenTask.id == task_id))[0]
            if not may_see_task(actor, frozenset(task["candidate_groups"]), task["assignee"]):
                raise Forbidden(f"task {task_id} belongs to {', '.join(task['candidate_groups'])}")
            if with_form:
                case = session.get(Case, row.case_id)
                version = self.specs.get(session, case.process_version_id)
                form = version.forms.get(row.form) if row.form else None
                import json

                task["form"] = json.loads(form) if form else None
                task["data"] = {**(case.data or {}), **(row.draft or {})}
                task["draft"] = row.draft
            return task

    def element_states(self, case_id: int) -> dict[str, list[str]]:
        """BPMN element ids of a case by state, from its stored task rows (to mark a diagram).

        An element reached several times (a loop) is listed once, by its most pressing state.
        """
        kinds = {TaskState.COMPLETED: "completed", TaskState.READY: "active", TaskState.STARTED: "active",
                 TaskState.WAITING: "waiting", TaskState.ERROR: "error"}
        rank = {"error": 4, "active": 3, "waiting": 2, "completed": 1}
        best: dict[str, str] = {}
        import json
        with self.db.read() as session:
            case = session.get(Case, case_id)
            if case is None:
                raise NotFound(f"case {case_id} not found")
            task_specs = self.specs.get(session, case.process_version_id).spec.task_specs
            for state, body in session.execute(select(CaseTask.state, CaseTask.body)
                                               .where(CaseTask.case_id == case_id)):
                kind = kinds.get(state)
                spec = json.loads(body).get("task_spec") if kind else None
                if not isinstance(spec, str) or "." in spec or spec in ("Start", "End", "Root"):
                    continue
                if rank[kind] > rank.get(best.get(spec, ""), 0):
                    best[spec] = kind
        # An event-based gateway waits through the events after it (SpiffWorkflow keeps those "maybe").
        for spec, kind in list(best.items()):
            gateway = task_specs.get(spec)
            if kind == "waiting" and type(gateway).__name__ == "EventBasedGateway":
                for event in gateway.outputs:
                    if rank.get(best.get(event.name, ""), 0) < rank["waiting"]:
                        best[event.name] = "waiting"
        out: dict[str, list[str]] = {k: [] for k in rank}
        for spec, kind in sorted(best.items()):
            out[kind].append(spec)
        return {"completed": out["completed"], "active": out["active"], "waiting": out["waiting"],
                "error": out["error"]}

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _open_info(cmd: Command, task_id: str) -> OpenInfo:
        info = cmd.live.open_tasks.get(task_id)
        if info is None:
            raise Conflict(f"task {task_id} is not open")
        return info

    @staticmethod
    def _check_may_work(task_id: str, info: OpenInfo, actor: Actor) -> None:
        groups = frozenset(info.groups)
        if not may_work_task(actor, groups, info.assignee):
            raise Forbidden(f"task {task_id} belongs to group(s) {', '.join(sorted(groups))}")

    def _check_case_read(self, session: Session, case: Case, actor: Actor) -> None:
        if not self._may_read(session, case, actor):
            raise Forbidden(f"case {case.id} is not visible to {actor.username}")

    @staticmethod
    def _may_read(session: Session, case: Case | None, actor: Actor) -> bool:
        if case is None:
            return False
        if actor.system or actor.groups & CASE_READERS or case.started_by == actor.username:
            return True
        involved = session.scalar(select(func.count()).select_from(CaseEvent)
                                  .where(CaseEvent.case_id == case.id, CaseEvent.actor == actor.username))
        if involved:
            return True
        return bool(session.scalar(
            select(func.count()).select_from(OpenTask).where(
                OpenTask.case_id == case.id,
                or_(OpenTask.assignee == actor.username,
                    OpenTask.id.in_(select(TaskCandidate.task_id).where(TaskCandidate.group_name.in_(actor.groups)))))))

    def _require_case_access(self, case_id: int, actor: Actor, write: bool = False) -> None:
        with self.db.read() as session:
            case = session.get(Case, case_id)
            if case is None:
                raise NotFound(f"case {case_id} not found")
            self._check_case_read(session, case, actor)

    def _task_rows(self, session: Session, query: Any) -> list[dict[str, Any]]:
        rows = list(session.scalars(query))
        if not rows:
            return []
        groups: dict[str, list[str]] = {}
        for tid, g in session.execute(select(TaskCandidate.task_id, TaskCandidate.group_name)
                                      .where(TaskCandidate.task_id.in_([r.id for r in rows]))):
            groups.setdefault(tid, []).append(g)
        clocks = self.runtime.task_clock.clock_view(session, [r.id for r in rows if r.sla_policy]) if isinstance(
            self.runtime.task_clock, SlaService) else {}
        now = utcnow()
        out = []
        for r in rows:
            clock = clocks.get(r.id)
            info = OpenInfo(r.name, r.spec, r.lane, r.form, r.assignee, r.priority, r.sla_policy, r.due_at,
                            r.created_at, (), clock.warn_at if clock else None,
                            clock is not None and clock.paused_since is not None)
            out.append({
                "id": r.id, "instance": r.case_id, "process": r.process_key, "name": r.name, "spec": r.spec,
                "lane": r.lane, "candidate_groups": sorted(groups.get(r.id, [])), "assignee": r.assignee,
                "state": "claimed" if r.assignee else "ready", "due": _iso(r.due_at),
                "created_at": _iso(r.created_at), "form_name": r.form, "priority": r.priority,
                "sla_policy": r.sla_policy, "warn_at": _iso(info.warn_at), "sla_state": sla_state(info, now),
            })
        return out

    def _case_dict(self, case: Case, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        return instance_dict(case, tasks)

    def reset_caches(self) -> None:
        self.runtime.cache.clear()


__all__ = ["WorkflowEngine", "update"]
