"""SLA policies and calendars as data, SLA clocks of user tasks, timer start schedules

Revision ID: 0002_sla
Revises: 0001_engine
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.models

revision: str = "0002_sla"
down_revision: str | Sequence[str] | None = "0001_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = engine.models.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sla_policies",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=40), nullable=False),
        sa.Column("calendar", sa.String(length=80), nullable=False),
        sa.Column("warn_ratio", sa.Float(), nullable=False),
        sa.Column("escalation", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_index("ix_sla_policies_name", "sla_policies", ["name"])
    op.create_table(
        "sla_calendars",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.Column("updated_by", sa.String(length=80), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "sla_clocks",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("case_id", BigId, nullable=False),
        sa.Column("task", sa.String(length=255), nullable=False),
        sa.Column("policy", sa.String(length=120), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("calendar", sa.String(length=80), nullable=False),
        sa.Column("started_at", Utc, nullable=False),
        sa.Column("warn_at", Utc, nullable=False),
        sa.Column("due_at", Utc, nullable=False),
        sa.Column("paused_since", Utc, nullable=True),
        sa.Column("paused_seconds", sa.Float(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("breached_at", Utc, nullable=True),
        sa.Column("closed_at", Utc, nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_sla_clocks_case_open", "sla_clocks", ["case_id", "closed_at"])
    op.create_table(
        "start_timers",
        sa.Column("id", BigId, nullable=False),
        sa.Column("process_key", sa.String(length=255), nullable=False),
        sa.Column("start_event", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("occurrence", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("due_at", Utc, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("lease_until", Utc, nullable=True),
        sa.Column("claimed_by", sa.String(length=120), nullable=True),
        sa.Column("fired_at", Utc, nullable=True),
        sa.Column("case_id", BigId, nullable=True),
        sa.Column("created_at", Utc, nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("process_key", "start_event", "due_at"),
    )
    op.create_index("ix_start_timers_due", "start_timers", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_start_timers_due", table_name="start_timers")
    op.drop_table("start_timers")
    op.drop_index("ix_sla_clocks_case_open", table_name="sla_clocks")
    op.drop_table("sla_clocks")
    op.drop_table("sla_calendars")
    op.drop_index("ix_sla_policies_name", table_name="sla_policies")
    op.drop_table("sla_policies")
