"""Tamper evidence: the per-case hash chains and the global chain that seals them.

Per case (``engine/history.py``), each event's hash covers its canonical JSON and the hash of
the case's previous event, and the case header keeps the last hash and sequence number. That
detects an edited, inserted, deleted or reordered event inside a case, but not a case whose
last events were deleted together with a matching header, nor events swapped between cases.

The global chain links every event of every case. Design choice: a **sealing step**, not a
ledger row locked by every command.

- A ledger locked per write would put one row lock on every command's commit path. Every
  command of every case would then queue on that row, with the commit's fsync inside the
  lock: on PostgreSQL, where commands on different cases otherwise run in parallel, that caps
  the whole system at one commit at a time.
- Sealing keeps the command path unchanged. ``seal`` takes the ledger row lock (``FOR UPDATE``;
  the auto-sealer uses ``SKIP LOCKED`` and simply skips a round when another sealer is busy),
  reads events that have no ``global_seq`` yet in id order, and gives each the next position and
  ``global_hash = sha256(previous global hash : position : event hash)``. The order of the global
  chain is the order of sealing. On PostgreSQL ids are handed out before commit, so a command that
  commits late may be sealed after an event with a higher id; that is harmless because
  verification walks ``global_seq``, not ids, and one case's events are always sealed in order
  (its commands are serialized by the case lock).
- The cost of the choice: an event is covered by the global chain only once sealed. Until then
  only its case chain protects it. ``AutoSealer`` seals every couple of seconds after commits,
  ``aftercare audit seal`` seals on demand; verification reports how many events wait.

Anyone with write access to the database can rewrite any chain from a point onward; the ledger
head (``GET /api/audit/head``, printed by ``aftercare audit verify``) is the value to note outside
the database: a later head that does not extend it proves a rewrite.

Access records (``access.py``) carry the hash of their own content and are sealed into a second
global chain ("access") the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, tuple_, update
from sqlalchemy.orm import Session

from ..history import GENESIS, canonical, event_hash
from ..models import AccessRecord, AuditLedger, Case, CaseEvent, utcnow

log = logging.getLogger("aftercare.audit")

EVENTS, ACCESS = "events", "access"
_MODELS = {EVENTS: CaseEvent, ACCESS: AccessRecord}
_EVENT_COLUMNS = (CaseEvent.id, CaseEvent.case_id, CaseEvent.seq, CaseEvent.type, CaseEvent.at, CaseEvent.actor,
                  CaseEvent.task_id, CaseEvent.task, CaseEvent.payload, CaseEvent.prev_hash, CaseEvent.hash,
                  CaseEvent.global_seq, CaseEvent.global_hash)
_ACCESS_COLUMNS = (AccessRecord.id, AccessRecord.at, AccessRecord.actor, AccessRecord.action, AccessRecord.what,
                   AccessRecord.case_id, AccessRecord.detail, AccessRecord.hash, AccessRecord.global_seq,
                   AccessRecord.global_hash)


def link(prev_global_hash: str, global_seq: int, record_hash: str) -> str:
    """One step of a global chain."""
    return hashlib.sha256(f"{prev_global_hash}:{global_seq}:{record_hash}".encode()).hexdigest()


def access_hash(at: dt.datetime, actor: str, action: str, what: str, case_id: int | None,
                detail: Mapping[str, Any] | None) -> str:
    body = canonical({"at": at.astimezone(dt.UTC).isoformat(), "actor": actor, "action": action, "what": what,
                      "case": case_id, "detail": detail or {}})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def recompute_event_hash(ev: Mapping[str, Any], case_id: int) -> str:
    return event_hash(ev["prev_hash"], case_id, ev["seq"], ev["type"], ev["at"], ev["actor"], ev["task_id"],
                      ev["task"], ev["payload"])


# --- sealing ----------------------------------------------------------------------------------


def _lock_head(session: Session, chain: str, wait: bool) -> AuditLedger | None:
    sqlite = session.get_bind().dialect.name == "sqlite"
    q = select(AuditLedger).where(AuditLedger.chain == chain)
    if not sqlite:  # SQLite: the write transaction already holds the database lock
        q = q.with_for_update(skip_locked=not wait)
    head = session.scalars(q).first()
    if head is None:
        # A fresh or emptied table: create the row; a concurrent creator is harmless.
        if sqlite:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        session.execute(dialect_insert(AuditLedger).values(chain=chain, seq=0, hash=GENESIS)
                        .on_conflict_do_nothing(index_elements=["chain"]))
        head = session.scalars(q).first()
    return head


def seal(db: Any, limit: int = 5000, wait: bool = True) -> dict[str, int]:
    """Seal up to ``limit`` unsealed events and access records; returns how many of each."""
    sealed = {EVENTS: 0, ACCESS: 0}
    with db.write() as session:
        for chain, model in _MODELS.items():
            head = _lock_head(session, chain, wait)
            if head is None:  # another sealer holds the chain; it will take these too
                continue
            rows = session.execute(select(model.id, model.hash).where(model.global_seq.is_(None))
                                   .order_by(model.id).limit(limit)).all()
            if not rows:
                continue
            seq, prev = head.seq, head.hash
            params = []
            for row_id, record_hash in rows:
                seq += 1
                prev = link(prev, seq, record_hash)
                params.append({"b_id": row_id, "b_seq": seq, "b_hash": prev})
            table = model.__table__
            session.execute(update(table).where(table.c.id == bindparam("b_id"))
                            .values(global_seq=bindparam("b_seq"), global_hash=bindparam("b_hash")), params)
            head.seq, head.hash, head.sealed_at = seq, prev, utcnow()
            sealed[chain] = len(rows)
    return sealed


def seal_all(db: Any, batch: int = 5000) -> dict[str, int]:
    total = {EVENTS: 0, ACCESS: 0}
    while True:
        done = seal(db, batch)
        for k, v in done.items():
            total[k] += v
        if not any(v >= batch for v in done.values()):
            return total


class AutoSealer:
    """A ``Runtime.on_commit`` hook that seals at most every ``interval`` seconds.

    It runs in the committing thread but skips instantly when it is not time yet, when this
    process is already sealing, or when another process holds the ledger row."""

    def __init__(self, db: Any, interval: float = 2.0, limit: int = 2000) -> None:
        self.db = db
        self.interval = interval
        self.limit = limit
        self._last: float | None = None
        self._lock = threading.Lock()

    def __call__(self, _cmd: Any = None) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._last = now
            if self._pending():
                seal(self.db, self.limit, wait=False)
        except Exception:
            log.exception("sealing the audit chain failed; it will be retried")
        finally:
            self._lock.release()

    def _pending(self) -> bool:
        with self.db.read() as session:
            return any(session.execute(select(model.id).where(model.global_seq.is_(None)).limit(1)).first()
                       for model in _MODELS.values())


def heads(session: Session) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = {r.chain: r for r in session.scalars(select(AuditLedger))}
    for chain, model in _MODELS.items():
        row = rows.get(chain)
        out[chain] = {
            "seq": row.seq if row else 0, "hash": row.hash if row else GENESIS,
            "sealed_at": row.sealed_at.isoformat() if row and row.sealed_at else None,
            "unsealed": session.scalar(select(func.count()).select_from(model).where(model.global_seq.is_(None))),
        }
    return out


# --- verification -----------------------------------------------------------------------------


@dataclass
class Problem:
    """The first thing found wrong, with where and why."""

    reason: str
    chain: str = EVENTS
    case_id: int | None = None
    seq: int | None = None
    event_id: int | None = None
    global_seq: int | None = None
    type: str | None = None
    expected: Any = None
    found: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _event_problem(reason: str, ev: Mapping[str, Any], case_id: int, expected: Any = None,
                   found: Any = None) -> Problem:
    return Problem(reason, EVENTS, case_id, ev.get("seq"), ev.get("id"), ev.get("global_seq"), ev.get("type"),
                   expected, found)


def check_case_chain(case_id: int, events: list[Mapping[str, Any]], header: tuple[int, str] | None,
                     global_predecessors: Mapping[int, str] | None = None,
                     head_seq: int | None = None) -> Problem | None:
    """Check one case's events (ordered by seq): content hashes, links, sequence, header, and
    the links of its sealed events into the global chain (``global_predecessors``: global
    position -> global hash of the records just before this case's sealed events)."""
    prev, expected_seq, seen_unsealed = GENESIS, 1, False
    for ev in events:
        if ev["seq"] != expected_seq:
            return _event_problem("event sequence broken: an event was deleted, inserted or moved", ev, case_id,
                                  expected_seq, ev["seq"])
        if ev["prev_hash"] != prev:
            return _event_problem("prev_hash does not match the previous event's hash (an event before it was "
                                  "deleted, inserted or reordered)", ev, case_id, prev, ev["prev_hash"])
        actual = recompute_event_hash(ev, case_id)
        if actual != ev["hash"]:
            return _event_problem("content does not match its hash: the event was edited", ev, case_id,
                                  ev["hash"], actual)
        g = ev.get("global_seq")
        if g is None:
            seen_unsealed = True
        else:
            if seen_unsealed:
                return _event_problem("a sealed event follows an unsealed one (inserted or renumbered)", ev, case_id)
            if head_seq is not None and g > head_seq:
                return _event_problem("global position beyond the ledger head (forged)", ev, case_id, head_seq, g)
            if global_predecessors is not None:
                pred = GENESIS if g == 1 else global_predecessors.get(g - 1)
                if pred is None:
                    return _event_problem(f"global chain broken: position {g - 1} is missing (deleted)", ev, case_id)
                if link(pred, g, ev["hash"]) != ev.get("global_hash"):
                    return _event_problem("global hash mismatch: the event was replaced, moved or re-hashed after "
                                          "sealing", ev, case_id, link(pred, g, ev["hash"]), ev.get("global_hash"))
        prev, expected_seq = ev["hash"], expected_seq + 1
    if header is not None and (header[0] != expected_seq - 1 or header[1] != prev):
        last = dict(events[-1]) if events else {"seq": 0}
        return _event_problem("the case header does not match its last event (events deleted or added at the end)",
                              last, case_id, {"event_seq": expected_seq - 1, "last_hash": prev},
                              {"event_seq": header[0], "last_hash": header[1]})
    return None


def _event_dict(row: Any) -> dict[str, Any]:
    return {"id": row[0], "case_id": row[1], "seq": row[2], "type": row[3], "at": row[4], "actor": row[5],
            "task_id": row[6], "task": row[7], "payload": row[8], "prev_hash": row[9], "hash": row[10],
            "global_seq": row[11], "global_hash": row[12]}


def global_hashes(session: Session, model: Any, positions: Iterable[int]) -> dict[int, str]:
    wanted = sorted({p for p in positions if p >= 1})
    out: dict[int, str] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        out.update({r[0]: r[1] for r in session.execute(
            select(model.global_seq, model.global_hash).where(model.global_seq.in_(chunk)))})
    return out


def head_of(session: Session, chain: str) -> tuple[int, str]:
    row = session.get(AuditLedger, chain)
    return (row.seq, row.hash) if row is not None else (0, GENESIS)


def verify_case(session: Session, case_id: int) -> dict[str, Any]:
    """Verify one case's chain, its header and its links into the global chain."""
    case = session.get(Case, case_id)
    events = [_event_dict(r) for r in session.execute(
        select(*_EVENT_COLUMNS).where(CaseEvent.case_id == case_id).order_by(CaseEvent.seq))]
    sealed = [e["global_seq"] for e in events if e["global_seq"] is not None]
    preds = global_hashes(session, CaseEvent, [g - 1 for g in sealed])
    head_seq, _ = head_of(session, EVENTS)
    header = (case.event_seq, case.last_hash) if case is not None else None
    problem = check_case_chain(case_id, events, header, preds, head_seq)
    return {"ok": problem is None, "case": case_id, "events": len(events), "sealed": len(sealed),
            "unsealed": len(events) - len(sealed), "problem": problem.to_dict() if problem else None}


@dataclass
class _Walk:
    """Per-case state while streaming events."""

    cases: dict[int, tuple[int, str]]
    checked: int = 0


def _batches(session: Session, query: Any, key: Any, start: Any, batch: int) -> Iterator[list[Any]]:
    last = start
    while True:
        rows = session.execute(query.where(key > last).order_by(key).limit(batch)).all()
        if not rows:
            return
        yield rows
        last = rows[-1]._mapping[key.key]


def _check_in_case(walk: _Walk, ev: dict[str, Any]) -> Problem | None:
    case_id = ev["case_id"]
    last_seq, last_hash = walk.cases.get(case_id, (0, GENESIS))
    if ev["seq"] != last_seq + 1:
        return _event_problem("event sequence broken: an event was deleted, inserted or moved", ev, case_id,
                              last_seq + 1, ev["seq"])
    if ev["prev_hash"] != last_hash:
        return _event_problem("prev_hash does not match the previous event's hash (an event before it was "
                              "deleted, inserted or reordered)", ev, case_id, last_hash, ev["prev_hash"])
    actual = recompute_event_hash(ev, case_id)
    if actual != ev["hash"]:
        return _event_problem("content does not match its hash: the event was edited", ev, case_id, ev["hash"], actual)
    walk.cases[case_id] = (ev["seq"], ev["hash"])
    return None


def _preload_predecessors(session: Session, walk: _Walk, events: list[dict[str, Any]]) -> None:
    """In a partial walk (``since``), fetch the stored event before each case's first event seen."""
    pairs = []
    firsts: set[int] = set()
    for ev in events:
        cid = ev["case_id"]
        if cid not in walk.cases and cid not in firsts:
            firsts.add(cid)
            if ev["seq"] > 1:
                pairs.append((cid, ev["seq"] - 1))
            else:
                walk.cases[cid] = (0, GENESIS)
    for i in range(0, len(pairs), 300):
        chunk = pairs[i:i + 300]
        for cid, seq, h in session.execute(select(CaseEvent.case_id, CaseEvent.seq, CaseEvent.hash)
                                           .where(tuple_(CaseEvent.case_id, CaseEvent.seq).in_(chunk))):
            walk.cases[cid] = (seq, h)


def verify_all(db: Any, since: dt.datetime | None = None, progress: Callable[[int], None] | None = None,
               batch: int = 5000) -> dict[str, Any]:
    """Walk the global chain, every case chain and header, and the access chain, in one snapshot.

    With ``since``, the global chains are checked from their first record at or after that time
    (linked to the stored record before it) and only cases with events in that range."""
    with db.read() as session:
        walk = _Walk({})
        problem, head_events = _walk_events(session, walk, since, progress, batch)
        access_checked = 0
        if problem is None:
            problem, access_checked = _walk_access(session, since, progress, batch)
        heads_now = {chain: {"seq": s, "hash": h} for chain in _MODELS for s, h in [head_of(session, chain)]}
    return {"ok": problem is None, "problem": problem.to_dict() if problem else None, "events": walk.checked,
            "cases": len(walk.cases), "access_records": access_checked, "since": since.isoformat() if since else None,
            "sealed_through": head_events, "head": heads_now}


def count_to_verify(db: Any, since: dt.datetime | None = None) -> int:
    with db.read() as session:
        n = 0
        for model in _MODELS.values():
            q = select(func.count()).select_from(model)
            if since is not None:
                q = q.where((model.at >= since) | model.global_seq.is_(None))
            n += session.scalar(q) or 0
        return n


def _start_position(session: Session, model: Any, since: dt.datetime | None) -> tuple[int, str]:
    """(position before the first record to check, its global hash)."""
    if since is None:
        return 0, GENESIS
    first = session.scalar(select(func.min(model.global_seq)).where(model.at >= since, model.global_seq.is_not(None)))
    if first is None:
        last = session.scalar(select(func.max(model.global_seq)).where(model.global_seq.is_not(None)))
        first = (last or 0) + 1
    if first <= 1:
        return 0, GENESIS
    prev = session.scalar(select(model.global_hash).where(model.global_seq == first - 1))
    return first - 1, prev or ""


def _walk_events(session: Session, walk: _Walk, since: dt.datetime | None,
                 progress: Callable[[int], None] | None, batch: int) -> tuple[Problem | None, int]:
    g, prev_global = _start_position(session, CaseEvent, since)
    if since is not None and g > 0 and not prev_global:
        return Problem(f"global chain broken: position {g} is missing (deleted)", EVENTS, global_seq=g), g
    head_seq, head_hash = head_of(session, EVENTS)
    sealed_q = select(*_EVENT_COLUMNS).where(CaseEvent.global_seq.is_not(None))
    for rows in _batches(session, sealed_q, CaseEvent.global_seq, g, batch):
        events = [_event_dict(r) for r in rows]
        if since is not None:
            _preload_predecessors(session, walk, events)
        for ev in events:
            g += 1
            if ev["global_seq"] != g:
                return _event_problem(f"global chain broken: position {g} is missing (deleted) or renumbered", ev,
                                      ev["case_id"], g, ev["global_seq"]), g - 1
            expected = link(prev_global, g, ev["hash"])
            problem = _check_in_case(walk, ev)
            if problem is not None:
                return problem, g - 1
            if ev["global_hash"] != expected:
                return _event_problem("global hash mismatch: the event was replaced, moved or re-hashed after "
                                      "sealing", ev, ev["case_id"], expected, ev["global_hash"]), g - 1
            prev_global = ev["global_hash"]
            walk.checked += 1
        if progress is not None:
            progress(len(events))
    if g != head_seq or (g > 0 and prev_global != head_hash):
        return Problem("the ledger head does not match the end of the global chain (sealed events deleted at the "
                       "end, or the head was rewritten)", EVENTS, global_seq=g,
                       expected={"seq": g, "hash": prev_global}, found={"seq": head_seq, "hash": head_hash}), g
    unsealed_q = select(*_EVENT_COLUMNS).where(CaseEvent.global_seq.is_(None)).order_by(CaseEvent.case_id,
                                                                                       CaseEvent.seq)
    pending = [_event_dict(r) for r in session.execute(unsealed_q)]
    for i in range(0, len(pending), batch):
        chunk = pending[i:i + batch]
        if since is not None:
            _preload_predecessors(session, walk, chunk)
        for ev in chunk:
            problem = _check_in_case(walk, ev)
            if problem is not None:
                return problem, g
            walk.checked += 1
        if progress is not None:
            progress(len(chunk))
    # Headers: every case (or every case seen since) must end where its chain ends.
    for cid, event_seq, last_hash in _case_headers(session, sorted(walk.cases) if since is not None else None):
        last_seq, last = walk.cases.get(cid, (0, GENESIS))
        if (event_seq, last_hash or GENESIS) != (last_seq, last):
            return Problem("the case header does not match its last event (events deleted or added at the end)",
                           EVENTS, case_id=cid, seq=last_seq, expected={"event_seq": last_seq, "last_hash": last},
                           found={"event_seq": event_seq, "last_hash": last_hash}), g
    return None, g


def _case_headers(session: Session, ids: list[int] | None) -> Iterator[Any]:
    q = select(Case.id, Case.event_seq, Case.last_hash)
    if ids is None:
        yield from session.execute(q)
        return
    for i in range(0, len(ids), 500):
        yield from session.execute(q.where(Case.id.in_(ids[i:i + 500])))


def _walk_access(session: Session, since: dt.datetime | None, progress: Callable[[int], None] | None,
                 batch: int) -> tuple[Problem | None, int]:
    g, prev_global = _start_position(session, AccessRecord, since)
    checked = 0
    head_seq, head_hash = head_of(session, ACCESS)

    def content_problem(r: Any) -> Problem | None:
        actual = access_hash(r.at, r.actor, r.action, r.what, r.case_id, r.detail)
        if actual != r.hash:
            return Problem("access record does not match its hash: it was edited", ACCESS, case_id=r.case_id,
                           event_id=r.id, global_seq=r.global_seq, type=r.action, expected=r.hash, found=actual)
        return None

    sealed_q = select(*_ACCESS_COLUMNS).where(AccessRecord.global_seq.is_not(None))
    for rows in _batches(session, sealed_q, AccessRecord.global_seq, g, batch):
        for r in rows:
            g += 1
            if r.global_seq != g:
                return Problem(f"access chain broken: position {g} is missing (deleted) or renumbered", ACCESS,
                               event_id=r.id, global_seq=r.global_seq), checked
            problem = content_problem(r)
            if problem is not None:
                return problem, checked
            expected = link(prev_global, g, r.hash)
            if r.global_hash != expected:
                return Problem("access chain hash mismatch: a record was replaced or moved", ACCESS, event_id=r.id,
                               global_seq=g, expected=expected, found=r.global_hash), checked
            prev_global = r.global_hash
            checked += 1
        if progress is not None:
            progress(len(rows))
    if g != head_seq or (g > 0 and prev_global != head_hash):
        return Problem("the access ledger head does not match the end of its chain (records deleted at the end)",
                       ACCESS, global_seq=g, expected={"seq": g, "hash": prev_global},
                       found={"seq": head_seq, "hash": head_hash}), checked
    for r in session.execute(select(*_ACCESS_COLUMNS).where(AccessRecord.global_seq.is_(None))
                             .order_by(AccessRecord.id)):
        problem = content_problem(r)
        if problem is not None:
            return problem, checked
        checked += 1
    return None, checked
