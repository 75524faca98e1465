"""Access records: unmasked personal data viewed, cases exported, requests denied — who, when, what."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from conftest import token_for
from sqlalchemy import delete, update

from engine import SYSTEM, Actor, Database, Forbidden
from engine.audit import access, chain
from engine.models import AccessRecord


def records_of(client: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    res = client.get("/api/audit/access", headers=headers, query_string=params)
    assert res.status_code == 200, res.get_json()
    return res.get_json()["records"]


def test_denied_requests_are_recorded_with_who_when_and_what(client: Any) -> None:
    started = dt.datetime.now(dt.UTC)
    assert client.get("/api/instances/1").status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert client.post("/api/auth/token", json={"username": "agent", "password": "wrong password"}).status_code == 401
    agent, auditor = token_for(client, "agent"), token_for(client, "auditor")
    assert client.get("/api/audit/access", headers=agent).status_code == 403
    assert client.post("/api/instances", headers=auditor, json={"process": "waiting"}).status_code == 403
    case = client.post("/api/instances", headers=agent, json={"process": "waiting"}).get_json()
    assert client.post(f"/api/instances/{case['id']}/cancel", headers=agent, json={}).status_code == 403

    denied = records_of(client, auditor, action="denied")
    seen = {(r["actor"], r["what"]) for r in denied}
    assert {("anonymous", "GET /api/instances/1"), ("anonymous", "GET /api/me"),
            ("anonymous", "POST /api/auth/token"), ("agent", "GET /api/audit/access"),
            ("auditor", "POST /api/instances"), ("agent", f"POST /api/instances/{case['id']}/cancel")} <= seen
    login = next(r for r in denied if r["what"] == "POST /api/auth/token")
    assert login["detail"]["username"] == "agent" and login["detail"]["status"] == 401
    cancel = next(r for r in denied if r["actor"] == "agent" and r["what"].endswith("/cancel"))
    assert cancel["case"] == case["id"] and cancel["detail"]["status"] == 403
    assert "supervisor" in cancel["detail"]["reason"]
    for r in denied:
        assert started - dt.timedelta(seconds=1) <= dt.datetime.fromisoformat(r["at"]) <= dt.datetime.now(dt.UTC)
    assert [r["actor"] for r in records_of(client, auditor, action="denied", actor="agent")] == ["agent", "agent"]


def test_personal_data_views_and_exports_are_recorded(client: Any, app: Any) -> None:
    svc = app.extensions["aftercare"]
    agent, auditor, admin = token_for(client, "agent"), token_for(client, "auditor"), token_for(client, "admin")
    case = client.post("/api/instances", headers=agent, json={"process": "waiting", "data": {"phone": "13800138000"}})
    cid = case.get_json()["id"]
    assert case.get_json()["data"]["phone"] == "13800138000"  # the hotline's work needs it: shown, recorded
    # An auditor's work does not need the phone number: masked as on the time-travel page, nothing recorded.
    state = client.get(f"/api/instances/{cid}/at/1", headers=auditor).get_json()
    assert next(t for t in state["tasks"] if t["element"] == "ask")["data"]["phone"] == "138****8000"
    state = client.get(f"/api/instances/{cid}/at/1", headers=admin).get_json()
    assert next(t for t in state["tasks"] if t["element"] == "ask")["data"]["phone"] == "13800138000"
    assert client.get(f"/api/instances/{cid}/export", headers=auditor).status_code == 200
    # Other parts of the application record what they show, in their own transaction.
    with svc.db.write() as s:
        access.record_access(s, Actor("agent", frozenset({"hotline"})), "customer 7: phone, address", case_id=cid,
                             detail={"customer": 7, "fields": ["phone", "address"]})

    mine = records_of(client, admin, case=cid)
    assert [(r["actor"], r["action"], r["what"]) for r in mine] == [
        ("agent", "view_personal_data", "customer 7: phone, address"),
        ("auditor", "export", f"export of case {cid}"),
        ("admin", "view_personal_data",
         f"case {cid} as of event 1: data.phone, events.0.payload.data.phone, tasks.1.data.phone"),
        ("agent", "view_personal_data", f"case {cid} (started): data.phone"),
    ]
    assert mine[1]["detail"]["events"] >= 2 and len(mine[1]["detail"]["bundle_sha256"]) == 64
    assert [r["what"] for r in records_of(client, auditor, case=cid, action="export")] == [f"export of case {cid}"]
    assert len(records_of(client, auditor, case=cid, limit=1)) == 1
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert records_of(client, auditor, case=cid, since=future) == []
    assert len(records_of(client, auditor, case=cid, until=future)) == 4
    assert client.get("/api/audit/access?action=nonsense", headers=auditor).status_code == 422
    assert client.get("/api/audit/access?since=yesterday", headers=auditor).status_code == 422


def test_access_records_are_sealed_and_tamper_evident(db: Database) -> None:
    with db.write() as s:
        for i in range(3):
            access.record_access(s, f"user{i}", f"customer {i}: phone", case_id=None, detail={"i": i})
    with db.read() as s:
        with pytest.raises(Forbidden):
            access.list_access(s, Actor("agent", frozenset({"hotline"})))
        assert access.list_access(s, SYSTEM)["total"] == 3
    assert chain.seal(db)["access"] == 3
    with db.write() as s:
        access.record_access(s, "user9", "customer 9: address")
    report = chain.verify_all(db)
    assert report["ok"] and report["access_records"] == 4

    with db.write() as s:
        s.execute(update(AccessRecord).where(AccessRecord.actor == "user1").values(actor="someone else"))
    report = chain.verify_all(db)
    assert not report["ok"] and report["problem"]["chain"] == "access" and "edited" in report["problem"]["reason"]
    with db.write() as s:
        s.execute(update(AccessRecord).where(AccessRecord.actor == "someone else").values(actor="user1"))
        s.execute(delete(AccessRecord).where(AccessRecord.actor == "user2"))
    report = chain.verify_all(db)
    assert not report["ok"] and report["problem"]["chain"] == "access"
    assert "missing" in report["problem"]["reason"] or "head" in report["problem"]["reason"]
