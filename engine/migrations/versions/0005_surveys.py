"""customer satisfaction surveys; outbox delivery columns (lease, retry time, Message-ID)

A survey row holds only the sha256 of its link token, so a copy of the database does not
hand out working links. The outbox gets what the dispatcher needs to deliver each message
once: a lease on the row while it is being sent, the time of the next attempt after a
failure, and the idempotency key sent as the e-mail's Message-ID.

Revision ID: 0005_surveys
Revises: 0001_engine
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.models

revision: str = "0005_surveys"
down_revision: str | Sequence[str] | None = "0001_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "surveys",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("case_id", BIG_ID, nullable=True),
        sa.Column("case_ref", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("customer_id", sa.String(length=80), nullable=True),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("recipient", sa.String(length=255), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", engine.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", engine.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("answered_at", engine.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("expired_at", engine.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", engine.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash", name="uq_surveys_token_hash"),
    )
    op.create_index("ix_surveys_case_id", "surveys", ["case_id"])
    op.create_index("ix_surveys_case_ref", "surveys", ["case_ref"])
    op.create_index("ix_surveys_status_expires", "surveys", ["status", "expires_at"])

    # Plain ADD COLUMN (nullable, no default) works on SQLite without a table rebuild.
    op.add_column("outbox", sa.Column("message_id", sa.String(length=255), nullable=True))
    op.add_column("outbox", sa.Column("next_attempt_at", engine.models.UtcDateTime(timezone=True), nullable=True))
    op.add_column("outbox", sa.Column("lease_until", engine.models.UtcDateTime(timezone=True), nullable=True))
    op.add_column("outbox", sa.Column("claimed_by", sa.String(length=120), nullable=True))
    op.create_index("ix_outbox_due", "outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_due", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        for column in ("claimed_by", "lease_until", "next_attempt_at", "message_id"):
            batch.drop_column(column)
    op.drop_index("ix_surveys_status_expires", table_name="surveys")
    op.drop_index("ix_surveys_case_ref", table_name="surveys")
    op.drop_index("ix_surveys_case_id", table_name="surveys")
    op.drop_table("surveys")
