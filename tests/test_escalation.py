"""SLA clocks of user tasks end to end: warning, breach, escalation chain, pauses, compliance."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import time_machine
from sqlalchemy import select
from timer_support import OWNER

from engine import SYSTEM, WorkflowEngine
from engine.models import OutboxMessage, Timer
from engine.scheduler import TimerWorker, wait_until
from engine.sla import SlaClock, SlaService

T0 = dt.datetime(2026, 6, 1, 1, 0, tzinfo=dt.UTC)  # test.handle: PT2H, warn at 50 %, chain below


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def events(engine: WorkflowEngine, case_id: int, *types: str) -> list[dict[str, Any]]:
    return [e for e in engine.history(case_id, SYSTEM) if not types or e["type"] in types]


def test_warning_breach_and_second_level_reassignment(sla_engine: WorkflowEngine, users: dict[str, Any],
                                                      db: Any) -> None:
    agent, boss = users["agent"], users["boss"]
    with time_machine.travel(T0, tick=False) as clock:
        case = sla_engine.start_case("sla_task", {}, agent)
        [task] = case["tasks"]
        assert (task["sla_state"], task["due"], task["warn_at"]) == (
            "on_time", at(120).isoformat(), at(60).isoformat())
        sla_engine.claim(task["id"], agent)

        clock.move_to(at(59))
        assert sla_engine.fire_due_timers() == 0
        clock.move_to(at(61))
        assert sla_engine.fire_due_timers() == 1
        [mine] = sla_engine.list_tasks(agent, "mine")
        assert (mine["sla_state"], mine["priority"]) == ("warning", 0)

        clock.move_to(at(121))
        assert sla_engine.fire_due_timers() == 1
        [mine] = sla_engine.list_tasks(agent, "mine")
        assert (mine["sla_state"], mine["priority"], mine["assignee"]) == ("breached", 2, "agent")
        with db.read() as s:
            [notice] = s.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case["id"]))
        # One staff notice per member of the supervisor group (boss).
        assert (notice.channel, notice.recipient, notice.template, notice.payload["policy"],
                notice.payload["group"]) == ("staff", "boss", "sla_escalation", "test.handle", "supervisor")
        assert sla_engine.list_tasks(boss, "group") == []  # not the supervisors' task yet

        clock.move_to(at(179))  # the second period (PT1H after the breach) has not passed
        assert sla_engine.fire_due_timers() == 0
        clock.move_to(at(181))
        assert sla_engine.fire_due_timers() == 1
        assert sla_engine.list_tasks(agent, "mine") == [] and sla_engine.list_tasks(agent, "group") == []
        [theirs] = sla_engine.list_tasks(boss, "group")
        assert (theirs["id"], theirs["candidate_groups"], theirs["assignee"], theirs["sla_state"]) == (
            task["id"], ["supervisor"], None, "breached")
        assert sla_engine.fire_due_timers() == 0  # the chain is done
        clock.move_to(at(190))
        done = sla_engine.complete_task(task["id"], {}, boss)
        assert done["status"] == "completed"

    trail = [(e["type"], e["payload"].get("action")) for e in events(
        sla_engine, case["id"], "sla_started", "sla_warning", "sla_breached", "escalated")]
    assert trail == [("sla_started", None), ("sla_warning", None), ("sla_breached", None),
                     ("escalated", "notify_group"), ("escalated", "raise_priority"), ("escalated", "reassign_group")]
    reassigned = events(sla_engine, case["id"], "escalated")[-1]
    assert (reassigned["actor"], reassigned["payload"]["groups_before"], reassigned["payload"]["assignee_before"],
            reassigned["at"]) == ("system", ["hotline"], "agent", at(181).isoformat())
    with db.read() as s:
        clock_row = s.get(SlaClock, task["id"])
        assert (clock_row.outcome, clock_row.policy_version) == ("breached", 1)
        assert s.scalars(select(Timer).where(Timer.case_id == case["id"], Timer.status != "fired")).all() == []
        assert SlaService().compliance(s) == [{"policy": "test.handle", "due": 1, "met": 0, "breached": 1,
                                               "rate": 0.0}]


def test_task_done_in_time_meets_its_sla_and_drops_its_checkpoints(sla_engine: WorkflowEngine, db: Any) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        case = sla_engine.start_case("sla_task", {}, SYSTEM)
        clock.move_to(at(70))
        assert sla_engine.fire_due_timers() == 1  # the warning
        sla_engine.complete_task(case["tasks"][0]["id"], {}, SYSTEM)
        clock.move_to(at(500))
        assert sla_engine.fire_due_timers() == 0  # no breach for a closed task
    assert [e["type"] for e in events(sla_engine, case["id"], "sla_warning", "sla_breached", "escalated")] == [
        "sla_warning"]
    with db.read() as s:
        assert s.get(SlaClock, case["tasks"][0]["id"]).outcome == "met"
        assert SlaService().compliance(s)[0]["rate"] == 1.0


def test_clock_pauses_while_the_case_waits_on_the_customer(sla_engine: WorkflowEngine, db: Any) -> None:
    # sla_pause: "investigate" (test.investigate, PT2H) runs beside "ask the customer" ->
    # "customer answers" (a message catch event marked slaPause).
    with time_machine.travel(T0, tick=False) as clock:
        case = sla_engine.start_case("sla_pause", {"ref": "P-1"}, SYSTEM)
        tasks = {t["spec"]: t for t in case["tasks"]}
        assert tasks["investigate"]["due"] == at(120).isoformat()
        assert tasks["ask"]["sla_state"] is None  # no policy, no clock
        clock.move_to(at(10))
        case = sla_engine.complete_task(tasks["ask"]["id"], {}, SYSTEM)  # now waiting on the customer
        [investigate] = case["tasks"]
        assert (investigate["sla_state"], investigate["due"]) == ("paused", at(120).isoformat())
        clock.move_to(at(200))  # far past the original due date: a paused clock neither warns nor breaches
        assert sla_engine.fire_due_timers() == 0
        [listed] = sla_engine.list_tasks(SYSTEM)
        assert listed["sla_state"] == "paused"
        assert sla_engine.deliver_message("customer_answer", {"ref": "P-1"}, {"photos": 3}, SYSTEM) == [case["id"]]
        [listed] = sla_engine.list_tasks(SYSTEM)
        # Paused 190 minutes: due 120 -> 310, warning 96 -> 286.
        assert (listed["sla_state"], listed["due"], listed["warn_at"]) == (
            "on_time", at(310).isoformat(), at(286).isoformat())
        clock.move_to(at(287))
        assert sla_engine.fire_due_timers() == 1
        assert sla_engine.list_tasks(SYSTEM)[0]["sla_state"] == "warning"
    paused, resumed = events(sla_engine, case["id"], "sla_paused", "sla_resumed")
    assert (paused["type"], paused["at"]) == ("sla_paused", at(10).isoformat())
    assert (resumed["type"], resumed["payload"]["paused_for"], resumed["payload"]["due"]) == (
        "sla_resumed", "3:10:00", at(310).isoformat())
    with db.read() as s:
        assert s.get(SlaClock, investigate["id"]).paused_seconds == 190 * 60


def test_pause_on_a_business_calendar_moves_the_due_date_by_working_time(
        sla_engine: WorkflowEngine, sla: SlaService, db: Any) -> None:
    from zoneinfo import ZoneInfo

    from engine.calendars import china_calendar

    sh = ZoneInfo("Asia/Shanghai")
    with db.write() as s:
        sla.set_calendar(s, "china", china_calendar([2026]).to_dict(), OWNER)
        sla.set_policy(s, {"name": "test.investigate", "target": "PT4H", "calendar": "china"}, OWNER)
    with time_machine.travel(dt.datetime(2026, 9, 18, 10, tzinfo=sh), tick=False) as clock:  # a Friday
        case = sla_engine.start_case("sla_pause", {"ref": "P-2"}, SYSTEM)
        tasks = {t["spec"]: t for t in case["tasks"]}
        assert dt.datetime.fromisoformat(tasks["investigate"]["due"]) == dt.datetime(2026, 9, 18, 15, 30, tzinfo=sh)
        clock.move_to(dt.datetime(2026, 9, 18, 11, tzinfo=sh))  # 1 of the 4 working hours used
        sla_engine.complete_task(tasks["ask"]["id"], {}, SYSTEM)
        # The answer comes on Monday 10:00. Sunday the 20th is a make-up working day (调休), so
        # 14 working hours passed while paused; the 3 hours left end on Monday at 14:30.
        clock.move_to(dt.datetime(2026, 9, 21, 10, tzinfo=sh))
        sla_engine.deliver_message("customer_answer", {"ref": "P-2"}, {}, SYSTEM)
        [listed] = sla_engine.list_tasks(SYSTEM)
    [resumed] = events(sla_engine, case["id"], "sla_resumed")
    assert resumed["payload"]["paused_working_time"] == "14:00:00"
    assert dt.datetime.fromisoformat(listed["due"]) == dt.datetime(2026, 9, 21, 14, 30, tzinfo=sh)


def test_policy_change_applies_to_tasks_opened_after_it(sla_engine: WorkflowEngine, sla: SlaService,
                                                        db: Any) -> None:
    with time_machine.travel(T0, tick=False):
        before = sla_engine.start_case("sla_task", {}, SYSTEM)["tasks"][0]
        with db.write() as s:
            sla.set_policy(s, {"name": "test.handle", "target": "PT30M"}, OWNER)
        after = sla_engine.start_case("sla_task", {}, SYSTEM)["tasks"][0]
    assert (before["due"], after["due"]) == (at(120).isoformat(), at(30).isoformat())
    with time_machine.travel(at(125), tick=False):
        sla_engine.fire_due_timers()
    before_events = events(sla_engine, before["instance"], "sla_breached", "escalated")
    after_events = events(sla_engine, after["instance"], "sla_breached", "escalated")
    assert [e["payload"]["version"] for e in before_events] == [1, 1, 1]  # its chain of version 1
    assert [e["type"] for e in after_events] == ["sla_breached"]  # version 2 has no chain


def test_escalation_fires_in_real_time_through_the_worker(sla_engine: WorkflowEngine, sla: SlaService,
                                                          db: Any) -> None:
    with db.write() as s:
        sla.set_policy(s, {"name": "test.handle", "target": "PT0.6S", "warn_ratio": 0.5, "escalation": [
            {"after": "PT0S", "action": "notify_group", "group": "supervisor"},
            {"after": "PT0.3S", "action": "reassign_group", "group": "supervisor"}]}, OWNER)
    worker = TimerWorker(sla_engine, "escalator", sweep=30.0).start()
    try:
        case = sla_engine.start_case("sla_task", {}, SYSTEM)
        started = time.monotonic()
        assert wait_until(lambda: sla_engine.list_tasks(SYSTEM)[0]["candidate_groups"] == ["supervisor"], 5.0)
        elapsed = time.monotonic() - started
    finally:
        worker.stop()
    assert elapsed < 2.5
    trail = events(sla_engine, case["id"], "sla_warning", "sla_breached", "escalated")
    assert [e["type"] for e in trail] == ["sla_warning", "sla_breached", "escalated", "escalated"]
    created = dt.datetime.fromisoformat(case["created_at"])
    lateness = [(dt.datetime.fromisoformat(e["at"]) - created).total_seconds() - expected
                for e, expected in zip(trail, (0.3, 0.6, 0.6, 0.9), strict=True)]
    assert all(0 <= late < 0.5 for late in lateness), lateness
