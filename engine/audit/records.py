"""Reading a case for audit: its stored record and its definition version, from the database or a bundle;
and the audit operations on one case (verify, replay, time travel)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import sandbox
from ..definitions import build_spec, read_source
from ..errors import NotFound
from ..models import Case, CaseEvent, CaseTask, DefinitionFile, ProcessVersion
from ..specs import SpecStore
from . import chain
from .replay import CaseRecord, RecordedEvent, StoredTask, diff_data, replay, states_at


def load_record(session: Session, case_id: int) -> CaseRecord:
    case = session.get(Case, case_id)
    if case is None:
        raise NotFound(f"case {case_id} not found")
    events = [RecordedEvent(r.seq, r.type, r.at, r.actor, r.task_id, r.task, r.payload or {})
              for r in session.execute(select(CaseEvent.seq, CaseEvent.type, CaseEvent.at, CaseEvent.actor,
                                              CaseEvent.task_id, CaseEvent.task, CaseEvent.payload)
                                       .where(CaseEvent.case_id == case_id).order_by(CaseEvent.seq))]
    tasks = [StoredTask(r.task_id, r.workflow, r.state, json.loads(r.body))
             for r in session.execute(select(CaseTask.task_id, CaseTask.workflow, CaseTask.state, CaseTask.body)
                                      .where(CaseTask.case_id == case_id).order_by(CaseTask.seq))]
    return CaseRecord(case.id, case.process_key, case.version, case.status, case.data or {},
                      json.loads(case.state or "{}"), tasks, events)


def definition_files(session: Session, version_id: int) -> tuple[ProcessVersion, list[dict[str, Any]]]:
    """The process version and every file it was deployed with (BPMN, DMN, forms), as stored."""
    pv = session.get(ProcessVersion, version_id)
    if pv is None:
        raise NotFound(f"process version {version_id} not found")
    bundle = pv.bundle or {}
    ids = [*bundle.get("bpmn", []), *bundle.get("dmn", []), *bundle.get("forms", {}).values()]
    rows = {f.id: f for f in session.scalars(select(DefinitionFile).where(DefinitionFile.id.in_(ids)))}
    files = []
    for fid in dict.fromkeys(ids):
        f = rows.get(fid)
        if f is None:
            raise NotFound(f"definition file {fid} of {pv.key} version {pv.version} is missing")
        files.append({"name": f.name, "kind": f.kind, "sha256": f.sha256, "content": f.content})
    return pv, files


def build_from_files(key: str, files: Iterable[Mapping[str, Any]]) -> tuple[Any, dict[str, Any]]:
    bpmn, dmn = [], []
    for f in files:
        if f["kind"] in ("bpmn", "dmn"):
            src = read_source(f["name"], f["content"])
            if src is None:
                raise ValueError(f"definition file {f['name']} does not parse")
            (bpmn if f["kind"] == "bpmn" else dmn).append(src)
    return build_spec(bpmn, dmn, key)


def fingerprint(files: Iterable[Mapping[str, Any]], forms: Mapping[str, Any]) -> str:
    """The deployment fingerprint of a process version (as ``definitions.parse_bundle`` computes it)."""
    by_kind: dict[str, list[str]] = {"bpmn": [], "dmn": []}
    sha_of = {f["name"]: f["sha256"] for f in files}
    for f in files:
        if f["kind"] in by_kind:
            by_kind[f["kind"]].append(f["sha256"])
    return hashlib.sha256(json.dumps({
        "bpmn": sorted(by_kind["bpmn"]), "dmn": sorted(by_kind["dmn"]),
        "forms": {n: sha_of.get(n) for n in sorted(forms)},
    }, sort_keys=True).encode("utf-8")).hexdigest()


def _spec(session: Session, case_id: int, specs: SpecStore | None) -> tuple[Any, dict[str, Any], list[str]]:
    case = session.get(Case, case_id)
    if case is None:
        raise NotFound(f"case {case_id} not found")
    if specs is not None:
        version = specs.get(session, case.process_version_id)
        return version.spec, version.subprocess_specs, list(specs.functions)
    pv, files = definition_files(session, case.process_version_id)
    spec, subs = build_from_files(pv.key, files)
    return spec, subs, list(sandbox.default_functions())


def replay_case(db: Any, case_id: int, specs: SpecStore | None = None) -> dict[str, Any]:
    with db.read() as session:
        spec, subs, names = _spec(session, case_id, specs)
        record = load_record(session, case_id)
    return replay(spec, subs, record, names).to_dict()


def verify_case(db: Any, case_id: int, specs: SpecStore | None = None, with_replay: bool = True) -> dict[str, Any]:
    """Chain verification and (optionally) replay of one case, read in one snapshot."""
    with db.read() as session:
        result = chain.verify_case(session, case_id)
        if with_replay:
            spec, subs, names = _spec(session, case_id, specs)
            record = load_record(session, case_id)
    out: dict[str, Any] = {"case": case_id, "chain": result}
    if with_replay:
        out["replay"] = replay(spec, subs, record, names).to_dict()
    out["ok"] = result["ok"] and (not with_replay or out["replay"]["result"] == "verified")
    return out


def case_at(db: Any, case_id: int, seq: int, diff_from: int | None = None,
            specs: SpecStore | None = None) -> dict[str, Any]:
    """The case as it stood after event ``seq``; with ``diff_from``, what changed in its data since then."""
    with db.read() as session:
        spec, subs, names = _spec(session, case_id, specs)
        record = load_record(session, case_id)
    wanted = [seq] if diff_from is None else [seq, diff_from]
    states, divergence = states_at(spec, subs, record, wanted, names)
    state = states.get(seq)
    out: dict[str, Any] = {"id": case_id, "process": record.process_key, "version": record.version, "seq": seq,
                           "last_seq": record.events[-1].seq if record.events else 0}
    if state is None:
        out["replay"] = {"result": "diverged", "divergence": divergence.to_dict() if divergence else None}
        return out
    out.update(state)
    if diff_from is not None and diff_from in states:
        out["diff_from"] = diff_from
        out["diff"] = diff_data(states[diff_from]["data"], state["data"])
    if divergence is not None:
        out["replay"] = {"result": "diverged", "divergence": divergence.to_dict()}
    return out


def parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
