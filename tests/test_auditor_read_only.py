"""Auditors change nothing: every state-changing API operation answers 403 to them."""

from __future__ import annotations

import io
import re
from typing import Any

from conftest import token_for
from sqlalchemy import func, select

from engine.models import AccessRecord, Case, CaseEvent, OpenTask, ProcessVersion
from web.openapi import OPERATIONS


def _counts(app: Any) -> dict[str, int]:
    with app.extensions["aftercare"].db.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (Case, CaseEvent, OpenTask, ProcessVersion)}


def _url(rule: str, values: dict[str, str]) -> str:
    def fill(m: re.Match[str]) -> str:
        name = m.group(2)
        return values.get(name, "2026" if m.group(1) == "int" else "sample")

    return re.sub(r"<(?:(\w+):)?(\w+)>", fill, rule)


def test_every_mutating_operation_refuses_auditors(client: Any, app: Any) -> None:
    agent = token_for(client, "agent")
    case = client.post("/api/instances", headers=agent, json={"process": "waiting"}).get_json()
    values = {"case_id": str(case["id"]), "task_id": case["tasks"][0]["id"], "key": "sample", "name": "sample"}
    auditor = token_for(client, "auditor")
    before = _counts(app)

    mutating = [op for op in OPERATIONS if op.method not in ("GET", "HEAD", "OPTIONS")]
    public = [op for op in mutating if not op.auth]
    assert ("POST", "/api/auth/token") in {(op.method, op.rule) for op in public}
    walked = []
    for op in mutating:
        if not op.auth:  # public by design (login, customer intake): no account is involved
            continue
        if (op.method, op.rule) == ("DELETE", "/api/auth/token"):  # signing out changes no data
            continue
        url = _url(op.rule, values)
        if op.multipart:
            res = client.open(url, method=op.method, headers=auditor,
                              data={"files": (io.BytesIO(b"<x/>"), "x.bpmn")}, content_type="multipart/form-data")
        else:
            res = client.open(url, method=op.method, headers=auditor,
                              json={"process": "sample", "name": "customer_reply", "data": {}, "reason": "audit",
                                    "assignee": "auditor", "target": "PT1H", "holidays": [], "makeup_days": []})
        assert res.status_code == 403, (op.method, url, res.status_code, res.get_json())
        walked.append(f"{op.method} {url}")
    assert len(walked) >= 10
    assert _counts(app) == before

    with app.extensions["aftercare"].db.read() as s:
        denied = set(s.scalars(select(AccessRecord.what).where(AccessRecord.actor == "auditor",
                                                               AccessRecord.action == "denied")))
    assert denied == set(walked)

    # Reading stays open to them.
    assert client.get(f"/api/instances/{case['id']}", headers=auditor).status_code == 200
    assert client.get(f"/api/instances/{case['id']}/history", headers=auditor).status_code == 200


def test_the_guard_also_covers_a_route_that_forgets_to_check(app: Any, users: dict[str, Any]) -> None:
    changed: list[str] = []

    def careless() -> tuple[str, int]:
        from web.auth import current_actor

        changed.append(current_actor().username)
        return "", 204

    app.add_url_rule("/api/careless-change", "careless_change", careless, methods=["POST"])
    client = app.test_client()
    assert client.post("/api/careless-change", headers=token_for(client, "auditor")).status_code == 403
    assert client.post("/api/careless-change", headers=token_for(client, "agent")).status_code == 204
    assert changed == ["agent"]
