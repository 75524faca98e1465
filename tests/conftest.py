"""Fixtures: every database test runs on SQLite and again on PostgreSQL when it answers."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from engine import SYSTEM, Database, HandlerRegistry, WorkflowEngine
from engine.identity import add_user

HERE = Path(__file__).parent
SAMPLES = HERE / "processes"
PG_URL = os.environ.get("AFTERCARE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


PG_AVAILABLE = _pg_reachable()


def pytest_report_header(config: Any) -> str:
    return ("PostgreSQL: 127.0.0.1:5432 reachable, database tests run on SQLite and PostgreSQL"
            if PG_AVAILABLE else
            "PostgreSQL: NOT reachable at 127.0.0.1:5432 - PostgreSQL variants will be SKIPPED")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not PG_AVAILABLE:
        terminalreporter.write_sep("!", "PostgreSQL was not reachable: every [postgresql] test was skipped", red=True)


@pytest.fixture(autouse=True)
def _task_rows_as_spiffworkflow_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task row any test writes is checked against SpiffWorkflow's own converter: the
    engine builds the row text itself, and a restore reads it with the converter."""
    from engine import spiff

    fast = spiff.task_body

    def checked(task: Any) -> str:
        body = fast(task)
        assert body == spiff.converter_task_body(task), f"task row of {task.task_spec.name} differs"
        return body

    monkeypatch.setattr(spiff, "task_body", checked)

    # The engine keeps the case's WAITING tasks as they change instead of scanning for them.
    changed = spiff.changed_tasks

    def changed_checked(wf: Any, *args: Any) -> Any:
        # ... and its unfinished tasks from the changes SpiffWorkflow reports, without walking.
        frontier = spiff.frontier_known(wf)
        if frontier is not None:
            unfinished = {t.id: key for key, t in spiff.all_tasks(wf) if not t.has_state(spiff.TaskState.FINISHED_MASK)}
            assert frontier == unfinished, f"unfinished tasks kept {frontier}, found {unfinished}"
        known = spiff.waiting_known(wf)
        if known is not None:
            actual = {t.id for _, t in spiff.all_tasks(wf) if t.state == spiff.TaskState.WAITING}
            assert known == actual, f"waiting tasks kept {known}, found {actual}"
        return changed(wf, *args)

    monkeypatch.setattr(spiff, "changed_tasks", changed_checked)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.dispose()
    return path


@pytest.fixture(scope="session")
def _pg_schema() -> Iterator[str]:
    if not PG_AVAILABLE:
        warnings.warn("PostgreSQL not reachable at 127.0.0.1:5432; skipping PostgreSQL variants", stacklevel=1)
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
    yield from migrated_pg_schema("aftercare_test")


def migrated_pg_schema(prefix: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL schema (its URL), dropped when the generator is closed."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    db = Database(url)
    db.migrate()
    db.dispose()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "aftercare.db"
        shutil.copy(_sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("_pg_schema")
    yield url
    _empty_pg_schema(url)


def _empty_pg_schema(url: str) -> None:
    """Empty every table of the test schema and restart its sequences.

    Row deletes with foreign-key triggers off take milliseconds where TRUNCATE of every table
    takes about a second per test; the table list comes from the database, so tables of
    models a test did not import are emptied too."""
    cleanup = create_engine(url)
    with cleanup.begin() as conn:
        tables = conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'")).scalars().all()
        sequences = conn.execute(text(
            "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = current_schema()"
        )).scalars().all()
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        for table in tables:
            conn.execute(text(f'DELETE FROM "{table}"'))
        for seq in sequences:
            conn.execute(text(f'ALTER SEQUENCE "{seq}" RESTART'))
    cleanup.dispose()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


class Calls:
    """Records handler calls; ``fail`` makes the failing handler raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = True


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def handlers(calls: Calls) -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.register("sample.notify")
    def notify(ctx: Any, recipient: str, priority: str) -> dict[str, Any]:
        calls.calls.append(("sample.notify", {"recipient": recipient, "priority": priority}))
        ctx.notify("sms", recipient, f"Your request has priority {priority}")
        return {"sent": True, "to": recipient}

    @registry.register("sample.flaky")
    def flaky(ctx: Any, value: Any = None) -> dict[str, Any]:
        calls.calls.append(("sample.flaky", {"value": value}))
        ctx.notify("email", "someone@example.com", "written before the failure")
        if calls.fail:
            raise RuntimeError("stock service unreachable")
        return {"ok": True}

    return registry


@pytest.fixture
def engine(db: Database, handlers: HandlerRegistry) -> WorkflowEngine:
    eng = WorkflowEngine(db, handlers)
    eng.deploy_paths([SAMPLES], SYSTEM)
    return eng


USERS = {
    "admin": ["admin"], "owner": ["process-owner"], "auditor": ["auditor"], "boss": ["supervisor"],
    "agent": ["hotline"], "agent2": ["hotline"], "tech": ["technician"], "nobody": [],
}
PASSWORD = "correct horse battery"


@pytest.fixture
def users(db: Database) -> dict[str, Any]:
    from engine.identity import actor_for_username

    with db.write() as s:
        for name, groups in USERS.items():
            add_user(s, name, PASSWORD, groups)
    with db.read() as s:
        return {name: actor_for_username(s, name) for name in USERS}


@pytest.fixture
def app(db_url: str, handlers: HandlerRegistry) -> Iterator[Any]:
    from app import create_app

    application = create_app({"DATABASE_URL": db_url, "SECRET_KEY": "test-secret", "TESTING": True,
                              "HANDLER_REGISTRY": handlers, "SCHEDULER": "off"})
    yield application
    application.extensions["aftercare"].db.dispose()


@pytest.fixture
def client(app: Any, users: dict[str, Any]) -> Any:
    svc = app.extensions["aftercare"]
    svc.engine.deploy_paths([SAMPLES], SYSTEM)
    return app.test_client()


def token_for(client: Any, username: str) -> dict[str, str]:
    res = client.post("/api/auth/token", json={"username": username, "password": PASSWORD})
    assert res.status_code == 200, res.get_json()
    return {"Authorization": f"Bearer {res.get_json()['token']}"}


# --- timers and SLA (test_sla.py, test_escalation.py, test_scheduler.py) -------------------------


@pytest.fixture
def sla(db: Database) -> Any:
    from engine.sla import SlaService

    return SlaService(db)


@pytest.fixture
def sla_calls() -> list[tuple[str, Any]]:
    return []


@pytest.fixture
def sla_engine(db: Database, sla: Any, sla_calls: list[tuple[str, Any]]) -> WorkflowEngine:
    """Engine with SLA policies (defaults plus short test policies) and tests/timer_processes."""
    from timer_support import TIMER_PROCESSES, build_engine, seed_policies

    eng = build_engine(db, sla_calls, sla)
    seed_policies(db, sla)
    eng.deploy_paths([TIMER_PROCESSES], SYSTEM)
    return eng
