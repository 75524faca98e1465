"""Auditors step through a case event by event with the diagram marked."""

from __future__ import annotations

import json
import re
from typing import Any

from conftest import PASSWORD

MARKERS = re.compile(r'<script type="application/json" id="case-markers">(.*?)</script>', re.S)


def markers_of(html: str) -> dict[str, list[str]]:
    return json.loads(MARKERS.search(html).group(1))


def sign_in(client: Any, username: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    res = client.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
    assert res.status_code in (302, 303)


def test_auditor_steps_through_a_case(client: Any, app: Any, users: dict[str, Any]) -> None:
    engine = app.extensions["aftercare"].engine
    case = engine.start_case("sample", {}, users["agent"])
    engine.complete_task(case["tasks"][0]["id"], {"customer": "Zhou Min", "severity": "low"}, users["agent"])
    events = engine.history(case["id"], users["auditor"])
    completed_at = next(e["seq"] for e in events if e["type"] == "task_completed")
    sign_in(client, "auditor")

    first = client.get(f"/instances/{case['id']}/at/2")
    assert first.status_code == 200
    html = first.get_data(as_text=True)
    markers = markers_of(html)
    assert markers["active"] == ["register"] and "fix" not in markers["completed"]
    assert 'id="step-next"' in html and 'id="step-prev"' in html

    after = client.get(f"/instances/{case['id']}/at/{completed_at}").get_data(as_text=True)
    markers = markers_of(after)
    assert "register" in markers["completed"]
    assert "<code>customer</code>" in after  # the data diff of the completion
    # In the staff's language: event names, the case status and the kind of each change.
    client.get("/lang/zh?next=/")
    zh = client.get(f"/instances/{case['id']}/at/{completed_at}").get_data(as_text=True)
    assert "工单创建" in zh and "任务完成" in zh and "<td>新增</td>" in zh
    assert "task_completed" not in zh and "case_started" not in zh and ">running<" not in zh
    client.get("/lang/en?next=/")

    last = events[-1]["seq"]
    end = client.get(f"/instances/{case['id']}/at/{last}").get_data(as_text=True)
    markers = markers_of(end)
    assert markers["active"] == ["fix"] and 'id="step-next"' not in end
    assert client.get(f"/instances/{case['id']}/at/{last + 1}").status_code == 404


def test_step_through_respects_case_visibility(client: Any, app: Any, users: dict[str, Any]) -> None:
    engine = app.extensions["aftercare"].engine
    case = engine.start_case("sample", {}, users["agent"])
    sign_in(client, "tech")
    assert client.get(f"/instances/{case['id']}/at/1").status_code == 403
