"""audit: global chain columns on case_events, the ledger heads, access records

Revision ID: 0003_audit
Revises: 0001_engine
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.models

revision: str = "0003_audit"
down_revision: str | Sequence[str] | None = "0001_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("global_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("global_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_case_events_global_seq", ["global_seq"], unique=True)

    ledger = op.create_table(
        "audit_ledger",
        sa.Column("chain", sa.String(length=20), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("sealed_at", engine.models.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("chain"),
    )
    op.bulk_insert(ledger, [{"chain": "events", "seq": 0, "hash": GENESIS, "sealed_at": None},
                            {"chain": "access", "seq": 0, "hash": GENESIS, "sealed_at": None}])

    op.create_table(
        "access_records",
        sa.Column("id", BigId, nullable=False),
        sa.Column("at", engine.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("what", sa.String(length=500), nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("global_seq", sa.BigInteger(), nullable=True),
        sa.Column("global_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("access_records", schema=None) as batch_op:
        batch_op.create_index("ix_access_records_at", ["at"], unique=False)
        batch_op.create_index("ix_access_records_action", ["action"], unique=False)
        batch_op.create_index("ix_access_records_case_id", ["case_id"], unique=False)
        batch_op.create_index("ix_access_records_global_seq", ["global_seq"], unique=True)
        batch_op.create_index("ix_access_records_actor_at", ["actor", "at"], unique=False)


def downgrade() -> None:
    op.drop_table("access_records")
    op.drop_table("audit_ledger")
    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.drop_index("ix_case_events_global_seq")
        batch_op.drop_column("global_hash")
        batch_op.drop_column("global_seq")
