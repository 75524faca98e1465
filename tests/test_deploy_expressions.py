"""Every expression a diagram hides is checked at deployment, not only when a case reaches it.

DMN cells (as SpiffWorkflow combines them with the input expression), multi-instance and loop
expressions, event expressions (timers on boundary events, conditional events, message and
signal payloads, correlation expressions), and elements no sequence flow reaches: a refused
text gets a 400 naming the file, the element and its line, and nothing is stored.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from xml.sax.saxutils import escape

import pytest
from conftest import token_for
from SpiffWorkflow.dmn.engine.DMNEngine import DMNEngine
from sqlalchemy import func, select

from engine import SYSTEM, DeploymentInvalid, WorkflowEngine, definitions
from engine.definitions import MAX_LOOP_CARDINALITY, parse_bundle
from engine.models import DefinitionFile, Deployment, ProcessVersion

ROOT = Path(__file__).parent.parent


def counts(engine: WorkflowEngine) -> tuple[int, int]:
    with engine.db.read() as s:
        return (s.scalar(select(func.count()).select_from(ProcessVersion)),
                s.scalar(select(func.count()).select_from(DefinitionFile)))


def refused(engine: WorkflowEngine, files: dict[str, str]) -> list[dict[str, Any]]:
    """Deploy ``files``, expect a refusal that stores nothing, return the itemised problems."""
    before = counts(engine)
    with pytest.raises(DeploymentInvalid) as info:
        engine.deploy([(name, text.encode()) for name, text in files.items()], SYSTEM)
    assert counts(engine) == before, "a refused deployment stored something"
    assert info.value.errors, "problems must be itemised"
    return info.value.errors


def located(errors: list[dict[str, Any]], files: dict[str, str], file: str, element: str,
            message: str) -> dict[str, Any]:
    """The problem reported for ``element`` of ``file``: its line is the element's line."""
    found = [e for e in errors if e["file"] == file and e["element"] == element]
    assert found, f"nothing reported for {file} ({element}): {errors}"
    problem = found[0]
    assert message in problem["message"], problem
    assert isinstance(problem["line"], int) and problem["line"] > 1, problem
    assert f'id="{element}"' in files[file].splitlines()[problem["line"] - 1], problem
    return problem


# --- DMN ----------------------------------------------------------------------------------------

DMN = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="probe_defs" name="Probe"
             namespace="http://aftercare.local/dmn">
  <decision id="probe_decision" name="Probe">
    <decisionTable id="probe_table" hitPolicy="UNIQUE">
      <input id="probe_input" label="Score">
        <inputExpression id="probe_input_expr" typeRef="integer">
          <text>{input}</text>
        </inputExpression>
      </input>
      <output id="probe_output" label="Level" name="level" typeRef="string" />
      <rule id="probe_rule_1">
        <inputEntry id="probe_rule_1_in">
          <text>{entry}</text>
        </inputEntry>
        <outputEntry id="probe_rule_1_out">
          <text>{output}</text>
        </outputEntry>
      </rule>
      <rule id="probe_rule_2">
        <inputEntry id="probe_rule_2_in">
          <text>-</text>
        </inputEntry>
        <outputEntry id="probe_rule_2_out">
          <text>"low"</text>
        </outputEntry>
      </rule>
    </decisionTable>
  </decision>
</definitions>"""

CALLER = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
                  id="probe_caller_defs" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="probe_caller" name="Probe caller" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>s1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:businessRuleTask id="decide" name="Decide">
      <bpmn:extensionElements>
        <spiffworkflow:calledDecisionId>probe_decision</spiffworkflow:calledDecisionId>
      </bpmn:extensionElements>
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
    </bpmn:businessRuleTask>
    <bpmn:userTask id="look" name="Look">
      <bpmn:incoming>s2</bpmn:incoming><bpmn:outgoing>s3</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:endEvent id="end"><bpmn:incoming>s3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="s1" sourceRef="start" targetRef="decide" />
    <bpmn:sequenceFlow id="s2" sourceRef="decide" targetRef="look" />
    <bpmn:sequenceFlow id="s3" sourceRef="look" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>"""


def dmn(input: str = "score", entry: str = "> 5", output: str = '"high"') -> str:
    return DMN.format(input=escape(input), entry=escape(entry), output=escape(output))


@pytest.mark.parametrize("entry,score,level", [
    ("> 5", 7, "high"), ("> 5", 3, "low"),  # an operator: appended to the input expression
    ("1 < ? < 10", 7, "high"),  # '?' stands for the input's value
    ("!= 3", 7, "high"), ("!= 3", 3, "low"),
    ("7", 7, "high"),  # compared with '=='
])
def test_a_good_decision_table_deploys_and_decides(engine: WorkflowEngine, entry: str, score: int,
                                                   level: str) -> None:
    engine.deploy([("probe.dmn", dmn(entry=entry).encode()), ("probe_caller.bpmn", CALLER.encode())], SYSTEM)
    case = engine.start_case("probe_caller", {"score": score}, SYSTEM)
    assert case["status"] == "running" and case["data"]["level"] == level


DMN_PROBES = [
    # (cell, text, element, message)
    ("input", "__import__('os').system('touch /tmp/x')", "probe_input_expr", "not allowed"),
    ("entry", "().__class__.__mro__", "probe_rule_1_in", "not allowed"),
    ("output", "open('/etc/passwd')", "probe_rule_1_out", "'open' is not allowed"),
    ("entry", "? > ().__class__", "probe_rule_1_in", "'__class__' is not allowed"),  # '?' form
    ("entry", ".__class__", "probe_rule_1_in", "'__class__' is not allowed"),  # appended: score.__class__
    ("entry", "1 if ? else __import__('os')", "probe_rule_1_in", "not allowed"),
    ("entry", "> >", "probe_rule_1_in", "syntax error"),
    ("output", "[c for c in ().__class__.__bases__]", "probe_rule_1_out", "not allowed"),
]


@pytest.mark.parametrize("cell,text,element,message", DMN_PROBES)
def test_a_refused_dmn_cell_is_named_at_deployment(engine: WorkflowEngine, cell: str, text: str, element: str,
                                                   message: str) -> None:
    files = {"probe.dmn": dmn(**{cell: text}), "probe_caller.bpmn": CALLER}
    problem = located(refused(engine, files), files, "probe.dmn", element, message)
    assert "decision 'probe_decision'" in problem["message"]


def test_the_probed_decision_table_is_refused_with_every_cell(engine: WorkflowEngine) -> None:
    files = {"probe.dmn": dmn(input="__import__('os').system('touch /tmp/x')", entry="().__class__.__mro__",
                              output="open('/etc/passwd')"),
             "probe_caller.bpmn": CALLER}
    errors = refused(engine, files)
    located(errors, files, "probe.dmn", "probe_input_expr", "not allowed")
    located(errors, files, "probe.dmn", "probe_rule_1_in", "rule 'probe_rule_1'")
    located(errors, files, "probe.dmn", "probe_rule_1_out", "'open' is not allowed")


@pytest.mark.parametrize("entry", ["1 < ? < 5", "? == 'a?'", '"what?"', "? in ['?', \"'\"]", "'?' + ? + \"?\"",
                                   "?'", "\"?", "? ? '?' \"?\" ?", "> 5", "-5", "not ?"])
def test_entries_are_composed_as_spiffworkflow_composes_them(entry: str) -> None:
    direct = definitions._RecordingScriptEngine()
    task = SimpleNamespace(workflow=SimpleNamespace(script_engine=direct), data={})
    try:
        DMNEngine(None).evaluate("score", entry, task)
    except SyntaxError:
        with pytest.raises(SyntaxError):
            definitions._input_entry_texts("score", entry)
        return
    assert definitions._input_entry_texts("score", entry) == direct.texts


def test_an_entry_too_slow_to_evaluate_is_refused_quickly(engine: WorkflowEngine) -> None:
    files = {"probe.dmn": dmn(entry="?" * 30_000), "probe_caller.bpmn": CALLER}
    started = time.monotonic()
    located(refused(engine, files), files, "probe.dmn", "probe_rule_1_in", "would take too long")
    assert time.monotonic() - started < 10


def test_a_decision_table_deployed_alone_is_checked(engine: WorkflowEngine) -> None:
    files = {"probe.dmn": dmn(output="open('/etc/passwd')")}
    located(refused(engine, files), files, "probe.dmn", "probe_rule_1_out", "not allowed")


def test_a_decision_table_stored_before_the_check_is_checked_when_a_process_calls_it(
        engine: WorkflowEngine) -> None:
    with engine.db.write() as s:  # as if deployed by an earlier release that did not look
        deployment = Deployment(deployed_by="earlier")
        s.add(deployment)
        s.flush()
        s.add(DefinitionFile(deployment_id=deployment.id, name="probe.dmn", kind="dmn", sha256="x" * 64,
                             content=dmn(entry="().__class__.__mro__")))
    files = {"probe.dmn": dmn(entry="().__class__.__mro__"), "probe_caller.bpmn": CALLER}
    errors = refused(engine, {"probe_caller.bpmn": CALLER})
    located(errors, files, "probe.dmn", "probe_rule_1_in", "not allowed")


def test_the_api_answers_400_naming_the_dmn_cell(client: Any) -> None:
    owner = token_for(client, "owner")
    text = dmn(output="open('/etc/passwd')")
    data = {"files": [(io.BytesIO(text.encode()), "probe.dmn"), (io.BytesIO(CALLER.encode()), "probe_caller.bpmn")]}
    res = client.post("/api/processes", data=data, headers=owner, content_type="multipart/form-data")
    assert res.status_code == 400, res.get_json()
    located(res.get_json()["errors"], {"probe.dmn": text}, "probe.dmn", "probe_rule_1_out", "not allowed")
    listed = client.get("/api/processes", headers=owner).get_json()["processes"]
    assert "probe_caller" not in {p["key"] for p in listed}


# --- BPMN: loops, events, disconnected elements ---------------------------------------------------

BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
                  id="probe_defs" targetNamespace="http://bpmn.io/schema/bpmn">
{top}
  <bpmn:process id="probe" name="Probe" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>s1</bpmn:outgoing></bpmn:startEvent>
{body}
    <bpmn:endEvent id="end"><bpmn:incoming>s2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="s1" sourceRef="start" targetRef="t" />
    <bpmn:sequenceFlow id="s2" sourceRef="t" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>"""

USER_TASK = """    <bpmn:userTask id="t" name="Task">
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
{inner}
    </bpmn:userTask>"""

MESSAGE_THROW = """    <bpmn:intermediateThrowEvent id="t" name="Send">
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
      <bpmn:messageEventDefinition id="t_def" messageRef="msg" />
    </bpmn:intermediateThrowEvent>"""

LOOSE_USER = """    <bpmn:userTask id="t" name="Task">
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
    </bpmn:userTask>"""

# (case, top, body with {expr}, good expression, element that must be named)
BPMN_PROBES: list[tuple[str, str, str, str, str]] = [
    ("multi-instance cardinality", "", USER_TASK.format(inner=(
        "      <bpmn:multiInstanceLoopCharacteristics>"
        "<bpmn:loopCardinality>{expr}</bpmn:loopCardinality></bpmn:multiInstanceLoopCharacteristics>")),
     "3", "t"),
    ("multi-instance completion condition", "", USER_TASK.format(inner=(
        '      <bpmn:multiInstanceLoopCharacteristics isSequential="true">'
        "<bpmn:loopCardinality>2</bpmn:loopCardinality>"
        "<bpmn:completionCondition>{expr}</bpmn:completionCondition>"
        "</bpmn:multiInstanceLoopCharacteristics>")),
     "done", "t"),
    ("multi-instance over a collection", "", USER_TASK.format(inner=(
        "      <bpmn:multiInstanceLoopCharacteristics>"
        "<bpmn:loopDataInputRef>items</bpmn:loopDataInputRef>"
        '<bpmn:inputDataItem id="item" name="item" />'
        "<bpmn:completionCondition>{expr}</bpmn:completionCondition>"
        "</bpmn:multiInstanceLoopCharacteristics>")),
     "item == 'last'", "t"),
    ("standard loop condition", "", USER_TASK.format(inner=(
        '      <bpmn:standardLoopCharacteristics loopMaximum="3">'
        "<bpmn:loopCondition>{expr}</bpmn:loopCondition></bpmn:standardLoopCharacteristics>")),
     "not done", "t"),
    ("timer on a boundary event", "", LOOSE_USER + """
    <bpmn:boundaryEvent id="t_deadline" attachedToRef="t">
      <bpmn:outgoing>s3</bpmn:outgoing>
      <bpmn:timerEventDefinition id="t_deadline_def">
        <bpmn:timeDuration>{expr}</bpmn:timeDuration>
      </bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="late"><bpmn:incoming>s3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="s3" sourceRef="t_deadline" targetRef="late" />""",
     "'PT1H'", "t_deadline"),
    ("conditional event", "", """    <bpmn:intermediateCatchEvent id="t" name="Wait until ready">
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
      <bpmn:conditionalEventDefinition id="t_def">
        <bpmn:condition>{expr}</bpmn:condition>
      </bpmn:conditionalEventDefinition>
    </bpmn:intermediateCatchEvent>""",
     "ready", "t"),
    ("message payload", '  <bpmn:message id="msg" name="note" />',
     """    <bpmn:intermediateThrowEvent id="t" name="Send">
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
      <bpmn:messageEventDefinition id="t_def" messageRef="msg"><bpmn:extensionElements>
        <spiffworkflow:messagePayload>{expr}</spiffworkflow:messagePayload>
      </bpmn:extensionElements></bpmn:messageEventDefinition>
    </bpmn:intermediateThrowEvent>""", "{'ref': ref}", "t"),
    ("message correlation", """  <bpmn:message id="msg" name="note" />
  <bpmn:correlationProperty id="ref_prop" name="Reference">
    <bpmn:correlationPropertyRetrievalExpression messageRef="msg">
      <bpmn:formalExpression>{expr}</bpmn:formalExpression>
    </bpmn:correlationPropertyRetrievalExpression>
  </bpmn:correlationProperty>""", MESSAGE_THROW, "ref", "t"),
    ("signal payload", """  <bpmn:signal id="sig" name="ping">
    <bpmn:extensionElements><spiffworkflow:payloadExpression>{expr}</spiffworkflow:payloadExpression></bpmn:extensionElements>
  </bpmn:signal>""", """    <bpmn:intermediateThrowEvent id="t" name="Signal">
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
      <bpmn:signalEventDefinition id="t_def" signalRef="sig" />
    </bpmn:intermediateThrowEvent>""", "ref", "t"),
    ("pre-script", "", """    <bpmn:userTask id="t" name="Task">
      <bpmn:extensionElements><spiffworkflow:preScript>{expr}</spiffworkflow:preScript></bpmn:extensionElements>
      <bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
    </bpmn:userTask>""", "x = 1", "t"),
    # Elements no sequence flow reaches: SpiffWorkflow leaves them out of the spec.
    ("disconnected script task", "", LOOSE_USER + """
    <bpmn:scriptTask id="loose"><bpmn:script>{expr}</bpmn:script></bpmn:scriptTask>""",
     "x = 1", "loose"),
    ("disconnected multi-instance", "", LOOSE_USER + """
    <bpmn:userTask id="loose"><bpmn:multiInstanceLoopCharacteristics>
      <bpmn:loopCardinality>{expr}</bpmn:loopCardinality></bpmn:multiInstanceLoopCharacteristics></bpmn:userTask>""",
     "3", "loose"),
    ("disconnected gateway condition", "", LOOSE_USER + """
    <bpmn:exclusiveGateway id="loose_gate"><bpmn:outgoing>loose_flow</bpmn:outgoing></bpmn:exclusiveGateway>
    <bpmn:userTask id="loose_target"><bpmn:incoming>loose_flow</bpmn:incoming></bpmn:userTask>
    <bpmn:sequenceFlow id="loose_flow" sourceRef="loose_gate" targetRef="loose_target">
      <bpmn:conditionExpression>{expr}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>""",
     "x == 1", "loose_flow"),
    ("disconnected service task parameter", "", LOOSE_USER + """
    <bpmn:serviceTask id="loose"><bpmn:extensionElements>
      <spiffworkflow:serviceTaskOperator id="sample.notify" resultVariable="r"><spiffworkflow:parameters>
        <spiffworkflow:parameter id="recipient" type="str" value="{expr}" />
        <spiffworkflow:parameter id="priority" type="str" value="'low'" />
      </spiffworkflow:parameters></spiffworkflow:serviceTaskOperator>
    </bpmn:extensionElements></bpmn:serviceTask>""",
     "customer", "loose"),
    ("disconnected timer", "", LOOSE_USER + """
    <bpmn:intermediateCatchEvent id="loose"><bpmn:timerEventDefinition id="loose_def">
      <bpmn:timeDate>{expr}</bpmn:timeDate></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>""",
     "deadline", "loose"),
]

ATTACK = "().__class__.__mro__"


def bpmn(top: str, body: str, expr: str) -> str:
    return BPMN.format(top=top.format(expr=escape(expr, {'"': "&quot;"})),
                       body=body.format(expr=escape(expr, {'"': "&quot;"})))


@pytest.mark.parametrize("case,top,body,good,element", BPMN_PROBES, ids=[p[0] for p in BPMN_PROBES])
def test_a_good_expression_in_each_place_deploys(engine: WorkflowEngine, case: str, top: str, body: str,
                                                 good: str, element: str) -> None:
    assert engine.deploy([("probe.bpmn", bpmn(top, body, good).encode())], SYSTEM) == [
        {"key": "probe", "version": 1}]


@pytest.mark.parametrize("case,top,body,good,element", BPMN_PROBES, ids=[p[0] for p in BPMN_PROBES])
def test_a_refused_expression_in_each_place_is_named(engine: WorkflowEngine, case: str, top: str, body: str,
                                                     good: str, element: str) -> None:
    files = {"probe.bpmn": bpmn(top, body, ATTACK)}
    located(refused(engine, files), files, "probe.bpmn", element, "not allowed")


DISCONNECTED_SERVICE = LOOSE_USER + """
    <bpmn:serviceTask id="loose"><bpmn:extensionElements>
      <spiffworkflow:serviceTaskOperator id="{expr}" resultVariable="r"><spiffworkflow:parameters>
        <spiffworkflow:parameter id="value" type="str" value="'x'" />
      </spiffworkflow:parameters></spiffworkflow:serviceTaskOperator>
    </bpmn:extensionElements></bpmn:serviceTask>"""


def test_a_disconnected_service_task_must_name_a_registered_handler(engine: WorkflowEngine) -> None:
    assert engine.deploy([("probe.bpmn", bpmn("", DISCONNECTED_SERVICE, "sample.flaky").encode())], SYSTEM)
    files = {"probe.bpmn": bpmn("", DISCONNECTED_SERVICE, "os.system")}
    located(refused(engine, files), files, "probe.bpmn", "loose", "handler 'os.system' is not registered")


CARDINALITY = USER_TASK.format(inner=(
    "      <bpmn:multiInstanceLoopCharacteristics>"
    "<bpmn:loopCardinality>{expr}</bpmn:loopCardinality></bpmn:multiInstanceLoopCharacteristics>"))


def test_a_literal_loop_cardinality_is_capped(engine: WorkflowEngine) -> None:
    assert engine.deploy([("probe.bpmn", bpmn("", CARDINALITY, str(MAX_LOOP_CARDINALITY)).encode())], SYSTEM)
    for too_many in ("3000", " 3_000 ", "(3000)"):
        files = {"probe.bpmn": bpmn("", CARDINALITY, too_many)}
        problem = located(refused(engine, files), files, "probe.bpmn", "t", "above the limit")
        assert "3000" in problem["message"] and str(MAX_LOOP_CARDINALITY) in problem["message"]
    loose = LOOSE_USER + """
    <bpmn:userTask id="loose"><bpmn:multiInstanceLoopCharacteristics>
      <bpmn:loopCardinality>5000</bpmn:loopCardinality></bpmn:multiInstanceLoopCharacteristics></bpmn:userTask>"""
    files = {"probe.bpmn": bpmn("", loose, "")}
    located(refused(engine, files), files, "probe.bpmn", "loose", "above the limit")


def test_a_hostile_nesting_is_a_located_problem_not_a_crash(engine: WorkflowEngine) -> None:
    files = {"probe.bpmn": bpmn("", CARDINALITY, "-" * 100_000 + "1")}
    located(refused(engine, files), files, "probe.bpmn", "t", "cannot be parsed")


# --- what ships still deploys ----------------------------------------------------------------------


def test_the_bundled_processes_decisions_and_forms_pass_the_checks() -> None:
    from handlers import build_registry

    files = [(p.name, p.read_bytes()) for folder in ("processes", "forms")
             for p in sorted((ROOT / folder).iterdir()) if p.suffix in (".bpmn", ".dmn", ".json")]
    assert any(name.endswith(".dmn") for name, _ in files)
    _, processes = parse_bundle(files, [], build_registry().names())
    assert {p.key for p in processes} == {p.stem for p in (ROOT / "processes").glob("*.bpmn")}
