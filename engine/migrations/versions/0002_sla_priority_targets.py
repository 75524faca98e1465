"""SLA policies: targets per case priority

Revision ID: 0002_sla_priority_targets
Revises: 0002_sla
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_sla_priority_targets"
down_revision: str | Sequence[str] | None = "0002_sla"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sla_policies") as batch:
        batch.add_column(sa.Column("priority_targets", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sla_policies") as batch:
        batch.drop_column("priority_targets")
