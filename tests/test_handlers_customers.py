"""Customer find-or-create at intake, masking, and /api/customers with access records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from domain_support import PASSWORD, add_users, context, make_case
from sqlalchemy import select

from engine import Database, InvalidInput
from engine.models import AccessRecord
from handlers.customers import find_or_create, mask_address, mask_email, mask_phone, normalize_phone
from handlers.models import CaseReference, Customer, CustomerProduct
from handlers.references import new_reference

NOW = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)


def test_phone_numbers_are_compared_by_their_digits() -> None:
    assert normalize_phone("+86 139-1234-5678") == normalize_phone("0086 13912345678") == "13912345678"
    assert normalize_phone("(021) 6888 1234") == "02168881234"
    assert mask_phone("13912345678") == "139****5678" and mask_phone("123") == "***"
    assert mask_address("上海市浦东新区张杨路500号3栋1201室") == "上海市浦东新****"
    assert mask_email("li.na@example.com") == "l***@example.com"


def test_find_or_create_matches_by_phone_and_adds_products_once(db: Database) -> None:
    with db.write() as s:
        case_id = make_case(s)
        ref = new_reference(s, "dispatch", NOW, case_id)
        ctx = context(s, case_id, {"region": "上海"}, now=NOW)
        first = find_or_create(ctx, {"name": "王秀英", "phone": "139-1234-5678", "gender": "female"},
                               [{"model": "KFR-35GW/N1", "serial_number": "SN1", "purchase_date": "2025-06-01"}])
        again = find_or_create(ctx, {"name": "王秀英", "phone": "+86 13912345678", "email": "w@example.com",
                                     "address": "上海市浦东新区"},
                               [{"model": "KFR-35GW/N1", "serial_number": "SN1"}, {"model": "KFR-72LW/N2"}])
        order = find_or_create(ctx, {"name": "王秀英", "phone": "13912345678"},
                               [{"product_model": "KFR-26GW/N1", "quantity": 1}])
        with pytest.raises(InvalidInput):
            find_or_create(ctx, {"name": "无电话"}, [])
    assert first["is_new"] is True and again["is_new"] is False and again["customer_id"] == first["customer_id"]
    assert (first["products_added"], again["products_added"], order["products_added"]) == (1, 1, 1)
    with db.read() as s:
        customer = s.get(Customer, first["customer_id"])
        assert (customer.phone, customer.email, customer.address, customer.gender) == (
            "13912345678", "w@example.com", "上海市浦东新区", "female")
        products = s.scalars(select(CustomerProduct).order_by(CustomerProduct.id)).all()
        assert [(p.model, p.serial, p.region) for p in products] == [
            ("KFR-35GW/N1", "SN1", "上海"), ("KFR-72LW/N2", "", "上海"), ("KFR-26GW/N1", "", "上海")]
        assert products[0].purchase_date == dt.date(2025, 6, 1)
        assert products[2].purchase_date == dt.date(2026, 3, 2)  # ordered today (China time)
        assert s.get(CaseReference, ref).customer_id == customer.id  # the case shows up in the customer's history


# --- /api/customers ------------------------------------------------------------------------------


@pytest.fixture
def api(db_url: str) -> Iterator[tuple[Any, Database, int]]:
    from app import create_app

    application = create_app({"DATABASE_URL": db_url, "SECRET_KEY": "test-secret", "TESTING": True,
                              "SCHEDULER": "off"})
    svc = application.extensions["aftercare"]
    add_users(svc.db, {"agent": ["hotline"], "tech": ["technician"], "sales": ["sales"], "auditor": ["auditor"]})
    with svc.db.write() as s:
        customer = Customer(name="王秀英", phone="13912345678", email="w@example.com",
                            address="上海市浦东新区张杨路500号3栋1201室")
        s.add_all([customer, Customer(name="李娜", phone="13800002222", address="北京市朝阳区")])
        s.flush()
        s.add(CustomerProduct(customer_id=customer.id, model="KFR-35GW/N1", serial="SN1", region="上海"))
        case_id = make_case(s, status="running")
        s.add(CaseReference(ref="REP-2026-000009", procedure="dispatch", case_id=case_id, customer_id=customer.id))
        customer_id = customer.id
    yield application.test_client(), svc.db, customer_id
    svc.db.dispose()


def _login(client: Any, username: str) -> dict[str, str]:
    res = client.post("/api/auth/token", json={"username": username, "password": PASSWORD})
    assert res.status_code == 200, res.get_json()
    return {"Authorization": f"Bearer {res.get_json()['token']}"}


def _views(db: Database) -> list[AccessRecord]:
    with db.read() as s:
        return list(s.scalars(select(AccessRecord).where(AccessRecord.action == "view_personal_data")
                              .order_by(AccessRecord.id)))


def test_roles_that_need_contact_details_see_them_and_every_view_is_recorded(api: tuple[Any, Database, int]) -> None:
    client, db, customer_id = api
    agent = _login(client, "agent")
    listing = client.get("/api/customers?q=139", headers=agent).get_json()
    assert listing["masked"] is False and listing["total"] == 1
    assert listing["items"][0]["phone"] == "13912345678"
    detail = client.get(f"/api/customers/{customer_id}", headers=_login(client, "tech")).get_json()
    assert detail["address"] == "上海市浦东新区张杨路500号3栋1201室" and detail["products"][0]["serial"] == "SN1"
    assert detail["cases"] == [{"case_ref": "REP-2026-000009", "procedure": "dispatch", "case_id": detail["cases"][0][
        "case_id"], "status": "running", "created_at": detail["cases"][0]["created_at"]}]
    views = _views(db)
    assert [(v.actor, v.detail["customer_id"]) for v in views] == [("agent", customer_id), ("tech", customer_id)]
    assert views[0].what == f"customer {customer_id}: phone, email, address"


@pytest.mark.parametrize("role", ["sales", "auditor"])
def test_other_roles_see_masked_details_and_leave_no_access_record(api: tuple[Any, Database, int], role: str) -> None:
    client, db, customer_id = api
    headers = _login(client, role)
    listing = client.get("/api/customers", headers=headers).get_json()
    assert listing["masked"] is True and listing["total"] == 2
    detail = client.get(f"/api/customers/{customer_id}", headers=headers).get_json()
    assert (detail["phone"], detail["email"], detail["address"]) == ("139****5678", "w***@example.com",
                                                                     "上海市浦东新****")
    assert _views(db) == []
    # Phone digits find nobody for them (a match would tell whose number it is); names still do.
    assert client.get("/api/customers?q=13912345678", headers=headers).get_json()["total"] == 0
    assert client.get("/api/customers?q=王秀英", headers=headers).get_json()["total"] == 1
    assert client.get("/api/customers/999999", headers=headers).status_code == 404
    assert client.get("/api/customers").status_code == 401
