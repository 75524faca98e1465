"""fewer index pages written per command

Every command inserts history events and usually closes one open task and opens the next.
Each B-tree those rows touch is at least one page written at commit:

- ``ix_case_events_type_at`` is read by no query (reports read the KPI facts), and new events
  landed all over it (five pages a command on SQLite);
- an event's ``global_seq`` is empty until the audit chain seals it, and every empty entry
  went into the unique index (four pages a command on SQLite): the unique index now holds
  sealed events only, and a small index lists the unsealed ones for the sealer;
- on SQLite, ``open_tasks`` and ``task_candidates`` are keyed by their primary key alone
  (``WITHOUT ROWID``) instead of a row table plus a primary-key index.

Revision ID: 0008_command_pages
Revises: 0007_open_tasks_index
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_command_pages"
down_revision: str | Sequence[str] | None = "0007_open_tasks_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "0003_audit"

_OPEN_TASKS_COLUMNS = ("id, case_id, process_key, spec, name, lane, form, assignee, priority, sla_policy, due_at, "
                       "draft, created_at")


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_case_events_type_at")
    op.execute("DROP INDEX IF EXISTS ix_case_events_global_seq")
    op.execute("CREATE UNIQUE INDEX ix_case_events_global_seq ON case_events (global_seq) "
               "WHERE global_seq IS NOT NULL")
    op.execute("CREATE INDEX ix_case_events_unsealed ON case_events (id) WHERE global_seq IS NULL")
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_open_tasks_without_rowid()


def _sqlite_open_tasks_without_rowid() -> None:
    # Built beside the old tables and renamed into place: dropping the old open_tasks first
    # would cascade into the candidates (foreign keys stay on inside the migration's transaction).
    op.execute("""CREATE TABLE open_tasks_new (
        id VARCHAR(36) NOT NULL, case_id INTEGER NOT NULL, process_key VARCHAR(255) NOT NULL,
        spec VARCHAR(255) NOT NULL, name VARCHAR(255) NOT NULL, lane VARCHAR(80), form VARCHAR(255),
        assignee VARCHAR(80), priority INTEGER NOT NULL, sla_policy VARCHAR(120), due_at DATETIME, draft JSON,
        created_at DATETIME NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(case_id) REFERENCES cases (id) ON DELETE CASCADE) WITHOUT ROWID""")
    op.execute(f"INSERT INTO open_tasks_new ({_OPEN_TASKS_COLUMNS}) SELECT {_OPEN_TASKS_COLUMNS} FROM open_tasks")
    op.execute("""CREATE TABLE task_candidates_new (
        task_id VARCHAR(36) NOT NULL, group_name VARCHAR(80) NOT NULL,
        PRIMARY KEY (task_id, group_name),
        FOREIGN KEY(task_id) REFERENCES open_tasks_new (id) ON DELETE CASCADE) WITHOUT ROWID""")
    op.execute("INSERT INTO task_candidates_new (task_id, group_name) SELECT task_id, group_name FROM task_candidates")
    op.execute("DROP TABLE task_candidates")
    op.execute("DROP TABLE open_tasks")
    # Renaming also renames the candidates' reference to open_tasks_new.
    op.execute("ALTER TABLE open_tasks_new RENAME TO open_tasks")
    op.execute("ALTER TABLE task_candidates_new RENAME TO task_candidates")
    op.execute("CREATE INDEX ix_open_tasks_assignee ON open_tasks (assignee)")
    op.execute("CREATE INDEX ix_open_tasks_case_id ON open_tasks (case_id)")
    op.execute("CREATE INDEX ix_open_tasks_due_created ON open_tasks (due_at, created_at, id)")
    op.execute("CREATE INDEX ix_task_candidates_group ON task_candidates (group_name, task_id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_case_events_unsealed")
    op.execute("DROP INDEX IF EXISTS ix_case_events_global_seq")
    op.execute("CREATE UNIQUE INDEX ix_case_events_global_seq ON case_events (global_seq)")
    op.execute("CREATE INDEX ix_case_events_type_at ON case_events (type, at)")
