"""The REST API: authentication, permissions, the full case flow, errors as JSON, OpenAPI."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, SAMPLES, token_for

REGISTER = {"customer": "Zhang Wei", "severity": "low"}


def test_token_and_401(client: Any) -> None:
    assert client.get("/api/tasks").status_code == 401
    assert client.get("/api/tasks").get_json()["error"]
    bad = client.post("/api/auth/token", json={"username": "agent", "password": "wrong"})
    assert bad.status_code == 401
    assert client.post("/api/auth/token", json={"username": "agent"}).status_code == 422
    assert client.get("/api/tasks", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    ok = client.post("/api/auth/token", json={"username": "agent", "password": PASSWORD})
    assert ok.status_code == 200 and len(ok.get_json()["token"]) > 20


def test_login_is_throttled(client: Any) -> None:
    for _ in range(5):
        assert client.post("/api/auth/token", json={"username": "tech", "password": "nope"}).status_code == 401
    locked = client.post("/api/auth/token", json={"username": "tech", "password": PASSWORD})
    assert locked.status_code == 429
    # The lock holds where the failures came from: nobody can lock a colleague out from elsewhere.
    elsewhere = client.post("/api/auth/token", json={"username": "tech", "password": PASSWORD},
                            environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert elsewhere.status_code == 200


def test_a_username_guessed_from_many_addresses_is_locked_everywhere() -> None:
    from web.throttle import LoginThrottle, TooManyAttempts

    throttle = LoginThrottle(max_failures=5)
    for i in range(49):  # one failure from each of many addresses: no pair or address lock
        throttle.check("tech", f"10.1.{i}.1")
        throttle.failed("tech", f"10.1.{i}.1")
    throttle.check("tech", "10.2.0.1")
    throttle.failed("tech", "10.1.99.1")  # the fiftieth
    with pytest.raises(TooManyAttempts):
        throttle.check("tech", "10.2.0.1")
    throttle.check("agent", "10.2.0.1")  # other users from that address are not affected


def test_bearer_tokens_can_be_revoked(client: Any) -> None:
    token = token_for(client, "agent")
    assert client.get("/api/me", headers=token).status_code == 200
    assert client.delete("/api/auth/token", headers=token).status_code == 204
    assert client.get("/api/me", headers=token).status_code == 401
    assert client.delete("/api/auth/token").status_code == 401


def test_full_case_through_the_api(client: Any) -> None:
    agent, tech, boss = (token_for(client, u) for u in ("agent", "tech", "boss"))
    res = client.post("/api/instances", json={"process": "sample", "data": {}}, headers=agent)
    assert res.status_code == 201, res.get_json()
    case = res.get_json()
    assert set(case) >= {"id", "process", "version", "status", "data", "tasks", "created_at", "updated_at"}
    task = case["tasks"][0]
    assert set(task) >= {"id", "instance", "process", "name", "spec", "lane", "candidate_groups", "assignee",
                         "state", "due", "created_at"}

    detail = client.get(f"/api/tasks/{task['id']}", headers=agent).get_json()
    assert detail["form"]["required"] == ["customer", "severity"]
    assert client.post(f"/api/tasks/{task['id']}/claim", headers=agent).get_json()["assignee"] == "agent"
    other = token_for(client, "agent2")
    assert client.post(f"/api/tasks/{task['id']}/claim", headers=other).status_code == 409

    bad = client.post(f"/api/tasks/{task['id']}/complete", json={"data": {"customer": "Z"}}, headers=agent)
    assert bad.status_code == 422
    assert {e["field"] for e in bad.get_json()["errors"]} == {"customer", "severity"}
    assert client.get(f"/api/instances/{case['id']}", headers=agent).get_json()["tasks"][0]["id"] == task["id"]

    done = client.post(f"/api/tasks/{task['id']}/complete", json={"data": REGISTER}, headers=agent)
    assert done.status_code == 200
    assert client.post(f"/api/tasks/{task['id']}/complete", json={"data": REGISTER}, headers=agent).status_code == 409

    fix = client.get("/api/tasks?scope=group", headers=tech).get_json()["tasks"]
    assert [t["spec"] for t in fix] == ["fix"]
    assert client.post(f"/api/tasks/{fix[0]['id']}/complete", json={"data": {"fixed": True, "parts": []}},
                       headers=agent).status_code == 403
    res = client.post(f"/api/tasks/{fix[0]['id']}/complete", json={"data": {"fixed": True, "parts": []}}, headers=tech)
    confirm = res.get_json()["tasks"][0]
    final = client.post(f"/api/tasks/{confirm['id']}/complete", json={"data": {}}, headers=boss).get_json()
    assert final["status"] == "completed"

    history = client.get(f"/api/instances/{case['id']}/history", headers=boss).get_json()["events"]
    assert {"seq", "type", "at", "actor", "task", "payload"} <= set(history[0])
    assert [e["actor"] for e in history if e["type"] == "task_completed"] == ["agent", "tech", "boss"]


def test_deploy_over_http(client: Any) -> None:
    owner, agent = token_for(client, "owner"), token_for(client, "agent")
    text = (SAMPLES / "sample.bpmn").read_text().replace('name="Fix product"', 'name="Repair"')
    data = {"files": [(io.BytesIO(text.encode()), "sample.bpmn")]}
    denied = client.post("/api/processes", data=data, headers=agent, content_type="multipart/form-data")
    assert denied.status_code == 403
    data = {"files": [(io.BytesIO(text.encode()), "sample.bpmn")]}
    res = client.post("/api/processes", data=data, headers=owner, content_type="multipart/form-data")
    assert res.status_code == 201 and res.get_json() == {"deployed": [{"key": "sample", "version": 2}]}
    listed = {p["key"]: p for p in client.get("/api/processes", headers=agent).get_json()["processes"]}
    assert listed["sample"]["version"] == 2 and {"key", "name", "version", "deployed_at"} <= set(listed["sample"])
    versions = client.get("/api/processes/sample", headers=agent).get_json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    xml = client.get("/api/processes/sample/bpmn?version=1", headers=agent)
    assert xml.status_code == 200 and b"Fix product" in xml.data and xml.mimetype == "application/xml"

    broken = text.replace('id="sample.notify"', 'id="nope"')
    res = client.post("/api/processes", data={"files": [(io.BytesIO(broken.encode()), "sample.bpmn")]},
                      headers=owner, content_type="multipart/form-data")
    assert res.status_code == 400
    err = res.get_json()["errors"][0]
    assert (err["file"], err["element"]) == ("sample.bpmn", "notify") and err["line"] > 0 and err["message"]


def test_auditor_reads_but_changes_nothing(client: Any) -> None:
    auditor, agent = token_for(client, "auditor"), token_for(client, "agent")
    case = client.post("/api/instances", json={"process": "sample"}, headers=agent).get_json()
    assert client.get(f"/api/instances/{case['id']}", headers=auditor).status_code == 200
    assert client.get("/api/tasks", headers=auditor).get_json()["tasks"]
    task_id = case["tasks"][0]["id"]
    assert client.post(f"/api/tasks/{task_id}/claim", headers=auditor).status_code == 403
    assert client.post(f"/api/tasks/{task_id}/complete", json={"data": REGISTER}, headers=auditor).status_code == 403
    assert client.post("/api/instances", json={"process": "sample"}, headers=auditor).status_code == 403
    assert client.post("/api/messages", json={"name": "x"}, headers=auditor).status_code == 403


def test_case_visibility(client: Any) -> None:
    agent, tech, nobody = token_for(client, "agent"), token_for(client, "tech"), token_for(client, "nobody")
    case = client.post("/api/instances", json={"process": "sample"}, headers=agent).get_json()
    assert client.get(f"/api/instances/{case['id']}", headers=agent).status_code == 200
    assert client.get(f"/api/instances/{case['id']}", headers=tech).status_code == 403
    assert client.get(f"/api/instances/{case['id']}/history", headers=nobody).status_code == 403
    assert client.get(f"/api/tasks/{case['tasks'][0]['id']}", headers=tech).status_code == 403


def test_messages_over_http(client: Any) -> None:
    agent = token_for(client, "agent")
    res = client.post("/api/messages", json={"name": "customer_reply", "correlation": {"ref": "none"}}, headers=agent)
    assert res.status_code == 202 and res.get_json() == {"delivered_to": []}
    assert client.post("/api/messages", json={"correlation": {}}, headers=agent).status_code == 422


def test_bad_input_gets_json_errors_not_html(client: Any) -> None:
    agent = token_for(client, "agent")
    checks = [
        client.post("/api/instances", data="{not json", headers={**agent, "Content-Type": "application/json"}),
        client.post("/api/instances", json=[1, 2], headers=agent),
        client.post("/api/instances", json={"process": "nope"}, headers=agent),
        client.post("/api/instances", json={"process": "sample", "data": "text"}, headers=agent),
        client.get("/api/tasks?scope=everything", headers=agent),
        client.get("/api/tasks?limit=abc", headers=agent),
        client.get("/api/instances/999999", headers=agent),
        client.get("/api/no/such/route", headers=agent),
        client.post(f"/api/tasks/{'0' * 36}/complete", json={"data": {}}, headers=agent),
        client.delete("/api/processes", headers=agent),
    ]
    statuses = [r.status_code for r in checks]
    assert statuses == [422, 422, 404, 422, 422, 422, 404, 404, 404, 405]
    for r in checks:
        assert r.is_json and r.get_json()["error"], r.data[:200]


def test_openapi_documents_every_route(client: Any, app: Any) -> None:
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    import re

    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {rule.rule} missing from OpenAPI"


def test_sample_folder_is_what_the_engine_fixture_deploys() -> None:
    assert (Path(SAMPLES) / "sample.bpmn").exists()
