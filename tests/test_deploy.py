"""Deployments: versioning, all-or-nothing storage and errors that name file, element and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine import SYSTEM, DeploymentInvalid, Forbidden, WorkflowEngine
from engine.models import DefinitionFile, ProcessVersion

SAMPLES = Path(__file__).parent / "processes"


def sample_files() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(SAMPLES.iterdir()) if p.suffix in (".bpmn", ".dmn", ".json")]


def replace(files: list[tuple[str, bytes]], name: str, old: str, new: str) -> list[tuple[str, bytes]]:
    out = []
    for fname, content in files:
        if fname == name:
            text = content.decode()
            assert old in text, f"{old!r} not in {name}"
            content = text.replace(old, new, 1).encode()
        out.append((fname, content))
    return out


def counts(engine: WorkflowEngine) -> tuple[int, int]:
    with engine.db.read() as s:
        return (s.scalar(select(func.count()).select_from(ProcessVersion)),
                s.scalar(select(func.count()).select_from(DefinitionFile)))


def test_versions_only_for_changed_processes(engine: WorkflowEngine) -> None:
    assert {p["key"]: p["version"] for p in engine.list_processes()} == {"sample": 1, "waiting": 1}
    assert engine.deploy(sample_files(), SYSTEM) == []  # identical content: no new version
    changed = replace(sample_files(), "sample.bpmn", 'name="Fix product"', 'name="Repair product"')
    assert engine.deploy(changed, SYSTEM) == [{"key": "sample", "version": 2}]
    info = engine.get_process("sample")
    assert [v["version"] for v in info["versions"]] == [1, 2]
    assert "Repair product" in engine.get_bpmn("sample")[1]
    assert "Fix product" in engine.get_bpmn("sample", 1)[1]


def test_changed_form_makes_a_new_version_of_the_processes_using_it(engine: WorkflowEngine) -> None:
    changed = replace(sample_files(), "sample-fix.schema.json", '"minimum": 1', '"minimum": 2')
    assert engine.deploy(changed, SYSTEM) == [{"key": "sample", "version": 2}]


def test_running_case_stays_on_its_version(engine: WorkflowEngine) -> None:
    old = engine.start_case("sample", {}, SYSTEM)
    engine.deploy(replace(sample_files(), "sample.bpmn", 'name="Register request"', 'name="Register (v2)"'), SYSTEM)
    new = engine.start_case("sample", {}, SYSTEM)
    assert (old["version"], new["version"]) == (1, 2)
    assert old["tasks"][0]["name"] == "Register request"
    assert new["tasks"][0]["name"] == "Register (v2)"
    done = engine.complete_task(old["tasks"][0]["id"], {"customer": "Li Lei", "severity": "low"}, SYSTEM)
    assert done["version"] == 1 and done["tasks"][0]["spec"] == "fix"


BAD_CASES = [
    ("sample.bpmn", "<bpmn:endEvent id=\"end\" name=\"Done\">", "<bpmn:endEvent id=\"end\" name=\"Done\"",
     "sample.bpmn", None, "XML syntax error"),
    ("sample.bpmn", 'id="sample.notify"', 'id="no.such.handler"', "sample.bpmn", "notify", "not registered"),
    ("sample.bpmn", 'value="sample-fix.schema.json"', 'value="missing.schema.json"', "sample.bpmn", "fix",
     "missing.schema.json"),
    ("sample.bpmn", 'priority == "urgent"', '__import__("os").system("id")', "sample.bpmn", "route", "not allowed"),
    ("sample.bpmn", "summary = customer", "import os\nsummary = customer", "sample.bpmn", "summarize", "not allowed"),
    ("sample.bpmn", "<spiffworkflow:calledDecisionId>sample_priority<",
     "<spiffworkflow:calledDecisionId>no_such_decision<", "sample.bpmn", "decide", "no_such_decision"),
    ("sample-fix.schema.json", '"type": "integer"', '"type": "integr"', "sample-fix.schema.json", None,
     "invalid JSON Schema"),
    ("sample-register.schema.json", '"title": "登记 Register request",', '"title": "broken" "x",',
     "sample-register.schema.json", None, "invalid JSON"),
    ("sample.bpmn", 'targetRef="summarize"', 'targetRef="nowhere"', "sample.bpmn", None, "nowhere"),
    ("sample.bpmn", '<spiffworkflow:property name="formJsonSchemaFilename" value="sample-fix.schema.json" />',
     '<spiffworkflow:property name="formJsonSchemaFilename" value="sample-fix.schema.json" />'
     '<spiffworkflow:property name="completionCheck" value="no.such.check" />', "sample.bpmn", "fix",
     "completion check 'no.such.check' is not a registered handler"),
]


@pytest.mark.parametrize("name,old,new,file,element,message", BAD_CASES)
def test_bad_bundle_is_rejected_whole_with_a_located_error(engine: WorkflowEngine, name: str, old: str, new: str,
                                                          file: str, element: str | None, message: str) -> None:
    before = counts(engine)
    bad = replace(sample_files(), "sample.bpmn", 'name="Fix product"', 'name="Changed too"')
    bad = replace(bad, name, old, new)
    with pytest.raises(DeploymentInvalid) as info:
        engine.deploy(bad, SYSTEM)
    errors = info.value.errors
    assert errors, "errors must be itemised"
    first = errors[0]
    assert first["file"] == file
    assert message in first["message"]
    if element is not None:
        assert first["element"] == element
        assert isinstance(first["line"], int) and first["line"] > 1
    assert counts(engine) == before  # nothing stored, not even the valid changed process


def test_line_numbers_point_at_the_element(engine: WorkflowEngine) -> None:
    bad = replace(sample_files(), "sample.bpmn", 'id="sample.notify"', 'id="no.such.handler"')
    with pytest.raises(DeploymentInvalid) as info:
        engine.deploy(bad, SYSTEM)
    err = info.value.errors[0]
    text = dict(bad)["sample.bpmn"].decode().splitlines()
    assert 'id="notify"' in text[err["line"] - 1]


@pytest.mark.parametrize("payload", [
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&lol2;</bpmn:definitions>',
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&xxe;</bpmn:definitions>',
])
def test_entities_and_doctypes_are_refused(engine: WorkflowEngine, payload: str) -> None:
    with pytest.raises(DeploymentInvalid) as info:
        engine.deploy([("evil.bpmn", payload.encode())], SYSTEM)
    assert "root:" not in str(info.value.errors)
    assert info.value.errors[0]["file"] == "evil.bpmn"


def test_unsupported_and_empty_uploads(engine: WorkflowEngine) -> None:
    with pytest.raises(DeploymentInvalid, match="unsupported file type"):
        engine.deploy([("notes.txt", b"hello")], SYSTEM)
    with pytest.raises(DeploymentInvalid, match="no files"):
        engine.deploy([], SYSTEM)


def test_only_deployers_deploy(engine: WorkflowEngine, users: dict) -> None:
    with pytest.raises(Forbidden):
        engine.deploy(sample_files(), users["agent"])
    engine.deploy(replace(sample_files(), "sample.bpmn", 'name="Fix product"', 'name="X"'), users["owner"])
