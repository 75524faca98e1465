"""Searched places of case data, kept in ``case_search`` by the command that changes the data.

Which places are searched is the application's choice (``WorkflowEngine(search_paths=...)``);
the engine only keeps one row per case and place whose value is text, so a prefix search is
one range over an index and a command that leaves those values alone writes nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .fastsql import Statement

SearchPath = tuple[str, ...]
MAX_VALUE = 255  # the column's length

_DELETE = Statement("DELETE FROM case_search WHERE case_id = :case_id AND path = :path")
_INSERT = Statement("INSERT INTO case_search (case_id, path, value) VALUES (:case_id, :path, :value)")


def search_values(data: Any, paths: Sequence[SearchPath]) -> dict[str, str]:
    """{"customer.phone": "138...", ...} for each path whose value in ``data`` is text."""
    found: dict[str, str] = {}
    for path in paths:
        node = data
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, str):
            found[".".join(path)] = node[:MAX_VALUE]
    return found


def write_changes(tx: Any, case_id: int, before: Any, after: Any, paths: Sequence[SearchPath]) -> None:
    """Rewrite the rows of the places whose value differs between two versions of the data."""
    old, new = search_values(before, paths), search_values(after, paths)
    if old == new:
        return
    _DELETE.executemany(tx, [{"case_id": case_id, "path": p} for p, v in old.items() if new.get(p) != v])
    _INSERT.executemany(tx, [{"case_id": case_id, "path": p, "value": v} for p, v in new.items() if old.get(p) != v])


@dataclass
class Rebuilt:
    cases: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0


def rebuild(db: Any, paths: Sequence[SearchPath], batch: int = 500) -> Rebuilt:
    """Bring ``case_search`` in line with the cases' data for ``paths`` (after the searched
    places changed): rows of places no longer searched go, missing and stale rows are written.

    Each batch of cases is one write transaction holding the cases' locks (the lock commands
    take), so a command running meanwhile cannot interleave with the rewrite of its case."""
    from sqlalchemy import delete, select

    from .models import Case, CaseSearch

    wanted = [".".join(p) for p in paths]
    done = Rebuilt()
    with db.write() as session:
        stale = delete(CaseSearch).where(CaseSearch.path.not_in(wanted)) if wanted else delete(CaseSearch)
        done.removed += session.execute(stale).rowcount or 0
    after = 0
    while True:
        with db.write() as session:
            query = select(Case.id, Case.data).where(Case.id > after).order_by(Case.id).limit(batch)
            if not db.is_sqlite:
                query = query.with_for_update(of=Case)
            rows = session.execute(query).all()
            if not rows:
                return done
            ids = [r.id for r in rows]
            have: dict[tuple[int, str], str] = {
                (r.case_id, r.path): r.value for r in session.execute(
                    select(CaseSearch.case_id, CaseSearch.path, CaseSearch.value).where(CaseSearch.case_id.in_(ids)))}
            for case_id, data in rows:
                values = search_values(data or {}, paths)
                for path, value in values.items():
                    old = have.pop((case_id, path), None)
                    if old == value:
                        continue
                    if old is None:
                        done.added += 1
                    else:
                        done.changed += 1
                        _DELETE.execute(session, {"case_id": case_id, "path": path})
                    _INSERT.execute(session, {"case_id": case_id, "path": path, "value": value})
            for case_id, path in have:  # a searched place whose value is no longer text
                _DELETE.execute(session, {"case_id": case_id, "path": path})
                done.removed += 1
            done.cases += len(rows)
            after = ids[-1]
