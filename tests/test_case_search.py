"""Searched places of case data live in ``case_search``, written by the command that changes them."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from conftest import SAMPLES
from sqlalchemy import select

from engine import SYSTEM, Database, HandlerRegistry, WorkflowEngine
from engine.db import MIGRATIONS_DIR
from engine.models import Case, CaseSearch
from web.inbox_query import search_condition, searched_paths

REGISTER = {"customer": "Wang Fang", "severity": "low"}


def rows(db: Database, case_id: int) -> dict[str, str]:
    with db.read() as s:
        return {r.path: r.value for r in s.scalars(select(CaseSearch).where(CaseSearch.case_id == case_id))}


def found(db: Database, text: str) -> list[int]:
    with db.read() as s:
        return sorted(s.scalars(select(Case.id).where(search_condition(s, text))))


def test_search_rows_follow_the_case_data(db: Database, handlers: HandlerRegistry) -> None:
    engine = WorkflowEngine(db, handlers, search_paths=searched_paths())
    engine.deploy_paths([SAMPLES], SYSTEM)
    case = engine.start_case("sample", {"customer_name": "Li Lei", "customer": {"phone": "13800000001"},
                                        "case_ref": 42}, SYSTEM)  # a number is not text: not searched
    assert rows(db, case["id"]) == {"customer_name": "Li Lei", "customer.phone": "13800000001"}
    other = engine.start_case("sample", {"customer_name": "Han Meimei"}, SYSTEM)

    # The completion renames the customer, replaces the customer object (and its phone) by the
    # form's text field, and adds a reference.
    engine.complete_task(case["tasks"][0]["id"], {**REGISTER, "customer_name": "Li Lei-Wang",
                                                  "reference": {"case_ref": "TS-2026-0001"}}, SYSTEM)
    assert rows(db, case["id"]) == {"customer_name": "Li Lei-Wang", "reference.case_ref": "TS-2026-0001"}
    assert found(db, "Li Lei") == [case["id"]]
    assert found(db, "TS-2026") == [case["id"]]
    assert found(db, "138") == []
    assert found(db, "Han") == [other["id"]]
    assert found(db, "%") == [] and found(db, "_") == []  # LIKE wildcards are literal


def test_a_completion_that_leaves_searched_values_alone_writes_no_search_row(
        db: Database, handlers: HandlerRegistry) -> None:
    engine = WorkflowEngine(db, handlers, search_paths=searched_paths())
    engine.deploy_paths([SAMPLES], SYSTEM)
    case = engine.start_case("sample", {"customer_name": "Li Lei"}, SYSTEM)
    statements: list[str] = []
    from engine import search

    original = search._INSERT.executemany

    def spy(tx: Any, params: Any) -> None:
        statements.extend(p["path"] for p in params)
        original(tx, params)

    search._INSERT.executemany = spy  # type: ignore[method-assign]
    try:
        engine.complete_task(case["tasks"][0]["id"], REGISTER, SYSTEM)
    finally:
        del search._INSERT.executemany
    assert statements == []
    assert rows(db, case["id"]) == {"customer_name": "Li Lei"}


def test_the_migration_fills_case_search_from_existing_cases(db: Database, handlers: HandlerRegistry) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))

    def alembic(step: Any, target: str) -> None:
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, target)
            conn.commit()

    alembic(command.downgrade, "0008_command_pages")  # before case_search
    try:
        engine = WorkflowEngine(db, handlers)  # no searched places: the table is not there yet
        engine.deploy_paths([SAMPLES], SYSTEM)
        flat = engine.start_case("sample", {"case_ref": "TS-1", "customer_phone": "13900000000"}, SYSTEM)
        nested = engine.start_case("sample", {"customer": {"name": "Zhang San", "phone": 139}}, SYSTEM)
        empty = engine.start_case("sample", {}, SYSTEM)
    finally:
        alembic(command.upgrade, "heads")
    assert rows(db, flat["id"]) == {"case_ref": "TS-1", "customer_phone": "13900000000"}
    assert rows(db, nested["id"]) == {"customer.name": "Zhang San"}
    assert rows(db, empty["id"]) == {}
    assert found(db, "Zhang") == [nested["id"]]


def test_rebuild_brings_search_rows_in_line_with_the_data_and_the_searched_places(app: Any, client: Any) -> None:
    """After the searched places change (or rows went astray), ``aftercare search rebuild``
    rewrites the rows from each case's data, in batches, and says what it did."""
    from sqlalchemy import delete, insert, update

    svc = app.extensions["aftercare"]
    db = svc.db
    cases = [svc.engine.start_case("sample", {"customer_name": f"Zhao {i}", "customer": {"phone": f"1390000000{i}"}},
                                   SYSTEM)["id"] for i in range(5)]
    expected = {cid: rows(db, cid) for cid in cases}
    assert expected[cases[0]] == {"customer_name": "Zhao 0", "customer.phone": "13900000000"}
    with db.write() as s:  # a missing row, a stale value, and a place that is no longer searched
        s.execute(delete(CaseSearch).where(CaseSearch.case_id == cases[1], CaseSearch.path == "customer_name"))
        s.execute(update(CaseSearch).where(CaseSearch.case_id == cases[2], CaseSearch.path == "customer.phone")
                  .values(value="000"))
        s.execute(insert(CaseSearch).values(case_id=cases[3], path="old.place", value="gone"))
    from app import cli

    result = app.test_cli_runner().invoke(cli, ["search", "rebuild", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "5 cases: 1 search rows added, 1 changed, 1 removed"
    assert {cid: rows(db, cid) for cid in cases} == expected
    assert found(db, "Zhao 1") == [cases[1]] and found(db, "000") == []
    again = app.test_cli_runner().invoke(cli, ["search", "rebuild"])
    assert again.output.strip() == "5 cases: 0 search rows added, 0 changed, 0 removed"
