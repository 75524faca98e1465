"""Linked cases: ``case.link`` writes a pending link in the source command; the new case starts
after that command commits, exactly once, also after a crash in between."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from domain_support import add_users, build_engine, context, make_case
from sqlalchemy import func, select, update

from engine import SYSTEM, Database, WorkflowEngine
from engine.models import Case
from handlers.links import CLAIM_LEASE, link, start_link, start_pending_links
from handlers.models import CaseLink, CaseReference

CUSTOMER = {"name": "王秀英", "phone": "13912345678"}


@pytest.fixture
def engine(db: Database) -> WorkflowEngine:
    add_users(db, {"agent": ["hotline"]})
    return build_engine(db)


def write_link(db: Database, procedure: str = "complaint") -> dict[str, Any]:
    with db.write() as s:
        source = make_case(s, "inquiry")
        return link(context(s, source, {"channel": "phone"}, actor="agent"), procedure, "INQ-2026-000001",
                    CUSTOMER, {"model": "KFR-35GW/N1"}, "客户投诉服务态度")


def cases_of(db: Database, process: str) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Case).where(Case.process_key == process)))


def test_link_only_records_inside_the_command(engine: WorkflowEngine, db: Database) -> None:
    result = write_link(db)
    assert result["case_ref"].startswith("CMP-2") and result["status"] == "pending"
    assert cases_of(db, "complaint") == 0  # nothing started inside the source command
    with db.read() as s:
        row = s.get(CaseLink, result["link_id"])
        assert row.status == "pending" and row.start_data["description"] == "客户投诉服务态度"
        assert s.get(CaseReference, result["case_ref"]).case_id is None  # reserved for the new case
    # A source command that fails leaves no link and no reserved reference behind.
    with pytest.raises(RuntimeError), db.write() as s:
        link(context(s, make_case(s, "inquiry")), "dispatch", "INQ-X", CUSTOMER, {}, "报修")
        raise RuntimeError("the source command failed later")
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(CaseLink)) == 1
        assert not s.scalars(select(CaseReference).where(CaseReference.procedure == "dispatch")).all()


def test_pending_links_left_by_a_crash_start_exactly_once(engine: WorkflowEngine, db: Database) -> None:
    first, second = write_link(db), write_link(db, "dispatch")
    started = start_pending_links(engine)
    assert len(started) == 2 and start_pending_links(engine) == []
    with db.read() as s:
        rows = {r.id: r for r in s.scalars(select(CaseLink))}
    complaint = engine.get_case(rows[first["link_id"]].target_case_id, SYSTEM)
    repair = engine.get_case(rows[second["link_id"]].target_case_id, SYSTEM)
    assert complaint["data"]["case_ref"] == first["case_ref"] and complaint["started_by"] == "agent"
    assert [t["spec"] for t in complaint["tasks"]] == ["register_complaint"]
    assert repair["data"]["case_ref"] == second["case_ref"]
    assert repair["data"]["fault_description"] == "客户投诉服务态度"
    assert all(r.status == "started" and r.started_at is not None for r in rows.values())
    with db.read() as s:
        assert s.get(CaseReference, first["case_ref"]).case_id == complaint["id"]


def test_two_workers_never_start_the_same_link_twice(engine: WorkflowEngine, db: Database) -> None:
    pending = write_link(db)
    results: list[Any] = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        barrier.wait()
        results.append(start_link(engine, pending["link_id"]))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in results if r is not None]) == 1
    assert cases_of(db, "complaint") == 1


def test_a_start_abandoned_past_its_lease_is_taken_over(engine: WorkflowEngine, db: Database) -> None:
    pending = write_link(db)
    long_ago = dt.datetime.now(dt.UTC) - CLAIM_LEASE - dt.timedelta(minutes=1)
    with db.write() as s:  # a worker claimed it and died before starting the case
        s.execute(update(CaseLink).where(CaseLink.id == pending["link_id"])
                  .values(status="starting", claimed_at=dt.datetime.now(dt.UTC), attempts=1))
    assert start_pending_links(engine) == []  # still within its lease
    with db.write() as s:
        s.execute(update(CaseLink).where(CaseLink.id == pending["link_id"]).values(claimed_at=long_ago))
    assert len(start_pending_links(engine)) == 1
    with db.read() as s:
        row = s.get(CaseLink, pending["link_id"])
        assert (row.status, row.attempts) == ("started", 2)


def test_cli_resumes_interrupted_links(engine: WorkflowEngine, db: Database, db_url: str) -> None:
    from click.testing import CliRunner

    from app import cli

    write_link(db)
    env = {"AFTERCARE_DATABASE_URL": db_url, "AFTERCARE_SCHEDULER": "off", "AFTERCARE_SECRET_KEY": "cli-test"}
    res = CliRunner().invoke(cli, ["links", "resume"], env=env)
    assert res.exit_code == 0 and res.output.startswith("started 1 linked case(s): ")
    assert CliRunner().invoke(cli, ["links", "resume"], env=env).output == "started 0 linked case(s)\n"
    assert cases_of(db, "complaint") == 1
