"""Database connections: SQLite in WAL mode with write transactions that lock up front, or
PostgreSQL; plus the Alembic migration entry point."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import Unavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Database:
    """Two session factories: ``write()`` takes the database's write lock at BEGIN on SQLite
    (so concurrent commands queue instead of failing on upgrade), ``read()`` does not."""

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            _ensure_sqlite_dir(url)
            self.engine = _sqlite_engine(url, immediate=True, echo=echo)
            self.read_engine = _sqlite_engine(url, immediate=False, echo=echo)
        else:
            self.engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)
            self.read_engine = self.engine
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        with _unavailable_on_disconnect():
            with self._write() as session, session.begin():
                yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with _unavailable_on_disconnect():
            with self._read() as session, session.begin():
                yield session

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
            conn.commit()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


@contextlib.contextmanager
def _unavailable_on_disconnect() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        # SQLAlchemy's wrapper, or the driver's own error from raw DB-API calls (engine/fastsql.py)
        if not isinstance(exc, OperationalError) and type(exc).__name__ != "OperationalError":
            raise
        orig = getattr(exc, "orig", None)
        text = str(orig) if orig else str(exc)
        lowered = text.lower()
        if any(s in lowered for s in ("could not connect", "connection refused", "server closed",
                                        "database is locked", "terminating connection", "unable to open",
                                        "readonly database", "disk is full", "disk i/o error")):
            raise Unavailable(f"database unavailable: {text.splitlines()[0]}") from exc
        raise


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1] if "///" in url else ""
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def sqlite_busy_timeout_ms() -> int:
    """How long a SQLite command waits for another writer's lock before answering 503."""
    return int(os.environ.get("AFTERCARE_SQLITE_BUSY_TIMEOUT_MS", "30000"))


def _sqlite_engine(url: str, immediate: bool, echo: bool) -> Engine:
    busy_ms = sqlite_busy_timeout_ms()
    engine = create_engine(url, echo=echo, connect_args={"timeout": busy_ms / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own handling defers it).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def database_url_from_env(instance_dir: str | os.PathLike[str] = "instance") -> str:
    default = f"sqlite:///{Path(instance_dir) / 'aftercare.db'}"
    return os.environ.get("AFTERCARE_DATABASE_URL", default)
