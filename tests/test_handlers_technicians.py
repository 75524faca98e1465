"""Technician assignment by skill, region, valid certification and open load."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from domain_support import add_users, context, load_demo, make_case
from sqlalchemy import update

from engine import Database
from engine.models import Case, OpenTask, User
from handlers.models import StaffCertification, StaffProfile
from handlers.technicians import assign, open_loads

MARCH_2026 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def staff_db(db: Database) -> Database:
    add_users(db, {"tech": ["technician"], "tech2": ["technician"], "tech3": ["technician"],
                   "tech4": ["technician"], "agent": ["hotline"], "dispatcher": ["dispatch"],
                   "handler": ["complaints"], "care": ["customer-care"], "supervisor": ["supervisor"],
                   "coordinator": ["emergency"], "warehouse": ["warehouse"]})
    load_demo(db, ("staff",))
    return db


def run(db: Database, now: dt.datetime = MARCH_2026, **params: Any) -> dict[str, Any]:
    params = {"work_type": "repair", "skill": "refrigeration", "region": "上海", "certified_only": True, **params}
    with db.write() as s:
        return assign(context(s, make_case(s), now=now), **params)


def test_only_a_technician_with_skill_region_and_valid_certificate_is_chosen(staff_db: Database) -> None:
    result = run(staff_db)
    # tech3 works in Shanghai with the skill too, but the certificate ran out on 2025-12-31.
    assert (result["assigned"], result["technician_id"], result["certified"]) == (True, "tech", True)
    assert result["certified_until"] >= "2026-03-02"
    assert run(staff_db, region="北京")["technician_id"] == "tech2"
    assert run(staff_db, region="北京市朝阳区望京")["technician_id"] == "tech2"  # written as precisely as wanted
    assert run(staff_db, region="南京")["assigned"] is False
    assert run(staff_db, skill="installation", region="广州")["technician_id"] == "tech4"
    assert run(staff_db, skill="refrigeration", region="广州") == {
        "assigned": False, "technician_id": None, "technician_name": None, "certified": False,
        "reason": "no free certified technician with skill 'refrigeration' in region '广州'"}


def test_certificate_validity_is_judged_on_the_day_of_the_case(staff_db: Database) -> None:
    # In June 2025 tech3's certificate was still valid, and tech3 had less work than tech.
    with staff_db.write() as s:
        busy = make_case(s)
        s.add(OpenTask(id="t-busy", case_id=busy, process_key="test", spec="x", name="x", assignee="tech"))
    assert run(staff_db, now=dt.datetime(2025, 6, 1, tzinfo=dt.UTC))["technician_id"] == "tech3"
    # From April 2028 on both of tech's certificates have expired: nobody left in Shanghai.
    assert run(staff_db, now=dt.datetime(2028, 4, 1, tzinfo=dt.UTC))["assigned"] is False
    # Without the certification rule (not used by the diagrams) the expired ones qualify again.
    assert run(staff_db, now=dt.datetime(2028, 4, 1, tzinfo=dt.UTC), certified_only=False)["assigned"] is True


def test_the_least_loaded_free_technician_gets_the_order(staff_db: Database) -> None:
    with staff_db.write() as s:  # give tech3 a valid certificate so two Shanghai technicians compete
        s.execute(update(StaffCertification).where(StaffCertification.username == "tech3")
                  .values(valid_until=dt.date(2027, 12, 31)))
        s.execute(update(StaffProfile).where(StaffProfile.username == "tech3").values(max_open_orders=2))
    picks = [run(staff_db)["technician_id"] for _ in range(4)]
    assert picks == ["tech", "tech3", "tech", "tech3"]
    with staff_db.read() as s:
        assert open_loads(s, ["tech", "tech3", "tech2"]) == {"tech": 2, "tech3": 2, "tech2": 0}
    # tech3 is at the limit: tech gets the next two, then nobody is free.
    assert [run(staff_db)["technician_id"] for _ in range(3)] == ["tech", "tech", "tech"]
    # A finished case no longer counts.
    with staff_db.write() as s:
        s.execute(update(Case).where(Case.status == "running").values(status="completed"))
        assert open_loads(s, ["tech", "tech3"]) == {"tech": 0, "tech3": 0}


def test_load_counts_open_tasks_claimed_by_the_technician(staff_db: Database) -> None:
    with staff_db.write() as s:
        for n in range(3):
            case_id = make_case(s)
            s.add(OpenTask(id=f"task-{n}", case_id=case_id, process_key="test", spec="visit", name="visit",
                           assignee="tech"))
    with staff_db.read() as s:
        assert open_loads(s, ["tech"]) == {"tech": 3}
    with staff_db.write() as s:  # a second, already-counted task in the same case adds nothing
        s.add(OpenTask(id="task-x", case_id=s.get(OpenTask, "task-0").case_id, process_key="test", spec="sign",
                       name="sign", assignee="tech"))
    with staff_db.read() as s:
        assert open_loads(s, ["tech"]) == {"tech": 3}


def test_inactive_accounts_and_non_technicians_are_never_assigned(staff_db: Database) -> None:
    with staff_db.write() as s:
        s.execute(update(User).where(User.username == "tech").values(active=False))
    assert run(staff_db)["assigned"] is False  # tech3 expired, tech gone: nobody
    with staff_db.write() as s:
        s.execute(update(User).where(User.username == "tech").values(active=True))
        s.execute(update(StaffProfile).where(StaffProfile.username == "tech").values(technician=False))
    assert run(staff_db)["assigned"] is False
