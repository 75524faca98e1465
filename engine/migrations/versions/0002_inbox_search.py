"""indexes for the staff inbox: search by case reference, customer name and phone

The inbox searches these keys of ``cases.data`` by exact value or prefix; expression indexes
keep that an index lookup with 100,000 open tasks. PostgreSQL gets ``text_pattern_ops`` so
``LIKE 'prefix%'`` can use them; SQLite searches prefixes with a range over the same index.

Revision ID: 0002_inbox_search
Revises: 0001_engine
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_inbox_search"
down_revision: str | Sequence[str] | None = "0001_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCHED_KEYS = ("case_ref", "customer_name", "customer_phone")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for key in SEARCHED_KEYS:
        if dialect == "postgresql":
            op.execute(f"CREATE INDEX IF NOT EXISTS ix_cases_data_{key} ON cases ((data->>'{key}') text_pattern_ops)")
        else:
            op.execute(f"CREATE INDEX IF NOT EXISTS ix_cases_data_{key} ON cases (json_extract(data, '$.{key}'))")
    # The inbox lists unclaimed and claimed tasks of a group ordered by due time.
    op.execute("CREATE INDEX IF NOT EXISTS ix_open_tasks_due_created ON open_tasks (due_at, created_at, id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_open_tasks_due_created")
    for key in SEARCHED_KEYS:
        op.execute(f"DROP INDEX IF EXISTS ix_cases_data_{key}")
