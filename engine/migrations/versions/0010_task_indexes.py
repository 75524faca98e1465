"""indexes that match the queries: a task's case by task id, assignees only where assigned, notices

- ``case_tasks (task_id)``: the model declared it but no migration made it, so telling a
  finished task (409) from an unknown one (404) read the whole table.
- ``open_tasks (assignee)`` only where a task is assigned: most open tasks wait in a group's
  queue, and each of those cost an index entry (a page on SQLite) when it opened and closed;
  the queries that use it name an assignee or ask for assigned tasks.
- ``timers (case_id)`` goes: the unique ``(case_id, task_id, due_at)`` index serves the same
  lookups, and every timer written paid for both.
- ``outbox (recipient, id)``: a user's staff notices, newest first, read every outgoing
  message ever written before.

Revision ID: 0010_task_indexes
Revises: 0009_case_search
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010_task_indexes"
down_revision: str | Sequence[str] | None = "0009_case_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_case_tasks_task_id ON case_tasks (task_id)")
    op.execute("DROP INDEX IF EXISTS ix_open_tasks_assignee")
    op.execute("CREATE INDEX ix_open_tasks_assignee ON open_tasks (assignee) WHERE assignee IS NOT NULL")
    op.execute("DROP INDEX IF EXISTS ix_timers_case_id")
    op.execute("CREATE INDEX IF NOT EXISTS ix_outbox_recipient ON outbox (recipient, id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_outbox_recipient")
    op.execute("CREATE INDEX IF NOT EXISTS ix_timers_case_id ON timers (case_id)")
    op.execute("DROP INDEX IF EXISTS ix_open_tasks_assignee")
    op.execute("CREATE INDEX ix_open_tasks_assignee ON open_tasks (assignee)")
    op.execute("DROP INDEX IF EXISTS ix_case_tasks_task_id")
