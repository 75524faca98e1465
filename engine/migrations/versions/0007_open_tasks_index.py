"""drop open_tasks' index on due_at alone

``ix_open_tasks_due_created`` (due_at, created_at, id) serves every query the single-column
index did; keeping both made each task opening and closing update one more index.

Revision ID: 0007_open_tasks_index
Revises: 0002_inbox_search
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_open_tasks_index"
down_revision: str | Sequence[str] | None = "0002_inbox_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_open_tasks_due_at")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_open_tasks_due_at ON open_tasks (due_at)")
