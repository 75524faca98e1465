"""Running cases through the one door: tasks, forms, services, incidents, messages, timers."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from engine import SYSTEM, Conflict, DeploymentInvalid, Forbidden, FormInvalid, NotFound, WorkflowEngine, spiff
from engine.models import Case, CaseEvent, CaseTask, MessageSubscription, OpenTask, OutboxMessage, Timer

REGISTER = {"customer": "Wang Fang", "severity": "low", "email": "wang@example.com"}
FIX = {"fixed": True, "parts": [{"part": "compressor", "quantity": 1}]}


def events(engine: WorkflowEngine, case_id: int) -> list[dict[str, Any]]:
    return engine.history(case_id, SYSTEM)


def assert_state_matches_database(engine: WorkflowEngine, case_id: int) -> None:
    """The cached workflow and a fresh load of its task rows must be the same case."""
    live = engine.runtime.cache._items.get(case_id)
    assert live is not None
    cached = {str(t.id): json.loads(spiff.task_body(t)) for _, t in spiff.all_tasks(live.workflow)}
    engine.reset_caches()
    with engine.db.write() as s:
        from engine.models import Case

        case = s.get(Case, case_id)
        fresh = engine.runtime._load(s, case)
    loaded = {str(t.id): json.loads(spiff.task_body(t)) for _, t in spiff.all_tasks(fresh.workflow)}
    assert loaded == cached
    engine.runtime.cache.put(case_id, fresh)


def test_sample_case_runs_through_every_task(engine: WorkflowEngine, calls: Any) -> None:
    case = engine.start_case("sample", {}, SYSTEM)
    assert case["status"] == "running"
    [register] = case["tasks"]
    assert (register["spec"], register["lane"], register["candidate_groups"]) == ("register", "hotline", ["hotline"])
    assert_state_matches_database(engine, case["id"])

    case = engine.complete_task(register["id"], REGISTER, SYSTEM)
    assert case["data"]["priority"] == "normal"  # decided by the DMN table
    assert case["data"]["notice"] == {"sent": True, "to": "Wang Fang"}
    assert calls.calls == [("sample.notify", {"recipient": "Wang Fang", "priority": "normal"})]
    [fix] = case["tasks"]
    assert fix["spec"] == "fix"
    assert_state_matches_database(engine, case["id"])

    case = engine.complete_task(fix["id"], FIX, SYSTEM)
    [confirm] = case["tasks"]
    case = engine.complete_task(confirm["id"], {}, SYSTEM)
    assert case["status"] == "completed" and case["tasks"] == []
    assert case["data"]["summary"] == "Wang Fang / normal / 1"

    types = [e["type"] for e in events(engine, case["id"])]
    assert types == ["case_started", "task_opened", "task_completed", "decision_evaluated", "service_task_completed",
                     "task_opened", "task_completed", "task_opened", "task_completed", "case_completed"]
    with engine.db.read() as s:
        [msg] = s.scalars(select(OutboxMessage)).all()
        assert (msg.channel, msg.recipient, msg.case_id) == ("sms", "Wang Fang", case["id"])
        assert s.scalar(select(func.count()).select_from(OpenTask)) == 0


def test_urgent_branch_follows_the_gateway(engine: WorkflowEngine) -> None:
    case = engine.start_case("sample", {}, SYSTEM)
    case = engine.complete_task(case["tasks"][0]["id"], {**REGISTER, "severity": "high"}, SYSTEM)
    assert case["data"]["priority"] == "urgent"
    assert [t["spec"] for t in case["tasks"]] == ["escalate"]


def test_form_errors_name_each_field_and_change_nothing(engine: WorkflowEngine) -> None:
    case = engine.start_case("sample", {}, SYSTEM)
    task_id = case["tasks"][0]["id"]
    before = len(events(engine, case["id"]))
    with pytest.raises(FormInvalid) as info:
        engine.complete_task(task_id, {"customer": "W", "severity": "medium", "email": "not-an-email"}, SYSTEM)
    fields = {e["field"] for e in info.value.errors}
    assert fields == {"customer", "severity", "email"}
    with pytest.raises(FormInvalid) as info:
        engine.complete_task(task_id, {}, SYSTEM)
    assert {e["field"] for e in info.value.errors} == {"customer", "severity"}
    assert all(e["message"] == "this field is required" for e in info.value.errors)
    assert len(events(engine, case["id"])) == before
    assert engine.get_case(case["id"], SYSTEM)["tasks"][0]["id"] == task_id


def test_nested_form_fields_are_named_with_dots(engine: WorkflowEngine) -> None:
    case = engine.start_case("sample", {}, SYSTEM)
    case = engine.complete_task(case["tasks"][0]["id"], REGISTER, SYSTEM)
    with pytest.raises(FormInvalid) as info:
        engine.complete_task(case["tasks"][0]["id"], {"fixed": True, "parts": [{"part": "x", "quantity": 0}]}, SYSTEM)
    assert [e["field"] for e in info.value.errors] == ["parts.0.quantity"]


def test_completing_a_task_that_is_not_open_is_a_conflict(engine: WorkflowEngine) -> None:
    case = engine.start_case("sample", {}, SYSTEM)
    task_id = case["tasks"][0]["id"]
    engine.complete_task(task_id, REGISTER, SYSTEM)
    with pytest.raises(Conflict):
        engine.complete_task(task_id, REGISTER, SYSTEM)
    with pytest.raises(NotFound):
        engine.complete_task("00000000-0000-0000-0000-000000000000", {}, SYSTEM)


def test_simultaneous_completions_exactly_one_wins(engine: WorkflowEngine) -> None:
    for _round in range(3):
        case = engine.start_case("sample", {}, SYSTEM)
        task_id = case["tasks"][0]["id"]
        engine.reset_caches()
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def complete(barrier: threading.Barrier = barrier, task_id: str = task_id,
                     outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                engine.complete_task(task_id, REGISTER, SYSTEM)
                outcomes.append("ok")
            except Conflict:
                outcomes.append("conflict")

        threads = [threading.Thread(target=complete) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["conflict", "conflict", "conflict", "ok"]
        completed = [e for e in events(engine, case["id"]) if e["type"] == "task_completed"]
        assert len(completed) == 1


def test_claims(engine: WorkflowEngine, users: dict[str, Any]) -> None:
    case = engine.start_case("sample", {}, users["agent"])
    task_id = case["tasks"][0]["id"]
    assert engine.claim(task_id, users["agent"])["assignee"] == "agent"
    with pytest.raises(Conflict):
        engine.claim(task_id, users["agent2"])
    with pytest.raises(Conflict):
        engine.complete_task(task_id, REGISTER, users["agent2"])
    with pytest.raises(Forbidden):
        engine.claim(task_id, users["tech"])
    assert engine.unclaim(task_id, users["agent"])["assignee"] is None
    assert engine.claim(task_id, users["agent2"])["assignee"] == "agent2"
    engine.complete_task(task_id, REGISTER, users["agent2"])
    types = [e["type"] for e in events(engine, case["id"])]
    assert types.count("task_claimed") == 2 and "task_unclaimed" in types


def test_task_visibility_follows_lanes(engine: WorkflowEngine, users: dict[str, Any]) -> None:
    case = engine.start_case("sample", {}, users["agent"])
    engine.complete_task(case["tasks"][0]["id"], REGISTER, users["agent"])
    assert [t["spec"] for t in engine.list_tasks(users["tech"])] == ["fix"]
    assert engine.list_tasks(users["agent"]) == []
    assert engine.list_tasks(users["nobody"]) == []
    assert [t["spec"] for t in engine.list_tasks(users["boss"])] == ["fix"]
    assert [t["spec"] for t in engine.list_tasks(users["auditor"])] == ["fix"]
    fix_id = engine.list_tasks(users["tech"])[0]["id"]
    with pytest.raises(Forbidden):
        engine.get_task(fix_id, users["agent"])
    with pytest.raises(Forbidden):
        engine.complete_task(fix_id, FIX, users["auditor"])
    engine.claim(fix_id, users["tech"])
    assert [t["spec"] for t in engine.list_tasks(users["tech"], scope="mine")] == ["fix"]
    assert engine.list_tasks(users["tech"], scope="group")[0]["assignee"] == "tech"


def test_unlaned_task_is_open_to_all_staff(engine: WorkflowEngine, users: dict[str, Any]) -> None:
    case = engine.start_case("sample", {}, SYSTEM)
    case = engine.complete_task(case["tasks"][0]["id"], {**REGISTER, "severity": "high"}, SYSTEM)
    [escalate] = case["tasks"]
    assert escalate["candidate_groups"] == ["staff"]
    assert [t["spec"] for t in engine.list_tasks(users["nobody"])] == ["escalate"]
    engine.complete_task(escalate["id"], {}, users["nobody"])


def test_failing_handler_keeps_the_completion_and_opens_an_incident(engine: WorkflowEngine, calls: Any,
                                                                   users: dict[str, Any]) -> None:
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    case = engine.start_case("waiting", {"item": "P-1", "ref": "R-1", "deadline": deadline}, users["agent"])
    case = engine.complete_task(case["tasks"][0]["id"], {"answer": "tomorrow"}, users["agent"])
    assert case["status"] == "error"
    assert case["data"]["answer"] == "tomorrow"  # the user's completion is kept
    incident = events(engine, case["id"])[-1]
    assert incident["type"] == "incident"
    assert incident["payload"]["handler"] == "sample.flaky"
    assert incident["payload"]["message"] == "stock service unreachable"
    assert incident["task"] == "check_stock"
    with engine.db.read() as s:  # what the failed handler wrote was rolled back
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    with pytest.raises(Forbidden):
        engine.retry(case["id"], users["auditor"])
    calls.fail = False
    case = engine.retry(case["id"], users["agent"])
    assert case["status"] == "waiting"
    assert case["data"]["stock"] == {"ok": True}
    with engine.db.read() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 1
    with pytest.raises(Conflict):
        engine.retry(case["id"], users["agent"])


def test_message_reaches_only_the_correlated_case(engine: WorkflowEngine, calls: Any) -> None:
    calls.fail = False
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    cases = []
    for ref in ("R-1", "R-2"):
        c = engine.start_case("waiting", {"ref": ref, "item": "P-1", "deadline": deadline}, SYSTEM)
        cases.append(engine.complete_task(c["tasks"][0]["id"], {}, SYSTEM))
    assert [c["status"] for c in cases] == ["waiting", "waiting"]
    assert engine.deliver_message("customer_reply", {"ref": "R-9"}, {"reply": "?"}, SYSTEM) == []
    delivered = engine.deliver_message("customer_reply", {"ref": "R-2"}, {"reply": "fixed, thanks"}, SYSTEM)
    assert delivered == [cases[1]["id"]]
    second = engine.get_case(cases[1]["id"], SYSTEM)
    assert second["data"]["reply"] == "fixed, thanks"
    assert [t["spec"] for t in second["tasks"]] == ["review"]
    assert engine.get_case(cases[0]["id"], SYSTEM)["status"] == "waiting"
    with engine.db.read() as s:  # the race's timer went away with the answer
        assert s.scalar(select(func.count()).select_from(Timer).where(Timer.case_id == cases[1]["id"])) == 0
    # a second delivery finds nobody waiting
    assert engine.deliver_message("customer_reply", {"ref": "R-2"}, {}, SYSTEM) == []


def test_due_timers_fire_once(engine: WorkflowEngine, calls: Any) -> None:
    calls.fail = False
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    c = engine.start_case("waiting", {"item": "P-2", "deadline": deadline.isoformat()}, SYSTEM)
    engine.complete_task(c["tasks"][0]["id"], {}, SYSTEM)
    with engine.db.read() as s:
        [timer] = s.scalars(select(Timer)).all()
        assert abs((timer.due_at - deadline).total_seconds()) < 0.001
    assert engine.fire_due_timers(dt.datetime.now(dt.UTC)) == 0
    later = deadline + dt.timedelta(seconds=1)
    assert engine.fire_due_timers(later) == 1
    assert engine.fire_due_timers(later) == 0
    case = engine.get_case(c["id"], SYSTEM)
    assert case["status"] == "completed" and case["data"]["timed_out"] is True
    assert [e["type"] for e in events(engine, c["id"])].count("timer_fired") == 1


def test_only_changed_task_rows_are_rewritten(engine: WorkflowEngine) -> None:
    case = engine.start_case("sample", {}, SYSTEM)
    case = engine.complete_task(case["tasks"][0]["id"], REGISTER, SYSTEM)
    with engine.db.read() as s:
        before = {r.task_id: r.body for r in s.scalars(select(CaseTask).where(CaseTask.state == 64))}
    engine.complete_task(case["tasks"][0]["id"], FIX, SYSTEM)
    with engine.db.read() as s:
        after = {r.task_id: r.body for r in s.scalars(select(CaseTask))}
    assert all(after[tid] == body for tid, body in before.items())


def test_history_is_hash_chained(engine: WorkflowEngine) -> None:
    from engine.history import GENESIS, event_hash

    case = engine.start_case("sample", {}, SYSTEM)
    engine.complete_task(case["tasks"][0]["id"], REGISTER, SYSTEM)
    prev = GENESIS
    with engine.db.read() as s:
        rows = s.scalars(select(CaseEvent).where(CaseEvent.case_id == case["id"]).order_by(CaseEvent.seq)).all()
        for r in rows:
            assert r.prev_hash == prev
            assert r.hash == event_hash(prev, r.case_id, r.seq, r.type, r.at, r.actor, r.task_id, r.task, r.payload)
            prev = r.hash


def test_cancel(engine: WorkflowEngine, users: dict[str, Any]) -> None:
    case = engine.start_case("sample", {}, users["agent"])
    with pytest.raises(Forbidden):
        engine.cancel(case["id"], "duplicate", users["agent"])
    case = engine.cancel(case["id"], "duplicate", users["boss"])
    assert case["status"] == "cancelled" and case["tasks"] == []
    with pytest.raises(Conflict):
        engine.cancel(case["id"], "again", users["boss"])


ROUTED = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="r" targetNamespace="x">
  <bpmn:process id="routed" isExecutable="true">
    <bpmn:laneSet id="ls"><bpmn:lane id="l" name="technician"><bpmn:flowNodeRef>visit</bpmn:flowNodeRef></bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="start"><bpmn:outgoing>r1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="visit"><bpmn:extensionElements><spiffworkflow:properties>
      <spiffworkflow:property name="assignee" value="assignment.get('technician_id')" />
    </spiffworkflow:properties></bpmn:extensionElements>
    <bpmn:incoming>r1</bpmn:incoming><bpmn:outgoing>r2</bpmn:outgoing></bpmn:userTask>
    <bpmn:endEvent id="end"><bpmn:incoming>r2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="r1" sourceRef="start" targetRef="visit" />
    <bpmn:sequenceFlow id="r2" sourceRef="visit" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>"""


def test_assignee_property_routes_the_task_to_one_user(engine: WorkflowEngine, users: dict[str, Any]) -> None:
    engine.deploy([("routed.bpmn", ROUTED.encode())], SYSTEM)
    case = engine.start_case("routed", {"assignment": {"technician_id": "tech"}}, SYSTEM)
    [visit] = case["tasks"]
    assert visit["assignee"] == "tech" and visit["candidate_groups"] == ["technician"]
    assert [e["payload"]["assignee"] for e in events(engine, case["id"]) if e["type"] == "task_routed"] == ["tech"]
    assert [t["spec"] for t in engine.list_tasks(users["tech"], scope="mine")] == ["visit"]
    # no technician chosen: the task stays with the lane's group
    other = engine.start_case("routed", {"assignment": {}}, SYSTEM)
    assert other["tasks"][0]["assignee"] is None
    bad = ROUTED.replace("assignment.get('technician_id')", "__import__('os')")
    with pytest.raises(DeploymentInvalid) as info:
        engine.deploy([("routed.bpmn", bad.encode())], SYSTEM)
    assert info.value.errors[0]["element"] == "visit"


def test_a_case_loaded_from_its_rows_reads_timers_and_subscriptions_only_when_it_waits(
        engine: WorkflowEngine, calls: Any) -> None:
    calls.fail = False
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    waiting = engine.start_case("waiting", {"ref": "R-1", "item": "P-1", "deadline": deadline}, SYSTEM)
    waiting = engine.complete_task(waiting["tasks"][0]["id"], {}, SYSTEM)
    plain = engine.start_case("sample", {}, SYSTEM)
    headers = {}
    with engine.db.read() as s:
        for c in (waiting, plain):
            headers[c["id"]] = json.loads(s.get(Case, c["id"]).state)
    assert spiff.header_waits(headers[waiting["id"]]) and not spiff.header_waits(headers[plain["id"]])
    assert spiff.header_waits({})  # a header from before the flag: read them

    engine.reset_caches()  # both come back from their rows
    assert engine.deliver_message("customer_reply", {"ref": "R-1"}, {"reply": "ok"}, SYSTEM) == [waiting["id"]]
    with engine.db.read() as s:  # the answered case's timer went with the answer: it was loaded
        assert s.scalar(select(func.count()).select_from(Timer).where(Timer.case_id == waiting["id"])) == 0
        assert s.scalar(select(func.count()).select_from(MessageSubscription)
                        .where(MessageSubscription.case_id == waiting["id"])) == 0
    engine.reset_caches()
    assert_state_matches_database(engine, engine.complete_task(plain["tasks"][0]["id"], REGISTER, SYSTEM)["id"])


def test_a_failing_last_write_leaves_the_case_as_it_was(engine: WorkflowEngine) -> None:
    """The command's final writes go with its COMMIT on PostgreSQL: one failing write must
    still take the whole command back."""
    case = engine.start_case("sample", {}, SYSTEM)
    with engine.db.write() as s:
        row = s.get(Case, case["id"])
        before = (row.lock_version, row.event_seq, row.state)
        # The next event's position is taken already: the command's event insert must fail.
        s.add(CaseEvent(case_id=case["id"], seq=row.event_seq + 1, type="note", at=dt.datetime.now(dt.UTC),
                        actor="x", payload={}, prev_hash="0", hash="0"))
    with pytest.raises(Exception) as failed:  # noqa: B017 - the driver's own integrity error
        engine.complete_task(case["tasks"][0]["id"], REGISTER, SYSTEM)
    assert "unique" in str(failed.value).lower()  # SQLite: UNIQUE constraint; PostgreSQL: unique constraint
    engine.reset_caches()
    with engine.db.read() as s:
        row = s.get(Case, case["id"])
        assert (row.lock_version, row.event_seq, row.state) == before
        assert s.scalar(select(func.count()).select_from(OpenTask).where(OpenTask.case_id == case["id"])) == 1
    assert engine.get_case(case["id"], SYSTEM)["tasks"][0]["spec"] == "register"


def test_postgresql_reads_a_case_it_does_not_hold_with_its_lock(engine: WorkflowEngine,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A command on a case this process does not hold (another web worker ran the last one)
    reads the case's rows, and what listeners ask for, in the round trip of its lock."""
    if engine.db.is_sqlite:
        pytest.skip("SQLite reads in-process: there are no round trips to save")
    from engine.db import Transaction
    from engine.runtime import Runtime
    from reports import facts

    facts.install(engine)
    case = engine.start_case("sample", {}, SYSTEM)
    case = engine.complete_task(case["tasks"][0]["id"], REGISTER, SYSTEM)
    trips: list[int] = []
    guesses: list[bool] = []
    send, ahead = Transaction._send, Runtime._reads_ahead

    def counted(conn: Any, statements: list[bytes]) -> Any:
        if not statements[0].startswith(b"PREPARE"):  # (once per connection and statement)
            trips.append(len(statements))
        return send(conn, statements)

    monkeypatch.setattr(Transaction, "_send", staticmethod(counted))
    monkeypatch.setattr(Runtime, "_reads_ahead", lambda self, load: guesses.append(load) or ahead(self, load))

    engine.reset_caches()  # as if another process had run the last command
    case = engine.complete_task(case["tasks"][0]["id"], FIX, SYSTEM)
    assert guesses == [True] and len(trips) == 2  # lock with every read; the writes with COMMIT
    assert_state_matches_database(engine, case["id"])

    trips.clear()
    guesses.clear()
    case = engine.complete_task(case["tasks"][0]["id"], {}, SYSTEM)  # held now: no rows to guess
    assert guesses == [False] and len(trips) == 2
    assert case["status"] == "completed"


def test_text_with_a_nul_character_is_refused_naming_the_field(engine: WorkflowEngine) -> None:
    """NUL is never meant in a form, and PostgreSQL cannot store it in text: a clear error on
    both backends, nothing changed."""
    from engine.errors import InvalidInput

    with pytest.raises(InvalidInput) as started:
        engine.start_case("sample", {"contact": {"names": ["ok", "Wang\0Fang"]}}, SYSTEM)
    assert started.value.errors == [{"field": "data.contact.names.1", "message": "contains a NUL (0x00) character"}]
    case = engine.start_case("sample", {}, SYSTEM)
    with pytest.raises(FormInvalid) as completed:
        engine.complete_task(case["tasks"][0]["id"], {**REGISTER, "customer": "Wang\0Fang"}, SYSTEM)
    assert completed.value.errors == [{"field": "customer", "message": "contains a NUL (0x00) character"}]
    with pytest.raises(FormInvalid) as drafted:
        engine.save_draft(case["tasks"][0]["id"], {"notes": {"x\0": "draft"}}, SYSTEM)
    assert drafted.value.errors == [{"field": "notes.x\0", "message": "contains a NUL (0x00) character"}]
    assert [e["type"] for e in engine.history(case["id"], SYSTEM)][-1] == "task_opened"  # no draft recorded
    assert engine.get_case(case["id"], SYSTEM)["tasks"][0]["spec"] == "register"
    with engine.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 1
    with pytest.raises(InvalidInput) as delivered:
        engine.deliver_message("customer_reply", {"ref": "R-1"}, {"reply": "ok\0"}, SYSTEM)
    assert delivered.value.errors == [{"field": "payload.reply", "message": "contains a NUL (0x00) character"}]


def test_task_ids_are_time_ordered_uuids(engine: WorkflowEngine) -> None:
    """Version 7 ids: keyed rows (task rows, open tasks, candidate groups) are appended near the end
    of their indexes instead of on a random page each."""
    import time
    import uuid

    first = engine.start_case("sample", {}, SYSTEM)
    time.sleep(0.002)
    second = engine.start_case("sample", {}, SYSTEM)
    a, b = (uuid.UUID(c["tasks"][0]["id"]) for c in (first, second))
    assert (a.version, b.version) == (7, 7) and a.variant == uuid.RFC_4122
    assert a < b  # later tasks sort later
    assert abs((a.int >> 80) - time.time_ns() // 1_000_000) < 60_000  # the millisecond clock leads
    with engine.db.read() as s:
        ids = {uuid.UUID(t) for t in s.scalars(select(CaseTask.task_id))}
    assert ids and all(i.version == 7 for i in ids)
