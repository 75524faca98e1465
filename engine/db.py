"""Database connections: SQLite in WAL mode with write transactions that lock up front, or
PostgreSQL; plus the Alembic migration entry point."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psycopg.errors import error_from_result as _pg_error
from psycopg.generators import execute as _pg_execute
from psycopg.pq import ExecStatus, TransactionStatus
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import Unavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

_PG_IDLE = TransactionStatus.IDLE
_PG_FATAL_ERROR = ExecStatus.FATAL_ERROR

log = logging.getLogger("aftercare.db")


class Database:
    """Two session factories: ``write()`` takes the database's write lock at BEGIN on SQLite
    (so concurrent commands queue instead of failing on upgrade), ``read()`` does not."""

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.checkpointer: Checkpointer | None = None
        self._query_engine: Engine | None = None
        self._busy_seconds = sqlite_busy_timeout_ms() / 1000  # read once: every command waits this long at most
        if self.is_sqlite:
            _ensure_sqlite_dir(url)
            path = _sqlite_path(url)
            if path is not None:
                self.checkpointer = Checkpointer(path)
            autocheckpoint = Checkpointer.BACKSTOP_PAGES if self.checkpointer is not None else None
            self.engine = _sqlite_engine(url, immediate=True, echo=echo, autocheckpoint=autocheckpoint)
            self.read_engine = _sqlite_engine(url, immediate=False, echo=echo, autocheckpoint=autocheckpoint)
        else:
            # psycopg's own statement preparing is off: it answers a ROLLBACK (to a savepoint,
            # too) with DEALLOCATE ALL, which would drop the statements commands prepare
            # themselves (Transaction.prepared); those are the ones that run all the time.
            self.engine = create_engine(url, echo=echo, pool_size=10, max_overflow=20,
                                        connect_args={"prepare_threshold": None})
            _ping_when_idle(self.engine)
            _send_batch_first(self.engine)
            self.read_engine = self.engine
            # Single reads (``query()``) in autocommit: no BEGIN and COMMIT round trips. A pool of
            # its own, so connections never switch modes (switching costs more than it saves).
            self._query_engine = create_engine(url, echo=echo, pool_size=5, max_overflow=20,
                                               isolation_level="AUTOCOMMIT", connect_args={"prepare_threshold": None})
            _ping_when_idle(self._query_engine)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        with _unavailable_on_disconnect():
            with self._write() as session, session.begin():
                yield session

    @contextlib.contextmanager
    def command(self) -> Iterator[Transaction]:
        """Like ``write()`` for the command path: the connection's own transaction, with an ORM
        session made only when something asks for one (most commands never do)."""
        if self.checkpointer is not None:
            self.checkpointer.ensure_running()
        if self.is_sqlite:
            with _sqlite_command(self.engine, self._busy_seconds) as tx:
                yield tx
            return
        with _transaction(self.engine, self.is_sqlite) as tx:
            yield tx

    @contextlib.contextmanager
    def query(self) -> Iterator[Transaction]:
        """A read for fixed statements (engine/fastsql.py), e.g. the token lookup every API
        request makes; cheaper than ``read()``'s ORM session. On PostgreSQL it runs on the
        autocommit pool: use it for single reads."""
        with _transaction(self.read_engine if self._query_engine is None else self._query_engine,
                          self.is_sqlite) as tx:
            yield tx

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
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
        if self._query_engine is not None:
            self._query_engine.dispose()


_NO_BATCH = contextlib.nullcontext()


class Transaction:
    """One command's transaction: the driver cursor that runs the fixed statements of the hot
    path (engine/fastsql.py), the SQLAlchemy connection, and an ORM session on that same
    connection for handlers and projections, created on first use. Opening a session costs
    more than the few rows a command writes."""

    __slots__ = ("_connection", "_engine", "_pooled", "_cursor", "sqlite", "info", "_session", "script", "_prepare")

    def __init__(self, connection: Connection | None, sqlite: bool, engine: Engine | None = None,
                 pooled: Any = None) -> None:
        # Either a SQLAlchemy connection, or (SQLite commands) a pooled driver connection that
        # gets its SQLAlchemy connection only if something asks for one.
        self._connection = connection
        self._engine = engine
        self._pooled = pooled if connection is None else connection.connection
        self._cursor: Any = None
        self.sqlite = sqlite
        self.info: dict[str, Any] = {}  # per-command notes shared by listeners (e.g. timers scheduled)
        self._session: Session | None = None
        # PostgreSQL, inside ``batch()``: the statements written so far, sent when the block ends.
        self.script: list[bytes] | None = None
        self._prepare: dict[bytes, bytes] = {}  # statements to prepare before the next script: text -> name

    @property
    def cursor(self) -> Any:
        """The driver's cursor (SQLite's statements; on PostgreSQL only for callers outside the
        scripts), made on first use."""
        if self._cursor is None:
            self._cursor = self._pooled.driver_connection.cursor()
        return self._cursor

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            assert self._engine is not None
            self._connection = Connection(self._engine, connection=self._pooled)
        return self._connection

    def batch(self) -> contextlib.AbstractContextManager[Any]:
        """Fixed statements whose results are not read (engine/fastsql.py), sent to PostgreSQL
        together when the block ends (one round trip instead of one each), where errors
        surface. SQLite runs them as they come."""
        if self.sqlite or self.script is not None:
            return _NO_BATCH
        return self._batch()

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        self.script = []
        try:
            yield
            script = self.script
        finally:
            self.script = None
        if script:
            self.run_script(script)

    def commit_with_batch(self) -> None:
        """Inside ``batch()`` holding a command's last writes: on PostgreSQL, send COMMIT with
        them (one round trip fewer) unless an ORM session may still flush. The connection's
        own commit afterwards finds nothing left to commit. SQLite commits at the end as usual."""
        if not self.sqlite and self._session is None:
            if self.script is not None:
                self.script.append(b"COMMIT")
            else:
                self.run_script([b"COMMIT"])

    @property
    def driver(self) -> Any:
        return self._pooled.driver_connection

    def prepared(self, sql: bytes) -> bytes | None:
        """PostgreSQL: the name of ``sql`` (with ``$n`` parameters) prepared on this connection,
        prepared before the next script if it is new; None once the connection holds
        ``PREPARED_MAX`` statements. A prepared statement skips parsing and planning, the
        server's larger share of a small statement's cost."""
        known = _prepared_on(self.driver)
        name = known.get(sql) or self._prepare.get(sql)
        if name is None and len(known) + len(self._prepare) < PREPARED_MAX:
            name = self._prepare[sql] = b"aftercare_%d" % next(_PREPARED_NAMES)
        return name

    def run_script(self, statements: list[bytes]) -> list[Any]:
        """PostgreSQL: send complete statements (values already written in as literals) as one
        simple query and return each one's result. psycopg's cursors and pipelines cost tens
        of microseconds of Python per statement, more than the server spends on these; the
        whole script costs about one statement. A transaction is begun first unless one is
        open (or the connection is in autocommit)."""
        conn = self.driver
        if self._prepare:
            # PREPARE outlives a rolled-back transaction: names are kept once the server has them.
            pending, self._prepare = self._prepare, {}
            self._send(conn, [b"PREPARE %s AS %s" % (name, sql) for sql, name in pending.items()])
            _prepared_on(conn).update(pending)
        begin = not conn.autocommit and conn.pgconn.transaction_status == _PG_IDLE
        results = self._send(conn, [b"BEGIN", *statements] if begin else statements)
        return results[1:] if begin else results

    @staticmethod
    def _send(conn: Any, statements: list[bytes]) -> list[Any]:
        pgconn = conn.pgconn
        with conn.lock:
            pgconn.send_query(b";\n".join(statements))
            results = conn.wait(_pg_execute(pgconn))
        for res in results:
            if res.status == _PG_FATAL_ERROR:
                raise _pg_error(res, conn.info.encoding)
        return results  # type: ignore[no-any-return]

    @property
    def session(self) -> Session:
        if self._session is None:
            if not self.connection.in_transaction():
                # (SQLite commands: BEGIN IMMEDIATE went to the driver.) The session must join
                # the command's transaction, not start one of its own that it would roll back
                # when closed; this begin only tells SQLAlchemy (see _sqlite_engine's "begin").
                self.connection.begin()
            # Joins the connection's transaction: its commit and rollback stay with the command.
            self._session = Session(bind=self.connection, expire_on_commit=False,
                                    join_transaction_mode="rollback_only")
            # One dict of notes for both: code holding only the session writes session.info.
            self._session.info.update(self.info)
            self.info = self._session.info
        return self._session


PREPARED_MAX = 500
_PREPARED_NAMES = itertools.count(1)
# Per driver connection (a reconnect is a new object, with nothing prepared): text -> name.
_PREPARED: weakref.WeakKeyDictionary[Any, dict[bytes, bytes]] = weakref.WeakKeyDictionary()


def _prepared_on(conn: Any) -> dict[bytes, bytes]:
    known = _PREPARED.get(conn)
    if known is None:
        known = _PREPARED[conn] = {}
    return known


@contextlib.contextmanager
def _transaction(engine: Engine, sqlite: bool) -> Iterator[Transaction]:
    with _unavailable_on_disconnect():
        with engine.connect() as conn, conn.begin():
            tx = Transaction(conn, sqlite)
            conn.info[_OPEN_TRANSACTION] = tx
            try:
                yield tx
                if tx._session is not None:
                    tx._session.flush()
            finally:
                conn.info.pop(_OPEN_TRANSACTION, None)
                if tx._session is not None:
                    tx._session.close()


_OPEN_TRANSACTION = "aftercare_transaction"


def _send_batch_first(engine: Engine) -> None:
    """Statements of a batch wait for the batch's end; a SQLAlchemy statement (an ORM session
    of a handler or the SLA clock, on the same connection) sends them first, so the database
    sees every statement in the order the command made it."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, _cursor, _statement, _parameters, _context, _many):  # type: ignore[no-untyped-def]
        tx = conn.info.get(_OPEN_TRANSACTION)
        if tx is not None and tx.script:
            pending, tx.script = tx.script, []
            tx.run_script(pending)


@contextlib.contextmanager
def _sqlite_command(engine: Engine, busy_seconds: float) -> Iterator[Transaction]:
    """A SQLite command: BEGIN IMMEDIATE and COMMIT go straight to the driver. SQLAlchemy's own
    begin and commit cost more than the statements of a small command; it takes over only when
    something (an ORM session, a Core statement) began a transaction on the connection."""
    with _unavailable_on_disconnect():
        pooled = engine.raw_connection()
        tx: Transaction | None = None
        try:
            driver = pooled.driver_connection
            _begin_immediate(driver, busy_seconds)  # type: ignore[arg-type]
            tx = Transaction(None, True, engine, pooled)
            yield tx
            if tx._session is not None:
                tx._session.flush()
                tx._session.close()
                tx._session = None
            conn = tx._connection
            if conn is not None and conn.in_transaction():
                conn.commit()
            else:
                driver.commit()  # type: ignore[union-attr]
        except BaseException:
            conn = tx._connection if tx is not None else None
            if tx is not None and tx._session is not None:
                tx._session.close()
            if conn is not None and conn.in_transaction():
                conn.rollback()
            elif driver.in_transaction:  # type: ignore[union-attr]
                driver.rollback()  # type: ignore[union-attr]
            raise
        finally:
            if tx is not None and tx._connection is not None:
                tx._connection.close()  # returns the pooled connection
            else:
                pooled.close()


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
        # A dead pooled connection is only found when used (pooled connections are pinged only
        # after sitting idle): the statement fails, then so does the rollback ("is lost").
        if any(s in lowered for s in ("could not connect", "connection refused", "server closed",
                                        "connection is lost", "consuming input failed", "connection is closed",
                                        "database is locked", "terminating connection", "unable to open",
                                        "readonly database", "disk is full", "disk i/o error")):
            raise Unavailable(f"database unavailable: {text.splitlines()[0]}") from exc
        raise


class Checkpointer:
    """Copies SQLite's write-ahead log back into the database file off the command path.

    SQLite does this itself inside whichever commit crosses ``wal_autocheckpoint`` pages, and
    that commit then pays for writing the pages and two fsyncs: every few dozen commands one
    of them took milliseconds. A thread of each process checkpoints instead (``PASSIVE``:
    writers go on meanwhile, and when another process is checkpointing this one skips). The
    automatic checkpoint stays as a backstop at a larger size, should the thread fall behind.
    """

    BACKSTOP_PAGES = 10000
    PAGES = 1000  # checkpoint once the log holds about this many pages
    INTERVAL = 0.1  # seconds between looks at the log's size

    def __init__(self, path: str) -> None:
        self.path = path
        self._wal = path + "-wal"
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:  # started lazily, and again in a forked child (threads do not survive fork)
            if self._pid != os.getpid() or self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
                self._pid = os.getpid()
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join(timeout=5)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        stop = self._stop
        try:
            while not stop.wait(self.INTERVAL):
                try:
                    size = os.path.getsize(self._wal)
                except OSError:
                    continue
                if size < self.PAGES * 4096:
                    continue
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=0.1, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy (another checkpoint), or the file went away
                    log.debug("background checkpoint skipped: %s", exc)
        finally:
            if conn is not None:
                conn.close()


IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle for a while (a server restart
    may have dropped it then). SQLAlchemy's ``pool_pre_ping`` pings on every checkout, which
    costs a round trip per command; a connection handed back milliseconds ago is alive."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        since = record.info.get("checked_in")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            cur = dbapi_conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
            dbapi_conn.rollback()  # the ping opened a transaction on a non-autocommit connection
        except Exception as exc:
            # The pool drops this connection and checks out (or opens) another.
            raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


def _sqlite_path(url: str) -> str | None:
    """The file of a plain SQLite URL; None for memory databases and ``file:`` URIs."""
    path = url.split("///", 1)[-1] if "///" in url else ""
    if not path or path == ":memory:" or path.startswith("file:") or "?" in path:
        return None
    return path


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1] if "///" in url else ""
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def sqlite_busy_timeout_ms() -> int:
    """How long a SQLite command waits for another writer's lock before answering 503."""
    return int(os.environ.get("AFTERCARE_SQLITE_BUSY_TIMEOUT_MS", "30000"))


def _sqlite_engine(url: str, immediate: bool, echo: bool, autocheckpoint: int | None = None) -> Engine:
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
        # Writers wait for the lock in ``_begin_immediate`` (short sleeps); SQLite's own busy
        # handler would sleep 1, 2, 5 ... 100 ms between looks.
        cur.execute(f"PRAGMA busy_timeout={0 if immediate else busy_ms}")
        if autocheckpoint is not None:
            cur.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Straight to the driver: every command starts here, and SQLAlchemy's statement
        # machinery would cost more than the BEGIN itself.
        driver = conn.connection.driver_connection
        if driver.in_transaction:
            return  # a command's BEGIN IMMEDIATE went to the driver already (_sqlite_command)
        if immediate:
            _begin_immediate(driver, busy_ms / 1000)
        else:
            driver.execute("BEGIN")

    return engine


def _begin_immediate(driver: sqlite3.Connection, timeout: float) -> None:
    """Take SQLite's write lock, waiting up to ``timeout`` seconds for another writer.

    In WAL mode this is the only place a writer waits (readers never block it, and once the
    lock is held nothing else does). Looking again every fraction of a millisecond keeps a busy
    database busy instead of asleep while commands of a millisecond queue for the lock."""
    delay, deadline = 0.0001, 0.0
    while True:
        try:
            driver.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            elif now >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.002)


def database_url_from_env(instance_dir: str | os.PathLike[str] = "instance") -> str:
    default = f"sqlite:///{Path(instance_dir) / 'aftercare.db'}"
    return os.environ.get("AFTERCARE_DATABASE_URL", default)
