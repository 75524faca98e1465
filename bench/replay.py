"""Audit benchmarks: hash-chain verification throughput, and the replay of a long case.

(1) Verification: a database with --events history events (--per-case events per case, realistic
    payloads, valid per-case chains) is sealed into the global chain, then ``verify_all`` walks
    it (global chain, every case chain and header). Printed: events/s for sealing and verifying,
    beside (a) hashing the same events in memory (canonical JSON + sha256, no database), with
    the ratio.
(2) Replay: a case driven through the engine to --case-events events (a loop of a user task, a
    service task and a script calling now()), then replayed from its history and compared with
    the stored state. Printed: seconds to replay it (and with loading it from the database),
    beside (a) SpiffWorkflow re-running the same completions in memory (with the engine's
    frontier stepping, as plain ``do_engine_steps`` stops at a tree depth of 1,000), with the ratio.

Runs on SQLite by default (a temporary file); --url takes a PostgreSQL URL (the schema is
created in a fresh search_path schema and dropped afterwards).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402
from sqlalchemy import bindparam, create_engine, insert, text  # noqa: E402

from engine import SYSTEM, Database, HandlerRegistry, WorkflowEngine, spiff  # noqa: E402
from engine.audit import chain, records  # noqa: E402
from engine.audit.replay import replay  # noqa: E402
from engine.history import GENESIS, canonical, event_hash  # noqa: E402
from engine.models import Case, CaseEvent  # noqa: E402

LOOP_BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="audit_loop_defs" targetNamespace="bench">
  <bpmn:process id="audit_loop" name="Follow-up loop" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:exclusiveGateway id="again_join"><bpmn:incoming>f1</bpmn:incoming><bpmn:incoming>f5</bpmn:incoming>
      <bpmn:outgoing>f2</bpmn:outgoing></bpmn:exclusiveGateway>
    <bpmn:userTask id="follow_up" name="Follow up"><bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:serviceTask id="log_contact" name="Log the contact">
      <bpmn:extensionElements>
        <spiffworkflow:serviceTaskOperator id="bench.log_contact" resultVariable="logged">
          <spiffworkflow:parameters>
            <spiffworkflow:parameter id="note" type="str" value="note" />
          </spiffworkflow:parameters>
        </spiffworkflow:serviceTaskOperator>
      </bpmn:extensionElements>
      <bpmn:incoming>f3</bpmn:incoming><bpmn:outgoing>f4</bpmn:outgoing>
    </bpmn:serviceTask>
    <bpmn:scriptTask id="stamp" name="Stamp"><bpmn:incoming>f4</bpmn:incoming><bpmn:outgoing>f6</bpmn:outgoing>
      <bpmn:script>last_contact = now()
contacts = contacts + 1 if contacts else 1</bpmn:script>
    </bpmn:scriptTask>
    <bpmn:exclusiveGateway id="more" default="f7"><bpmn:incoming>f6</bpmn:incoming><bpmn:outgoing>f5</bpmn:outgoing>
      <bpmn:outgoing>f7</bpmn:outgoing></bpmn:exclusiveGateway>
    <bpmn:endEvent id="end"><bpmn:incoming>f7</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="again_join" />
    <bpmn:sequenceFlow id="f2" sourceRef="again_join" targetRef="follow_up" />
    <bpmn:sequenceFlow id="f3" sourceRef="follow_up" targetRef="log_contact" />
    <bpmn:sequenceFlow id="f4" sourceRef="log_contact" targetRef="stamp" />
    <bpmn:sequenceFlow id="f6" sourceRef="stamp" targetRef="more" />
    <bpmn:sequenceFlow id="f5" sourceRef="more" targetRef="again_join">
      <bpmn:conditionExpression>again == True</bpmn:conditionExpression></bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="f7" sourceRef="more" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""


def _handlers() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("bench.log_contact", lambda ctx, note=None: {"logged": True, "note": note})
    return registry


def _payload(i: int, j: int) -> dict[str, Any]:
    return {"data": {"customer": f"客户 {i}", "phone": f"1380013{i % 10000:04d}", "step": j, "answer": "已回复 replied",
                     "channel": "phone", "satisfied": j % 3 == 0, "notes": "x" * 80, "parts": [{"part": "P-1",
                                                                                               "quantity": 1}]}}


def build_history(db: Database, engine: WorkflowEngine, events: int, per_case: int) -> int:
    """Insert ``events`` events in cases of ``per_case`` with valid chains; returns the number of cases."""
    with db.read() as s:
        version_id = s.scalar(text("SELECT id FROM process_versions WHERE key = 'audit_loop'"))
    n_cases = max(1, events // per_case)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for first in range(0, n_cases, 200):
        with db.write() as s:
            conn = s.connection()
            case_rows, event_rows = [], []
            ids = []
            for _ in range(first, min(n_cases, first + 200)):
                ids.append(conn.execute(insert(Case.__table__).values(
                    process_key="audit_loop", process_version_id=version_id, version=1, status="running", data={},
                    state="{}", lock_version=0, task_seq=0, event_seq=0, last_hash=GENESIS, started_by="bench",
                    created_at=start, updated_at=start)).inserted_primary_key[0])
            for i, case_id in enumerate(ids, start=first):
                prev = GENESIS
                for j in range(1, per_case + 1):
                    at = start + dt.timedelta(seconds=i * per_case + j)
                    payload, task_id = _payload(i, j), str(uuid.uuid4())
                    h = event_hash(prev, case_id, j, "task_completed", at, "agent", task_id, "follow_up", payload)
                    event_rows.append({"case_id": case_id, "seq": j, "type": "task_completed", "at": at,
                                       "actor": "agent", "task_id": task_id, "task": "follow_up", "payload": payload,
                                       "prev_hash": prev, "hash": h})
                    prev = h
                case_rows.append({"b_id": case_id, "b_seq": per_case, "b_hash": prev})
            conn.execute(insert(CaseEvent.__table__), event_rows)
            conn.execute(Case.__table__.update().where(Case.__table__.c.id == bindparam("b_id"))
                         .values(event_seq=bindparam("b_seq"), last_hash=bindparam("b_hash")), case_rows)
    return n_cases


def hash_in_memory(events: int, per_case: int) -> float:
    """(a) for verification: the same per-event work (canonical JSON, sha256) with no database."""
    at = dt.datetime.now(dt.UTC)
    rows = [(i // per_case, i % per_case + 1, _payload(i // per_case, i % per_case + 1)) for i in range(events)]
    started = time.perf_counter()
    prev = GENESIS
    for case_id, seq, payload in rows:
        prev = event_hash(prev, case_id, seq, "task_completed", at, "agent", None, "follow_up", payload)
        canonical({"g": prev})
    return events / (time.perf_counter() - started)


def drive_long_case(engine: WorkflowEngine, target_events: int) -> int:
    case = engine.start_case("audit_loop", {"note": "call back", "contacts": 0}, SYSTEM)
    cid = case["id"]
    count = len(engine.history(cid, SYSTEM))
    while True:
        last = count + 4 >= target_events
        case = engine.complete_task(case["tasks"][0]["id"], {"again": not last, "note": f"call {count}"}, SYSTEM)
        count += 4
        if last:
            break
    assert case["status"] == "completed", case["status"]
    return cid


def plain_rerun(spec: Any, subs: dict[str, Any], completions: list[dict[str, Any]]) -> float:
    """(a) for replay: SpiffWorkflow running the same completions in memory, nothing recorded or compared."""
    engine = spiff.CaseScriptEngine({"now": lambda: dt.datetime.now(dt.UTC).isoformat()})
    engine.service_caller = lambda task, name, params: {"logged": True, "note": params.get("note")}
    started = time.perf_counter()
    wf = BpmnWorkflow(spec, subs, script_engine=engine)
    for t in wf.get_tasks(state=TaskState.READY):
        t.data.update({"note": "call back", "contacts": 0})
    # The engine's own stepping: plain do_engine_steps walks the whole tree and stops at depth 1,000.
    spiff.run_engine_steps(wf)
    for data in completions:
        [task] = spiff.open_user_tasks(wf)
        task.data.update(data)
        task.run()
        spiff.run_engine_steps(wf)
    assert wf.completed
    return time.perf_counter() - started


def run(url: str, events: int, per_case: int, case_events: int) -> None:
    db = Database(url)
    db.migrate()
    engine = WorkflowEngine(db, _handlers())
    engine.deploy([("audit_loop.bpmn", LOOP_BPMN)], SYSTEM)
    backend = "PostgreSQL" if not db.is_sqlite else "SQLite"

    t0 = time.perf_counter()
    n_cases = build_history(db, engine, events, per_case)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    sealed = chain.seal_all(db)["events"]
    seal_rate = sealed / (time.perf_counter() - t0)
    memory_rate = hash_in_memory(min(events, 50_000), per_case)
    t0 = time.perf_counter()
    report = chain.verify_all(db)
    verify_seconds = time.perf_counter() - t0
    assert report["ok"], report
    verify_rate = report["events"] / verify_seconds

    cid = drive_long_case(engine, case_events)
    t0 = time.perf_counter()
    loaded = records.replay_case(db, cid, engine.specs)
    with_load = time.perf_counter() - t0
    assert loaded["result"] == "verified", loaded
    with db.read() as s:
        record = records.load_record(s, cid)
        version = engine.specs.get(s, s.get(Case, cid).process_version_id)
    best = min(replay(version.spec, version.subprocess_specs, record, engine.specs.functions).seconds
               for _ in range(3))
    completions = [e.payload["data"] for e in record.events if e.type == "task_completed"]
    plain = min(plain_rerun(version.spec, version.subprocess_specs, completions) for _ in range(3))
    with db.read() as s:
        case_chain = chain.verify_case(s, cid)

    print(f"backend: {backend}")
    print(f"(1) verification over {report['events']:,} events in {n_cases:,} cases "
          f"(history built in {built:.1f} s)")
    print(f"    {'(a) hash the events in memory, no database':<52}{memory_rate:>12,.0f} events/s")
    print(f"    {'(b) seal into the global chain':<52}{seal_rate:>12,.0f} events/s")
    print(f"    {'(c) verify_all: global chain, case chains, headers':<52}{verify_rate:>12,.0f} events/s"
          f"   ({verify_seconds:.2f} s)")
    print(f"    ratio (c)/(a): {verify_rate / memory_rate:.3f}")
    print(f"(2) replay of case {cid}: {len(record.events):,} events, {len(completions)} completions, "
          f"{len(record.tasks):,} stored tasks; case chain {'ok' if case_chain['ok'] else 'BROKEN'}")
    print(f"    {'(a) SpiffWorkflow re-running the completions':<52}{plain:>10.3f} s")
    print(f"    {'(b) replay with verification (history in memory)':<52}{best:>10.3f} s")
    print(f"    {'(c) replay with verification, loaded from database':<52}{with_load:>10.3f} s")
    print(f"    ratio (b)/(a): {best / plain:.2f}")
    db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="history events to verify")
    ap.add_argument("--per-case", type=int, default=100, help="events per case in the verified history")
    ap.add_argument("--case-events", type=int, default=1_000, help="events of the replayed case")
    ap.add_argument("--url", help="PostgreSQL URL (default: a temporary SQLite file)")
    args = ap.parse_args()
    if args.url:
        schema = f"bench_replay_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            sep = "&" if "?" in args.url else "?"
            run(f"{args.url}{sep}options=-csearch_path%3D{schema}", args.events, args.per_case, args.case_events)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{tmp}/replay.db", args.events, args.per_case, args.case_events)


if __name__ == "__main__":
    main()
