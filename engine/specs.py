"""Process versions turned into runnable SpiffWorkflow specs, parsed once per process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import sandbox
from .db import Transaction
from .definitions import SourceFile, build_spec, read_source, starter_groups
from .errors import NotFound
from .models import DefinitionFile, ProcessVersion
from .spiff import CaseScriptEngine


@dataclass
class VersionSpec:
    id: int
    key: str
    version: int
    spec: Any
    subprocess_specs: dict[str, Any]
    forms: dict[str, str] = field(default_factory=dict)  # filename -> JSON Schema text
    starters: frozenset[str] | None = None  # groups that may start a case; None: all staff


class SpecStore:
    def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self.functions: dict[str, Callable[..., Any]] = {**sandbox.default_functions(), **(functions or {})}
        self._cache: dict[int, VersionSpec] = {}
        self._lock = threading.Lock()

    def script_engine(self) -> CaseScriptEngine:
        return CaseScriptEngine(self.functions)

    def get(self, session: Session | Transaction, version_id: int) -> VersionSpec:
        cached = self._cache.get(version_id)
        if cached is not None:
            return cached
        if isinstance(session, Transaction):
            session = session.session
        pv = session.get(ProcessVersion, version_id)
        if pv is None:
            raise NotFound(f"process version {version_id} not found")
        bundle = pv.bundle
        ids = [*bundle.get("bpmn", []), *bundle.get("dmn", []), *bundle.get("forms", {}).values()]
        files = {f.id: f for f in session.scalars(select(DefinitionFile).where(DefinitionFile.id.in_(ids)))}
        bpmn = [_source(files[i]) for i in pv.bundle.get("bpmn", [])]
        dmn = [_source(files[i]) for i in pv.bundle.get("dmn", [])]
        spec, subprocess_specs = build_spec(bpmn, dmn, pv.key)
        forms = {name: files[fid].content for name, fid in pv.bundle.get("forms", {}).items()}
        built = VersionSpec(pv.id, pv.key, pv.version, spec, subprocess_specs, forms, starter_groups(bpmn, pv.key))
        with self._lock:
            self._cache[version_id] = built
        return built

    def latest(self, session: Session, key: str) -> VersionSpec:
        pv_id = session.scalar(
            select(ProcessVersion.id).where(ProcessVersion.key == key).order_by(ProcessVersion.version.desc()).limit(1)
        )
        if pv_id is None:
            raise NotFound(f"process '{key}' is not deployed")
        return self.get(session, pv_id)


def _source(row: DefinitionFile) -> SourceFile:
    src = read_source(row.name, row.content)
    if src is None:  # stored files were validated at deployment
        raise ValueError(f"stored definition file {row.name} no longer parses")
    src.file_id = row.id
    return src
