"""Everything that touches SpiffWorkflow: parsing, the sandboxed script engine, and the split
serialization of a case's state into a small workflow header plus one row per task.

Storing tasks one by one lets a command write only the tasks it changed, so the cost of a
command does not grow with a case's history (re-serializing the whole workflow would).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote
from typing import Any
from uuid import UUID

from lxml import etree
from SpiffWorkflow import task as _spiff_task
from SpiffWorkflow.bpmn import BpmnEvent
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine
from SpiffWorkflow.bpmn.script_engine.python_environment import BasePythonScriptEngineEnvironment
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
    CycleTimerEventDefinition,
    DurationTimerEventDefinition,
    TimeDateEventDefinition,
    TimerEventDefinition,
)
from SpiffWorkflow.bpmn.util.subworkflow import BpmnSubWorkflow
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG
from SpiffWorkflow.spiff.specs.event_definitions import MessageEventDefinition as SpiffMessageEventDefinition
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from SpiffWorkflow.workflow import Workflow

from . import sandbox
from .audit import clock as audit_clock

REGISTRY = BpmnWorkflowSerializer.configure(SPIFF_CONFIG)

# XML from users: no DTDs, no entities, no network, bounded size.
SAFE_XML_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
    remove_comments=False,
)


def _merge_message_payload(self: SpiffMessageEventDefinition, my_task: Task) -> None:
    # A message event without messageVariable merges its payload into the case data, which
    # is what process owners expect from "the customer's answer arrives".
    payload = my_task.internal_data.pop(self.name, None)
    if self.message_var is not None:
        my_task.data[self.message_var] = payload
    elif isinstance(payload, dict):
        my_task.data.update(payload)


SpiffMessageEventDefinition.update_task_data = _merge_message_payload  # type: ignore[method-assign]


# --- script engine --------------------------------------------------------------------------

ServiceCaller = Callable[[Task, str, dict[str, Any]], Any]


class SandboxEnvironment(BasePythonScriptEngineEnvironment):
    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        super().__init__({})
        self.functions = dict(functions)

    def evaluate(self, expression: str, context: dict[str, Any], external_context: Any = None) -> Any:
        data = dict(context)
        if external_context:
            data.update(external_context)
        return sandbox.evaluate(expression, data, self.functions)

    def execute(self, script: str, context: dict[str, Any], external_context: Any = None) -> bool:
        functions = dict(self.functions)
        if external_context:
            functions.update(external_context)
        sandbox.execute(script, context, functions)
        return True


class CaseScriptEngine(PythonScriptEngine):
    """Script engine whose service calls go to the handler registry through ``service_caller``."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        super().__init__(environment=SandboxEnvironment(functions))
        self.service_caller: ServiceCaller | None = None

    def call_service(self, task: Task, operation_name: str, operation_params: dict[str, Any], **_: Any) -> str:
        if self.service_caller is None:
            raise RuntimeError("service task run outside a command")
        params = {name: p["value"] for name, p in operation_params.items()}
        result = self.service_caller(task, operation_name, params)
        return json.dumps(result if result is not None else {}, default=str)


# --- task introspection ---------------------------------------------------------------------


@dataclass(frozen=True)
class UserTaskInfo:
    spec: str
    name: str
    lane: str | None
    form: str | None
    ui_form: str | None
    sla_policy: str | None
    properties: dict[str, str] = field(default_factory=dict)


def spec_properties(task_spec: Any) -> dict[str, str]:
    return dict((getattr(task_spec, "extensions", None) or {}).get("properties") or {})


def user_task_info(task: Task) -> UserTaskInfo:
    ts = task.task_spec
    props = spec_properties(ts)
    return UserTaskInfo(
        spec=ts.bpmn_id or ts.name,
        name=ts.bpmn_name or ts.bpmn_id or ts.name,
        lane=ts.lane,
        form=props.get("formJsonSchemaFilename"),
        ui_form=props.get("formUiSchemaFilename"),
        sla_policy=props.get("slaPolicy"),
        properties=props,
    )


def all_tasks(wf: BpmnWorkflow) -> Iterator[tuple[str, Task]]:
    """Every task of the case with its workflow key ("" top level, else subprocess id)."""
    for task in wf.tasks.values():
        yield "", task
    for sp_id, sp in wf.subprocesses.items():
        key = str(sp_id)
        for task in sp.tasks.values():
            yield key, task


# --- the frontier: unfinished tasks ----------------------------------------------------------
#
# SpiffWorkflow finds work by walking the task tree from its root on every step. That costs
# time proportional to the case's whole history and stops at a depth of 1,000 (a loop of a
# few hundred iterations stalls). Finished tasks never change again, so the engine keeps the
# set of unfinished tasks on the workflow and brings it up to date from what changed.

_FRONTIER = "_aftercare_frontier"
_KNOWN_SUBPROCESSES = "_aftercare_subprocesses"
_TOUCHED = "_aftercare_touched"
_DROPPED = "_aftercare_dropped"
_FORCED = "_aftercare_forced"  # finished tasks that must be rewritten all the same
_CHANGES = "_aftercare_changes"  # tasks changed or added since the frontier was last brought up to date
_WAITING = "_aftercare_waiting"  # ids of the case's WAITING tasks

Frontier = dict[UUID, tuple[str, Task]]


# A task changes state, gets a child or is removed only through one of three SpiffWorkflow
# methods; each notes the task on its case (the top workflow) once the frontier exists, so
# bringing the frontier up to date costs the number of changes, not the size of the case.
# (One command runs on a case at a time, so the notes need no lock.)

def _top(wf: Any) -> Any:
    return getattr(wf, "top_workflow", wf)


def _workflow_key(task: Task) -> str:
    """"" for the case's own tasks, else the id of the subprocess's parent task."""
    wf = task.workflow
    parent_task_id = getattr(wf, "parent_task_id", None)
    return "" if parent_task_id is None or _top(wf) is wf else str(parent_task_id)


_task_logger = logging.getLogger("spiff.task")


def _set_state(self: Task, value: int) -> None:
    if value != self._state:
        top = _top(self.workflow)
        changes = top.__dict__.get(_CHANGES)
        if changes is not None:
            changes.append(self)
            if value == TaskState.WAITING:
                top.__dict__[_WAITING].add(self.id)
            elif self._state == TaskState.WAITING:
                top.__dict__[_WAITING].discard(self.id)
        elapsed = time.time() - self.last_state_change
        self.last_state_change = time.time()
        self._state = value
        # SpiffWorkflow builds the log record's extras even when nobody listens.
        if _task_logger.isEnabledFor(logging.INFO):
            _task_logger.info(f"State changed to {TaskState.get_name(value)}",
                              extra=self.collect_log_extras({"elapsed": elapsed}))
    elif _task_logger.isEnabledFor(logging.DEBUG):
        _task_logger.debug(f"State set to {TaskState.get_name(value)}", extra=self.collect_log_extras())


_spiff_child_added = Task._child_added_notify
_spiff_remove_task = Workflow._remove_task


def _child_added_notify(self: Task, child: Task) -> None:
    top = _top(self.workflow)
    changes = top.__dict__.get(_CHANGES)
    if changes is not None:
        changes.append(child)
        if child.state == TaskState.WAITING:
            top.__dict__[_WAITING].add(child.id)
        # The parent's list of children changed, even if the parent finished long ago.
        top.__dict__.setdefault(_FORCED, {})[self.id] = (_workflow_key(self), self)
    _spiff_child_added(self, child)


def _remove_task(self: Workflow, task_id: UUID) -> None:
    top = _top(self)
    changes = top.__dict__.get(_CHANGES)
    task = self.tasks.get(task_id)
    if changes is not None and task is not None:
        top.__dict__[_WAITING].discard(task_id)
        top.__dict__[_FRONTIER].pop(task_id, None)
        top.__dict__.setdefault(_DROPPED, set()).add(task_id)
        parent = task.parent
        if parent is not None:
            top.__dict__.setdefault(_FORCED, {})[parent.id] = (_workflow_key(parent), parent)
    _spiff_remove_task(self, task_id)


_workflow_logger = logging.getLogger("spiff.workflow")
_spiff_workflow_log_extras = Workflow.collect_log_extras


def _workflow_log_extras(self: Workflow, dct: dict[str, Any] | None = None) -> dict[str, Any]:
    # SpiffWorkflow lists every task of the case in these extras unless its logger has a level
    # set (it tests ``level < 20``, and an unset level is 0): a walk of the whole tree each time
    # a workflow starts or completes, for a record that is dropped when INFO is off.
    if not _workflow_logger.isEnabledFor(logging.INFO):
        return dct or {}
    return _spiff_workflow_log_extras(self, dct)  # type: ignore[no-any-return]


def new_task_id() -> UUID:
    """A time-ordered UUID (version 7: milliseconds since the epoch, then 74 random bits) for
    every new task. Task rows, open tasks and their candidate groups are keyed by task id: new
    keys land at the end of those indexes, on pages already in memory, instead of on a random
    page each (which cost a page write per index and command, and cache misses at scale)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return UUID(int=value & _V7_CLEAR | _V7_SET)


_V7_CLEAR = ~(0xF << 76 | 0x3 << 62)  # version and variant bits
_V7_SET = 0x7 << 76 | 0x2 << 62  # version 7, RFC 9562 variant
_spiff_task.uuid4 = new_task_id  # SpiffWorkflow's Task() names its id with this

Task._set_state = _set_state  # type: ignore[method-assign]
Workflow.collect_log_extras = _workflow_log_extras  # type: ignore[method-assign]
Task._child_added_notify = _child_added_notify  # type: ignore[method-assign]
Workflow._remove_task = _remove_task  # type: ignore[method-assign]


def task_key(task: Task) -> str:
    """The task's id as text (kept on the task: commands ask for it many times)."""
    try:
        return task.__dict__["_aftercare_key"]  # type: ignore[no-any-return]
    except KeyError:
        key = task.__dict__["_aftercare_key"] = str(task.id)
        return key


def _frontier(wf: BpmnWorkflow) -> Frontier:
    frontier: Frontier | None = wf.__dict__.get(_FRONTIER)
    if frontier is None:  # a new or just restored workflow: one full scan
        frontier = {t.id: (key, t) for key, t in all_tasks(wf) if not t.has_state(TaskState.FINISHED_MASK)}
        wf.__dict__[_WAITING] = {tid for tid, (_, t) in frontier.items() if t.state == TaskState.WAITING}
        wf.__dict__[_CHANGES] = []
        wf.__dict__[_FRONTIER] = frontier
        wf.__dict__[_KNOWN_SUBPROCESSES] = set(wf.subprocesses)
    return frontier


def touched_tasks(wf: BpmnWorkflow) -> None:
    """Bring the frontier up to date with the tasks noted as changed or added since the last
    time (and the tasks of subprocesses started since), and remember those tasks until the
    command saves: a task that finished during an engine step has left the frontier but must
    still be written."""
    frontier = _frontier(wf)
    changes: list[Task] = wf.__dict__[_CHANGES]
    known_sps: set[UUID] = wf.__dict__[_KNOWN_SUBPROCESSES]
    subprocesses = wf.subprocesses
    new_sps = len(subprocesses) != len(known_sps) or not known_sps.issuperset(subprocesses)
    if not changes and not new_sps:
        return
    if new_sps:
        for sp_id, sp in subprocesses.items():
            if sp_id not in known_sps:
                changes.extend(sp.tasks.values())
        wf.__dict__[_KNOWN_SUBPROCESSES] = set(subprocesses)
    touched: Frontier = wf.__dict__.setdefault(_TOUCHED, {})
    for task in changes:
        tid = task.id
        if task.workflow.tasks.get(tid) is not task:
            frontier.pop(tid, None)  # removed since (its removal was noted as dropped)
            continue
        entry = touched.get(tid)
        if entry is None:
            entry = touched[tid] = (_workflow_key(task), task)
        if task.has_state(TaskState.FINISHED_MASK):
            frontier.pop(tid, None)
        else:
            frontier[tid] = entry
    changes.clear()


def frontier_known(wf: BpmnWorkflow) -> dict[UUID, str] | None:
    """The unfinished tasks (id -> workflow key) the engine keeps for ``wf``, brought up to
    date (None before the frontier is taken); tests compare it with a full scan."""
    if wf.__dict__.get(_FRONTIER) is None:
        return None
    touched_tasks(wf)
    return {tid: key for tid, (key, _) in wf.__dict__[_FRONTIER].items()}


def waiting_known(wf: BpmnWorkflow) -> set[UUID] | None:
    """The WAITING task ids the engine keeps for ``wf`` (None before the frontier is taken);
    tests compare it with a full scan."""
    waiting = wf.__dict__.get(_WAITING)
    return set(waiting) if waiting is not None else None


def reset_frontier(wf: BpmnWorkflow) -> None:
    """Forget the frontier after an operation that may touch finished tasks (reset, retry);
    the next look scans the whole case. What was noted so far is kept for the save."""
    touched_tasks(wf)
    for name in (_FRONTIER, _WAITING, _CHANGES):
        wf.__dict__.pop(name, None)


def run_engine_steps(wf: BpmnWorkflow, did_complete: Callable[[Task], None] | None = None) -> None:
    """SpiffWorkflow's ``do_engine_steps`` (same order: deepest subprocesses first, then the
    top level, until nothing automatic is ready), driven by the frontier instead of tree walks."""

    def ready_in(w: Any) -> list[Task]:
        touched_tasks(wf)
        return [t for _, t in _frontier(wf).values()
                if t.workflow is w and t.state == TaskState.READY and not t.task_spec.manual]

    def update_workflow(w: Any) -> int:
        count = 0
        for task in ready_in(w):
            if task.state != TaskState.READY:  # an earlier task of this round moved it on
                continue
            task.run()
            count += 1
            if did_complete is not None:
                did_complete(task)
        return count

    while True:
        while True:
            active = wf.get_active_subprocesses()
            for sub in sorted(active, key=lambda v: v.depth, reverse=True):
                while update_workflow(sub) > 0:
                    pass
                if sub.parent_task_id is not None:
                    parent = wf.get_task_from_id(sub.parent_task_id)
                    parent.task_spec._update(parent)
            count = update_workflow(wf)
            if count == 0 and len(wf.get_active_subprocesses()) <= len(active):
                break
        # A timer that came due meanwhile makes its event ready: run on instead of leaving the
        # case parked until some later command touches it.
        wf.refresh_timers()
        touched_tasks(wf)
        if not any(t.state == TaskState.READY and not t.task_spec.manual for _, t in _frontier(wf).values()):
            break


def ready_tasks(wf: BpmnWorkflow) -> list[Task]:
    """READY tasks of the case, automatic or not (found among the unfinished ones)."""
    touched_tasks(wf)
    return [t for _, t in _frontier(wf).values() if t.state == TaskState.READY]


def open_user_tasks(wf: BpmnWorkflow) -> list[Task]:
    return [t for _, t in _frontier(wf).values() if t.state == TaskState.READY and t.task_spec.manual]


_spiff_update_waiting_tasks = Workflow.update_waiting_tasks


def _update_waiting_tasks(self: Any) -> None:
    # SpiffWorkflow re-checks every WAITING task after each completion by walking the whole
    # tree; with a frontier the waiting tasks are found among the unfinished ones.
    top = self.top_workflow if isinstance(self, BpmnSubWorkflow) else self
    if top.__dict__.get(_FRONTIER) is None:
        _spiff_update_waiting_tasks(self)
        return
    if not top.__dict__.get(_WAITING, True):
        return  # nothing waits (kept by _set_state): most completions of most cases
    touched_tasks(top)
    for _, task in list(_frontier(top).values()):
        if task.workflow is self and task.state == TaskState.WAITING:
            task.task_spec._update(task)


Workflow.update_waiting_tasks = _update_waiting_tasks  # type: ignore[method-assign]


def find_task(wf: BpmnWorkflow, task_id: str) -> Task | None:
    try:
        return wf.get_task_from_id(UUID(task_id))
    except Exception:
        return None


def state_name(task: Task) -> str:
    return TaskState.get_name(task.state).lower()


@dataclass(frozen=True)
class PendingTimer:
    task_id: str
    spec: str
    kind: str
    due_at: dt.datetime


def _definitions(task: Task) -> list[Any]:
    """The event definitions a waiting task listens for (event-based gateways have several)."""
    definition = getattr(task.task_spec, "event_definition", None)
    if isinstance(definition, MultipleEventDefinition):
        return list(definition.event_definitions)
    return [definition] if definition is not None else []


def _timer_definition(task: Task) -> TimerEventDefinition | None:
    for definition in _definitions(task):
        if isinstance(definition, TimerEventDefinition):
            return definition
    return None


def pending_timers(wf: BpmnWorkflow) -> list[PendingTimer]:
    timers: list[PendingTimer] = []
    for task in list(wf.event_manager.tasks.values()):
        if task.state != TaskState.WAITING:
            continue
        definition = _timer_definition(task)
        if definition is None:
            continue
        value = task._get_internal_data("event_value")
        if value is None:
            continue
        if isinstance(definition, CycleTimerEventDefinition):
            if value.get("cycles", 0) == 0:
                continue
            due = dt.datetime.fromisoformat(value["next"])
            kind = "cycle"
        elif isinstance(definition, DurationTimerEventDefinition):
            due = TimerEventDefinition.get_datetime(value)
            kind = "duration"
        elif isinstance(definition, TimeDateEventDefinition):
            due = TimerEventDefinition.parse_time_or_duration(value)
            kind = "date"
        else:
            continue
        if due.tzinfo is None:
            due = due.replace(tzinfo=dt.UTC)
        timers.append(PendingTimer(str(task.id), task.task_spec.bpmn_id or task.task_spec.name, kind, due))
    return timers


def waiting_messages(wf: BpmnWorkflow) -> list[tuple[str, str]]:
    """(task id, message name) for every message the case waits for."""
    found = []
    for task in wf.event_manager.tasks.values():
        if task.state != TaskState.WAITING:
            continue
        for definition in _definitions(task):
            if isinstance(definition, MessageEventDefinition):
                found.append((str(task.id), definition.name))
    return found


def fire_timer(wf: BpmnWorkflow, task_id: str) -> bool:
    """Fire one waiting timer regardless of the wall clock; False if it no longer waits."""
    task = find_task(wf, task_id)
    if task is None or task.state != TaskState.WAITING:
        return False
    definition = _timer_definition(task)
    if definition is None:
        return False
    if isinstance(definition, CycleTimerEventDefinition):
        value = task._get_internal_data("event_value")
        now = audit_clock.now()  # the clock the timer compares with (the command's time)
        if value and dt.datetime.fromisoformat(value["next"]) >= now:
            value["next"] = (now - dt.timedelta(microseconds=1)).isoformat()
    else:
        task._set_internal_data(event_fired=True)
    task.task_spec._update(task)
    return True


def deliver_message(wf: BpmnWorkflow, name: str, payload: dict[str, Any]) -> bool:
    event = BpmnEvent(SpiffMessageEventDefinition(name), payload)
    return wf.event_manager.catch(event, internal=False) > 0


# --- split serialization --------------------------------------------------------------------


_ENCODE = json.JSONEncoder(default=str, separators=(",", ":")).encode
_NO_DELTA = '{"updates":{},"deletions":[]}'


def task_body(task: Task) -> str:
    """The task's row as SpiffWorkflow's task converter writes it (``REGISTRY.convert``, data
    as a delta against the parent's), built without the converter's dispatch: every command
    writes several of these."""
    pid = task._parent
    parent = task.workflow.tasks.get(pid) if pid is not None else None
    internal = task.internal_data
    internal_json = _ENCODE(REGISTRY.convert(internal)) if internal else "{}"
    if parent is None:
        head, data_json, delta_json = '"parent":null', _ENCODE(task.data), "{}"
    else:
        head, data_json = f'"parent":"{task_key(parent)}"', "{}"
        data, parent_data = task.data, parent.data
        if not data and not parent_data:
            delta_json = _NO_DELTA
        else:
            delta_json = _ENCODE({
                "updates": {k: v for k, v in data.items() if k not in parent_data or parent_data[k] != v},
                "deletions": [k for k in parent_data if k not in data],
            })
    changed = task.last_state_change
    changed_json = repr(changed) if type(changed) is float else _ENCODE(changed)
    children = ",".join([f'"{c}"' for c in task._children])
    return (f'{{"id":"{task_key(task)}",{head},"children":[{children}],"last_state_change":{changed_json},'
            f'"state":{int(task._state)},"task_spec":{_quote(task.task_spec.name)},'
            f'"triggered":{"true" if task.triggered else "false"},"internal_data":{internal_json},'
            f'"data":{data_json},"delta":{delta_json},"typename":"Task"}}')


def converter_task_body(task: Task) -> str:
    """``task_body`` the slow way, through SpiffWorkflow's converter (tests compare the two)."""
    return json.dumps(REGISTRY.convert(task), default=str, separators=(",", ":"))


def _workflow_header(wf: Any) -> dict[str, Any]:
    return {
        "data": REGISTRY.convert(REGISTRY.clean(wf.data)),
        "correlations": wf.correlations,
        "last_task": str(wf.last_task.id) if wf.last_task is not None else None,
        "success": wf.success,
        "completed": wf.completed,
        "root": str(wf.task_tree.id),
    }


def workflow_header(wf: BpmnWorkflow) -> str:
    header = _workflow_header(wf)
    header["bpmn_events"] = REGISTRY.convert(wf.bpmn_events)
    # Whether any task waits for an event (a timer, a message): a case loaded from its rows
    # reads its timer and subscription rows only then (see header_waits).
    header["waits"] = bool(wf.event_manager.tasks)
    header["subprocesses"] = {}
    for sp_id, sp in wf.subprocesses.items():
        sub = _workflow_header(sp)
        sub["parent_task_id"] = str(sp.parent_task_id)
        sub["spec"] = sp.spec.name
        header["subprocesses"][str(sp_id)] = sub
    return _ENCODE(header)


def header_waits(header: dict[str, Any]) -> bool:
    """False when the saved case had no task waiting for an event, so it has no pending timer
    or message subscription rows; True when it had, or the header predates the flag."""
    return header.get("waits", True) is not False


def _apply_header(wf: Any, header: dict[str, Any]) -> None:
    wf.task_tree = wf.tasks[UUID(header["root"])]
    wf.success = header["success"]
    wf.completed = header.get("completed", False)
    wf.correlations = header.get("correlations", {})
    last = header.get("last_task")
    wf.last_task = wf.tasks.get(UUID(last)) if last else None
    wf.data = REGISTRY.restore(header.get("data", {}))


def restore_workflow(
    spec: Any,
    subprocess_specs: dict[str, Any],
    header_json: str | dict[str, Any],
    rows: list[tuple[str, str]],
    script_engine: PythonScriptEngine,
) -> BpmnWorkflow:
    """Rebuild a workflow from its header (JSON, or already parsed) and its task rows (in
    creation order)."""
    header = json.loads(header_json) if isinstance(header_json, str) else header_json
    wf = BpmnWorkflow(spec, subprocess_specs, script_engine=script_engine, deserializing=True)
    wf.tasks = {}
    by_workflow: dict[str, list[dict[str, Any]]] = {}
    for key, body in rows:
        by_workflow.setdefault(key, []).append(json.loads(body))
    for body in by_workflow.get("", []):
        task = REGISTRY.restore(body, workflow=wf)
        wf.tasks[task.id] = task
    _apply_header(wf, header)
    for sp_key, sub in header.get("subprocesses", {}).items():
        parent = wf.get_task_from_id(UUID(sub["parent_task_id"]))
        sp = BpmnSubWorkflow(subprocess_specs[sub["spec"]], parent.id, wf, deserializing=True)
        sp.tasks = {}
        wf.subprocesses[parent.id] = sp
        for body in by_workflow.get(sp_key, []):
            task = REGISTRY.restore(body, workflow=sp)
            sp.tasks[task.id] = task
        _apply_header(sp, sub)
        sp.completed_event.connect(parent.task_spec._on_subworkflow_completed, parent)
    wf.bpmn_events = REGISTRY.restore(header.get("bpmn_events", []))
    _frontier(wf)  # taken before the command changes anything
    return wf


def new_workflow(spec: Any, subprocess_specs: dict[str, Any], script_engine: PythonScriptEngine) -> BpmnWorkflow:
    wf = BpmnWorkflow(spec, subprocess_specs, script_engine=script_engine)
    _frontier(wf)
    return wf


RowKey = tuple[Any, ...]


def row_key(task: Task) -> RowKey | None:
    """What the row of a task without data is made of: two equal keys mean the same row text.
    None when the task or its parent holds data (the row's delta depends on both)."""
    if task.data or task.internal_data:
        return None
    pid = task._parent
    if pid is not None:
        parent = task.workflow.tasks.get(pid)
        if parent is not None and parent.data:
            return None
    return (task._state, task.last_state_change, task.triggered, pid, tuple(task._children))


def changed_tasks(wf: BpmnWorkflow, since: float, saved: set[str],
                  written: dict[str, RowKey] | None = None) -> tuple[list[tuple[str, Task]], set[str]]:
    """Tasks to (re)write after a command, and ids of tasks that disappeared.

    Finished tasks never change again, so only tasks touched since ``since``, unfinished
    ones and new ones are written; only the frontier and what grew from it are looked at.
    ``written`` holds the ``row_key`` of unfinished rows as last written: such a task that
    did not change (the predicted tasks further down a process) is not written again.
    """
    touched_tasks(wf)
    visited: Frontier = wf.__dict__.get(_TOUCHED) or {}
    for tid, entry in _frontier(wf).items():  # unfinished tasks are always rewritten
        visited.setdefault(tid, entry)
    dropped: set[UUID] = wf.__dict__.get(_DROPPED) or set()
    forced: Frontier = wf.__dict__.get(_FORCED) or {}
    wf.__dict__[_TOUCHED] = {}
    wf.__dict__[_DROPPED] = set()
    wf.__dict__[_FORCED] = {}
    for tid, entry in forced.items():
        visited.setdefault(tid, entry)
    dirty: list[tuple[str, Task]] = []
    new: dict[UUID, tuple[str, Task]] = {}
    for key, task in visited.values():
        if task.workflow.tasks.get(task.id) is not task:
            dropped.add(task.id)
            continue
        tid = task_key(task)
        if tid not in saved:
            new[task.id] = (key, task)
        elif task.last_state_change >= since or task.id in forced:
            dirty.append((key, task))
        elif not task.has_state(TaskState.FINISHED_MASK):
            if written is None or (row := row_key(task)) is None or written.get(tid) != row:
                dirty.append((key, task))
    return dirty + _parents_first(new), {str(t) for t in dropped} & saved


def _parents_first(new: dict[UUID, tuple[str, Task]]) -> list[tuple[str, Task]]:
    """New tasks get their row sequence in this order, and a restore needs a task's parent
    before the task (its data is stored as a delta against the parent's)."""
    ordered: list[tuple[str, Task]] = []
    stack = [v for v in new.values() if v[1]._parent not in new]
    stack.reverse()
    while stack:
        key, task = stack.pop()
        ordered.append((key, task))
        stack.extend(reversed([new[c] for c in task._children if c in new]))
    return ordered


def now_ts() -> float:
    return time.time()
