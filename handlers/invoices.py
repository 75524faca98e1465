"""Invoices issued at the end of an installation (seed 001: 开具正规的发票)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from engine import ServiceContext

from .compensation import to_cents, yuan
from .models import Invoice
from .references import china_date, next_number


def record(ctx: ServiceContext, order_no: str = "", customer_id: Any = None, amount: Any = 0,
           payment_method: str = "", invoice_type: str = "", invoice_title: str = "",
           case_ref: str = "") -> dict[str, Any]:
    """``invoice.record``: {invoice_id, invoice_no, amount}; one invoice per case and order."""
    existing = ctx.session.scalars(select(Invoice).where(Invoice.case_ref == str(case_ref),
                                                         Invoice.order_no == str(order_no))).first()
    if existing is None:
        year = china_date(ctx.now).year
        existing = Invoice(
            invoice_no=f"INV-{year}-{next_number(ctx.session, 'INV', year):06d}", order_no=str(order_no),
            case_ref=str(case_ref), customer_id=int(customer_id) if customer_id not in (None, "") else None,
            amount_cents=to_cents(amount), payment_method=str(payment_method or ""),
            invoice_type=str(invoice_type or ""), title=str(invoice_title or ""), issued_by=ctx.actor,
            issued_at=ctx.now)
        ctx.session.add(existing)
        ctx.session.flush()
    return {"invoice_id": existing.id, "invoice_no": existing.invoice_no, "amount": yuan(existing.amount_cents),
            "invoice_type": existing.invoice_type}
