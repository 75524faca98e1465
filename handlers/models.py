"""Domain tables of the after-sales service (migration 0004_domain): customers and their
products, staff profiles, parts and stock, FAQ entries, case references, compensation,
invoices and links between cases.

They live on the engine's ``Base`` so one metadata describes the whole database, but the
engine never imports them: only handlers, the CLI and the web layer do.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from engine.models import Base, BigId, UtcDateTime, utcnow

# --- customers ------------------------------------------------------------------------------


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    gender: Mapped[str] = mapped_column(String(20), default="")  # female | male | unspecified | ""
    age: Mapped[int | None] = mapped_column(Integer)
    # Digits only (see customers.normalize_phone): the key customers are found by.
    phone: Mapped[str] = mapped_column(String(40), index=True)
    email: Mapped[str] = mapped_column(String(255), default="")
    address: Mapped[str] = mapped_column(String(500), default="")
    created: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class CustomerProduct(Base):
    """A product a customer bought (seed 001: model, serial, purchase and delivery dates)."""

    __tablename__ = "customer_products"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(80), index=True)
    serial: Mapped[str] = mapped_column(String(80), default="")
    batch: Mapped[str] = mapped_column(String(80), default="", index=True)
    purchase_date: Mapped[dt.date | None] = mapped_column(Date)
    delivery_date: Mapped[dt.date | None] = mapped_column(Date)
    region: Mapped[str] = mapped_column(String(80), default="", index=True)


# --- staff ----------------------------------------------------------------------------------


class StaffProfile(Base):
    """What assignment needs to know about a user: skills, region, load limit, training."""

    __tablename__ = "staff_profiles"

    username: Mapped[str] = mapped_column(ForeignKey("users.username", ondelete="CASCADE"), primary_key=True)
    technician: Mapped[bool] = mapped_column(Boolean, default=False)
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    region: Mapped[str] = mapped_column(String(80), default="")
    # Open work orders above which the technician is not "free" for automatic assignment.
    max_open_orders: Mapped[int] = mapped_column(Integer, default=5)
    training_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"2026": 42}


class StaffCertification(Base):
    __tablename__ = "staff_certifications"
    __table_args__ = (UniqueConstraint("username", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("staff_profiles.username", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    valid_until: Mapped[dt.date] = mapped_column(Date)


class TechnicianAssignment(Base):
    """A work order handed to a technician by ``technician.assign``; counts towards their load
    while the case is open."""

    __tablename__ = "technician_assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    case_ref: Mapped[str] = mapped_column(String(40), default="")
    username: Mapped[str] = mapped_column(String(80), index=True)
    work_type: Mapped[str] = mapped_column(String(40))
    assigned_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


# --- parts and stock ------------------------------------------------------------------------


class Warehouse(Base):
    __tablename__ = "warehouses"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    region: Mapped[str] = mapped_column(String(80), default="")


class Part(Base):
    """A spare part or a stocked product (installation orders name products by model)."""

    __tablename__ = "parts"

    part_no: Mapped[str] = mapped_column(String(60), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="part")  # part | product
    lead_time_days: Mapped[int] = mapped_column(Integer, default=7)


class Stock(Base):
    """Stock of one part at one location. ``reserved`` is held for cases; the database itself
    refuses negative or over-reserved stock, whatever a caller does."""

    __tablename__ = "stock"
    __table_args__ = (
        CheckConstraint("on_hand >= 0", name="ck_stock_on_hand"),
        CheckConstraint("reserved >= 0 AND reserved <= on_hand", name="ck_stock_reserved"),
    )

    part_no: Mapped[str] = mapped_column(ForeignKey("parts.part_no", ondelete="CASCADE"), primary_key=True)
    location: Mapped[str] = mapped_column(ForeignKey("warehouses.code"), primary_key=True)
    on_hand: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    reorder_level: Mapped[int] = mapped_column(Integer, default=0)


class PartReservation(Base):
    __tablename__ = "part_reservations"
    __table_args__ = (Index("ix_part_reservations_case", "case_ref", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_ref: Mapped[str] = mapped_column(String(40))
    part_no: Mapped[str] = mapped_column(String(60))
    location: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="reserved")  # reserved | consumed | released
    technician: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class ProcurementRequest(Base):
    __tablename__ = "procurement_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_no: Mapped[str] = mapped_column(String(40), unique=True)
    case_ref: Mapped[str | None] = mapped_column(String(40), index=True)
    reason: Mapped[str] = mapped_column(String(40))  # repair | installation_order | reorder
    location: Mapped[str] = mapped_column(String(40))
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # [{"part", "quantity"}]
    status: Mapped[str] = mapped_column(String(20), default="open", index=True)  # open | received | cancelled
    expected_date: Mapped[dt.date | None] = mapped_column(Date)
    requested_by: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    received_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


# --- knowledge base -------------------------------------------------------------------------


class FaqEntry(Base):
    __tablename__ = "faq_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    keywords: Mapped[str] = mapped_column(String(500), default="")
    product_model: Mapped[str] = mapped_column(String(80), default="")  # "" = every product
    language: Mapped[str] = mapped_column(String(8), default="zh")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


# --- case references, records and links -----------------------------------------------------


class CaseReferenceCounter(Base):
    """The last number handed out per prefix and year (``CMP-2026-000123``)."""

    __tablename__ = "case_reference_counters"

    prefix: Mapped[str] = mapped_column(String(8), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)


class CaseReference(Base):
    """A readable reference and the case holding it. A reference can be reserved before its
    case exists (a linked case), so ``case_id`` starts empty then."""

    __tablename__ = "case_references"

    ref: Mapped[str] = mapped_column(String(40), primary_key=True)
    procedure: Mapped[str] = mapped_column(String(40))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"), unique=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Compensation(Base):
    __tablename__ = "compensations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_ref: Mapped[str] = mapped_column(String(40), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    compensation_type: Mapped[str] = mapped_column(String(40))
    amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)  # money in fen, never a float
    reason: Mapped[str] = mapped_column(Text, default="")
    granted_by: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("case_ref", "order_no"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    invoice_no: Mapped[str] = mapped_column(String(40), unique=True)
    order_no: Mapped[str] = mapped_column(String(80))
    case_ref: Mapped[str] = mapped_column(String(40), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    payment_method: Mapped[str] = mapped_column(String(40))
    invoice_type: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(255))
    issued_by: Mapped[str | None] = mapped_column(String(80))
    issued_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class CaseLink(Base):
    """A case started from another one (an inquiry that becomes a complaint). Written inside the
    source case's command as ``pending``; the new case is started after that command commits."""

    __tablename__ = "case_links"
    __table_args__ = (Index("ix_case_links_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source_case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    source_ref: Mapped[str] = mapped_column(String(40), default="")
    procedure: Mapped[str] = mapped_column(String(40))
    target_ref: Mapped[str] = mapped_column(String(40), unique=True)
    target_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"))
    start_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_by: Mapped[str | None] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | starting | started | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
