"""Parts stock per location (seed 001 配件管理): reserve for a case, consume what was used,
release what was not, and request procurement for what is missing or below reorder level.

Stock only ever changes through conditional updates (``… WHERE on_hand - reserved >= :qty``)
that the database evaluates under the row lock, and CHECK constraints refuse negative or
over-reserved rows, so concurrent commands can never take stock below zero.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine import SYSTEM, Actor, InvalidInput, NotFound, ServiceContext
from engine.models import MessageSubscription

from .models import Part, PartReservation, ProcurementRequest, Stock, Warehouse
from .references import china_date, insert_ignore, next_number
from .technicians import region_covers

log = logging.getLogger("aftercare.parts")


class StockShortage(RuntimeError):
    """More parts used than the stock holds: the stock records need correcting first."""


# --- items ----------------------------------------------------------------------------------


def normalize_items(items: Any, field: str = "items") -> list[dict[str, Any]]:
    """[{part, quantity, part_name}] from form rows or order lines (``product_model``), merged by part."""
    if items in (None, ""):
        return []
    if not isinstance(items, list):
        raise InvalidInput(f"{field} must be a list", [{"field": field, "message": "expected a list of parts"}])
    merged: dict[str, dict[str, Any]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"{field}[{n}] must be an object", [{"field": f"{field}[{n}]", "message": "object"}])
        part = str(item.get("part") or item.get("part_no") or item.get("product_model") or "").strip()
        qty = item.get("quantity", 1)
        if not part or not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
            raise InvalidInput(f"invalid part line {field}[{n}]",
                               [{"field": f"{field}[{n}]",
                                 "message": "needs a part number and a quantity of 1 or more"}])
        row = merged.setdefault(part, {"part": part, "quantity": 0, "part_name": str(item.get("part_name") or "")})
        row["quantity"] += qty
    return list(merged.values())


def _locations(session: Session, part: str, region: str = "") -> list[Stock]:
    """Stock rows of a part, the warehouse of ``region`` first, then by free stock."""
    rows = list(session.scalars(select(Stock).where(Stock.part_no == part).execution_options(populate_existing=True)))
    regions = dict(session.execute(select(Warehouse.code, Warehouse.region)).all())
    rows.sort(key=lambda s: (not region_covers(regions.get(s.location, ""), region), -(s.on_hand - s.reserved),
                             s.location))
    return rows


def _lock_part(session: Session, part: str) -> None:
    """Lock every stock row of a part, always in location order (and parts in part order, see
    the callers), so commands touching the same parts queue up instead of deadlocking."""
    session.execute(select(Stock.location).where(Stock.part_no == part).order_by(Stock.location).with_for_update())


def _free(session: Session, part: str, location: str) -> int:
    row = session.execute(select(Stock.on_hand, Stock.reserved)
                          .where(Stock.part_no == part, Stock.location == location)).first()
    return int(row[0] - row[1]) if row else 0


def _take(session: Session, part: str, location: str, qty: int, *, reserve: bool) -> bool:
    """Reserve (or take out of free stock) ``qty`` if it is free right now; False when not."""
    free = Stock.on_hand - Stock.reserved
    values = {"reserved": Stock.reserved + qty} if reserve else {"on_hand": Stock.on_hand - qty}
    result = session.execute(update(Stock).where(Stock.part_no == part, Stock.location == location, free >= qty)
                             .values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def _reserved_for(session: Session, case_ref: str, part: str | None = None,
                  lock: bool = False) -> list[PartReservation]:
    q = select(PartReservation).where(PartReservation.case_ref == case_ref, PartReservation.status == "reserved")
    if part is not None:
        q = q.where(PartReservation.part_no == part)
    if lock:
        q = q.with_for_update()
    return list(session.scalars(q.order_by(PartReservation.id)))


def _region_of(data: Any) -> str:
    assignment = data.get("assignment") if hasattr(data, "get") else None
    if isinstance(assignment, dict) and assignment.get("region"):
        return str(assignment["region"])
    return str(data.get("region") or "") if hasattr(data, "get") else ""


# --- reserve / consume / release ------------------------------------------------------------


def reserve_items(session: Session, case_ref: str, items: list[dict[str, Any]], now: dt.datetime,
                  technician: str | None = None, region: str = "") -> dict[str, Any]:
    """Make sure the case holds these quantities (what it already holds counts), taking free
    stock location by location; what cannot be had is reported missing."""
    reserved, missing, touched = [], [], set()
    for item in sorted(items, key=lambda i: i["part"]):
        part = item["part"]
        _lock_part(session, part)
        need = item["quantity"] - sum(r.quantity for r in _reserved_for(session, case_ref, part))
        for stock in _locations(session, part, region):
            if need <= 0:
                break
            for _attempt in range(3):  # the free amount may shrink under us: read again and retry
                take = min(need, _free(session, part, stock.location))
                if take <= 0 or _take(session, part, stock.location, take, reserve=True):
                    break
            else:
                take = 0
            if take > 0:
                row = PartReservation(case_ref=case_ref, part_no=part, location=stock.location, quantity=take,
                                      status="reserved", technician=technician, created_at=now, updated_at=now)
                session.add(row)
                reserved.append({"part": part, "location": stock.location, "quantity": take})
                touched.add((part, stock.location))
                need -= take
        if need > 0:
            missing.append({"part": part, "part_name": item.get("part_name", ""), "quantity": need})
    session.flush()
    order = [i["part"] for i in items]  # report in the order the technician listed them
    missing.sort(key=lambda m: order.index(m["part"]))
    reorders = check_reorder(session, touched, now)
    return {"all_reserved": not missing, "reservation_id": case_ref, "reserved": reserved, "missing": missing,
            "reorder_requests": reorders}


def consume_items(session: Session, case_ref: str, items: list[dict[str, Any]], now: dt.datetime,
                  technician: str | None = None, region: str = "") -> dict[str, Any]:
    """Take used parts out of stock: first from the case's reservations, then from free stock."""
    consumed, touched = [], set()
    for item in sorted(items, key=lambda i: i["part"]):
        part, need = item["part"], item["quantity"]
        _lock_part(session, part)
        for res in _reserved_for(session, case_ref, part, lock=True):
            if need <= 0:
                break
            take = min(need, res.quantity)
            done = session.execute(update(Stock).where(
                Stock.part_no == part, Stock.location == res.location, Stock.reserved >= take, Stock.on_hand >= take)
                .values(on_hand=Stock.on_hand - take, reserved=Stock.reserved - take)
                .execution_options(synchronize_session=False)).rowcount
            if done != 1:
                raise StockShortage(f"stock of {part} at {res.location} does not hold the reservation of {case_ref}")
            if take == res.quantity:
                res.status, res.updated_at = "consumed", now
            else:
                res.quantity -= take
                res.updated_at = now
                session.add(PartReservation(case_ref=case_ref, part_no=part, location=res.location, quantity=take,
                                            status="consumed", technician=technician, created_at=now, updated_at=now))
            consumed.append({"part": part, "location": res.location, "quantity": take, "from": "reservation"})
            touched.add((part, res.location))
            need -= take
        for stock in _locations(session, part, region):
            if need <= 0:
                break
            take = min(need, _free(session, part, stock.location))
            if take > 0 and _take(session, part, stock.location, take, reserve=False):
                session.add(PartReservation(case_ref=case_ref, part_no=part, location=stock.location, quantity=take,
                                            status="consumed", technician=technician, created_at=now, updated_at=now))
                consumed.append({"part": part, "location": stock.location, "quantity": take, "from": "stock"})
                touched.add((part, stock.location))
                need -= take
        if need > 0:
            raise StockShortage(f"{need} x {part} used for {case_ref} but not in stock; correct the stock and retry")
    session.flush()
    return {"consumed": consumed, "reorder_requests": check_reorder(session, touched, now)}


def release_case(session: Session, case_ref: str, now: dt.datetime) -> dict[str, Any]:
    released = []
    held = _reserved_for(session, case_ref, lock=True)
    for part in sorted({r.part_no for r in held}):
        _lock_part(session, part)
    for res in sorted(held, key=lambda r: (r.part_no, r.location, r.id)):
        done = session.execute(update(Stock).where(Stock.part_no == res.part_no, Stock.location == res.location,
                                                   Stock.reserved >= res.quantity)
                               .values(reserved=Stock.reserved - res.quantity)
                               .execution_options(synchronize_session=False)).rowcount
        if done != 1:
            raise StockShortage(f"stock of {res.part_no} at {res.location} lost the reservation of {case_ref}")
        res.status, res.updated_at = "released", now
        released.append({"part": res.part_no, "location": res.location, "quantity": res.quantity})
    session.flush()
    return {"released": released}


# --- procurement ----------------------------------------------------------------------------


def _default_location(session: Session, region: str = "") -> str:
    warehouses = session.execute(select(Warehouse.code, Warehouse.region).order_by(Warehouse.code)).all()
    for code, area in warehouses:
        if region and region_covers(area, region):
            return code
    code = warehouses[0][0] if warehouses else None
    if code is None:
        raise NotFound("no warehouse is set up; import parts stock first")
    return code


def create_request(session: Session, items: list[dict[str, Any]], reason: str, now: dt.datetime,
                   case_ref: str | None = None, location: str | None = None,
                   requested_by: str | None = None) -> ProcurementRequest:
    lead = 0
    for item in items:
        part = session.get(Part, item["part"])
        if part is None:  # ordering a part the company has not stocked before
            part = Part(part_no=item["part"], name=item.get("part_name") or item["part"], kind="part",
                        lead_time_days=7)
            session.add(part)
        lead = max(lead, part.lead_time_days)
    today = china_date(now)
    req = ProcurementRequest(
        request_no=f"PR-{today.year}-{next_number(session, 'PR', today.year):06d}", case_ref=case_ref, reason=reason,
        location=location or _default_location(session), items=[{"part": i["part"], "quantity": i["quantity"]}
                                                                 for i in items],
        status="open", expected_date=today + dt.timedelta(days=lead or 7), requested_by=requested_by, created_at=now)
    session.add(req)
    session.flush()
    return req


def check_reorder(session: Session, touched: set[tuple[str, str]], now: dt.datetime) -> list[str]:
    """A procurement request for every touched stock row whose free stock fell below its reorder
    level, unless one is already open for that part and location."""
    raised = []
    for part, location in sorted(touched):
        stock = session.get(Stock, (part, location), populate_existing=True)
        if stock is None or stock.reorder_level <= 0 or stock.on_hand - stock.reserved >= stock.reorder_level:
            continue
        open_requests = session.scalars(select(ProcurementRequest).where(
            ProcurementRequest.reason == "reorder", ProcurementRequest.status == "open",
            ProcurementRequest.location == location))
        if any(any(i.get("part") == part for i in r.items) for r in open_requests):
            continue
        qty = 2 * stock.reorder_level - (stock.on_hand - stock.reserved)
        req = create_request(session, [{"part": part, "quantity": qty}], "reorder", now, location=location,
                             requested_by="system")
        log.info("stock of %s at %s below reorder level %s: %s raised", part, location, stock.reorder_level,
                 req.request_no)
        raised.append(req.request_no)
    return raised


def request_dict(req: ProcurementRequest) -> dict[str, Any]:
    return {"request_id": req.id, "request_no": req.request_no, "case_ref": req.case_ref, "reason": req.reason,
            "location": req.location, "items": req.items, "status": req.status,
            "expected_date": req.expected_date.isoformat() if req.expected_date else None}


def receive(session: Session, request_id: int, now: dt.datetime) -> ProcurementRequest:
    """Book the goods of a procurement request into its warehouse."""
    req = session.get(ProcurementRequest, request_id, with_for_update=True)
    if req is None:
        raise NotFound(f"procurement request {request_id} not found")
    if req.status != "open":
        raise InvalidInput(f"procurement request {req.request_no} is {req.status}",
                           [{"field": "request_id", "message": f"already {req.status}"}])
    for item in sorted(req.items, key=lambda i: i["part"]):
        insert_ignore(session, Stock, {"part_no": item["part"], "location": req.location, "on_hand": 0,
                                       "reserved": 0, "reorder_level": 0})
        session.execute(update(Stock).where(Stock.part_no == item["part"], Stock.location == req.location)
                        .values(on_hand=Stock.on_hand + int(item["quantity"]))
                        .execution_options(synchronize_session=False))
    req.status, req.received_at = "received", now
    session.flush()
    return req


def receive_and_notify(engine: Any, request_id: int, actor: Actor = SYSTEM) -> list[int]:
    """Goods arrived: book them (one transaction), then tell the waiting case with the message
    ``stock_arrived`` (its own command). Returns the ids of the cases that took the message."""
    with engine.db.write() as session:
        req = receive(session, request_id, dt.datetime.now(dt.UTC))
        info = request_dict(req)
    if not info["case_ref"]:
        return []
    # The booking, not the clerk, tells the case: it reaches the case that raised the request
    # whether or not the clerk may read that case; history still names the clerk.
    booking = actor if actor.system else Actor(actor.username, actor.groups, system=True)
    return engine.deliver_message("stock_arrived", {"case_ref": info["case_ref"]},
                                  {"request_id": info["request_id"], "request_no": info["request_no"],
                                   "items": info["items"]}, booking)


def tell_waiting_cases(engine: Any) -> list[int]:
    """Safety net run by the timer worker: a case still waiting for ``stock_arrived`` whose own
    procurement request is already received is told now. Booking and telling are two commits
    (``receive_and_notify``); a crash between them must not leave the case waiting for goods
    that are on the shelf. Returns the ids of the cases told."""
    with engine.db.read() as session:
        waiting = sorted(set(session.scalars(select(MessageSubscription.case_id)
                                             .where(MessageSubscription.message == "stock_arrived"))))
    told: list[int] = []
    for case_id in waiting:
        procurement = engine.get_case(case_id, SYSTEM)["data"].get("procurement")
        request_id = procurement.get("request_id") if isinstance(procurement, dict) else None
        if not isinstance(request_id, int):
            continue
        with engine.db.read() as session:
            req = session.get(ProcurementRequest, request_id)
            info = request_dict(req) if req is not None and req.status == "received" else None
        if info is not None:
            log.warning("case %s was still waiting for %s, received earlier: telling it now", case_id,
                        info["request_no"])
            told += engine.deliver_message("stock_arrived", {"instance": case_id},
                                           {"request_id": info["request_id"], "request_no": info["request_no"],
                                            "items": info["items"]}, SYSTEM)
    return told


# --- handlers -------------------------------------------------------------------------------


def reserve(ctx: ServiceContext, items: Any = None, case_ref: str = "",
            technician_id: str | None = None) -> dict[str, Any]:
    """``parts.reserve``: {all_reserved, reservation_id, missing: [{part, quantity}]}."""
    return reserve_items(ctx.session, str(case_ref), normalize_items(items), ctx.now, technician_id,
                         _region_of(ctx.data))


def consume(ctx: ServiceContext, items: Any = None, case_ref: str = "",
            technician_id: str | None = None) -> dict[str, Any]:
    """``parts.consume``: record the parts used on site."""
    return consume_items(ctx.session, str(case_ref), normalize_items(items), ctx.now, technician_id,
                         _region_of(ctx.data))


def release(ctx: ServiceContext, case_ref: str = "", reason: str = "") -> dict[str, Any]:
    """``parts.release``: give back what the case reserved and did not use."""
    return {**release_case(ctx.session, str(case_ref), ctx.now), "reason": reason}


def request_procurement(ctx: ServiceContext, items: Any = None, case_ref: str = "", reason: str = "") -> dict[str, Any]:
    """``procurement.request``: {request_id, expected_date}; the same open request is returned
    when the step runs again for the same case and items."""
    lines = normalize_items(items)
    if not lines:
        return {"request_id": None, "request_no": None, "expected_date": None, "items": []}
    wanted = [{"part": i["part"], "quantity": i["quantity"]} for i in lines]
    for existing in ctx.session.scalars(select(ProcurementRequest).where(
            ProcurementRequest.case_ref == case_ref, ProcurementRequest.status == "open")):
        if existing.items == wanted and existing.reason == reason:
            return request_dict(existing)
    location = _default_location(ctx.session, _region_of(ctx.data))
    req = create_request(ctx.session, lines, reason or "case", ctx.now, case_ref=str(case_ref) or None,
                         location=location, requested_by=ctx.actor)
    return request_dict(req)


def check_stock(ctx: ServiceContext, items: Any = None, case_ref: str = "") -> dict[str, Any]:
    """``stock.check``: {available, shortages: [{part, quantity}]} over all warehouses."""
    lines = normalize_items(items)
    shortages, report = [], []
    for item in lines:
        rows = ctx.session.scalars(select(Stock).where(Stock.part_no == item["part"]))
        free = sum(s.on_hand - s.reserved for s in rows)
        held = sum(r.quantity for r in _reserved_for(ctx.session, str(case_ref), item["part"]))
        have = max(0, free) + held
        report.append({"part": item["part"], "requested": item["quantity"], "available": have})
        if have < item["quantity"]:
            shortages.append({"part": item["part"], "product_model": item["part"], "quantity": item["quantity"] - have})
    return {"available": not shortages, "shortages": shortages, "items": report}
