"""Compensation and invoice records; affected-customer search for emergencies."""

from __future__ import annotations

import datetime as dt

import pytest
from domain_support import context, load_demo, make_case
from sqlalchemy import select

from engine import Database, InvalidInput
from handlers.compensation import record as record_compensation
from handlers.emergency import find_affected
from handlers.invoices import record as record_invoice
from handlers.models import Compensation, Customer, CustomerProduct, Invoice


def test_compensation_is_recorded_in_fen_with_who_granted_it(db: Database) -> None:
    with db.write() as s:
        customer = Customer(name="赵敏", phone="13600000001")
        s.add(customer)
        s.flush()
        got = record_compensation(context(s, actor="care"), customer_id=str(customer.id), case_ref="CMP-2026-000001",
                                  compensation_type="voucher", amount=0.1 + 0.2, reason="维修延误")
        for bad in ({"compensation_type": "gold"}, {"amount": -5}, {"amount": "abc"}):
            with pytest.raises(InvalidInput):
                record_compensation(context(s), **{"customer_id": customer.id, "case_ref": "CMP-1",
                                                   "compensation_type": "cash", "amount": 1, "reason": "", **bad})
    assert got["amount"] == "0.30" and got["granted_by"] == "care"
    with db.read() as s:
        row = s.scalars(select(Compensation)).one()
        assert (row.amount_cents, row.customer_id, row.reason) == (30, customer.id, "维修延误")


def test_one_invoice_per_case_and_order_with_its_own_number(db: Database) -> None:
    now = dt.datetime(2026, 3, 21, 3, 0, tzinfo=dt.UTC)
    params = {"order_no": "SO-1", "customer_id": None, "amount": 8999, "payment_method": "alipay",
              "invoice_type": "e_invoice", "invoice_title": "王秀英", "case_ref": "INS-2026-000001"}
    with db.write() as s:
        first = record_invoice(context(s, now=now), **params)
        again = record_invoice(context(s, now=now), **params)
        other = record_invoice(context(s, now=now), **{**params, "case_ref": "INS-2026-000002"})
    assert first == again and first["invoice_no"] == "INV-2026-000001" and first["amount"] == "8999.00"
    assert other["invoice_no"] == "INV-2026-000002"
    with db.read() as s:
        assert len(s.scalars(select(Invoice)).all()) == 2


def test_affected_customers_by_model_batch_and_region(db: Database) -> None:
    load_demo(db, ("customers",))
    with db.read() as s:
        expected = {c for (c,) in s.execute(select(CustomerProduct.customer_id).where(
            CustomerProduct.model == "KFR-35GW/N1", CustomerProduct.batch == "B2409"))}
        in_beijing = {c for (c,) in s.execute(select(CustomerProduct.customer_id).where(
            CustomerProduct.model == "KFR-35GW/N1", CustomerProduct.batch == "B2409",
            CustomerProduct.region == "北京"))}
    assert expected and in_beijing and in_beijing < expected
    with db.write() as s:
        ctx = context(s, make_case(s))
        recall = find_affected(ctx, "product_quality", ["KFR-35GW/N1"], ["B2409"], [], "EMG-1")
        beijing = find_affected(ctx, "product_quality", ["KFR-35GW/N1"], ["B2409"], ["北京"], "EMG-1")
        storm = find_affected(ctx, "natural_disaster", [], [], ["广州"], "EMG-2")
        with pytest.raises(InvalidInput):
            find_affected(ctx, "public_health", [], [], [], "EMG-3")
    assert {int(k) for k in recall} == expected and {int(k) for k in beijing} == in_beijing
    one = next(iter(recall.values()))
    assert set(one) == {"customer_id", "name", "phone", "products"} and "****" in one["phone"]
    assert all(p["model"] == "KFR-35GW/N1" and p["batch"] == "B2409" for p in one["products"])
    with db.read() as s:
        guangzhou = {c for (c,) in s.execute(select(CustomerProduct.customer_id).where(
            CustomerProduct.region == "广州"))}
    assert {int(k) for k in storm} == guangzhou
