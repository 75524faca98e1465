"""Faults: the database goes away (PostgreSQL behind a connection we cut, or a SQLite file locked
by another process), or the database file is read-only. Requests answer 503 with a clear JSON
message, nothing is half-written, and the service recovers by itself when the database returns.

PostgreSQL is reached through a small TCP relay owned by the test, so "the database is down" means
the relay refuses and drops connections; the machine's PostgreSQL server is never touched."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, PG_AVAILABLE, SAMPLES
from sqlalchemy import func, select

from engine import SYSTEM, HandlerRegistry
from engine.identity import add_user
from engine.models import Case, CaseEvent, OpenTask


class Relay:
    """A TCP relay to PostgreSQL that can be cut (every connection dropped, new ones refused)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                conn.close()
                continue
            with self.lock:
                self.links += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.links:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.links.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.server.close()


def _make_app(url: str) -> Any:
    from app import create_app

    registry = HandlerRegistry()
    registry.register("sample.notify", lambda ctx, recipient, priority: {"notified": recipient})
    registry.register("sample.flaky", lambda ctx, value=None: {"flaky_ok": True})
    return create_app({"DATABASE_URL": url, "SECRET_KEY": "test-secret", "TESTING": True,
                       "HANDLER_REGISTRY": registry, "SCHEDULER": "off", "AUDIT_SEAL_INTERVAL": 0})


def _setup(app: Any) -> dict[str, str]:
    svc = app.extensions["aftercare"]
    svc.engine.deploy_paths([SAMPLES], SYSTEM)
    with svc.db.write() as s:
        add_user(s, "agent", PASSWORD, ["hotline"])
    res = app.test_client().post("/api/auth/token", json={"username": "agent", "password": PASSWORD})
    return {"Authorization": f"Bearer {res.get_json()['token']}"}


def _counts(url: str) -> tuple[int, int, int]:
    from engine import Database

    db = Database(url)
    try:
        with db.read() as s:
            return (s.scalar(select(func.count()).select_from(Case)) or 0,
                    s.scalar(select(func.count()).select_from(CaseEvent)) or 0,
                    s.scalar(select(func.count()).select_from(OpenTask)) or 0)
    finally:
        db.dispose()


def _assert_unavailable(res: Any) -> None:
    assert res.status_code == 503, (res.status_code, res.get_data(as_text=True)[:300])
    body = res.get_json()
    assert body and "database" in body["error"].lower(), body


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not PG_AVAILABLE:
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
    yield from _pg_schema_url()


def _pg_schema_url() -> Iterator[str]:
    from conftest import migrated_pg_schema

    yield from migrated_pg_schema("aftercare_faults")


def test_postgresql_outage_answers_503_and_recovers_by_itself(pg_url: str) -> None:
    relay = Relay(("127.0.0.1", 5432))
    relayed = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    app = _make_app(relayed)
    try:
        agent = _setup(app)
        client = app.test_client()
        case = client.post("/api/instances", headers=agent, json={"process": "sample"}).get_json()
        task_id = case["tasks"][0]["id"]
        before = _counts(pg_url)

        relay.cut()  # the database is gone
        _assert_unavailable(client.get("/healthz", headers={"Accept": "application/json"}))
        _assert_unavailable(client.get("/api/tasks", headers=agent))
        _assert_unavailable(client.post("/api/instances", headers=agent, json={"process": "sample"}))
        _assert_unavailable(client.post(f"/api/tasks/{task_id}/claim", headers=agent))
        assert _counts(pg_url) == before  # nothing half-written

        relay.restore()  # it is back: the next requests succeed without a restart
        assert client.get("/healthz").status_code == 200
        res = client.post(f"/api/tasks/{task_id}/claim", headers=agent)
        assert res.status_code == 200, res.get_json()
        assert client.post("/api/instances", headers=agent, json={"process": "sample"}).status_code == 201
        verified = client.get(f"/api/instances/{case['id']}/verify", headers=agent).get_json()
        assert verified.get("ok") is True or verified.get("valid") is True, verified
    finally:
        app.extensions["aftercare"].db.dispose()
        relay.close()


def test_postgresql_connections_dropped_while_idle_are_replaced_unnoticed(pg_url: str) -> None:
    """Pooled connections are not pinged on every checkout (a round trip per command); one that
    sat idle is, so a server restart during a quiet spell costs no request an error."""
    from engine.db import IDLE_PING_SECONDS

    relay = Relay(("127.0.0.1", 5432))
    app = _make_app(pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}"))
    try:
        agent = _setup(app)
        client = app.test_client()
        assert client.post("/api/instances", headers=agent, json={"process": "sample"}).status_code == 201
        relay.cut()  # every pooled connection dies while nobody is asking
        relay.restore()
        time.sleep(IDLE_PING_SECONDS + 0.3)
        res = client.post("/api/instances", headers=agent, json={"process": "sample"})
        assert res.status_code == 201, res.get_json()
        assert client.get("/api/tasks", headers=agent).status_code == 200
    finally:
        app.extensions["aftercare"].db.dispose()
        relay.close()


def test_postgresql_unreachable_port_answers_503() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    app = _make_app(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test?connect_timeout=2")
    try:
        client = app.test_client()
        _assert_unavailable(client.get("/healthz", headers={"Accept": "application/json"}))
        _assert_unavailable(client.post("/api/auth/token", json={"username": "agent", "password": PASSWORD}))
        _assert_unavailable(client.get("/api/me", headers={"Authorization": "Bearer " + "x" * 40}))
    finally:
        app.extensions["aftercare"].db.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AFTERCARE_SQLITE_BUSY_TIMEOUT_MS", "200")
    path = tmp_path / "db" / "aftercare.db"
    path.parent.mkdir()
    shutil.copy(_sqlite_template, path)
    return f"sqlite:///{path}"


def test_sqlite_locked_by_another_process_answers_503_after_the_busy_timeout(sqlite_url: str) -> None:
    app = _make_app(sqlite_url)
    try:
        agent = _setup(app)
        client = app.test_client()
        case = client.post("/api/instances", headers=agent, json={"process": "sample"}).get_json()
        task_id = case["tasks"][0]["id"]
        before = _counts(sqlite_url)

        holder = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            _assert_unavailable(client.post("/api/instances", headers=agent, json={"process": "sample"}))
            _assert_unavailable(client.post(f"/api/tasks/{task_id}/claim", headers=agent))
            assert time.monotonic() - started < 5  # the configured 200 ms, not the default 30 s
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert _counts(sqlite_url) == before
        assert client.post(f"/api/tasks/{task_id}/claim", headers=agent).status_code == 200
        assert client.post("/api/instances", headers=agent, json={"process": "sample"}).status_code == 201
    finally:
        app.extensions["aftercare"].db.dispose()


def test_read_only_sqlite_database_gives_clear_errors_and_no_corruption(sqlite_url: str) -> None:
    path = Path(sqlite_url.split("///", 1)[1])
    app = _make_app(sqlite_url)
    agent = _setup(app)
    case = app.test_client().post("/api/instances", headers=agent, json={"process": "sample"}).get_json()
    app.extensions["aftercare"].db.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _counts(sqlite_url)

    path.chmod(0o444)
    path.parent.chmod(0o555)
    # root ignores file modes, so the file is also opened read-only by SQLite itself
    url = f"sqlite:///file:{path}?mode=ro&uri=true" if os.geteuid() == 0 else sqlite_url
    try:
        app = _make_app(url)
        client = app.test_client()
        try:
            for res in (client.post("/api/instances", headers=agent, json={"process": "sample"}),
                        client.post(f"/api/tasks/{case['tasks'][0]['id']}/claim", headers=agent),
                        client.post("/api/auth/token", json={"username": "agent", "password": PASSWORD})):
                assert res.status_code == 503, (res.status_code, res.get_data(as_text=True)[:300])
                error = res.get_json()["error"].lower()
                assert "database" in error and ("read" in error or "open" in error), error
                assert "internal error" not in error
        finally:
            app.extensions["aftercare"].db.dispose()
    finally:
        path.parent.chmod(stat.S_IRWXU)
        path.chmod(0o644)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert _counts(sqlite_url) == before
