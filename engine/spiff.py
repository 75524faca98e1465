"""Everything that touches SpiffWorkflow: parsing, the sandboxed script engine, and the split
serialization of a case's state into a small workflow header plus one row per task.

Storing tasks one by one lets a command write only the tasks it changed, so the cost of a
command does not grow with a case's history (re-serializing the whole workflow would).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from lxml import etree
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


def open_user_tasks(wf: BpmnWorkflow) -> list[Task]:
    return [t for _, t in all_tasks(wf) if t.state == TaskState.READY and t.task_spec.manual]


def find_task(wf: BpmnWorkflow, task_id: str) -> Task | None:
    try:
        return wf.get_task_from_id(UUID(task_id))
    except Exception:
        return None


def ready_automatic_task(wf: BpmnWorkflow) -> Task | None:
    for _, t in all_tasks(wf):
        if t.state == TaskState.READY and not t.task_spec.manual:
            return t
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


def task_body(task: Task) -> str:
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
    header["subprocesses"] = {}
    for sp_id, sp in wf.subprocesses.items():
        sub = _workflow_header(sp)
        sub["parent_task_id"] = str(sp.parent_task_id)
        sub["spec"] = sp.spec.name
        header["subprocesses"][str(sp_id)] = sub
    return json.dumps(header, default=str, separators=(",", ":"))


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
    header_json: str,
    rows: list[tuple[str, str]],
    script_engine: PythonScriptEngine,
) -> BpmnWorkflow:
    """Rebuild a workflow from its header and its task rows (in creation order)."""
    header = json.loads(header_json)
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
    return wf


def changed_tasks(wf: BpmnWorkflow, since: float, saved: set[str]) -> tuple[list[tuple[str, Task]], set[str]]:
    """Tasks to (re)write after a command, and ids of tasks that disappeared.

    Finished tasks never change again, so only tasks touched since ``since``, unfinished
    ones and new ones are written.
    """
    dirty: list[tuple[str, Task]] = []
    present: set[str] = set()
    for key, task in all_tasks(wf):
        tid = str(task.id)
        present.add(tid)
        if tid not in saved or task.last_state_change >= since or not task.has_state(TaskState.FINISHED_MASK):
            dirty.append((key, task))
    return dirty, saved - present


def now_ts() -> float:
    return time.time()
