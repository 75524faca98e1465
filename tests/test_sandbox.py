"""Expressions and scripts from diagrams cannot reach files, network, imports or the host."""

from __future__ import annotations

import datetime as dt
import os
import re
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


# Each one blocked the server process or allocated hundreds of MB before the checks existed.
C_LEVEL_BOMBS = [
    ("x = sum(range(5 * 10**8))", r"range\(\) of more than 1,000,000 numbers"),
    ("x = range(10**11)", r"range\(\) of more than 1,000,000 numbers"),
    ("x = sum(sum(range(10**6)) for i in range(10**5))", "time limit"),  # one tick, a big C loop each
    ("x = sum(map(sum, [range(10**6)] * 10**6))", "time limit"),  # C calls C: no tick at all
    ("x = sorted([range(10**6)] * 1000, key=sum)", "time limit"),
    ("f = lambda n: n + 1\nx = [f(f(f(i))) for i in range(10**5)]", "budget|time limit"),
    ("x = list(map(lambda i: i, range(10**6)))", "budget|time limit"),
    ("x = 'a'.zfill(4 * 10**8)", r"zfill\(\) would produce more than 1,000,000 characters"),
    ("x = 'a'.zfill(5 * 10**7)", r"zfill\(\) would produce"),
    ("z = str.zfill\nx = list(map(z, ['a'], [4 * 10**8]))", r"zfill\(\) would produce"),
    ("x = '%400000000d' % 1", "%-formatting would produce more than 1,000,000 characters"),
    ("x = '%*d' % (400000000, 1)", "%-formatting would produce"),
    ("x = '%s' * 100 % tuple('a' * 10**5 for i in range(100))", "%-formatting would produce"),
    ("x = ('a' * 1000).replace('', 'b' * 300000)", r"replace\(\) would produce more than 1,000,000 characters"),
    ("s = 'a' * 10**5\nx = ''.join(s for i in range(1000))", r"join\(\) would produce more than 1,000,000 characters"),
    ("s = 'a' * 10**5\nx = ''.join([s] * 10**6)", "repetition would be too large"),
    ("l = [1]\nfor i in range(40):\n    l += l", "list of more than 1,000,000 elements"),
    ("l = [1]\nfor i in range(40):\n    l.extend(l)", "list of more than 1,000,000 elements"),
    ("l = [1]\nfor i in range(40):\n    l[:0] = l", "over the limit of 1,000,000"),
    ("l = [1]\nfor i in range(40):\n    l = [*l, *l]", "over the limit of 1,000,000"),
    ("s = 'ab'\nfor i in range(40):\n    s = f'{s}{s}'", "over the limit of 1,000,000"),
    ("x = sum([list(range(10**5))] * 10, []) * 1", "repetition would be too large"),
    ("l = [list(range(10**5))]\nx = sum(l + l + l + l + l + l + l + l + l + l + l, [])", "over the limit"),
    ("x = round(5, -10**7)", r"round\(\) to more than"),
    ("l = []\nl.append(l)\nx = l", "nested more than 100 levels"),
    ("l = list(range(10**6))\nx = [l for i in range(10)]", "larger than 5,000,000 elements and characters"),
    ("try:\n    while True:\n        pass\nexcept:\n    pass\nx = sum(range(10**6))", "budget"),
]


@pytest.mark.parametrize(("bomb", "message"), C_LEVEL_BOMBS)
def test_c_level_work_and_result_sizes_are_bounded(bomb: str, message: str) -> None:
    data: dict[str, object] = {}
    started = time.monotonic()
    with pytest.raises(ScriptError) as info:
        sandbox.execute(bomb, data, sandbox.default_functions())
    assert time.monotonic() - started < 5
    assert re.search(message, info.value.message), info.value.message
    assert "x" not in data


@pytest.mark.parametrize("expression", ["f'{1:>400000000}'", "f'{1.0:.400000000f}'", "f'{x:_<4000001}'"])
def test_huge_format_widths_are_refused_before_running(expression: str) -> None:
    with pytest.raises(ScriptError, match="not allowed"):
        sandbox.validate(expression, "eval")
    with pytest.raises(ScriptError, match="not allowed"):
        sandbox.evaluate(expression, {"x": 1}, {})


def test_time_spent_in_application_functions_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "MAX_SECONDS", 0.05)
    data: dict[str, object] = {}
    sandbox.execute("x = slow() + 1\ny = [i for i in range(10)]", data, {"slow": lambda: time.sleep(0.1) or 1})
    assert data["x"] == 2
    with pytest.raises(ScriptError, match="time limit of 0.05 s"):
        sandbox.execute("x = [sum(range(10**6)) for i in range(1000)]", {}, {})


def test_normal_ranges_strings_and_formatting_still_work() -> None:
    data: dict[str, object] = {"name": "li", "n": 3, "items": ["bb", "a"], "day": dt.date(2024, 1, 31)}
    sandbox.execute(
        "r = list(range(10))\nstep = range(2, 10, 3)[1]\ntotal = sum(range(1000))\n"
        "z = str(n).zfill(5)\nrep = 'a-b-c'.replace('-', '+', 1)\njoined = ', '.join(items)\n"
        "unbound = str.join('/', items)\nwide = f'{name:>10}|{2.5:.2f}|{n:03d}'\npct = '%05d' % n\n"
        "named = '%(name)s=%(n)d' % {'name': name, 'n': n}\nupper = list(map(str.upper, items))\n"
        "longest = max(items, key=len)\nby_len = sorted(items, key=lambda v: len(v))\n"
        "flat = sum([[1, 2], [3]], [])\nitems += ['c']\nitems.extend(v for v in 'de')\nitems.sort(key=len)\n"
        "first = day.replace(day=1)\nrounded = round(2.567, 2)\nd = {'a': 1}\nd.update(b=2)\n"
        "grid = [[0] * 3] * 2\nkept = list(filter(lambda v: v > 1, [1, 2, 3]))\nmin = 1\nsum = min + 1\n",
        data, sandbox.default_functions())
    assert data["r"] == list(range(10)) and data["step"] == 5 and data["total"] == 499500
    assert data["z"] == "00003" and data["rep"] == "a+b-c" and data["joined"] == "bb, a" and data["unbound"] == "bb/a"
    assert data["wide"] == "        li|2.50|003" and data["pct"] == "00003" and data["named"] == "li=3"
    assert data["upper"] == ["BB", "A"] and data["longest"] == "bb" and data["by_len"] == ["a", "bb"]
    assert data["flat"] == [1, 2, 3] and data["items"] == ["a", "c", "d", "e", "bb"]
    assert data["first"] == dt.date(2024, 1, 1) and data["rounded"] == 2.57 and data["d"] == {"a": 1, "b": 2}
    assert data["grid"] == [[0, 0, 0], [0, 0, 0]] and data["kept"] == [2, 3]
    assert data["min"] == 1 and data["sum"] == 2 and "max" not in data  # builtins' names as variables
    assert sandbox.evaluate("f'{x:>10}'", {"x": 1}, {}) == "         1"
    assert sandbox.evaluate("'%05d' % 3", {}, {}) == "00003"
    assert sandbox.evaluate("len(range(10)) + range(10)[3] + sum(range(1000))", {}, {}) == 10 + 3 + 499500
    assert sandbox.evaluate("'x'.zfill(5) + 'aXa'.replace('X', 'b') + '-'.join(['p', 'q'])", {}, {}) == "0000xabap-q"


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


@pytest.mark.parametrize("bomb", ["while True:\n    pass", "x = 9 ** 9 ** 9", "x = 'ab' * (10 ** 9)",
                                  "x = sum(range(5 * 10**8))", "x = 'a'.zfill(5 * 10**7)"])
def test_runaway_script_fails_the_case_not_the_host(engine: WorkflowEngine, bomb: str) -> None:
    deploy_script(engine, bomb)
    started = time.monotonic()
    case = engine.start_case("scripted", {}, SYSTEM)
    assert time.monotonic() - started < 10
    assert case["status"] == "error"
    incident = engine.history(case["id"], SYSTEM)[-1]
    assert incident["type"] == "incident" and incident["task"] == "run_script"
    assert not os.path.exists("/tmp/pwned")
