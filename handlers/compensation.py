"""Compensation granted by the customer-care team to a dissatisfied customer (seed 003)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from engine import InvalidInput, ServiceContext

from .models import Compensation

TYPES = ("cash", "voucher", "free_service", "replacement", "extended_warranty", "gift")


def to_cents(amount: Any, field: str = "amount") -> int:
    """Yuan to fen without binary rounding surprises; negative amounts are refused."""
    try:
        value = Decimal(str(amount if amount not in (None, "") else 0))
    except InvalidOperation:
        raise InvalidInput(f"invalid {field}", [{"field": field, "message": "a number"}]) from None
    if value < 0 or not value.is_finite():
        raise InvalidInput(f"invalid {field}", [{"field": field, "message": "0 or more"}])
    return int((value * 100).quantize(Decimal("1"), rounding=ROUND_HALF_UP))


def yuan(cents: int) -> str:
    return f"{Decimal(cents) / 100:.2f}"


def record(ctx: ServiceContext, customer_id: Any = None, case_ref: str = "", compensation_type: str = "",
           amount: Any = 0, reason: str = "") -> dict[str, Any]:
    """``compensation.record``: {compensation_id, amount, compensation_type}."""
    if compensation_type not in TYPES:
        raise InvalidInput(f"unknown compensation type '{compensation_type}'",
                           [{"field": "compensation_type", "message": "one of " + ", ".join(TYPES)}])
    cents = to_cents(amount)
    row = Compensation(case_ref=str(case_ref), customer_id=int(customer_id) if customer_id not in (None, "") else None,
                       compensation_type=compensation_type, amount_cents=cents, reason=str(reason or ""),
                       granted_by=ctx.actor, created_at=ctx.now)
    ctx.session.add(row)
    ctx.session.flush()
    return {"compensation_id": row.id, "amount": yuan(cents), "compensation_type": compensation_type,
            "granted_by": ctx.actor}
