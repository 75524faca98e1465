"""Backup and restore into a fresh database keep every case and its history chain intact."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_AVAILABLE, PG_URL, SAMPLES
from sqlalchemy import create_engine, select, text

from engine import SYSTEM, Database, WorkflowEngine
from engine.backup import BackupError, backup, restore
from engine.history import GENESIS, event_hash
from engine.models import CaseEvent

REGISTER = {"customer": "Chen Jing", "severity": "low"}


def run_cases(engine: WorkflowEngine) -> list[dict[str, Any]]:
    cases = []
    for _ in range(3):
        c = engine.start_case("sample", {}, SYSTEM)
        cases.append(engine.complete_task(c["tasks"][0]["id"], REGISTER, SYSTEM))
    return cases


def assert_chains_verify(db: Database) -> int:
    with db.read() as s:
        rows = s.scalars(select(CaseEvent).order_by(CaseEvent.case_id, CaseEvent.seq)).all()
    prev: dict[int, str] = {}
    for r in rows:
        p = prev.get(r.case_id, GENESIS)
        assert r.prev_hash == p
        assert r.hash == event_hash(p, r.case_id, r.seq, r.type, r.at, r.actor, r.task_id, r.task, r.payload)
        prev[r.case_id] = r.hash
    return len(rows)


def continue_after_restore(db: Database, handlers: Any, cases: list[dict[str, Any]]) -> None:
    engine = WorkflowEngine(db, handlers)
    for c in cases:
        case = engine.get_case(c["id"], SYSTEM)
        assert [t["spec"] for t in case["tasks"]] == ["fix"]
        engine.complete_task(case["tasks"][0]["id"], {"fixed": True, "parts": []}, SYSTEM)


def test_sqlite_backup_and_restore(tmp_path: Path, handlers: Any) -> None:
    db = Database(f"sqlite:///{tmp_path / 'live.db'}")
    db.migrate()
    engine = WorkflowEngine(db, handlers)
    engine.deploy_paths([SAMPLES], SYSTEM)
    cases = run_cases(engine)
    events = assert_chains_verify(db)
    backup(db, tmp_path / "backup.db")
    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    restore(fresh, tmp_path / "backup.db")
    assert assert_chains_verify(fresh) == events
    continue_after_restore(fresh, handlers, cases)
    with pytest.raises(BackupError):
        (tmp_path / "junk.db").write_text("not a database")
        restore(Database(f"sqlite:///{tmp_path / 'other.db'}"), tmp_path / "junk.db")


@pytest.mark.skipif(not PG_AVAILABLE, reason="PostgreSQL not reachable at 127.0.0.1:5432")
def test_postgresql_backup_and_restore(tmp_path: Path, handlers: Any) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    names = [f"aftercare_bk_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    base = PG_URL.rsplit("/", 1)[0]
    with admin.connect() as conn:
        for n in names:
            conn.execute(text(f'CREATE DATABASE "{n}"'))
    try:
        live, fresh = (Database(f"{base}/{n}") for n in names)
        live.migrate()
        engine = WorkflowEngine(live, handlers)
        engine.deploy_paths([SAMPLES], SYSTEM)
        cases = run_cases(engine)
        events = assert_chains_verify(live)
        backup(live, tmp_path / "backup.dump")
        restore(fresh, tmp_path / "backup.dump")
        assert assert_chains_verify(fresh) == events
        continue_after_restore(fresh, handlers, cases)
        live.dispose()
        fresh.dispose()
    finally:
        with admin.connect() as conn:
            for n in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()
