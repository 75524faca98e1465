"""after-sales domain tables: customers, staff profiles, parts and stock, FAQ, case references,
compensation, invoices, case links (handlers/models.py)

Revision ID: 0004_domain
Revises: 0001_engine
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.models

revision: str = "0004_domain"
down_revision: str | Sequence[str] | None = "0001_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = engine.models.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("gender", sa.String(20), nullable=False),
        sa.Column("age", sa.Integer(), nullable=True),
        sa.Column("phone", sa.String(40), nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_customers_phone", "customers", ["phone"])

    op.create_table(
        "customer_products",
        sa.Column("id", ID, nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("model", sa.String(80), nullable=False),
        sa.Column("serial", sa.String(80), nullable=False),
        sa.Column("batch", sa.String(80), nullable=False),
        sa.Column("purchase_date", sa.Date(), nullable=True),
        sa.Column("delivery_date", sa.Date(), nullable=True),
        sa.Column("region", sa.String(80), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("customer_id", "model", "batch", "region"):
        op.create_index(f"ix_customer_products_{column}", "customer_products", [column])

    op.create_table(
        "staff_profiles",
        sa.Column("username", sa.String(80), nullable=False),
        sa.Column("technician", sa.Boolean(), nullable=False),
        sa.Column("skills", sa.JSON(), nullable=False),
        sa.Column("region", sa.String(80), nullable=False),
        sa.Column("max_open_orders", sa.Integer(), nullable=False),
        sa.Column("training_hours", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["username"], ["users.username"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("username"),
    )
    op.create_table(
        "staff_certifications",
        sa.Column("id", ID, nullable=False),
        sa.Column("username", sa.String(80), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("valid_until", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(["username"], ["staff_profiles.username"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username", "name"),
    )
    op.create_index("ix_staff_certifications_username", "staff_certifications", ["username"])

    op.create_table(
        "technician_assignments",
        sa.Column("id", ID, nullable=False),
        sa.Column("case_id", ID, nullable=False),
        sa.Column("case_ref", sa.String(40), nullable=False),
        sa.Column("username", sa.String(80), nullable=False),
        sa.Column("work_type", sa.String(40), nullable=False),
        sa.Column("assigned_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_technician_assignments_case_id", "technician_assignments", ["case_id"])
    op.create_index("ix_technician_assignments_username", "technician_assignments", ["username"])

    op.create_table(
        "warehouses",
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("region", sa.String(80), nullable=False),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "parts",
        sa.Column("part_no", sa.String(60), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("lead_time_days", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("part_no"),
    )
    op.create_table(
        "stock",
        sa.Column("part_no", sa.String(60), nullable=False),
        sa.Column("location", sa.String(40), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("reorder_level", sa.Integer(), nullable=False),
        sa.CheckConstraint("on_hand >= 0", name="ck_stock_on_hand"),
        sa.CheckConstraint("reserved >= 0 AND reserved <= on_hand", name="ck_stock_reserved"),
        sa.ForeignKeyConstraint(["part_no"], ["parts.part_no"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["location"], ["warehouses.code"]),
        sa.PrimaryKeyConstraint("part_no", "location"),
    )
    op.create_table(
        "part_reservations",
        sa.Column("id", ID, nullable=False),
        sa.Column("case_ref", sa.String(40), nullable=False),
        sa.Column("part_no", sa.String(60), nullable=False),
        sa.Column("location", sa.String(40), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("technician", sa.String(80), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_part_reservations_case", "part_reservations", ["case_ref", "status"])

    op.create_table(
        "procurement_requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("request_no", sa.String(40), nullable=False),
        sa.Column("case_ref", sa.String(40), nullable=True),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("location", sa.String(40), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("expected_date", sa.Date(), nullable=True),
        sa.Column("requested_by", sa.String(80), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("received_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_no"),
    )
    op.create_index("ix_procurement_requests_case_ref", "procurement_requests", ["case_ref"])
    op.create_index("ix_procurement_requests_status", "procurement_requests", ["status"])

    op.create_table(
        "faq_entries",
        sa.Column("id", ID, nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("keywords", sa.String(500), nullable=False),
        sa.Column("product_model", sa.String(80), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "case_reference_counters",
        sa.Column("prefix", sa.String(8), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("prefix", "year"),
    )
    op.create_table(
        "case_references",
        sa.Column("ref", sa.String(40), nullable=False),
        sa.Column("procedure", sa.String(40), nullable=False),
        sa.Column("case_id", ID, nullable=True),
        sa.Column("customer_id", ID, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("ref"),
        sa.UniqueConstraint("case_id"),
    )
    op.create_index("ix_case_references_customer_id", "case_references", ["customer_id"])

    op.create_table(
        "compensations",
        sa.Column("id", ID, nullable=False),
        sa.Column("case_ref", sa.String(40), nullable=False),
        sa.Column("customer_id", ID, nullable=True),
        sa.Column("compensation_type", sa.String(40), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_by", sa.String(80), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_compensations_case_ref", "compensations", ["case_ref"])
    op.create_index("ix_compensations_customer_id", "compensations", ["customer_id"])

    op.create_table(
        "invoices",
        sa.Column("id", ID, nullable=False),
        sa.Column("invoice_no", sa.String(40), nullable=False),
        sa.Column("order_no", sa.String(80), nullable=False),
        sa.Column("case_ref", sa.String(40), nullable=False),
        sa.Column("customer_id", ID, nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("payment_method", sa.String(40), nullable=False),
        sa.Column("invoice_type", sa.String(40), nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("issued_by", sa.String(80), nullable=True),
        sa.Column("issued_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("invoice_no"),
        sa.UniqueConstraint("case_ref", "order_no"),
    )
    op.create_index("ix_invoices_case_ref", "invoices", ["case_ref"])
    op.create_index("ix_invoices_customer_id", "invoices", ["customer_id"])

    op.create_table(
        "case_links",
        sa.Column("id", ID, nullable=False),
        sa.Column("source_case_id", ID, nullable=False),
        sa.Column("source_ref", sa.String(40), nullable=False),
        sa.Column("procedure", sa.String(40), nullable=False),
        sa.Column("target_ref", sa.String(40), nullable=False),
        sa.Column("target_case_id", ID, nullable=True),
        sa.Column("start_data", sa.JSON(), nullable=False),
        sa.Column("started_by", sa.String(80), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("claimed_at", TIME, nullable=True),
        sa.Column("started_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(["source_case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["target_case_id"], ["cases.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("target_ref"),
    )
    op.create_index("ix_case_links_source_case_id", "case_links", ["source_case_id"])
    op.create_index("ix_case_links_status", "case_links", ["status", "created_at"])


def downgrade() -> None:
    for table in ("case_links", "invoices", "compensations", "case_references", "case_reference_counters",
                  "faq_entries", "procurement_requests", "part_reservations", "stock", "parts", "warehouses",
                  "technician_assignments", "staff_certifications", "staff_profiles", "customer_products",
                  "customers"):
        op.drop_table(table)
