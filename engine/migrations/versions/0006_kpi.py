"""KPI facts: measurable moments of each case projected from its history (reports/facts.py)

Revision ID: 0006_kpi
Revises: 0001_engine
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.models

revision: str = "0006_kpi"
down_revision: str | Sequence[str] | None = "0001_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COVERED = ["state", "ok", "due_at", "process_key", "value", "detail"]


def upgrade() -> None:
    op.create_table(
        "kpi_facts",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("case_id", BIG_ID, nullable=False),
        sa.Column("process_key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("at", engine.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("due_at", engine.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("done_at", engine.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("team", sa.String(length=80), nullable=True),
        sa.Column("person", sa.String(length=80), nullable=True),
        sa.Column("customer", sa.String(length=80), nullable=True),
        sa.Column("detail", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "kind", "key", name="uq_kpi_facts_case_kind_key"),
    )
    # Every KPI reads one kind over a period, optionally for one person or team; the indexes carry
    # the columns the KPIs aggregate, so a year of a large department is read from the index alone.
    # The complaint rate groups served customers: by customer, with what its filters need.
    op.create_index("ix_kpi_facts_kind_at", "kpi_facts", ["kind", "at", *COVERED])
    op.create_index("ix_kpi_facts_kind_person_at", "kpi_facts", ["kind", "person", "at", *COVERED])
    op.create_index("ix_kpi_facts_kind_team_at", "kpi_facts", ["kind", "team", "at", *COVERED])
    op.create_index("ix_kpi_facts_kind_customer_at", "kpi_facts", ["kind", "customer", "at", "process_key", "team",
                                                                    "person"])


def downgrade() -> None:
    for name in ("ix_kpi_facts_kind_customer_at", "ix_kpi_facts_kind_team_at", "ix_kpi_facts_kind_person_at",
                 "ix_kpi_facts_kind_at"):
        op.drop_index(name, table_name="kpi_facts")
    op.drop_table("kpi_facts")
