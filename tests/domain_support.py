"""Helpers for the after-sales domain tests: the engine wired as ``app.create_app`` wires it
(handlers, SLA policies, link hook), the five procedures deployed, users without slow password
hashing, demo data, and a handler context for calling handlers directly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine import SYSTEM, Actor, Database, ServiceContext, WorkflowEngine
from engine.identity import BUILTIN_GROUPS, actor_for_username, ensure_groups, hash_password
from engine.models import Membership, OutboxMessage, User
from engine.sla import SlaService
from handlers import build_registry, install_hooks, surveys
from handlers.import_export import import_csv

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"
PASSWORD = "domain tests password"
_HASH: dict[str, str] = {}

STAFF = {
    "agent": ["hotline"], "dispatcher": ["dispatch"], "tech": ["technician"], "tech2": ["technician"],
    "tech3": ["technician"], "tech4": ["technician"], "handler": ["complaints"], "care": ["customer-care"],
    "supervisor": ["supervisor"], "coordinator": ["emergency"], "sales": ["sales"], "warehouse": ["warehouse"],
    "owner": ["process-owner"], "auditor": ["auditor"], "admin": ["admin"],
}


def add_users(db: Database, users: dict[str, list[str]]) -> dict[str, Actor]:
    """Users with one shared password hash (hashing per user would dominate test time)."""
    if "h" not in _HASH:
        _HASH["h"] = hash_password(PASSWORD)
    with db.write() as s:
        ensure_groups(s, BUILTIN_GROUPS)
        ensure_groups(s, {g: g for groups in users.values() for g in groups})
        existing = set(s.scalars(select(User.username)))
        for name, groups in users.items():
            if name in existing:
                continue
            user = User(username=name, password_hash=_HASH["h"], display_name=name.title())
            s.add(user)
            s.flush()
            for g in {*groups, "staff"}:
                s.add(Membership(user_id=user.id, group_name=g))
    with db.read() as s:
        return {name: actor_for_username(s, name) for name in users}


def build_engine(db: Database) -> WorkflowEngine:
    """The application's wiring (app.create_app) without Flask."""
    surveys.configure_signing("domain tests secret")  # create_app hands its SECRET_KEY over the same way
    sla = SlaService(db)
    with db.write() as s:
        sla.ensure_defaults(s)
    engine = WorkflowEngine(db, build_registry(), functions=sla.functions(), due_calculator=sla)
    install_hooks(engine)
    engine.deploy_paths([ROOT / "processes", ROOT / "forms"], SYSTEM)
    return engine


def product_app(db_url: str, secret: str, **config: Any) -> Any:
    """The web app with the bundled procedures, SLA defaults, demo parts, staff and FAQ, and STAFF's accounts."""
    from app import create_app

    application = create_app({"DATABASE_URL": db_url, "SECRET_KEY": secret, "TESTING": True, "SCHEDULER": "off",
                              **config})
    svc = application.extensions["aftercare"]
    add_users(svc.db, STAFF)
    with svc.db.write() as s:
        svc.sla.ensure_defaults(s)
    svc.engine.deploy_paths([ROOT / "processes", ROOT / "forms"], SYSTEM)
    load_demo(svc.db, ("parts", "staff", "faq"))
    return application


def load_demo(db: Database, kinds: tuple[str, ...] = ("parts", "customers", "staff", "faq")) -> None:
    for kind in kinds:
        import_csv(db, kind, (DEMO / f"{kind}.csv").read_text(encoding="utf-8-sig"), only_missing=True)


def context(session: Any, case_id: int | None = None, data: dict[str, Any] | None = None,
            now: dt.datetime | None = None, actor: str = "agent", process: str = "test") -> ServiceContext:
    """A handler context on ``session`` (outbox rows of a case-less context carry no case)."""
    return ServiceContext(session=session, case_id=case_id, process_key=process, task_spec="test",  # type: ignore[arg-type]
                          data=data or {}, actor=actor, now=now or dt.datetime.now(dt.UTC))


def outbox(db: Database, case_id: int | None = None, template: str | None = None) -> list[OutboxMessage]:
    with db.read() as s:
        q = select(OutboxMessage).order_by(OutboxMessage.id)
        if case_id is not None:
            q = q.where(OutboxMessage.case_id == case_id)
        if template is not None:
            q = q.where(OutboxMessage.template == template)
        return list(s.scalars(q))


def make_case(session: Any, process: str = "test", status: str = "running", data: dict[str, Any] | None = None) -> int:
    """A bare case row (no diagram behind it) for handlers that refer to their case."""
    from engine.models import Case, DefinitionFile, Deployment, ProcessVersion

    pv = session.scalars(select(ProcessVersion).where(ProcessVersion.key == process)).first()
    if pv is None:
        dep = Deployment(deployed_by="system")
        session.add(dep)
        session.flush()
        f = DefinitionFile(deployment_id=dep.id, name=f"{process}.bpmn", kind="bpmn", sha256="0" * 64, content="")
        session.add(f)
        session.flush()
        pv = ProcessVersion(key=process, version=1, name=process, deployment_id=dep.id, bpmn_file_id=f.id,
                            fingerprint="0", bundle={})
        session.add(pv)
        session.flush()
    case = Case(process_key=process, process_version_id=pv.id, version=1, status=status, data=data or {}, state="{}")
    session.add(case)
    session.flush()
    return int(case.id)
