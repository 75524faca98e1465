"""Requests a careless or hostile client sends: each gets a clear 4xx naming what is wrong and
changes nothing; a staff member cannot speak for the customer in cases they may not read."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from conftest import token_for

from engine import SYSTEM
from engine.forms import MAX_DEPTH


def _waiting_case(client: Any, ref: str) -> dict[str, Any]:
    """A case of the test ``waiting`` process, waiting for the customer's reply (started by the system)."""
    svc = client.application.extensions["aftercare"]
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    case = svc.engine.start_case("waiting", {"ref": ref, "item": "P-1", "deadline": deadline}, SYSTEM)
    case = svc.engine.complete_task(case["tasks"][0]["id"], {}, SYSTEM)
    assert case["status"] == "waiting"
    return case


def _fields(res: Any) -> set[str]:
    return {e["field"] for e in res.get_json().get("errors", [])}


def test_a_message_reaches_only_cases_the_sender_may_read(client: Any, calls: Any) -> None:
    calls.fail = False  # the test process's stock check answers
    svc = client.application.extensions["aftercare"]
    case = _waiting_case(client, "R-hostile")
    tech, boss = token_for(client, "tech"), token_for(client, "boss")
    # The technician has nothing to do with this hotline case: named by correlation it is not
    # reached, named by id the answer is 403; the case still waits, its history unchanged.
    res = client.post("/api/messages", headers=tech,
                      json={"name": "customer_reply", "correlation": {"ref": "R-hostile"}, "payload": {"reply": "x"}})
    assert res.status_code == 202 and res.get_json() == {"delivered_to": []}
    res = client.post("/api/messages", headers=tech,
                      json={"name": "customer_reply", "correlation": {"instance": case["id"]}})
    assert res.status_code == 403
    assert svc.engine.get_case(case["id"], SYSTEM)["status"] == "waiting"
    assert "reply" not in svc.engine.get_case(case["id"], SYSTEM)["data"]
    # The supervisor reads every case: the reply they record reaches it.
    res = client.post("/api/messages", headers=boss, json={
        "name": "customer_reply", "correlation": {"instance": case["id"]}, "payload": {"reply": "ok"}})
    assert res.status_code == 202 and res.get_json() == {"delivered_to": [case["id"]]}
    assert svc.engine.get_case(case["id"], SYSTEM)["data"]["reply"] == "ok"


def test_a_message_naming_a_case_by_something_other_than_its_id_is_refused(client: Any) -> None:
    boss = token_for(client, "boss")
    for instance in ("abc", None, [1], 99999999999999999999999, 1.5, True, -3):
        res = client.post("/api/messages", headers=boss,
                          json={"name": "customer_reply", "correlation": {"instance": instance}})
        assert res.status_code == 422, (instance, res.get_json())
        assert _fields(res) == {"correlation.instance"}


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


def test_data_nested_too_deeply_is_refused(client: Any) -> None:
    agent = token_for(client, "agent")
    svc = client.application.extensions["aftercare"]
    fine = client.post("/api/instances", headers=agent,
                       json={"process": "sample", "data": {"d": _nested(MAX_DEPTH - 2)}})
    assert fine.status_code == 201, fine.get_json()
    before = len(svc.engine.list_tasks(SYSTEM))
    for depth in (MAX_DEPTH + 1, 500, 5000, 100_000):
        text = '{"process": "sample", "data": {"d": ' + "[" * depth + '"deep"' + "]" * depth + "}}"
        res = client.post("/api/instances", headers={**agent, "Content-Type": "application/json"}, data=text)
        assert res.status_code == 422, depth
        if depth <= 500:
            assert _fields(res) == {"data.d" + ".0" * (MAX_DEPTH - 1)}
            assert "levels deep" in res.get_json()["errors"][0]["message"]
        else:  # deeper than the JSON parser itself reads: the body is named
            assert _fields(res) == {"(body)"} and "nested too deeply" in res.get_json()["error"]
    assert len(svc.engine.list_tasks(SYSTEM)) == before
    # The same rule for completions, drafts and messages.
    task = fine.get_json()["tasks"][0]["id"]
    res = client.post(f"/api/tasks/{task}/draft", headers=agent, json={"data": {"d": _nested(MAX_DEPTH + 5)}})
    assert res.status_code == 422
    res = client.post(f"/api/tasks/{task}/complete", headers=agent, json={"data": {"d": _nested(MAX_DEPTH + 5)}})
    assert res.status_code == 422
    res = client.post("/api/messages", headers=agent,
                      json={"name": "customer_reply", "correlation": {}, "payload": {"d": _nested(MAX_DEPTH + 5)}})
    assert res.status_code == 422 and _fields(res) == {"payload.d" + ".0" * (MAX_DEPTH - 1)}


def test_json_sent_as_something_else_is_named(client: Any) -> None:
    agent = token_for(client, "agent")
    res = client.post("/api/instances", headers={**agent, "Content-Type": "text/plain"},
                      data=json.dumps({"process": "sample"}))
    assert res.status_code == 422 and _fields(res) == {"Content-Type"}


def test_tasks_are_assigned_only_to_active_staff_who_may_work_them(client: Any) -> None:
    agent, boss = token_for(client, "agent"), token_for(client, "boss")
    case = client.post("/api/instances", headers=agent, json={"process": "sample"}).get_json()
    task = case["tasks"][0]["id"]  # in the hotline lane
    for who, message in (("nosuchuser", "unknown or disabled user"), ("auditor", "read-only user"),
                         ("tech", "not a member of hotline")):
        res = client.post(f"/api/tasks/{task}/assign", headers=boss, json={"assignee": who})
        assert res.status_code == 422, (who, res.get_json())
        assert _fields(res) == {"assignee"} and message in res.get_json()["errors"][0]["message"]
    assert client.get(f"/api/tasks/{task}", headers=boss).get_json()["assignee"] is None
    for who in ("agent2", "boss", None):  # the lane's members, a supervisor, or back to the group
        res = client.post(f"/api/tasks/{task}/assign", headers=boss, json={"assignee": who})
        assert res.status_code == 200 and res.get_json()["assignee"] == who


def test_a_case_is_cancelled_only_with_a_reason(client: Any) -> None:
    agent, boss = token_for(client, "agent"), token_for(client, "boss")
    case = client.post("/api/instances", headers=agent, json={"process": "sample"}).get_json()
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": {"a": 1}}):
        res = client.post(f"/api/instances/{case['id']}/cancel", headers=boss, json=body)
        assert res.status_code == 422 and _fields(res) == {"reason"}, body
    assert client.get(f"/api/instances/{case['id']}", headers=boss).get_json()["status"] == "running"
    res = client.post(f"/api/instances/{case['id']}/cancel", headers=boss, json={"reason": " duplicate "})
    assert res.status_code == 200 and res.get_json()["status"] == "cancelled"
    history = client.get(f"/api/instances/{case['id']}/history", headers=boss).get_json()
    assert history["events"][-1]["payload"]["reason"] == "duplicate"


def test_report_periods_out_of_range_are_named(client: Any) -> None:
    admin = token_for(client, "admin")
    res = client.get("/api/reports/kpis?from=0001-01&to=9999-12", headers=admin)
    assert res.status_code == 422 and _fields(res) == {"from"}
    res = client.get("/api/reports/kpis?from=2026-01&to=9999-12", headers=admin)
    assert res.status_code == 422 and _fields(res) == {"to"}
    assert client.get("/api/reports/kpis?from=2026-01&to=2026-03", headers=admin).status_code == 200


def test_sla_targets_and_calendar_years_out_of_range_are_refused(client: Any) -> None:
    owner = token_for(client, "owner")
    for target in ("P99999999Y", "PT99999999999999999H", "P11Y"):
        res = client.put("/api/sla/policies/too_long", headers=owner, json={"target": target})
        assert res.status_code == 422 and _fields(res) == {"target"}, target
    assert client.get("/api/sla/policies/too_long", headers=owner).status_code == 404
    res = client.put("/api/sla/policies/too_long", headers=owner, json={
        "target": "PT4H", "escalation": [{"after": "P20Y", "action": "notify_group", "group": "supervisor"}]})
    assert res.status_code == 422 and _fields(res) == {"escalation[0].after"}
    assert client.put("/api/sla/policies/fine", headers=owner, json={"target": "P10Y"}).status_code == 201
    for year in (99999, 1):
        res = client.put(f"/api/sla/calendars/china/years/{year}", headers=owner,
                         json={"holidays": [], "makeup_days": []})
        assert res.status_code == 422 and _fields(res) == {"year"}, year


def test_staff_complete_a_task_with_the_fields_of_its_form_only(client: Any) -> None:
    """A completion writes its fields into the case data; one the form does not have would
    overwrite data nobody asked for, such as the case reference."""
    agent = token_for(client, "agent")
    case = client.post("/api/instances", headers=agent, json={"process": "sample", "data": {"case_ref": "R-1"}})
    case = case.get_json()
    task = case["tasks"][0]["id"]
    form = {"customer": "Wang Fang", "severity": "low"}
    res = client.post(f"/api/tasks/{task}/complete", headers=agent,
                      json={"data": {**form, "case_ref": "FAKE", "__class__": 1}})
    assert res.status_code == 422 and _fields(res) == {"case_ref", "__class__"}
    assert res.get_json()["errors"][0]["message"] == "not a field of this form"
    after = client.get(f"/api/instances/{case['id']}", headers=agent).get_json()
    assert after["data"]["case_ref"] == "R-1" and [t["id"] for t in after["tasks"]] == [task]
    res = client.post(f"/api/tasks/{task}/complete", headers=agent, json={"data": form})
    assert res.status_code == 200 and res.get_json()["data"]["case_ref"] == "R-1"
