"""Health check and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from conftest import token_for


def test_healthz_is_public(client: Any) -> None:
    res = client.get("/healthz")
    assert res.status_code == 200 and res.get_json() == {"status": "ok", "database": "ok"}


def test_metrics_count_commands_and_open_tasks(client: Any) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=token_for(client, "agent")).status_code == 403
    admin = token_for(client, "admin")
    client.post("/api/instances", json={"process": "waiting", "data": {"item": "x"}}, headers=admin)
    text = client.get("/metrics", headers=admin).get_data(as_text=True)
    values = {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines() if not line.startswith("#")}
    assert int(values["aftercare_commands_total"]) >= 1
    assert values["aftercare_open_tasks"] == "1"
    assert values['aftercare_cases{status="running"}'] == "1"
    assert int(values['aftercare_command_seconds_bucket{le="+Inf"}']) == int(values["aftercare_commands_total"])


def test_staff_notices_are_delivered_in_app(client: Any, app: Any) -> None:
    from engine.models import OutboxMessage
    from handlers.outbox import InAppSender, OutboxDispatcher

    db = app.extensions["aftercare"].db
    with db.write() as s:
        s.add(OutboxMessage(channel="staff", recipient="agent", subject="SLA breached", body="Case 7 is late"))
        s.add(OutboxMessage(channel="staff", recipient="boss", subject="not for agent", body="x"))
    report = OutboxDispatcher(db, {"staff": InAppSender()}).run_once()
    assert report.sent == 2 and report.failed == 0
    res = client.get("/api/notifications", headers=token_for(client, "agent"))
    assert res.status_code == 200
    [notice] = res.get_json()["notifications"]
    assert (notice["subject"], notice["delivered"]) == ("SLA breached", True)
    assert client.get("/api/notifications").status_code == 401
