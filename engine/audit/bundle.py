"""Self-contained export of a case, and its offline verification.

A bundle holds everything needed to check a case without the database: the definition files
of its process version (BPMN, DMN, forms) with their hashes and the deployment fingerprint, the
history events with their per-case and global chain hashes (and the global hashes just before
this case's sealed events, plus the ledger head at export), the stored task state and the case
header. ``verify_bundle`` checks the files against their hashes and fingerprint, the chain, and
replays the case from the files and the events alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import InvalidInput
from ..history import GENESIS, canonical
from ..models import Case, CaseEvent, utcnow
from . import chain
from .records import build_from_files, definition_files, fingerprint, load_record, parse_time
from .replay import CaseRecord, RecordedEvent, StoredTask, replay

FORMAT = "aftercare-audit-bundle/1"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def bundle_digest(bundle: dict[str, Any]) -> str:
    body = {k: v for k, v in bundle.items() if k != "bundle_sha256"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def export_case(session: Session, case_id: int, exported_by: str, function_names: list[str]) -> dict[str, Any]:
    record = load_record(session, case_id)
    case = session.get(Case, case_id)
    assert case is not None
    pv, files = definition_files(session, case.process_version_id)
    chained = {r.seq: r for r in session.execute(
        select(CaseEvent.seq, CaseEvent.prev_hash, CaseEvent.hash, CaseEvent.global_seq, CaseEvent.global_hash)
        .where(CaseEvent.case_id == case_id))}
    predecessors = chain.global_hashes(session, CaseEvent,
                                        [r.global_seq - 1 for r in chained.values() if r.global_seq is not None])
    head_seq, head_hash = chain.head_of(session, chain.EVENTS)
    events = [{"seq": ev.seq, "type": ev.type, "at": ev.at.isoformat(), "actor": ev.actor, "task_id": ev.task_id,
               "task": ev.task, "payload": ev.payload, "prev_hash": chained[ev.seq].prev_hash,
               "hash": chained[ev.seq].hash, "global_seq": chained[ev.seq].global_seq,
               "global_hash": chained[ev.seq].global_hash} for ev in record.events]
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "exported_at": utcnow().isoformat(),
        "exported_by": exported_by,
        "case": {"id": case.id, "process": case.process_key, "version": case.version, "status": case.status,
                 "data": case.data or {}, "event_seq": case.event_seq, "last_hash": case.last_hash,
                 "started_by": case.started_by, "created_at": _iso(case.created_at), "ended_at": _iso(case.ended_at),
                 "state": record.header},
        "definition": {"key": pv.key, "version": pv.version, "name": pv.name, "fingerprint": pv.fingerprint,
                       "deployed_at": _iso(pv.deployed_at), "forms": sorted((pv.bundle or {}).get("forms", {})),
                       "files": files},
        "functions": sorted(function_names),
        "events": events,
        "global_chain": {"predecessors": {str(k): v for k, v in sorted(predecessors.items())},
                         "head": {"seq": head_seq, "hash": head_hash}},
        "tasks": [{"task_id": t.task_id, "workflow": t.workflow, "state": t.state, "body": t.body}
                  for t in record.tasks],
    }
    bundle["bundle_sha256"] = bundle_digest(bundle)
    return bundle


def _record(bundle: dict[str, Any]) -> CaseRecord:
    case = bundle["case"]
    events = [RecordedEvent(e["seq"], e["type"], parse_time(e["at"]), e.get("actor"), e.get("task_id"),
                            e.get("task"), e.get("payload") or {}) for e in bundle["events"]]
    tasks = [StoredTask(t["task_id"], t.get("workflow") or "", t["state"], t["body"]) for t in bundle["tasks"]]
    return CaseRecord(case["id"], case["process"], case["version"], case["status"], case.get("data") or {},
                      case.get("state") or {}, tasks, events)


def verify_bundle(bundle: Any) -> dict[str, Any]:
    """Check a bundle offline: integrity, definition files, hash chains, and a full replay."""
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise InvalidInput(f"not an audit bundle (expected format {FORMAT})", [{"field": "format",
                                                                                "message": "unknown format"}])
    try:
        case_id = int(bundle["case"]["id"])
        report: dict[str, Any] = {"case": case_id, "process": bundle["definition"]["key"],
                                  "version": bundle["definition"]["version"], "events": len(bundle["events"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"incomplete audit bundle: {exc}", []) from None

    stated = bundle.get("bundle_sha256")
    report["integrity"] = {"ok": stated == bundle_digest(bundle)}
    if not report["integrity"]["ok"]:
        report["integrity"]["reason"] = "the bundle was changed after export (bundle_sha256 does not match)"

    definition = bundle["definition"]
    problems = []
    for f in definition["files"]:
        actual = hashlib.sha256(f["content"].encode("utf-8")).hexdigest()
        if actual != f["sha256"]:
            problems.append(f"{f['name']}: content does not match its sha256")
    if not problems and fingerprint(definition["files"], definition.get("forms", [])) != definition["fingerprint"]:
        problems.append("the files do not match the deployed process version's fingerprint")
    report["definitions"] = {"ok": not problems, "files": len(definition["files"]),
                             "problem": problems[0] if problems else None}

    events = []
    for e in bundle["events"]:
        events.append({**e, "at": parse_time(e["at"])})
    preds = {int(k): v for k, v in (bundle.get("global_chain") or {}).get("predecessors", {}).items()}
    head = (bundle.get("global_chain") or {}).get("head") or {"seq": 0, "hash": GENESIS}
    case = bundle["case"]
    problem = chain.check_case_chain(case_id, events, (case["event_seq"], case["last_hash"]), preds, head["seq"])
    report["chain"] = {"ok": problem is None, "problem": problem.to_dict() if problem else None,
                       "sealed": sum(1 for e in events if e.get("global_seq") is not None), "head": head}

    try:
        spec, subs = build_from_files(definition["key"], definition["files"])
        result = replay(spec, subs, _record(bundle), bundle.get("functions") or []).to_dict()
    except Exception as exc:  # a bundle whose definitions do not even build cannot be verified
        result = {"case": case_id, "result": "diverged",
                  "divergence": {"seq": None, "event": None, "reason": f"the definitions do not build: {exc}"}}
    report["replay"] = result
    report["ok"] = (report["integrity"]["ok"] and report["definitions"]["ok"] and report["chain"]["ok"]
                    and result["result"] == "verified")
    return report
