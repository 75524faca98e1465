"""Expressions and scripts from diagrams cannot reach files, network, imports or the host."""

from __future__ import annotations

import os
import time
from xml.sax.saxutils import escape

import pytest

from engine import SYSTEM, DeploymentInvalid, ScriptError, WorkflowEngine, sandbox

ESCAPES = [
    "__import__('os').system('touch /tmp/pwned')",
    "import os",
    "from os import path",
    "open('/etc/passwd').read()",
    "exec('1')",
    "eval('1+1')",
    "compile('1', 'x', 'exec')",
    "globals()",
    "locals()['x']",
    "vars()",
    "getattr(1, '__class__')",
    "().__class__.__bases__[0].__subclasses__()",
    "[].__class__",
    "x.__dict__",
    "'{0.__class__}'.format(1)",
    "'%s'.format_map({})",
    "(lambda: 1).__globals__",
    "(x for x in []).gi_frame.f_globals",
    "type(1)",
    "help()",
    "breakpoint()",
    "__builtins__",
    "_private",
    "class A: pass",
    "async def f(): pass",
    "with x: pass",
    "global y",
    "f'{x.__class__}'",
    "f'{x:{y.__class__}}'",
    "[1].__len__()",
    "str.mro()",
    "x.f_back",
]


@pytest.mark.parametrize("attack", ESCAPES)
def test_escape_attempts_are_refused(attack: str) -> None:
    data = {"x": 1, "y": 2}
    with pytest.raises(ScriptError):
        sandbox.execute(attack, data, sandbox.default_functions())
    assert set(data) == {"x", "y"}


@pytest.mark.parametrize("bomb", [
    "9**9**9",
    "x = 10 ** 100000",
    "x = 'a' * (10 ** 9)",
    "x = [0] * (10 ** 8)",
    "x = 1 << (10 ** 8)",
    "while True:\n    pass",
    "x = [i for i in range(10 ** 9)]",
    "def f(n):\n    return f(n + 1)\nf(0)",
    "x = 2\nx **= 100000",
])
def test_resource_exhaustion_fails_fast(bomb: str) -> None:
    started = time.monotonic()
    with pytest.raises(ScriptError):
        sandbox.execute(bomb, {}, sandbox.default_functions())
    assert time.monotonic() - started < 5


def test_ordinary_scripts_and_expressions_work() -> None:
    data = {"items": [{"qty": 2, "price": 3.5}, {"qty": 1, "price": 10}], "name": " Li "}
    sandbox.execute("total = sum(i['qty'] * i['price'] for i in items)\nlabel = name.strip().upper()\n"
                    "big = [i for i in items if i.get('price', 0) > 5]\ndel name", data, {})
    assert data["total"] == 17.0 and data["label"] == "LI" and len(data["big"]) == 1 and "name" not in data
    assert sandbox.evaluate("priority == 'high' and len(items) > 1", {"priority": "high", "items": [1, 2]}, {})
    assert sandbox.evaluate("2 ** 10", {}, {}) == 1024
    assert sandbox.evaluate("f'{n:03d}'", {"n": 7}, {}) == "007"


SCRIPT_PROCESS = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" targetNamespace="x">
  <bpmn:process id="scripted" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>s1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:scriptTask id="run_script"><bpmn:incoming>s1</bpmn:incoming><bpmn:outgoing>s2</bpmn:outgoing>
      <bpmn:script>{script}</bpmn:script></bpmn:scriptTask>
    <bpmn:userTask id="after"><bpmn:incoming>s2</bpmn:incoming><bpmn:outgoing>s3</bpmn:outgoing></bpmn:userTask>
    <bpmn:endEvent id="end"><bpmn:incoming>s3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="s1" sourceRef="start" targetRef="run_script" />
    <bpmn:sequenceFlow id="s2" sourceRef="run_script" targetRef="after" />
    <bpmn:sequenceFlow id="s3" sourceRef="after" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>"""


def deploy_script(engine: WorkflowEngine, script: str) -> None:
    engine.deploy([("scripted.bpmn", SCRIPT_PROCESS.format(script=escape(script)).encode())], SYSTEM)


@pytest.mark.parametrize("attack", ESCAPES[:12])
def test_attacks_in_diagrams_are_rejected_at_deployment(engine: WorkflowEngine, attack: str) -> None:
    with pytest.raises(DeploymentInvalid) as info:
        deploy_script(engine, attack)
    assert info.value.errors[0]["element"] == "run_script"


@pytest.mark.parametrize("bomb", ["while True:\n    pass", "x = 9 ** 9 ** 9", "x = 'ab' * (10 ** 9)"])
def test_runaway_script_fails_the_case_not_the_host(engine: WorkflowEngine, bomb: str) -> None:
    deploy_script(engine, bomb)
    started = time.monotonic()
    case = engine.start_case("scripted", {}, SYSTEM)
    assert time.monotonic() - started < 10
    assert case["status"] == "error"
    incident = engine.history(case["id"], SYSTEM)[-1]
    assert incident["type"] == "incident" and incident["task"] == "run_script"
    assert not os.path.exists("/tmp/pwned")
