"""searched case data in a table of its own instead of expression indexes on ``cases``

The inbox and the case browser search a few places of ``cases.data`` (case reference,
customer name and phone, flat or nested) by prefix. Expression indexes on ``data`` made every
command that changed any case data rewrite all six index entries (six pages on SQLite; on
PostgreSQL six JSON parses and index inserts per update). ``case_search`` holds one row per
case and searched place with a value; the engine writes a row only when its value changes.

Revision ID: 0009_case_search
Revises: 0008_command_pages
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_case_search"
down_revision: str | Sequence[str] | None = "0008_command_pages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "0002_inbox_search_nested"

# The places searched when this migration ran (web/inbox_query.SEARCH_PATHS), with the names
# of the expression indexes that served them.
PATHS = {
    "case_ref": "case_ref", "customer_name": "customer_name", "customer_phone": "customer_phone",
    "reference.case_ref": "reference_case_ref", "customer.name": "customer_name_nested",
    "customer.phone": "customer_phone_nested",
}


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("""CREATE TABLE case_search (
            case_id BIGINT NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
            path VARCHAR(80) NOT NULL, value VARCHAR(255) NOT NULL,
            PRIMARY KEY (case_id, path))""")
        op.execute("CREATE INDEX ix_case_search_value ON case_search (value text_pattern_ops, case_id)")
    else:
        op.execute("""CREATE TABLE case_search (
            case_id INTEGER NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
            path VARCHAR(80) NOT NULL, value VARCHAR(255) NOT NULL,
            PRIMARY KEY (case_id, path)) WITHOUT ROWID""")
        op.execute("CREATE INDEX ix_case_search_value ON case_search (value, case_id)")
    for path, index in PATHS.items():
        keys = path.split(".")
        if postgresql:
            node = "data" + "".join(f"->'{k}'" for k in keys)
            text = "data" + "".join(f"->'{k}'" for k in keys[:-1]) + f"->>'{keys[-1]}'"
            op.execute(f"INSERT INTO case_search (case_id, path, value) SELECT id, '{path}', left({text}, 255) "
                       f"FROM cases WHERE json_typeof({node}) = 'string'")
        else:
            op.execute(f"INSERT INTO case_search (case_id, path, value) "
                       f"SELECT id, '{path}', substr(json_extract(data, '$.{path}'), 1, 255) FROM cases "
                       f"WHERE json_type(data, '$.{path}') = 'text'")
        op.execute(f"DROP INDEX IF EXISTS ix_cases_data_{index}")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for path, index in PATHS.items():
        keys = path.split(".")
        if postgresql:
            text = "data" + "".join(f"->'{k}'" for k in keys[:-1]) + f"->>'{keys[-1]}'"
            op.execute(f"CREATE INDEX IF NOT EXISTS ix_cases_data_{index} ON cases (({text}) text_pattern_ops)")
        else:
            op.execute(f"CREATE INDEX IF NOT EXISTS ix_cases_data_{index} ON cases (json_extract(data, '$.{path}'))")
    op.execute("DROP TABLE case_search")
