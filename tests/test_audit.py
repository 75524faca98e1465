"""Audit: per-case and global hash chains, replay with verification, time travel, export bundles."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import USERS, token_for
from sqlalchemy import delete, func, select, update

from engine import SYSTEM, Actor, Conflict, FormInvalid, InvalidInput, NotFound, WorkflowEngine
from engine.audit import bundle, chain, records
from engine.history import GENESIS, event_hash
from engine.identity import ensure_groups
from engine.models import AuditLedger, Case, CaseEvent, Membership, MessageSubscription, Timer, User

HERE = Path(__file__).parent
AUDIT_SAMPLES = HERE / "audit_processes"
PROCESSES = HERE.parent / "processes"
FORMS = HERE.parent / "forms"

REGISTER = {"customer": "Wang Fang", "severity": "low", "email": "wang@example.com"}
FIX = {"fixed": True, "parts": [{"part": "compressor", "quantity": 1}]}


@pytest.fixture
def actors() -> dict[str, Actor]:
    """The staff of conftest.USERS as actors only: engine-level tests need no accounts (and no password hashing)."""
    return {name: Actor(name, frozenset({*groups, "staff"})) for name, groups in USERS.items()}


@pytest.fixture
def audit_engine(engine: WorkflowEngine) -> WorkflowEngine:
    engine.deploy_paths([AUDIT_SAMPLES], SYSTEM)
    # Accounts for the actors, without password hashes: tasks are assigned only to existing staff.
    with engine.db.write() as s:
        ensure_groups(s, {g: g for groups in USERS.values() for g in [*groups, "staff"]})
        existing = set(s.scalars(select(User.username)))
        for name, groups in USERS.items():
            if name in existing:  # made by the ``users`` fixture
                continue
            user = User(username=name, password_hash="!", display_name=name)
            s.add(user)
            s.flush()
            s.add_all(Membership(user_id=user.id, group_name=g) for g in {*groups, "staff"})
    return engine


def verified(engine: WorkflowEngine, case_id: int) -> dict[str, Any]:
    report = records.verify_case(engine.db, case_id, engine.specs)
    assert report["chain"]["ok"], report["chain"]
    assert report["replay"]["result"] == "verified", json.dumps(report["replay"], indent=1, default=str)
    return report


def history(engine: WorkflowEngine, case_id: int) -> list[dict[str, Any]]:
    return engine.history(case_id, SYSTEM)


def seq_of(engine: WorkflowEngine, case_id: int, type_: str, task: str | None = None) -> int:
    return next(e["seq"] for e in history(engine, case_id)
                if e["type"] == type_ and (task is None or e["task"] == task))


def open_task(engine: WorkflowEngine, case_id: int, spec: str) -> str:
    return next(t["id"] for t in engine.get_case(case_id, SYSTEM)["tasks"] if t["spec"] == spec)


def timer_ids(engine: WorkflowEngine, case_id: int, spec: str | None = None) -> list[int]:
    with engine.db.read() as s:
        q = select(Timer.id).where(Timer.case_id == case_id, Timer.status == "pending").order_by(Timer.id)
        return list(s.scalars(q.where(Timer.spec == spec) if spec else q))


# --- every path of the sample processes -----------------------------------------------------------


def sample_normal(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    case = engine.start_case("sample", {"channel": "phone"}, users["agent"])
    cid, register = case["id"], case["tasks"][0]["id"]
    engine.claim(register, users["agent"])
    engine.unclaim(register, users["agent"])
    engine.claim(register, users["agent2"])
    engine.save_draft(register, {"customer": "Wang"}, users["agent2"])
    engine.complete_task(register, REGISTER, users["agent2"])
    fix = open_task(engine, cid, "fix")
    engine.claim(fix, users["tech"])
    engine.complete_task(fix, FIX, users["tech"])
    confirm = open_task(engine, cid, "confirm")
    engine.assign(confirm, "boss", users["boss"])
    engine.complete_task(confirm, {"confirmed": True}, users["boss"])
    return cid


def sample_urgent(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    cid = engine.start_case("sample", {}, SYSTEM)["id"]
    engine.complete_task(open_task(engine, cid, "register"), {**REGISTER, "severity": "high"}, SYSTEM)
    engine.complete_task(open_task(engine, cid, "escalate"), {"handled_by": "night shift", "parts": []},
                         users["nobody"])
    engine.complete_task(open_task(engine, cid, "confirm"), {}, SYSTEM)
    return cid


def sample_cancelled(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    cid = engine.start_case("sample", {}, SYSTEM)["id"]
    engine.complete_task(open_task(engine, cid, "register"), REGISTER, SYSTEM)
    engine.cancel(cid, "duplicate request", users["boss"])
    return cid


def _waiting(engine: WorkflowEngine, ref: str, deadline: dt.datetime) -> int:
    case = engine.start_case("waiting", {"item": "P-1", "ref": ref, "deadline": deadline.isoformat()}, SYSTEM)
    engine.complete_task(case["tasks"][0]["id"], {"answer": "tomorrow"}, SYSTEM)
    return case["id"]


def waiting_message(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    calls.fail = False
    cid = _waiting(engine, "R-1", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert engine.deliver_message("customer_reply", {"ref": "R-other"}, {"reply": "?"}, SYSTEM) == []
    assert engine.deliver_message("customer_reply", {"ref": "R-1"}, {"reply": "fixed, thanks"}, SYSTEM) == [cid]
    engine.complete_task(open_task(engine, cid, "review"), {"reviewed": True}, SYSTEM)
    return cid


def waiting_timer(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    calls.fail = False
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    cid = _waiting(engine, "R-2", deadline)
    assert engine.fire_due_timers(deadline + dt.timedelta(seconds=1)) == 1
    return cid


def waiting_incident_retried(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    cid = _waiting(engine, "R-3", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert engine.get_case(cid, SYSTEM)["status"] == "error"
    engine.retry(cid, users["boss"])  # fails again: a second incident
    calls.fail = False
    engine.retry(cid, users["boss"])
    engine.deliver_message("customer_reply", {"ref": "R-3"}, {"reply": "ok"}, SYSTEM)
    engine.complete_task(open_task(engine, cid, "review"), {}, SYSTEM)
    return cid


def waiting_incident_cancelled(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    cid = _waiting(engine, "R-4", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    engine.cancel(cid, "stock system down for good", users["boss"])
    return cid


def waiting_deadline_noticed(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    """A command that writes no event of its own notices the passed deadline (engine_advanced)."""
    calls.fail = False
    cid = _waiting(engine, "R-5", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3))
    time.sleep(0.4)
    assert engine.deliver_message("customer_reply", {"ref": "R-elsewhere"}, {}, SYSTEM) == []
    # The command that noticed the deadline ran the timer's path on at once.
    types = [e["type"] for e in history(engine, cid)]
    assert types[-2:] == ["engine_advanced", "case_completed"]
    assert engine.get_case(cid, SYSTEM)["status"] == "completed"
    return cid


def features_reverse_order(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    """Multi-instance tasks completed out of order, a cycle timer, a subprocess, now() in scripts."""
    case = engine.start_case("audit_features", {"items": ["a", "b", "c"]}, SYSTEM)
    cid = case["id"]
    for t in reversed([t for t in case["tasks"] if t["spec"] == "check_item"]):
        engine.complete_task(t["id"], {"result": f"ok {t['id'][:4]}"}, SYSTEM)
    engine.complete_task(open_task(engine, cid, "call_back"), {"called": True}, SYSTEM)
    for _ in range(2):
        [nudge] = timer_ids(engine, cid, "review_nudge")
        assert engine.fire_timer(nudge)
    engine.complete_task(open_task(engine, cid, "approve"), {"approved": True}, SYSTEM)
    return cid


def features_boundary_timer(engine: WorkflowEngine, calls: Any, users: dict[str, Any]) -> int:
    case = engine.start_case("audit_features", {"items": ["x", "y"]}, SYSTEM)
    cid = case["id"]
    items = [t["id"] for t in case["tasks"] if t["spec"] == "check_item"]
    engine.complete_task(items[-1], {"result": "one of two"}, SYSTEM)
    assert engine.fire_timer(timer_ids(engine, cid, "call_back_due")[0])
    engine.complete_task(open_task(engine, cid, "escalate_call"), {"called": "by supervisor"}, SYSTEM)
    engine.complete_task(open_task(engine, cid, "check_item"), {"result": "first last"}, SYSTEM)
    engine.complete_task(open_task(engine, cid, "approve"), {"approved": False}, SYSTEM)
    return cid


SCENARIOS: dict[str, Callable[[WorkflowEngine, Any, dict[str, Any]], int]] = {
    f.__name__: f for f in (sample_normal, sample_urgent, sample_cancelled, waiting_message, waiting_timer,
                            waiting_incident_retried, waiting_incident_cancelled, waiting_deadline_noticed,
                            features_reverse_order, features_boundary_timer)
}


def test_every_path_of_the_samples_replays_verified(audit_engine: WorkflowEngine, calls: Any,
                                                    actors: dict[str, Any]) -> None:
    ids = {}
    for name, scenario in SCENARIOS.items():
        calls.fail = True
        ids[name] = scenario(audit_engine, calls, actors)
        report = verified(audit_engine, ids[name])
        assert report["replay"]["events"] == len(history(audit_engine, ids[name]))
    statuses = {name: audit_engine.get_case(cid, SYSTEM)["status"] for name, cid in ids.items()}
    assert statuses["sample_cancelled"] == statuses["waiting_incident_cancelled"] == "cancelled"
    assert {statuses[n] for n in ("sample_normal", "sample_urgent", "waiting_timer", "features_boundary_timer")} == \
        {"completed"}
    # After sealing, every case's links into the global chain verify too, and so does the whole ledger.
    assert chain.seal(audit_engine.db) == {"events": sum(len(history(audit_engine, c)) for c in ids.values()),
                                           "access": 0}
    for cid in ids.values():
        assert verified(audit_engine, cid)["chain"]["sealed"] == len(history(audit_engine, cid))
    report = chain.verify_all(audit_engine.db)
    assert report["ok"], report
    assert (report["events"], report["cases"]) == (sum(len(history(audit_engine, c)) for c in ids.values()), len(ids))


def test_replay_does_not_call_handlers_again(audit_engine: WorkflowEngine, calls: Any,
                                             actors: dict[str, Any]) -> None:
    cid = sample_normal(audit_engine, calls, actors)
    before = list(calls.calls)
    verified(audit_engine, cid)
    assert calls.calls == before


# --- tamper evidence --------------------------------------------------------------------------------


def edit_event(engine: WorkflowEngine, case_id: int, seq: int, **values: Any) -> None:
    with engine.db.write() as s:
        s.execute(update(CaseEvent).where(CaseEvent.case_id == case_id, CaseEvent.seq == seq).values(**values))


def rehash(engine: WorkflowEngine, case_id: int) -> None:
    """What a careful forger does: recompute the case's hash chain and header after an edit."""
    with engine.db.write() as s:
        prev = GENESIS
        rows = s.scalars(select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(CaseEvent.seq)).all()
        for i, ev in enumerate(rows, start=1):
            ev.seq = i
            ev.prev_hash = prev
            ev.hash = event_hash(prev, case_id, ev.seq, ev.type, ev.at, ev.actor, ev.task_id, ev.task, ev.payload)
            prev = ev.hash
        case = s.get(Case, case_id)
        case.event_seq, case.last_hash = len(rows), prev


def payload_of(engine: WorkflowEngine, case_id: int, seq: int) -> dict[str, Any]:
    return next(e["payload"] for e in history(engine, case_id) if e["seq"] == seq)


def test_an_edited_event_breaks_the_chain_and_a_rehashed_edit_fails_replay(audit_engine: WorkflowEngine,
                                                                            calls: Any, actors: dict[str, Any]) -> None:
    cid = sample_normal(audit_engine, calls, actors)
    other = sample_urgent(audit_engine, calls, actors)
    seq = seq_of(audit_engine, cid, "task_completed", "register")
    edit_event(audit_engine, cid, seq, payload={"data": {**REGISTER, "customer": "Li Lei"}})

    problem = records.verify_case(audit_engine.db, cid, audit_engine.specs, with_replay=False)["chain"]["problem"]
    assert (problem["seq"], problem["type"]) == (seq, "task_completed")
    assert "edited" in problem["reason"]
    everything = chain.verify_all(audit_engine.db)
    assert not everything["ok"] and everything["problem"]["case_id"] == cid and everything["problem"]["seq"] == seq

    rehash(audit_engine, cid)
    report = records.verify_case(audit_engine.db, cid, audit_engine.specs)
    assert report["chain"]["ok"]  # the forgery is consistent as far as the case chain goes...
    divergence = report["replay"]["divergence"]  # ...but the stored state is not what the inputs produce
    assert report["replay"]["result"] == "diverged" and not report["ok"]
    assert (divergence["seq"], divergence["event"], divergence["task"]) == (seq, "task_completed", "register")
    assert divergence["recorded"]["data"]["customer"] == "Wang Fang"
    assert divergence["replayed"]["data"]["customer"] == "Li Lei"
    verified(audit_engine, other)


def test_rehashed_edits_of_recorded_answers_fail_replay(audit_engine: WorkflowEngine, calls: Any,
                                                        actors: dict[str, Any]) -> None:
    # A handler's result: the replay answers from the record and ends with other task data.
    cid = sample_normal(audit_engine, calls, actors)
    seq = seq_of(audit_engine, cid, "service_task_completed")
    edit_event(audit_engine, cid, seq, payload={"handler": "sample.notify", "result": {"sent": False, "to": "x"}})
    rehash(audit_engine, cid)
    replay = records.replay_case(audit_engine.db, cid, audit_engine.specs)
    assert (replay["result"], replay["divergence"]["seq"]) == ("diverged", seq)
    assert replay["divergence"]["recorded"]["data"]["notice"] == {"sent": True, "to": "Wang Fang"}

    # A routing input: the replay takes the other branch.
    cid = sample_urgent(audit_engine, calls, actors)
    seq = seq_of(audit_engine, cid, "task_completed", "register")
    edit_event(audit_engine, cid, seq, payload={"data": REGISTER})
    rehash(audit_engine, cid)
    assert records.replay_case(audit_engine.db, cid, audit_engine.specs)["divergence"]["seq"] == seq

    # A recorded clock reading (now() in a script).
    cid = features_reverse_order(audit_engine, calls, actors)
    seq = seq_of(audit_engine, cid, "function_results")
    calls_ = payload_of(audit_engine, cid, seq)["calls"]
    calls_[0]["result"] = "2000-01-01T00:00:00+00:00"
    edit_event(audit_engine, cid, seq, payload={"calls": calls_})
    rehash(audit_engine, cid)
    replay = records.replay_case(audit_engine.db, cid, audit_engine.specs)
    assert replay["result"] == "diverged"
    assert "2000-01-01" in json.dumps(replay["divergence"]["replayed"])

    # A message's payload.
    cid = waiting_message(audit_engine, calls, actors)
    seq = seq_of(audit_engine, cid, "message_delivered")
    payload = payload_of(audit_engine, cid, seq)
    edit_event(audit_engine, cid, seq, payload={**payload, "payload": {"reply": "never fixed"}})
    rehash(audit_engine, cid)
    replay = records.replay_case(audit_engine.db, cid, audit_engine.specs)
    assert replay["result"] == "diverged"
    assert "never fixed" in json.dumps(replay["divergence"]["replayed"])


def test_deleted_inserted_and_reordered_events_are_detected(audit_engine: WorkflowEngine, calls: Any,
                                                            actors: dict[str, Any]) -> None:
    def chain_problem(cid: int) -> dict[str, Any]:
        report = records.verify_case(audit_engine.db, cid, audit_engine.specs, with_replay=False)["chain"]
        assert not report["ok"]
        everything = chain.verify_all(audit_engine.db)
        assert not everything["ok"] and everything["problem"]["case_id"] == cid
        return report["problem"]

    deleted = sample_urgent(audit_engine, calls, actors)
    with audit_engine.db.write() as s:
        s.execute(delete(CaseEvent).where(CaseEvent.case_id == deleted, CaseEvent.seq == 4))
    assert chain_problem(deleted)["seq"] == 5
    with audit_engine.db.write() as s:
        s.execute(delete(CaseEvent).where(CaseEvent.case_id == deleted))

    inserted = sample_urgent(audit_engine, calls, actors)
    with audit_engine.db.write() as s:
        s.execute(update(CaseEvent).where(CaseEvent.case_id == inserted, CaseEvent.seq >= 3)
                  .values(seq=CaseEvent.seq + 1000))
        s.execute(update(CaseEvent).where(CaseEvent.case_id == inserted, CaseEvent.seq >= 1003)
                  .values(seq=CaseEvent.seq - 999))
        first = s.scalars(select(CaseEvent).where(CaseEvent.case_id == inserted, CaseEvent.seq == 2)).one()
        s.add(CaseEvent(case_id=inserted, seq=3, type="task_assigned", at=first.at, actor="boss", task_id=None,
                        task=None, payload={"assignee": "nobody"}, prev_hash=first.hash, hash="0" * 64))
    problem = chain_problem(inserted)
    assert problem["seq"] == 3 and "edited" in problem["reason"]
    with audit_engine.db.write() as s:
        s.execute(delete(CaseEvent).where(CaseEvent.case_id == inserted))

    reordered = sample_urgent(audit_engine, calls, actors)
    with audit_engine.db.write() as s:
        a, b = s.scalars(select(CaseEvent).where(CaseEvent.case_id == reordered, CaseEvent.seq.in_([3, 4]))
                         .order_by(CaseEvent.seq)).all()
        a.seq, b.seq = 1003, 1004
        s.flush()
        a.seq, b.seq = 4, 3
    assert chain_problem(reordered)["seq"] == 3
    with audit_engine.db.write() as s:
        s.execute(delete(CaseEvent).where(CaseEvent.case_id == reordered))

    # Deleting the last events and fixing the header keeps the case chain consistent: the replay sees
    # the missing outcome, and once sealed, the global chain does.
    cut = sample_urgent(audit_engine, calls, actors)
    chain.seal(audit_engine.db)
    with audit_engine.db.write() as s:
        s.execute(delete(CaseEvent).where(CaseEvent.case_id == cut, CaseEvent.seq == len(history(audit_engine, cut))))
    rehash(audit_engine, cut)
    report = records.verify_case(audit_engine.db, cut, audit_engine.specs)
    assert report["replay"]["result"] == "diverged"
    assert report["replay"]["divergence"]["reason"] == "the replay produced an event the original did not record"
    everything = chain.verify_all(audit_engine.db)
    assert not everything["ok"] and "ledger head" in everything["problem"]["reason"]


def test_the_global_chain_detects_moves_between_cases_and_forged_positions(audit_engine: WorkflowEngine,
                                                                          calls: Any, actors: dict[str, Any]) -> None:
    first, second = sample_urgent(audit_engine, calls, actors), sample_urgent(audit_engine, calls, actors)
    chain.seal(audit_engine.db)
    assert chain.verify_all(audit_engine.db)["ok"]

    # Swapping the global positions of two events of different cases.
    with audit_engine.db.write() as s:
        a = s.scalars(select(CaseEvent).where(CaseEvent.case_id == first, CaseEvent.seq == 2)).one()
        b = s.scalars(select(CaseEvent).where(CaseEvent.case_id == second, CaseEvent.seq == 2)).one()
        ga, gb = a.global_seq, b.global_seq
        a.global_seq = -1
        s.flush()
        b.global_seq = ga
        s.flush()
        a.global_seq = gb
    report = chain.verify_all(audit_engine.db)
    assert not report["ok"] and report["problem"]["global_seq"] == ga
    assert not records.verify_case(audit_engine.db, first, with_replay=False)["chain"]["ok"]
    with audit_engine.db.write() as s:
        a = s.scalars(select(CaseEvent).where(CaseEvent.case_id == first, CaseEvent.seq == 2)).one()
        b = s.scalars(select(CaseEvent).where(CaseEvent.case_id == second, CaseEvent.seq == 2)).one()
        a.global_seq = -1
        s.flush()
        b.global_seq = gb
        s.flush()
        a.global_seq = ga
    assert chain.verify_all(audit_engine.db)["ok"]

    # A new event slipped into a case with a consistent case chain and a forged global position.
    with audit_engine.db.write() as s:
        case = s.get(Case, second)
        last = s.scalars(select(CaseEvent).where(CaseEvent.case_id == second, CaseEvent.seq == case.event_seq)).one()
        at = last.at
        h = event_hash(last.hash, second, case.event_seq + 1, "task_assigned", at, "boss", None, None, {})
        head = s.get(AuditLedger, "events")
        s.add(CaseEvent(case_id=second, seq=case.event_seq + 1, type="task_assigned", at=at, actor="boss",
                        task_id=None, task=None, payload={}, prev_hash=last.hash, hash=h,
                        global_seq=head.seq + 1, global_hash=chain.link(head.hash, head.seq + 1, h)))
        case.event_seq, case.last_hash = case.event_seq + 1, h
    assert "ledger head" in chain.verify_all(audit_engine.db)["problem"]["reason"]
    assert "beyond the ledger head" in records.verify_case(audit_engine.db, second, with_replay=False)["chain"][
        "problem"]["reason"]


def test_sealing_continues_the_chain_and_verify_since_checks_a_window(audit_engine: WorkflowEngine,
                                                                     calls: Any, actors: dict[str, Any]) -> None:
    old = sample_urgent(audit_engine, calls, actors)
    assert chain.seal(audit_engine.db, limit=5)["events"] == 5
    assert chain.seal(audit_engine.db)["events"] == len(history(audit_engine, old)) - 5
    assert chain.seal(audit_engine.db) == {"events": 0, "access": 0}
    with audit_engine.db.write() as s:  # older history written before the window
        s.execute(update(CaseEvent).where(CaseEvent.case_id == old)
                  .values(at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)))
    recent = sample_urgent(audit_engine, calls, actors)
    chain.seal(audit_engine.db)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    report = chain.verify_all(audit_engine.db, since=since)
    assert report["ok"], report
    assert report["events"] == len(history(audit_engine, recent))
    with audit_engine.db.write() as s:
        s.execute(update(CaseEvent).where(CaseEvent.case_id == recent, CaseEvent.seq == 3).values(actor="mallory"))
    assert chain.verify_all(audit_engine.db, since=since)["problem"]["case_id"] == recent
    with audit_engine.db.read() as s:
        heads = chain.heads(s)
    assert heads["events"]["unsealed"] == 0 and heads["events"]["seq"] == sum(
        len(history(audit_engine, c)) for c in (old, recent))


def test_the_auto_sealer_seals_after_commits(audit_engine: WorkflowEngine, calls: Any,
                                             actors: dict[str, Any]) -> None:
    sealer = chain.AutoSealer(audit_engine.db, interval=3600)
    audit_engine.runtime.on_commit.append(sealer)
    cid = sample_urgent(audit_engine, calls, actors)
    with audit_engine.db.read() as s:  # the first commit sealed; later ones wait for the interval
        sealed = s.scalar(select(func.count()).select_from(CaseEvent).where(CaseEvent.global_seq.is_not(None)))
    assert 0 < sealed < len(history(audit_engine, cid))
    sealer.interval = 0
    audit_engine.start_case("sample", {}, SYSTEM)
    with audit_engine.db.read() as s:
        assert chain.heads(s)["events"]["unsealed"] == 0


# --- time travel ------------------------------------------------------------------------------------


def test_the_case_as_it_stood_after_each_event(audit_engine: WorkflowEngine, calls: Any,
                                               actors: dict[str, Any]) -> None:
    cid = sample_normal(audit_engine, calls, actors)
    events = history(audit_engine, cid)
    registered = seq_of(audit_engine, cid, "task_completed", "register")
    register_id = events[registered - 1]["task_id"]

    opened = records.case_at(audit_engine.db, cid, 2, specs=audit_engine.specs)
    assert (opened["status"], opened["active"], opened["data"]) == ("running", ["register"], {"channel": "phone"})
    [register] = [t for t in opened["tasks"] if t["element"] == "register"]
    assert (register["id"], register["state"], register["lane"]) == (register_id, "ready", "hotline")

    claimed = records.case_at(audit_engine.db, cid, seq_of(audit_engine, cid, "task_claimed"), specs=audit_engine.specs)
    assert [t["assignee"] for t in claimed["tasks"] if t["element"] == "register"] == ["agent"]

    state = records.case_at(audit_engine.db, cid, registered, diff_from=2, specs=audit_engine.specs)
    assert state["through_seq"] > registered  # the rest of that command: decision, notice, next task
    assert {"start", "register", "decide", "notify", "route"} <= set(state["completed"])
    assert (state["active"], state["waiting"], state["status"]) == (["fix"], [], "running")
    assert state["data"]["priority"] == "normal"
    assert {d["path"]: d["op"] for d in state["diff"]} == {
        "customer": "added", "severity": "added", "email": "added", "priority": "added", "notice": "added"}
    assert next(d for d in state["diff"] if d["path"] == "customer")["to"] == "Wang Fang"

    end = records.case_at(audit_engine.db, cid, len(events), diff_from=registered, specs=audit_engine.specs)
    assert end["status"] == "completed" and end["active"] == [] and "confirm" in end["completed"]
    assert {d["path"] for d in end["diff"]} == {"fixed", "parts", "confirmed", "summary"}
    with pytest.raises(NotFound):
        records.case_at(audit_engine.db, cid, len(events) + 1, specs=audit_engine.specs)

    waiting = waiting_message(audit_engine, calls, actors)
    before_reply = seq_of(audit_engine, waiting, "message_delivered") - 1
    state = records.case_at(audit_engine.db, waiting, before_reply, specs=audit_engine.specs)
    assert state["status"] == "waiting" and state["waiting"] == ["wait"]  # the event-based gateway


# --- export and offline verification -----------------------------------------------------------------


def test_an_exported_bundle_verifies_offline_and_shows_tampering(audit_engine: WorkflowEngine, calls: Any,
                                                                 actors: dict[str, Any], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from app import cli

    cid = features_reverse_order(audit_engine, calls, actors)
    chain.seal(audit_engine.db)
    with audit_engine.db.read() as s:
        data = bundle.export_case(s, cid, "auditor", list(audit_engine.specs.functions))
    assert {f["name"] for f in data["definition"]["files"]} == {"audit_features.bpmn"}
    report = bundle.verify_bundle(json.loads(json.dumps(data)))
    assert report["ok"], report
    assert report["chain"]["sealed"] == len(data["events"]) and report["replay"]["result"] == "verified"

    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["audit", "verify", str(path)])
    assert result.exit_code == 0, result.output
    assert "replay: verified" in result.output

    edited = json.loads(json.dumps(data))
    edited["events"][0]["payload"]["data"]["items"] = ["a"]
    path.write_text(json.dumps(edited))
    result = CliRunner().invoke(cli, ["audit", "verify", str(path)])
    assert result.exit_code == 1 and "NOT VERIFIED" in result.output
    report = bundle.verify_bundle(edited)
    assert not report["integrity"]["ok"] and report["chain"]["problem"]["seq"] == 1

    # Re-hashing the events and the bundle makes the chain consistent; replay still disagrees.
    prev = GENESIS
    for ev in edited["events"]:
        ev["prev_hash"] = prev
        ev["hash"] = event_hash(prev, cid, ev["seq"], ev["type"], records.parse_time(ev["at"]), ev["actor"],
                                ev["task_id"], ev["task"], ev["payload"])
        ev["global_seq"] = ev["global_hash"] = None
        prev = ev["hash"]
    edited["case"]["last_hash"] = prev
    edited["bundle_sha256"] = bundle.bundle_digest(edited)
    report = bundle.verify_bundle(edited)
    assert report["integrity"]["ok"] and report["chain"]["ok"]
    assert report["replay"]["result"] == "diverged" and not report["ok"]

    changed = json.loads(json.dumps(data))
    changed["definition"]["files"][0]["content"] = changed["definition"]["files"][0]["content"].replace(
        "R2/PT10M", "R9/PT10M")
    assert "sha256" in bundle.verify_bundle(changed)["definitions"]["problem"]
    with pytest.raises(InvalidInput):
        bundle.verify_bundle({"format": "something else"})


def test_audit_api_and_cli(client: Any, app: Any, calls: Any, tmp_path: Path) -> None:
    from app import cli

    engine = app.extensions["aftercare"].engine
    engine.deploy_paths([AUDIT_SAMPLES], SYSTEM)
    cid = features_boundary_timer(engine, calls, {})
    auditor, agent = token_for(client, "auditor"), token_for(client, "agent")

    res = client.get(f"/api/instances/{cid}/verify", headers=auditor)
    assert res.status_code == 200 and res.get_json()["ok"], res.get_json()
    assert res.get_json()["replay"]["result"] == "verified"
    assert client.get(f"/api/instances/{cid}/verify?replay=0", headers=auditor).get_json()["chain"]["ok"]
    assert client.get(f"/api/instances/{cid}/verify", headers=token_for(client, "nobody")).status_code == 403
    assert client.get("/api/instances/99999/verify", headers=auditor).status_code == 404

    fired = seq_of(engine, cid, "timer_fired")
    res = client.get(f"/api/instances/{cid}/at/{fired}?diff_from=0", headers=auditor)
    body = res.get_json()
    assert res.status_code == 200 and body["active"] == ["check_item", "escalate_call"], body
    assert "call_back" not in body["active"] and "call_back_due" in body["completed"]
    assert {d["path"]: d["op"] for d in body["diff"]} == {"items": "added", "opened": "added"}
    assert client.get(f"/api/instances/{cid}/at/999", headers=auditor).status_code == 404
    assert client.get(f"/api/instances/{cid}/at/4?diff_from=x", headers=auditor).status_code == 422

    assert client.get(f"/api/instances/{cid}/export", headers=agent).status_code == 403
    res = client.get(f"/api/instances/{cid}/export", headers=auditor)
    assert res.status_code == 200 and "attachment" in res.headers["Content-Disposition"]
    assert bundle.verify_bundle(res.get_json())["ok"]
    assert client.get("/api/audit/head", headers=auditor).get_json()["events"]["seq"] >= 0

    runner = app.test_cli_runner()
    out = tmp_path / "case.json"
    result = runner.invoke(cli, ["audit", "export", str(cid), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert bundle.verify_bundle(json.loads(out.read_text()))["ok"]
    result = runner.invoke(cli, ["audit", "seal"])
    assert result.exit_code == 0 and "sealed" in result.output
    result = runner.invoke(cli, ["audit", "verify", str(cid)])
    assert result.exit_code == 0 and "replay: verified" in result.output, result.output
    result = runner.invoke(cli, ["audit", "verify", "--all", "--replay"])
    assert result.exit_code == 0 and "every case verified" in result.output, result.output
    result = runner.invoke(cli, ["audit", "verify", "--since", "2020-01-01"])
    assert result.exit_code == 0, result.output
    with app.extensions["aftercare"].db.write() as s:
        s.execute(update(CaseEvent).where(CaseEvent.case_id == cid, CaseEvent.seq == 3).values(actor="mallory"))
    result = runner.invoke(cli, ["audit", "verify", "--all"])
    assert result.exit_code == 1 and f"case_id {cid} seq 3" in result.output, result.output
    assert runner.invoke(cli, ["audit", "verify", str(cid)]).exit_code == 1
    assert runner.invoke(cli, ["audit", "verify"]).exit_code != 0


# --- the bundled after-sales procedures ----------------------------------------------------------------


def _sample_value(schema: dict[str, Any], rng: random.Random, every_field: bool) -> Any:
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return _sample_value(rng.choice(schema[key]), rng, every_field)
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        return {name: _sample_value(p, rng, every_field) for name, p in props.items()
                if every_field or name in required or rng.random() < 0.5}
    if kind == "array":
        n = max(schema.get("minItems", 0), rng.randint(0, 2))
        return [_sample_value(schema.get("items", {}), rng, every_field) for _ in range(n)]
    if kind == "boolean":
        return rng.random() < 0.5
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        hi = schema.get("maximum", lo + 5)
        return rng.randint(int(lo), int(hi)) if kind == "integer" else float(rng.randint(int(lo), int(hi)))
    if kind == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date":
        return "2026-12-01"
    if fmt == "date-time":
        return "2026-12-01T10:00:00+08:00"
    if fmt == "email":
        return "customer@example.com"
    if "pattern" in schema:
        for candidate in ("13800138000", "+86 138 0013 8000", "CMP-2026-000123", "A1", "1"):
            if re.search(schema["pattern"], candidate):
                return candidate
    text = "测试 test " * max(1, schema.get("minLength", 1) // 8 + 1)
    return text[: schema.get("maxLength", len(text))]


def _complete(engine: WorkflowEngine, task_id: str, rng: random.Random) -> bool:
    form = engine.get_task(task_id, SYSTEM).get("form") or {}
    data = _sample_value(form, rng, False) if form else {}
    for _ in range(3):
        try:
            engine.complete_task(task_id, data, SYSTEM)
            return True
        except FormInvalid as exc:
            props = form.get("properties", {})
            for e in exc.errors:
                name = str(e.get("field", "")).split(".")[0]
                if name in props:
                    data[name] = _sample_value(props[name], rng, True)
        except Conflict:
            return False
    return False


def drive(engine: WorkflowEngine, key: str, rng: random.Random, steps: int = 30) -> int:
    """Walk a case along random choices: form values, timer firings, message arrivals, retries."""
    cid = engine.start_case(key, {}, SYSTEM)["id"]
    for _ in range(steps):
        case = engine.get_case(cid, SYSTEM)
        if case["status"] in ("completed", "cancelled"):
            break
        if case["status"] == "error":
            engine.retry(cid, SYSTEM) if rng.random() < 0.5 else engine.cancel(cid, "stuck", SYSTEM)
            continue
        with engine.db.read() as s:
            timers = list(s.scalars(select(Timer.id).where(Timer.case_id == cid, Timer.status == "pending")))
            messages = sorted(set(s.scalars(select(MessageSubscription.message)
                                            .where(MessageSubscription.case_id == cid))))
        choices = [("task", t["id"]) for t in case["tasks"]] * 3 + [("timer", t) for t in timers] + \
            [("message", m) for m in messages]
        if not choices:
            break
        kind, what = rng.choice(choices)
        try:
            if kind == "task":
                _complete(engine, str(what), rng)
            elif kind == "timer":
                engine.fire_timer(int(what))
            else:
                payload = {"score": rng.randint(1, 5), "satisfied": rng.random() < 0.5, "comment": "回复 reply",
                           "in_stock": True, "answer": "yes"}
                engine.deliver_message(str(what), {"instance": cid}, payload, SYSTEM)
        except Exception:  # a refused or failed command changes nothing; the walk goes on
            continue
    return cid


def test_cases_of_the_bundled_procedures_replay_verified(db_url: str) -> None:
    if not list(PROCESSES.glob("*.bpmn")):
        pytest.skip("processes/ has no diagrams yet")
    from app import create_app
    from engine import DeploymentInvalid
    from handlers import build_registry

    registry = build_registry()
    for name in sorted(_handler_names(PROCESSES) - registry.names()):  # handlers still being written
        registry.register(name, lambda ctx, **params: {"ok": True})
    application = create_app({"DATABASE_URL": db_url, "SECRET_KEY": "test", "TESTING": True,
                              "HANDLER_REGISTRY": registry, "SCHEDULER": "off", "AUDIT_SEAL_INTERVAL": 0})
    svc = application.extensions["aftercare"]
    try:
        if getattr(svc, "sla", None) is not None:
            with svc.db.write() as s:
                svc.sla.ensure_defaults(s)
        try:
            deployed = svc.engine.deploy_paths([PROCESSES, FORMS], SYSTEM)
        except DeploymentInvalid as exc:
            pytest.skip(f"processes/ does not deploy yet: {exc}")
        keys = sorted({d["key"] for d in deployed} or {p["key"] for p in svc.engine.list_processes()})
        rng = random.Random(6)
        driven = []
        for key in keys:
            for _ in range(2):
                try:
                    driven.append(drive(svc.engine, key, rng))
                except NotFound:
                    break
        assert driven
        for cid in driven:
            report = records.verify_case(svc.db, cid, svc.engine.specs)
            assert report["ok"], json.dumps(report, indent=1, default=str, ensure_ascii=False)
    finally:
        svc.db.dispose()


def _handler_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for f in folder.glob("*.bpmn"):
        names.update(re.findall(r'serviceTaskOperator id="([^"]+)"', f.read_text(encoding="utf-8")))
    return names
