"""indexes for the staff inbox: the procedures' nested case reference and customer fields

The procedures keep the case reference in ``data.reference.case_ref`` and the customer in
``data.customer.{name,phone}``; the inbox searches those as well as the flat keys of 0002.

Revision ID: 0002_inbox_search_nested
Revises: 0002_inbox_search
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_inbox_search_nested"
down_revision: str | Sequence[str] | None = "0002_inbox_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NESTED = {"reference_case_ref": ("reference", "case_ref"), "customer_name_nested": ("customer", "name"),
          "customer_phone_nested": ("customer", "phone")}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, (outer, inner) in NESTED.items():
        if dialect == "postgresql":
            op.execute(f"CREATE INDEX IF NOT EXISTS ix_cases_data_{name} "
                       f"ON cases ((data->'{outer}'->>'{inner}') text_pattern_ops)")
        else:
            op.execute(f"CREATE INDEX IF NOT EXISTS ix_cases_data_{name} "
                       f"ON cases (json_extract(data, '$.{outer}.{inner}'))")


def downgrade() -> None:
    for name in NESTED:
        op.execute(f"DROP INDEX IF EXISTS ix_cases_data_{name}")
