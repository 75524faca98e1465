"""Customers and the products they bought: find-or-create at intake, masking of personal data,
and the look-ups behind ``/api/customers``."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from engine import InvalidInput, ServiceContext
from engine.models import Case

from .models import CaseReference, Customer, CustomerProduct
from .references import china_date

GENDERS = ("female", "male", "unspecified")


def normalize_phone(value: Any) -> str:
    """Digits only, without a leading +86 / 0086, so '138-0013-8000' finds '13800138000'."""
    digits = re.sub(r"\D", "", str(value or ""))
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits


def mask_phone(phone: str) -> str:
    if len(phone) <= 4:
        return "*" * len(phone)
    keep_head = 3 if len(phone) >= 11 else 0
    return phone[:keep_head] + "*" * (len(phone) - keep_head - 4) + phone[-4:]


def mask_address(address: str) -> str:
    """Keep the first few characters (province and city), hide the rest."""
    if not address:
        return ""
    keep = min(6, max(1, len(address) // 3))
    return address[:keep] + "****"


def mask_email(email: str) -> str:
    if "@" not in email:
        return "****" if email else ""
    name, _, domain = email.partition("@")
    return (name[:1] or "") + "***@" + domain


def parse_date(value: Any, field: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InvalidInput(f"invalid date in {field}", [{"field": field, "message": "expected YYYY-MM-DD"}]) from None


def find_or_create(ctx: ServiceContext, customer: dict[str, Any] | None = None,
                   products: list[Any] | None = None) -> dict[str, Any]:
    """``customer.find_or_create``: the customer with this phone number, or a new one; missing
    e-mail and address are filled in, and products not yet on file are added."""
    info = customer if isinstance(customer, dict) else {}
    phone = normalize_phone(info.get("phone"))
    name = str(info.get("name") or "").strip()
    if not phone or not name:
        raise InvalidInput("customer name and phone are required",
                           [{"field": "customer.name" if not name else "customer.phone", "message": "required"}])
    row, is_new = upsert_customer(ctx.session, name=name, phone=phone, email=str(info.get("email") or ""),
                                  address=str(info.get("address") or ""), gender=str(info.get("gender") or ""),
                                  age=info.get("age"), now=ctx.now)
    region = str(ctx.data.get("region") or "")
    added = 0
    for product in products or []:
        if isinstance(product, dict) and add_product(ctx.session, row.id, product, region, ctx.now):
            added += 1
    ctx.session.execute(update(CaseReference).where(CaseReference.case_id == ctx.case_id)
                        .values(customer_id=row.id))
    return {"customer_id": row.id, "is_new": is_new, "name": row.name, "products_added": added}


def upsert_customer(session: Session, *, name: str, phone: str, email: str = "", address: str = "",
                    gender: str = "", age: Any = None, now: dt.datetime | None = None,
                    overwrite: bool = False) -> tuple[Customer, bool]:
    row = session.scalars(select(Customer).where(Customer.phone == phone).order_by(Customer.id).limit(1)).first()
    gender = gender if gender in GENDERS else ""
    age_value = int(age) if isinstance(age, int | float) and not isinstance(age, bool) and 0 < age < 150 else None
    if row is None:
        row = Customer(name=name, phone=phone, email=email, address=address, gender=gender, age=age_value,
                       created=now or dt.datetime.now(dt.UTC))
        session.add(row)
        session.flush()
        return row, True
    for field, value in (("email", email), ("address", address), ("gender", gender), ("age", age_value)):
        if value not in (None, "") and (overwrite or not getattr(row, field)):
            setattr(row, field, value)
    if overwrite and name:
        row.name = name
    return row, False


def add_product(session: Session, customer_id: int, product: dict[str, Any], region: str,
                now: dt.datetime) -> bool:
    """Add a product unless the customer already has it (same serial, or same model without one).
    Installation order lines (``product_model``) count as purchases made today."""
    model = str(product.get("model") or product.get("product_model") or "").strip()
    if not model:
        return False
    serial = str(product.get("serial_number") or product.get("serial") or "").strip()
    existing = select(CustomerProduct.id).where(CustomerProduct.customer_id == customer_id)
    if serial:
        existing = existing.where(CustomerProduct.serial == serial)
    else:
        existing = existing.where(CustomerProduct.model == model)
    if session.scalar(existing.limit(1)) is not None:
        return False
    purchase = parse_date(product.get("purchase_date"), "product.purchase_date")
    if purchase is None and "product_model" in product:
        purchase = china_date(now)
    session.add(CustomerProduct(
        customer_id=customer_id, model=model, serial=serial, batch=str(product.get("batch") or ""),
        purchase_date=purchase, delivery_date=parse_date(product.get("delivery_date"), "product.delivery_date"),
        region=str(product.get("region") or region or "")))
    session.flush()
    return True


# --- reading (web/api_customers.py) ---------------------------------------------------------


def customer_dict(row: Customer, masked: bool) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "gender": row.gender, "age": row.age,
        "phone": mask_phone(row.phone) if masked else row.phone,
        "email": mask_email(row.email) if masked else row.email,
        "address": mask_address(row.address) if masked else row.address,
        "masked": masked, "created": row.created.isoformat() if row.created else None,
    }


def product_dict(p: CustomerProduct) -> dict[str, Any]:
    return {"id": p.id, "model": p.model, "serial": p.serial, "batch": p.batch, "region": p.region,
            "purchase_date": p.purchase_date.isoformat() if p.purchase_date else None,
            "delivery_date": p.delivery_date.isoformat() if p.delivery_date else None}


def search_customers(session: Session, query: str = "", limit: int = 50, offset: int = 0,
                     by_phone: bool = True) -> tuple[list[Customer], int]:
    """By name, customer id and (``by_phone``) phone digits. Callers who see phone numbers masked
    search without them: a match would tell them whose number it is."""
    q = select(Customer)
    text = query.strip()
    if text:
        digits = normalize_phone(text) if by_phone else ""
        conditions = [Customer.name.contains(text)]
        if digits:
            conditions.append(Customer.phone.contains(digits))
        if text.isdigit():
            conditions.append(Customer.id == int(text))
        q = q.where(or_(*conditions))
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = list(session.scalars(q.order_by(Customer.id).limit(limit).offset(offset)))
    return rows, int(total)


def customer_cases(session: Session, customer_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(CaseReference.ref, CaseReference.procedure, CaseReference.case_id, Case.status, Case.created_at)
        .join(Case, Case.id == CaseReference.case_id)
        .where(CaseReference.customer_id == customer_id).order_by(Case.created_at.desc()))
    return [{"case_ref": r.ref, "procedure": r.procedure, "case_id": r.case_id, "status": r.status,
             "created_at": r.created_at.isoformat() if r.created_at else None} for r in rows]
