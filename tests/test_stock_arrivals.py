"""The warehouse books procurement arrivals (REST API and the staff page), and the repair case
waiting for the parts moves on: stock goes up, history names the clerk, a second booking is
refused, and only warehouse staff and admins may book."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from domain_support import PASSWORD, STAFF, add_users, product_app
from sqlalchemy import func, select
from test_procedures import World, repair_waiting_for_parts, stock

from engine.models import CaseEvent
from handlers.models import ProcurementRequest


@pytest.fixture
def app(db_url: str) -> Iterator[Any]:
    application = product_app(db_url, "stock-test", AUDIT_SEAL_INTERVAL=0)
    yield application
    application.extensions["aftercare"].db.dispose()


@pytest.fixture
def world(app: Any) -> World:
    svc = app.extensions["aftercare"]
    return World(svc.db, svc.engine, add_users(svc.db, STAFF))


@pytest.fixture
def waiting(world: World) -> dict[str, Any]:
    """A repair not fixed on the first visit, waiting for one more four-way valve (as in test_procedures)."""
    case_id = repair_waiting_for_parts(world)
    case = world.case(case_id)
    assert case["status"] == "waiting" and stock(world, "P-VALVE-4W") == (1, 1)
    return {"case_id": case_id, "case_ref": case["data"]["case_ref"],
            "request_id": case["data"]["procurement"]["request_id"],
            "request_no": case["data"]["procurement"]["request_no"]}


def bearer(client: Any, user: str) -> dict[str, str]:
    res = client.post("/api/auth/token", json={"username": user, "password": PASSWORD})
    assert res.status_code == 200, res.get_json()
    return {"Authorization": f"Bearer {res.get_json()['token']}"}


def events(world: World, case_id: int) -> int:
    with world.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(CaseEvent).where(CaseEvent.case_id == case_id)))


def status_of(world: World, request_id: int) -> str:
    with world.db.read() as s:
        return s.get(ProcurementRequest, request_id).status


# --- REST API -----------------------------------------------------------------------------------


def test_warehouse_books_the_arrival_and_the_waiting_repair_moves_on(app: Any, world: World,
                                                                     waiting: dict[str, Any]) -> None:
    client = app.test_client()
    clerk = bearer(client, "warehouse")
    listed = client.get("/api/procurement", headers=clerk).get_json()["items"]
    mine = [r for r in listed if r["request_id"] == waiting["request_id"]]
    assert len(mine) == 1 and mine[0]["status"] == "open" and mine[0]["case_ref"] == waiting["case_ref"]
    assert mine[0]["case_id"] == waiting["case_id"] and mine[0]["request_no"] == waiting["request_no"]
    assert [(i["part"], i["quantity"]) for i in mine[0]["items"]] == [("P-VALVE-4W", 1)]
    assert mine[0]["created_at"] and mine[0]["received_at"] is None and mine[0]["location"] == "WH-SH"

    res = client.post(f"/api/procurement/{waiting['request_id']}/receive", headers=clerk)
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    assert body["delivered_to"] == [waiting["case_id"]]
    assert body["status"] == "received" and body["received_at"] and body["request_no"] == waiting["request_no"]
    # the case took stock_arrived: it reserved the arrived valve and opened the revisit
    assert world.open_specs(waiting["case_id"]) == ["agree_revisit"]
    assert stock(world, "P-VALVE-4W") == (2, 2)
    delivered = [e for e in world.history(waiting["case_id"]) if e["type"] == "message_delivered"]
    assert [(e["actor"], e["payload"]["name"]) for e in delivered] == [("warehouse", "stock_arrived")]

    assert waiting["request_id"] not in [r["request_id"] for r in
                                         client.get("/api/procurement", headers=clerk).get_json()["items"]]
    received = client.get("/api/procurement?status=received", headers=clerk).get_json()["items"]
    assert [r["request_id"] for r in received] == [waiting["request_id"]]
    everything = client.get("/api/procurement?status=all", headers=clerk).get_json()["items"]
    assert waiting["request_id"] in [r["request_id"] for r in everything]

    # booking twice is refused, names the request and changes nothing
    before = events(world, waiting["case_id"])
    again = client.post(f"/api/procurement/{waiting['request_id']}/receive", headers=clerk)
    assert again.status_code == 409
    assert waiting["request_no"] in again.get_json()["error"] and "already received" in again.get_json()["error"]
    assert stock(world, "P-VALVE-4W") == (2, 2) and events(world, waiting["case_id"]) == before
    assert world.open_specs(waiting["case_id"]) == ["agree_revisit"]


def test_only_warehouse_and_admin_book_and_others_change_nothing(app: Any, world: World,
                                                                  waiting: dict[str, Any]) -> None:
    client = app.test_client()
    url = f"/api/procurement/{waiting['request_id']}/receive"
    before = events(world, waiting["case_id"])
    for user in ("tech", "agent", "dispatcher", "supervisor", "auditor", "owner"):
        res = client.post(url, headers=bearer(client, user))
        assert res.status_code == 403, (user, res.get_json())
    assert client.post(url).status_code == 401
    assert status_of(world, waiting["request_id"]) == "open"
    assert stock(world, "P-VALVE-4W") == (1, 1) and events(world, waiting["case_id"]) == before
    assert world.case(waiting["case_id"])["status"] == "waiting"

    # reading: the warehouse lane, admins and supervisors
    for user, expected in (("warehouse", 200), ("admin", 200), ("supervisor", 200), ("tech", 403),
                           ("agent", 403), ("dispatcher", 403), ("auditor", 403)):
        assert client.get("/api/procurement", headers=bearer(client, user)).status_code == expected, user
    clerk = bearer(client, "warehouse")
    bad = client.get("/api/procurement?status=lost", headers=clerk)
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "status"
    missing = client.post("/api/procurement/987654/receive", headers=clerk)
    assert missing.status_code == 404 and "987654" in missing.get_json()["error"]

    # an admin may book as well
    res = client.post(url, headers=bearer(client, "admin"))
    assert res.status_code == 200 and res.get_json()["delivered_to"] == [waiting["case_id"]]


def test_the_operations_are_in_the_openapi_document(app: Any) -> None:
    paths = app.test_client().get("/api/openapi.json").get_json()["paths"]
    assert "get" in paths["/api/procurement"]
    assert "post" in paths["/api/procurement/{request_id}/receive"]


# --- the staff page -----------------------------------------------------------------------------


def csrf_of(page: str) -> str:
    m = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert m, "page has no csrf-token meta"
    return m.group(1)


def sign_in(client: Any, user: str) -> str:
    page = client.get("/login").get_data(as_text=True)
    res = client.post("/login", data={"username": user, "password": PASSWORD, "csrf_token": csrf_of(page)})
    assert res.status_code == 302, res.get_data(as_text=True)[:300]
    return csrf_of(client.get("/", follow_redirects=True).get_data(as_text=True))


def test_the_warehouse_books_an_arrival_on_the_stock_page(app: Any, world: World, waiting: dict[str, Any]) -> None:
    client = app.test_client()
    token = sign_in(client, "warehouse")
    client.get("/lang/en")  # Chinese is the default
    nav = re.search(r'<nav class="mainnav".*?</nav>', client.get("/").get_data(as_text=True), re.S)
    assert nav and 'href="/stock"' in nav.group(0)
    page = client.get("/stock").get_data(as_text=True)
    action = f'action="/stock/{waiting["request_id"]}/receive"'
    assert waiting["request_no"] in page and waiting["case_ref"] in page and action in page

    # no CSRF token, no booking
    assert client.post(f"/stock/{waiting['request_id']}/receive").status_code == 403
    assert status_of(world, waiting["request_id"]) == "open"

    res = client.post(f"/stock/{waiting['request_id']}/receive", data={"csrf_token": token})
    assert res.status_code == 302 and res.headers["Location"].endswith("/stock")
    page = client.get("/stock").get_data(as_text=True)
    assert "booked into stock" in page and action not in page
    received = re.search(r'<table class="grid compact" id="received-requests">.*?</table>', page, re.S)
    assert received and waiting["request_no"] in received.group(0)
    assert world.open_specs(waiting["case_id"]) == ["agree_revisit"] and stock(world, "P-VALVE-4W") == (2, 2)

    # pressing the button again (a stale page) is refused with a message, nothing changes
    before = events(world, waiting["case_id"])
    res = client.post(f"/stock/{waiting['request_id']}/receive", data={"csrf_token": token}, follow_redirects=True)
    assert res.status_code == 200 and "already received" in res.get_data(as_text=True)
    assert events(world, waiting["case_id"]) == before and stock(world, "P-VALVE-4W") == (2, 2)


def test_the_stock_page_in_chinese_and_for_other_roles(app: Any, waiting: dict[str, Any]) -> None:
    client = app.test_client()
    sign_in(client, "warehouse")
    client.get("/lang/zh")
    page = client.get("/stock").get_data(as_text=True)
    assert "备件到货" in page and "登记到货" in page

    boss = app.test_client()
    token = sign_in(boss, "supervisor")  # reads the list, books nothing
    page = boss.get("/stock").get_data(as_text=True)
    assert waiting["request_no"] in page and f"/stock/{waiting['request_id']}/receive" not in page
    assert boss.post(f"/stock/{waiting['request_id']}/receive", data={"csrf_token": token}).status_code == 403

    for user in ("tech", "agent", "auditor"):
        other = app.test_client()
        token = sign_in(other, user)
        assert other.get("/stock").status_code == 403, user
        assert other.post(f"/stock/{waiting['request_id']}/receive", data={"csrf_token": token}).status_code == 403
        nav = re.search(r'<nav class="mainnav".*?</nav>', other.get("/", follow_redirects=True).get_data(as_text=True),
                        re.S)
        assert nav is None or 'href="/stock"' not in nav.group(0), user
