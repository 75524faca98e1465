"""Searched places of case data, kept in ``case_search`` by the command that changes the data.

Which places are searched is the application's choice (``WorkflowEngine(search_paths=...)``);
the engine only keeps one row per case and place whose value is text, so a prefix search is
one range over an index and a command that leaves those values alone writes nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
