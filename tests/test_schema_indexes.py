"""The migrated schema serves the lookups that run at scale with an index, on both backends:
a finished task's case by task id (404 or 409), a user's assigned tasks, a case's timers, a
user's notices."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from engine import Database

LOOKUPS = {
    "SELECT case_id FROM case_tasks WHERE task_id = 'x' LIMIT 1": "ix_case_tasks_task_id",
    "SELECT id FROM open_tasks WHERE assignee = 'wang'": "ix_open_tasks_assignee",
    "SELECT id FROM open_tasks WHERE assignee IS NOT NULL": "ix_open_tasks_assignee",
    "SELECT id FROM outbox WHERE channel = 'staff' AND recipient = 'wang' ORDER BY id DESC LIMIT 50":
        "ix_outbox_recipient",
}


def _plan(db: Database, sql: str) -> str:
    with db.engine.connect() as conn:
        if db.is_sqlite:
            return " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        conn.execute(text("SET enable_seqscan = off"))  # empty tables: ask whether an index can serve
        return " ".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql}")))


@pytest.mark.parametrize("sql", sorted(LOOKUPS))
def test_lookup_uses_its_index(db: Database, sql: str) -> None:
    plan = _plan(db, sql)
    assert LOOKUPS[sql] in plan, plan


def test_timers_of_a_case_use_the_unique_index_and_nothing_else_indexes_case_id(db: Database) -> None:
    plan = _plan(db, "SELECT id FROM timers WHERE case_id = 1")
    with db.engine.connect() as conn:
        if db.is_sqlite:
            names = {r[0] for r in conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'timers'"))}
        else:
            names = {r[0] for r in conn.execute(text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'timers' AND schemaname = current_schema()"))}
    assert "ix_timers_case_id" not in names
    used = [n for n in names if n in plan]
    assert used and all(n != "ix_timers_due" for n in used), plan


def test_unassigned_tasks_leave_no_entry_in_the_assignee_index(db: Database) -> None:
    """Most open tasks wait in a group's queue: they cost the assignee index nothing."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_open_tasks_assignee'")).scalar()
        else:
            sql = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_open_tasks_assignee' "
                                    "AND schemaname = current_schema()")).scalar()
    assert sql is not None and "assignee IS NOT NULL" in sql.replace("(", "").replace(")", ""), sql
