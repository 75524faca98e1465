"""Parts: reserve, consume, release; stock never negative, even under concurrent commands;
procurement below reorder level and for what a case is missing."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from domain_support import context, load_demo
from sqlalchemy import select, text

from engine import Database, InvalidInput
from handlers.models import PartReservation, ProcurementRequest, Stock
from handlers.parts import (
    StockShortage,
    check_stock,
    consume,
    receive,
    release,
    request_procurement,
    reserve,
)

NOW = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def stock_db(db: Database) -> Database:
    load_demo(db, ("parts",))
    return db


def level(db: Database, part: str, location: str = "WH-SH") -> tuple[int, int]:
    with db.read() as s:
        row = s.get(Stock, (part, location))
        return row.on_hand, row.reserved


def call(db: Database, fn: Any, data: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    with db.write() as s:
        return fn(context(s, None, data or {"region": "上海"}, now=NOW), **params)


def test_reserve_consume_release_keep_stock_and_reservations_consistent(stock_db: Database) -> None:
    res = call(stock_db, reserve, items=[{"part": "P-CAP-35", "quantity": 2}], case_ref="REP-1", technician_id="tech")
    assert res["all_reserved"] is True and res["missing"] == [] and res["reservation_id"] == "REP-1"
    assert level(stock_db, "P-CAP-35") == (40, 2)
    # Running the step again (a retry, or the revisit loop) reserves nothing more.
    call(stock_db, reserve, items=[{"part": "P-CAP-35", "quantity": 2}], case_ref="REP-1")
    assert level(stock_db, "P-CAP-35") == (40, 2)
    used = call(stock_db, consume, items=[{"part": "P-CAP-35", "quantity": 1}], case_ref="REP-1")
    assert used["consumed"] == [{"part": "P-CAP-35", "location": "WH-SH", "quantity": 1, "from": "reservation"}]
    assert level(stock_db, "P-CAP-35") == (39, 1)
    back = call(stock_db, release, case_ref="REP-1", reason="repair_completed")
    assert back["released"] == [{"part": "P-CAP-35", "location": "WH-SH", "quantity": 1}]
    assert level(stock_db, "P-CAP-35") == (39, 0)
    with stock_db.read() as s:
        rows = s.scalars(select(PartReservation).where(PartReservation.case_ref == "REP-1")
                         .order_by(PartReservation.id)).all()
        assert [(r.quantity, r.status) for r in rows] == [(1, "released"), (1, "consumed")]


def test_the_technicians_region_is_served_first_then_other_warehouses(stock_db: Database) -> None:
    res = call(stock_db, reserve, {"region": "北京市海淀区"}, items=[{"part": "P-COMP-35", "quantity": 3}],
               case_ref="REP-2")
    assert res["reserved"] == [{"part": "P-COMP-35", "location": "WH-BJ", "quantity": 2},
                               {"part": "P-COMP-35", "location": "WH-SH", "quantity": 1}]
    assert level(stock_db, "P-COMP-35", "WH-BJ") == (2, 2) and level(stock_db, "P-COMP-35", "WH-SH") == (6, 1)


def test_missing_parts_are_reported_and_procured(stock_db: Database) -> None:
    res = call(stock_db, reserve, items=[{"part": "P-VALVE-4W", "quantity": 3}, {"part": "P-NEW-1", "quantity": 1,
                                                                                 "part_name": "新型号阀门"}],
               case_ref="REP-3")
    assert res["all_reserved"] is False
    assert res["missing"] == [{"part": "P-VALVE-4W", "part_name": "", "quantity": 2},
                              {"part": "P-NEW-1", "part_name": "新型号阀门", "quantity": 1}]
    assert level(stock_db, "P-VALVE-4W") == (1, 1)
    order = call(stock_db, request_procurement, items=res["missing"], case_ref="REP-3", reason="repair")
    assert order["request_no"].startswith("PR-2026-") and order["location"] == "WH-SH"
    assert order["expected_date"] == "2026-03-16"  # the four-way valve takes 14 days
    again = call(stock_db, request_procurement, items=res["missing"], case_ref="REP-3", reason="repair")
    assert again["request_id"] == order["request_id"]  # a retried step raises no second order
    with stock_db.write() as s:
        receive(s, order["request_id"], NOW)
        with pytest.raises(InvalidInput):
            receive(s, order["request_id"], NOW)
    assert level(stock_db, "P-VALVE-4W") == (3, 1) and level(stock_db, "P-NEW-1") == (1, 0)
    res = call(stock_db, reserve, items=[{"part": "P-VALVE-4W", "quantity": 3}, {"part": "P-NEW-1", "quantity": 1}],
               case_ref="REP-3")
    assert res["all_reserved"] is True and level(stock_db, "P-VALVE-4W") == (3, 3)


def test_stock_below_reorder_level_raises_one_procurement_request(stock_db: Database) -> None:
    call(stock_db, reserve, items=[{"part": "P-SENS-T", "quantity": 20}], case_ref="REP-4")  # 30 - 20 = 10: at level
    with stock_db.read() as s:
        assert not s.scalars(select(ProcurementRequest)).all()
    first = call(stock_db, reserve, items=[{"part": "P-SENS-T", "quantity": 1}], case_ref="REP-5")
    second = call(stock_db, consume, items=[{"part": "P-SENS-T", "quantity": 2}], case_ref="REP-6")
    assert len(first["reorder_requests"]) == 1 and second["reorder_requests"] == []  # already on order
    with stock_db.read() as s:
        order = s.scalars(select(ProcurementRequest)).one()
        assert (order.reason, order.location, order.items) == ("reorder", "WH-SH", [{"part": "P-SENS-T",
                                                                                    "quantity": 11}])


def test_using_more_than_there_is_fails_and_changes_nothing(stock_db: Database) -> None:
    with pytest.raises(StockShortage):
        call(stock_db, consume, items=[{"part": "P-VALVE-4W", "quantity": 2}], case_ref="REP-7")
    assert level(stock_db, "P-VALVE-4W") == (1, 0)
    with pytest.raises(InvalidInput):
        call(stock_db, reserve, items=[{"part": "P-CAP-35", "quantity": 0}], case_ref="REP-7")


def test_the_database_refuses_negative_or_over_reserved_stock(stock_db: Database) -> None:
    for statement in ("UPDATE stock SET on_hand = -1 WHERE part_no = 'P-CAP-35' AND location = 'WH-SH'",
                      "UPDATE stock SET reserved = on_hand + 1 WHERE part_no = 'P-CAP-35' AND location = 'WH-SH'"):
        with pytest.raises(Exception, match="(?i)check"), stock_db.write() as s:
            s.execute(text(statement))
    assert level(stock_db, "P-CAP-35") == (40, 0)


def test_concurrent_reservations_never_take_stock_below_zero(stock_db: Database) -> None:
    """Twelve commands race for a part of which eight are in stock: exactly eight get one."""
    outcomes: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def technician(n: int) -> None:
        # Half work in Beijing and list the parts the other way round: without a fixed lock order
        # PostgreSQL would find deadlocks here.
        region = "上海" if n % 2 else "北京"
        items = [{"part": "P-COMP-35", "quantity": 1}, {"part": "P-CAP-35", "quantity": 1}]
        try:
            barrier.wait()
            for k in range(3):
                res = call(stock_db, reserve, {"region": region}, items=items[::-1] if n % 2 else items,
                           case_ref=f"RACE-{n}-{k}")
                outcomes.append(res["all_reserved"])
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=technician, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert outcomes.count(True) == 8 and outcomes.count(False) == 4  # 6 in Shanghai + 2 in Beijing
    assert level(stock_db, "P-COMP-35") == (6, 6) and level(stock_db, "P-COMP-35", "WH-BJ") == (2, 2)
    with stock_db.read() as s:
        held = s.scalars(select(PartReservation).where(PartReservation.part_no == "P-COMP-35")).all()
        assert sum(r.quantity for r in held) == 8
        capacitors = s.scalars(select(Stock).where(Stock.part_no == "P-CAP-35")).all()
        assert sum(r.reserved for r in capacitors) == 12 and all(r.reserved <= r.on_hand for r in capacitors)


def test_stock_check_reports_shortages_over_all_warehouses(stock_db: Database) -> None:
    res = call(stock_db, check_stock, items=[{"product_model": "KFR-35GW/N1", "quantity": 15},
                                             {"product_model": "KFR-72LW/N2", "quantity": 1}], case_ref="INS-1")
    assert res["available"] is False
    assert res["shortages"] == [{"part": "KFR-72LW/N2", "product_model": "KFR-72LW/N2", "quantity": 1}]
    assert res["items"][0] == {"part": "KFR-35GW/N1", "requested": 15, "available": 18}
