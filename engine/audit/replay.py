"""Replay: re-execute a case from its definition version and its recorded inputs alone.

A case's events are grouped back into the commands that wrote them (one command's events share
its time ``at``). Each command is replayed with the command clock set to that time:

- **inputs** are applied as the original command did: the start data (``case_started``), a user's
  completion with its data (``task_completed``), a message (``message_delivered``), a timer firing
  (``timer_fired``), a retry (``retried``), a cancellation (``case_cancelled``); claims and
  assignments are followed for time travel. Other engines' commands can register their own
  appliers with ``register_applier``.
- **answers from the record**: service-task handlers are not called again. A handler call is
  answered with the result of the matching ``service_task_completed`` event of that command, or
  raises when the command recorded an ``incident`` for it. Expression functions (``now()``,
  ``sla_due()``, ...) are answered from the command's ``function_results`` event.
- **reproduced and compared**: the engine steps then run with the runtime's own code
  (``Runtime._advance``), and the events they produce (tasks opened, services and decisions
  completed, incidents, completion) must equal the recorded ones. Every task the command
  finished must end with the stored state and data. After the last command, every stored task
  (state and data), the case data and the status must match what the replay built.

The first difference is reported with the event where it appeared and both sides.

Task identity: SpiffWorkflow gives tasks random ``uuid4`` ids, so the replayed tasks have other
ids than the recorded ones. Rather than patching SpiffWorkflow's id generation (global state on
every task creation, and no help for cases written before), recorded ids are **mapped** to
replayed tasks: every reproduced event pairs the recorded task id with the replayed task; a
later input for a task id not seen yet is resolved by element id and state (unique in practice),
and where several tasks of one element wait (multi-instance), by the task's position in the
stored task tree (element names and order among same-element siblings from the root). The final
comparison walks the stored and the replayed task trees side by side.
"""

from __future__ import annotations

import bisect
import contextvars
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState

from .. import sandbox, spiff
from ..errors import NotFound
from ..history import COMMAND_EVENT_TYPES, INPUT_EVENT_TYPES
from ..identity import Actor
from ..runtime import Command, LiveCase, Runtime
from ..services import HandlerRegistry
from ..specs import SpecStore
from . import clock, recorded

INPUT_TYPES = INPUT_EVENT_TYPES
# Events that start a command of their own (used with the time to split commands apart).
COMMAND_TYPES = COMMAND_EVENT_TYPES
DERIVED_TYPES = frozenset({"task_opened", "service_task_completed", "decision_evaluated", "incident",
                           "case_completed"})
_DONE = TaskState.COMPLETED | TaskState.CANCELLED

_replaying: contextvars.ContextVar[bool] = contextvars.ContextVar("audit_replaying", default=False)


class _QuietDuringReplay(logging.Filter):
    # Replayed incidents are not new incidents: keep them out of the engine's log.
    def filter(self, record: logging.LogRecord) -> bool:
        return not _replaying.get()


logging.getLogger("aftercare.engine").addFilter(_QuietDuringReplay())


class ReplayMismatch(Exception):
    """Raised inside a replayed command when it asks for something the original did not."""


# --- what a replay reads ------------------------------------------------------------------------


@dataclass
class RecordedEvent:
    seq: int
    type: str
    at: dt.datetime
    actor: str | None
    task_id: str | None
    task: str | None
    payload: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "task": self.task, "payload": self.payload}


@dataclass
class StoredTask:
    task_id: str
    workflow: str
    state: int
    body: dict[str, Any]

    @property
    def spec(self) -> str:
        return str(self.body.get("task_spec"))


@dataclass
class CaseRecord:
    """A case as stored: what replay re-executes (events) and what it compares with (the rest)."""

    case_id: int
    process_key: str
    version: int
    status: str
    data: dict[str, Any]
    header: dict[str, Any]
    tasks: list[StoredTask]
    events: list[RecordedEvent]


@dataclass
class Divergence:
    seq: int | None
    event: str | None
    reason: str
    task: str | None = None
    recorded: Any = None
    replayed: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "event": self.event, "reason": self.reason, "task": self.task,
                "recorded": self.recorded, "replayed": self.replayed}


@dataclass
class ReplayResult:
    case_id: int
    events: int
    commands: int
    divergence: Divergence | None
    seconds: float

    @property
    def verified(self) -> bool:
        return self.divergence is None

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case_id, "result": "verified" if self.verified else "diverged",
                "events": self.events, "commands": self.commands, "seconds": round(self.seconds, 4),
                "divergence": self.divergence.to_dict() if self.divergence else None}


def group_commands(events: list[RecordedEvent]) -> list[list[RecordedEvent]]:
    groups: list[list[RecordedEvent]] = []
    for ev in events:
        current = groups[-1] if groups else None
        if (current is not None and current[0].at == ev.at
                and not (ev.type in COMMAND_TYPES and any(e.type in COMMAND_TYPES for e in current))):
            current.append(ev)
        else:
            groups.append([ev])
    return groups


# --- inputs ---------------------------------------------------------------------------------------

Applier = Callable[["Replayer", Command, RecordedEvent], None]
APPLIERS: dict[str, Applier] = {}


def register_applier(event_type: str, applier: Applier) -> None:
    """Teach replay a command type that changes a case (``applier(replayer, cmd, event)``)."""
    APPLIERS[event_type] = applier


def _apply_case_started(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    for t in cmd.workflow.get_tasks(state=TaskState.READY):
        t.data.update(ev.payload.get("data") or {})


def _apply_task_completed(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    task = r.resolve(ev, TaskState.READY, manual=True)
    if task is None:
        r.diverge(ev, "the completed task is not open in the replay", recorded=ev.summary(),
                  replayed=r.open_elements())
        return
    task.data.update(ev.payload.get("data") or {})
    task.run()
    r.pair(ev, task)


def _apply_message(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    if not spiff.deliver_message(cmd.workflow, ev.payload.get("name", ""), ev.payload.get("payload") or {}):
        r.diverge(ev, "nothing waits for this message in the replay", recorded=ev.summary(),
                  replayed=r.waiting_elements())


def _apply_timer(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    task = r.resolve(ev, TaskState.WAITING)
    if task is None or not spiff.fire_timer(cmd.workflow, str(task.id)):
        r.diverge(ev, "the fired timer is not waiting in the replay", recorded=ev.summary(),
                  replayed=r.waiting_elements())
        return
    r.pair(ev, task)


def _apply_retried(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    failed = cmd.workflow.get_tasks(state=TaskState.ERROR)
    names = [t.task_spec.bpmn_id or t.task_spec.name for t in failed]
    if names != list(ev.payload.get("tasks") or []):
        r.diverge(ev, "the failed tasks to retry differ", recorded=ev.payload.get("tasks"), replayed=names)
        return
    for t in failed:
        t._set_state(TaskState.READY)
    reset = getattr(spiff, "reset_frontier", None)  # as WorkflowEngine.retry does
    if reset is not None:
        reset(cmd.workflow)


def _apply_cancelled(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    cmd.workflow.cancel()
    r.case.status = "cancelled"


def _apply_claim(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    if ev.task_id:
        r.assignees[ev.task_id] = ev.actor


def _apply_unclaim(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    if ev.task_id:
        r.assignees[ev.task_id] = None


def _apply_assigned(r: Replayer, cmd: Command, ev: RecordedEvent) -> None:
    if ev.task_id:
        r.assignees[ev.task_id] = ev.payload.get("assignee")


for _type, _fn in (("case_started", _apply_case_started), ("task_completed", _apply_task_completed),
                   ("message_delivered", _apply_message), ("timer_fired", _apply_timer),
                   ("retried", _apply_retried), ("case_cancelled", _apply_cancelled),
                   ("task_claimed", _apply_claim), ("task_unclaimed", _apply_unclaim),
                   ("task_assigned", _apply_assigned)):
    register_applier(_type, _fn)


# --- the replayer ---------------------------------------------------------------------------------


@dataclass
class _ReplayCase:
    """Stands in for the case header the runtime's engine steps look at."""

    id: int
    process_key: str
    status: str = "running"
    data: dict[str, Any] = field(default_factory=dict)


def _new_workflow(spec: Any, subprocess_specs: dict[str, Any], engine: Any) -> BpmnWorkflow:
    # The runtime's own constructor when it has one (it prepares the engine's stepping state).
    make = getattr(spiff, "new_workflow", None)
    if make is not None:
        return make(spec, subprocess_specs, engine)
    return BpmnWorkflow(spec, subprocess_specs, script_engine=engine)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _element(task: Task) -> str:
    return task.task_spec.bpmn_id or task.task_spec.name


def _state_name(state: int) -> str:
    return TaskState.get_name(state).lower()


def _task_view(task: Task) -> dict[str, Any]:
    return {"state": _state_name(task.state), "data": _json(spiff.REGISTRY.convert(task.data))}


def restore_stored(spec: Any, subprocess_specs: dict[str, Any], record: CaseRecord) -> BpmnWorkflow | None:
    """The stored case loaded exactly as the runtime loads it (task data is stored as deltas)."""
    if not record.tasks or not record.header.get("root"):
        return None
    rows = [(t.workflow, json.dumps(t.body)) for t in record.tasks]
    return spiff.restore_workflow(spec, subprocess_specs, json.dumps(record.header), rows,
                                  spiff.CaseScriptEngine({}))


class Replayer:
    def __init__(self, spec: Any, subprocess_specs: dict[str, Any], record: CaseRecord,
                 function_names: Iterable[str] = ()) -> None:
        self.record = record
        self.spec, self.subprocess_specs = spec, subprocess_specs
        names = set(function_names) | set(sandbox.default_functions())
        for ev in record.events:
            if ev.type == recorded.EVENT_TYPE:
                names.update(c.get("fn") for c in ev.payload.get("calls", []) if c.get("fn"))
        self.engine = spiff.CaseScriptEngine({n: self._stub(n) for n in names})
        self.engine.service_caller = self._answer_service
        self.runtime = Runtime(None, SpecStore(), HandlerRegistry(), cache_size=1)
        self.case = _ReplayCase(record.case_id, record.process_key)
        self.wf: BpmnWorkflow | None = None
        self.open: dict[str, Any] = {}
        self.to_replay: dict[str, Task] = {}
        self.to_recorded: dict[UUID, str] = {}
        self.assignees: dict[str, str | None] = {}
        self.divergence: Divergence | None = None
        try:
            self.stored_wf = restore_stored(spec, subprocess_specs, record)
        except Exception as exc:  # a stored state that does not load is itself a finding
            self.stored_wf = None
            self.divergence = Divergence(record.events[-1].seq if record.events else None, None,
                                         f"the stored task state cannot be loaded: {exc}")
        self.stored: dict[str, Task] = (
            {str(t.id): t for _, t in spiff.all_tasks(self.stored_wf)} if self.stored_wf is not None else {})
        self.commands = 0
        self._markers: list[float] = []
        self._marker_seqs: list[int] = []
        self._group: list[RecordedEvent] = []
        self._calls: list[dict[str, Any]] = []
        self._call_pos = 0
        self._services: list[RecordedEvent] = []
        self._incidents: list[RecordedEvent] = []
        self._touched: list[tuple[RecordedEvent, Task]] = []
        self._last_at: dt.datetime | None = None

    # -- running -------------------------------------------------------------------------------

    def run(self, after_command: Callable[[Replayer, list[RecordedEvent]], bool] | None = None,
            compare_final: bool = True) -> ReplayResult:
        """Replay every command; ``after_command`` may return False to stop early."""
        started = time.perf_counter()
        token = _replaying.set(True)
        try:
            events = self.record.events
            if self.divergence is not None:
                pass
            elif not events or events[0].type != "case_started":
                self.divergence = Divergence(events[0].seq if events else None, events[0].type if events else None,
                                             "the history does not begin with case_started")
            else:
                self.wf = _new_workflow(self.spec, self.subprocess_specs, self.engine)
                for group in group_commands(events):
                    self._replay_command(group)
                    if self.divergence is not None:
                        break
                    if after_command is not None and not after_command(self, group):
                        compare_final = False
                        break
                if self.divergence is None and compare_final:
                    self._compare_final()
        finally:
            _replaying.reset(token)
        return ReplayResult(self.record.case_id, len(self.record.events), self.commands, self.divergence,
                            time.perf_counter() - started)

    def _replay_command(self, group: list[RecordedEvent]) -> None:
        assert self.wf is not None
        self.commands += 1
        self._group = group
        self._calls = [c for e in group if e.type == recorded.EVENT_TYPE for c in e.payload.get("calls", [])]
        self._call_pos = 0
        self._services = [e for e in group if e.type == "service_task_completed"]
        self._incidents = [e for e in group if e.type == "incident" and e.payload.get("handler")]
        self._touched = []
        at = group[0].at
        if self._last_at is not None and at < self._last_at:
            self.diverge(group[0], "events are not in time order", recorded=self._last_at.isoformat(),
                         replayed=at.isoformat())
            return
        self._last_at = at
        actor = next((e.actor for e in group if e.type in COMMAND_TYPES), None) or group[0].actor or "system"
        live = LiveCase(self.wf, None, 0, set(), self.open, set(), set())  # type: ignore[arg-type]
        cmd = Command(None, self.case, live, Actor(actor), at)  # type: ignore[arg-type]
        self._markers.append(time.time())
        self._marker_seqs.append(group[0].seq)
        clock_token = clock.set_clock(at)
        try:
            for ev in group:
                applier = APPLIERS.get(ev.type)
                if applier is not None:
                    applier(self, cmd, ev)
                    if self.divergence is not None:
                        return
            self.runtime._advance(cmd)
        finally:
            clock.reset_clock(clock_token)
        if self.divergence is not None:
            return
        if self._call_pos < len(self._calls):
            call = self._calls[self._call_pos]
            self.diverge(self._results_event(), "the original called a function the replay did not",
                         recorded=call, replayed=None)
            return
        # Inputs first: a changed input shows at its own event rather than at what followed from it.
        self._check_touched(0)
        if self.divergence is not None:
            return
        checked = len(self._touched)
        self._compare_events(group, cmd)
        if self.divergence is not None:
            return
        self._check_touched(checked)
        if self.divergence is not None:
            return
        self._after_command(cmd)

    def _compare_events(self, group: list[RecordedEvent], cmd: Command) -> None:
        assert self.wf is not None
        want = [e for e in group if e.type in DERIVED_TYPES]
        got = [e for e in cmd.events if e["type"] in DERIVED_TYPES]
        for i in range(max(len(want), len(got))):
            rec = want[i] if i < len(want) else None
            mine = got[i] if i < len(got) else None
            mine_view = None if mine is None else {"type": mine["type"], "task": mine["task"],
                                                   "payload": _json(mine["payload"])}
            if rec is None:
                self.diverge(group[-1], "the replay produced an event the original did not record",
                             recorded=None, replayed=mine_view)
                return
            if mine is None:
                self.diverge(rec, "the original recorded an event the replay did not produce",
                             recorded=rec.summary(), replayed=None)
                return
            assert mine_view is not None
            if (rec.type, rec.task) != (mine["type"], mine["task"]) or \
                    _comparable(rec.type, rec.payload) != _comparable(rec.type, mine_view["payload"]):
                self.diverge(rec, "the replay produced a different event", recorded=rec.summary(),
                             replayed={"seq": rec.seq, **mine_view})
                return
            if rec.task_id and mine["task_id"]:
                task = spiff.find_task(self.wf, mine["task_id"])
                if task is not None:
                    self.pair(rec, task)

    def _after_command(self, cmd: Command) -> None:
        wf = self.wf
        assert wf is not None
        self.open = {str(t.id): None for t in spiff.open_user_tasks(wf)}
        # The same rules as Runtime._save.
        if self.case.status == "cancelled":
            pass
        elif wf.completed:
            self.case.status = "completed"
        elif cmd.incident is not None or (self.case.status == "error" and wf.get_tasks(state=TaskState.ERROR)):
            self.case.status = "error"
        else:
            self.case.status = "running" if self.open else "waiting"
        if wf.last_task is not None:
            self.case.data = _json(wf.last_task.data)

    def _check_touched(self, start: int) -> None:
        """Tasks this command finished must end as stored (finished tasks never change again)."""
        for ev, task in self._touched[start:]:
            stored = self.stored.get(ev.task_id or "")
            if stored is None or not task.has_state(_DONE):
                continue
            mine, theirs = _task_view(task), _task_view(stored)
            if mine != theirs:
                self.diverge(ev, f"task '{ev.task}' ends with other state or data than stored",
                             recorded=theirs, replayed=mine)
                return

    # -- task identity -----------------------------------------------------------------------------

    def pair(self, ev: RecordedEvent, task: Task) -> None:
        if ev.task_id:
            self.to_replay[ev.task_id] = task
            self.to_recorded[task.id] = ev.task_id
            self._touched.append((ev, task))

    def resolve(self, ev: RecordedEvent, state: int, manual: bool = False) -> Task | None:
        assert self.wf is not None
        if ev.task_id in self.to_replay:
            task = self.to_replay[ev.task_id]
            return task if task.state == state else None
        candidates = [t for _, t in spiff.all_tasks(self.wf)
                      if t.state == state and _element(t) == ev.task and (t.task_spec.manual or not manual)
                      and t.id not in self.to_recorded]
        if len(candidates) > 1 and ev.task_id in self.stored:
            by_position = self._by_tree_position(ev.task_id)
            if by_position is not None and by_position in candidates:
                return by_position
        return candidates[0] if candidates else None

    def _by_tree_position(self, task_id: str) -> Task | None:
        """The replayed task at the stored task's place: element names and sibling order from the root."""
        assert self.wf is not None
        node = self.stored.get(task_id)
        if node is None:
            return None
        path: list[tuple[str, int]] = []
        while node.parent is not None:
            same = [c for c in node.parent.children if c is not None and c.task_spec.name == node.task_spec.name]
            path.append((node.task_spec.name, same.index(node)))
            node = node.parent
        owner_id = getattr(node.workflow, "parent_task_id", None)
        if owner_id is not None:
            owner = self._by_tree_position(str(owner_id))
            sub = self.wf.subprocesses.get(owner.id) if owner is not None else None
            current: Task | None = sub.task_tree if sub is not None else None
        else:
            current = self.wf.task_tree
        for spec_name, index in reversed(path):
            if current is None:
                return None
            same_children = [c for c in current.children if c.task_spec.name == spec_name]
            current = same_children[index] if index < len(same_children) else None
        return current

    # -- answers from the record -------------------------------------------------------------------

    def _results_event(self) -> RecordedEvent:
        return next((e for e in self._group if e.type == recorded.EVENT_TYPE), self._group[-1])

    def _stub(self, name: str) -> Callable[..., Any]:
        def answer(*args: Any, **kwargs: Any) -> Any:
            asked = {"fn": name, "args": recorded.encode(list(args))}
            if kwargs:
                asked["kwargs"] = recorded.encode(kwargs)
            if self._call_pos >= len(self._calls):
                self.diverge(self._results_event(), "the replay called a function the original did not",
                             recorded=None, replayed=asked)
                raise ReplayMismatch(f"unrecorded call of {name}()")
            call = self._calls[self._call_pos]
            if (call.get("fn"), call.get("args"), call.get("kwargs")) != (name, asked["args"], asked.get("kwargs")):
                self.diverge(self._results_event(), "the replay called a function with other arguments",
                             recorded={k: call.get(k) for k in ("fn", "args", "kwargs") if k in call}, replayed=asked)
                raise ReplayMismatch(f"call of {name}() differs from the record")
            self._call_pos += 1
            return recorded.decode(call.get("result"))

        return answer

    def _answer_service(self, task: Task, name: str, params: dict[str, Any]) -> Any:
        element = _element(task)
        for i, ev in enumerate(self._services):
            if ev.task == element and ev.payload.get("handler") == name:
                del self._services[i]
                return ev.payload.get("result")
        for i, ev in enumerate(self._incidents):
            if ev.payload.get("element") == element and ev.payload.get("handler") == name:
                del self._incidents[i]
                error_type = type(str(ev.payload.get("error") or "HandlerError"), (Exception,), {})
                raise error_type(ev.payload.get("message") or "")
        self.diverge(self._group[-1], f"the replay called handler '{name}' at '{element}', which the original "
                     "command did not", recorded=None, replayed={"handler": name, "element": element,
                                                                 "params": _json(params)})
        raise ReplayMismatch(f"unrecorded call of handler {name}")

    # -- divergence --------------------------------------------------------------------------------

    def diverge(self, ev: RecordedEvent | None, reason: str, recorded: Any = None, replayed: Any = None) -> None:
        if self.divergence is None:
            self.divergence = Divergence(ev.seq if ev else None, ev.type if ev else None, reason,
                                         ev.task if ev else None, recorded, replayed)

    def _event_at(self, seq: int) -> RecordedEvent | None:
        return next((e for e in self.record.events if e.seq == seq), None)

    def _command_of(self, task: Task) -> RecordedEvent | None:
        """The first event of the replayed command that last changed ``task``'s state."""
        i = bisect.bisect_right(self._markers, task.last_state_change) - 1
        return self._event_at(self._marker_seqs[max(i, 0)]) if self._marker_seqs else None

    # -- the end state -----------------------------------------------------------------------------

    def _compare_final(self) -> None:
        wf = self.wf
        assert wf is not None
        last = self.record.events[-1]
        problem = self._compare_trees()
        if problem is not None:
            return
        if self.case.status != self.record.status:
            self.diverge(last, "the case status differs", recorded=self.record.status, replayed=self.case.status)
            return
        stored_data = _json(self.record.data)
        if self.case.data != stored_data:
            at = self._command_of(wf.last_task) if wf.last_task is not None else last
            self.diverge(at or last, "the case data differs", recorded=stored_data, replayed=self.case.data)

    def _compare_trees(self) -> Divergence | None:
        wf, stored_wf = self.wf, self.stored_wf
        assert wf is not None
        if stored_wf is None:
            self.diverge(self.record.events[-1], "the stored case has no task state to compare with")
            return self.divergence
        matched: dict[UUID, Task] = {}  # stored task id -> replayed task
        roots = [(stored_wf.task_tree, wf.task_tree)]
        pending = dict(stored_wf.subprocesses)
        while roots:
            for stored_root, root in roots:
                self._match_subtree(stored_root, root, matched)
                if self.divergence is not None:
                    return self.divergence
            roots = []
            for owner_id, stored_sub in list(pending.items()):
                owner = matched.get(owner_id)
                if owner is None:
                    continue
                del pending[owner_id]
                sub = wf.subprocesses.get(owner.id)
                if sub is None:
                    self.diverge(self._command_of(owner), f"the subprocess of '{_element(owner)}' exists only in "
                                 "the stored case", recorded=_element(owner), replayed=None)
                    return self.divergence
                roots.append((stored_sub.task_tree, sub.task_tree))
        if pending or len(matched) != len(self.stored):
            self.diverge(self.record.events[-1], "stored tasks have no counterpart in the replay",
                         recorded=len(self.stored), replayed=len(matched))
            return self.divergence
        replayed = sum(1 for _ in spiff.all_tasks(wf))
        if replayed != len(matched):
            self.diverge(self.record.events[-1], "the replay built tasks the stored case does not have",
                         recorded=len(matched), replayed=replayed)
        return self.divergence

    def _match_subtree(self, stored_root: Task, root: Task, matched: dict[UUID, Task]) -> None:
        todo = [(stored_root, root)]
        while todo:
            stored, task = todo.pop()
            if stored.task_spec.name != task.task_spec.name:
                self.diverge(self._command_of(task), "the task tree differs", recorded=stored.task_spec.name,
                             replayed=task.task_spec.name)
                return
            matched[stored.id] = task
            mine, theirs = _task_view(task), _task_view(stored)
            if mine != theirs:
                self.diverge(self._command_of(task), f"task '{_element(task)}' has other state or data than stored",
                             recorded={"task_id": str(stored.id), **theirs}, replayed=mine)
                return
            # A finished task's row keeps ids of children dropped after it finished (it is not
            # rewritten then); such ids lead nowhere when the case is loaded, so they are skipped.
            stored_children = [c for c in stored.children if c is not None]
            theirs_next = [c.task_spec.name for c in stored_children]
            mine_next = [c.task_spec.name for c in task.children]
            if theirs_next != mine_next:
                self.diverge(self._command_of(task), f"the tasks after '{_element(task)}' differ",
                             recorded=theirs_next, replayed=mine_next)
                return
            todo.extend(zip(stored_children, task.children, strict=True))

    # -- views for time travel ---------------------------------------------------------------------

    def open_elements(self) -> list[str]:
        return sorted(_element(t) for t in spiff.open_user_tasks(self.wf)) if self.wf else []

    def waiting_elements(self) -> list[str]:
        if self.wf is None:
            return []
        return sorted(_element(t) for _, t in spiff.all_tasks(self.wf) if t.state == TaskState.WAITING)

    def snapshot(self, group: list[RecordedEvent]) -> dict[str, Any]:
        wf = self.wf
        assert wf is not None
        tasks = []
        completed, active, waiting, failed = set(), set(), set(), set()
        for _, t in spiff.all_tasks(wf):
            ts = t.task_spec
            if ts.bpmn_id is None or t.has_state(TaskState.PREDICTED_MASK):
                continue  # SpiffWorkflow's own bookkeeping tasks and mere predictions
            recorded_id = self.to_recorded.get(t.id)
            tasks.append({"id": recorded_id, "element": ts.bpmn_id, "name": ts.bpmn_name, "type": ts.description,
                          "state": _state_name(t.state), "lane": ts.lane,
                          "assignee": self.assignees.get(recorded_id) if recorded_id else None,
                          "data": _json(spiff.REGISTRY.convert(t.data)) if ts.manual else None})
            if t.state == TaskState.COMPLETED:
                completed.add(ts.bpmn_id)
            elif t.state == TaskState.READY and ts.manual:
                active.add(ts.bpmn_id)
            elif t.state in (TaskState.WAITING, TaskState.STARTED) or (t.state == TaskState.READY and not ts.manual):
                waiting.add(ts.bpmn_id)
            elif t.state == TaskState.ERROR:
                failed.add(ts.bpmn_id)
        return {"status": self.case.status, "data": self.case.data, "at": group[0].at.isoformat(),
                "through_seq": group[-1].seq, "events": [e.summary() for e in group], "tasks": tasks,
                "completed": sorted(completed), "active": sorted(active), "waiting": sorted(waiting),
                "failed": sorted(failed)}


def _comparable(type_: str, payload: Mapping[str, Any]) -> Any:
    if type_ == "incident":  # the failed task's id is the replay's own
        return {k: v for k, v in payload.items() if k != "task_id"}
    return payload


# --- entry points ---------------------------------------------------------------------------------


def replay(spec: Any, subprocess_specs: dict[str, Any], record: CaseRecord,
           function_names: Iterable[str] = ()) -> ReplayResult:
    return Replayer(spec, subprocess_specs, record, function_names).run()


def states_at(spec: Any, subprocess_specs: dict[str, Any], record: CaseRecord, seqs: Iterable[int],
              function_names: Iterable[str] = ()) -> tuple[dict[int, dict[str, Any]], Divergence | None]:
    """The case as it stood after each event in ``seqs`` (after the command that wrote it);
    seq 0 is the moment before the case started."""
    wanted = sorted(set(seqs))
    last_seq = record.events[-1].seq if record.events else 0
    for s in wanted:
        if s < 0 or s > last_seq:
            raise NotFound(f"case {record.case_id} has no event {s} (it has {last_seq})")
    out: dict[int, dict[str, Any]] = {}
    if 0 in wanted:
        out[0] = {"status": None, "data": {}, "at": None, "through_seq": 0, "events": [], "tasks": [],
                  "completed": [], "active": [], "waiting": [], "failed": []}
    todo = [s for s in wanted if s > 0]

    def after(r: Replayer, group: list[RecordedEvent]) -> bool:
        while todo and todo[0] <= group[-1].seq:
            out[todo.pop(0)] = r.snapshot(group)
        return bool(todo)

    replayer = Replayer(spec, subprocess_specs, record, function_names)
    replayer.run(after_command=after, compare_final=False)
    return out, replayer.divergence


def diff_data(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """Changes from ``before`` to ``after`` as (dotted path, op, from, to)."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after), key=str):
            p = f"{path}.{key}" if path else str(key)
            if key not in before:
                changes.append({"path": p, "op": "added", "to": after[key]})
            elif key not in after:
                changes.append({"path": p, "op": "removed", "from": before[key]})
            else:
                changes.extend(diff_data(before[key], after[key], p))
        return changes
    if before != after:
        return [{"path": path or "(root)", "op": "changed", "from": before, "to": after}]
    return []
