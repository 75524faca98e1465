"""Fixed statements of the command hot path, run on the driver.

A command writes a handful of rows; going through SQLAlchemy's statement machinery costs more
than the writes themselves. These statements are constants (never built from input), written
once with ``:name`` parameters, and values are bound the way SQLAlchemy's own column types
store them so both paths read each other's rows.

SQLite runs them on the driver's cursor with bound parameters. On PostgreSQL a command's
statements go as scripts: each statement is prepared once per connection and run as
``EXECUTE name(<literals>)``, the values quoted by libpq (``PQescapeLiteral``), and a whole
batch (or a group of reads) is one simple query: one round trip and a few microseconds of
Python per statement, where psycopg's cursor spends tens.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from psycopg.adapt import Transformer
from psycopg.pq import Escaping
from sqlalchemy.orm import Session

from .db import Transaction

_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


class Statement:
    def __init__(self, sql: str, json_params: Iterable[str] = (), time_params: Iterable[str] = ()) -> None:
        self.sql = " ".join(sql.split())
        self._pg = re.sub(r":(\w+)", r"%(\1)s", self.sql)
        # For scripts (PostgreSQL): the text with a slot per parameter for its literal.
        self._names = re.findall(r":(\w+)", self.sql)
        self._slots = re.sub(r":(\w+)", "%s", self.sql.replace("%", "%%")).encode()
        numbers = iter(range(1, len(self._names) + 1))
        self._dollars = re.sub(r":(\w+)", lambda _: f"${next(numbers)}", self.sql).encode()
        self.json_params = frozenset(json_params)
        self.time_params = frozenset(time_params)
        upper = self.sql.upper()
        self.reads = upper.startswith("SELECT") or " RETURNING " in upper

    def render(self, params: Mapping[str, Any], literal: Callable[[Any], bytes], tx: Transaction) -> bytes:
        """The statement for a script: ``EXECUTE`` of its prepared form with the parameters as
        SQL literals (or the whole text with them written in, past the prepared limit)."""
        if self.json_params:
            params = self._bind(params, False)
        values = [literal(params[n]) for n in self._names]
        return _execute(tx, self._dollars, values) or self._slots % tuple(values)

    def _bind(self, params: Mapping[str, Any], sqlite: bool) -> Mapping[str, Any]:
        if not self.json_params and not (sqlite and self.time_params):
            return params  # nothing to convert: the driver takes the values as they are
        out = dict(params)
        for name in self.json_params:
            if name in out and out[name] is not None:
                out[name] = _JSON(out[name])
        for name in self.time_params:
            value = out.get(name)
            if value is not None and sqlite:
                out[name] = sqlite_time(value)
        return out

    def execute(self, session: Session | Transaction, params: Mapping[str, Any]) -> Any:
        """Run the statement and return its rows (``fetchone()``, ``fetchall()``); inside a
        PostgreSQL ``batch()`` it joins the batch's script instead (no result to read)."""
        if isinstance(session, Transaction) and not session.sqlite:
            if session.script is not None and not self.reads:
                session.script.append(self.render(params, literal_writer(session), session))
                return None
            return Result(fetch_all(session, [(self, params)])[0])
        cur, sqlite = _cursor(session)
        cur.execute(self.sql if sqlite else self._pg, self._bind(params, sqlite))
        return cur

    def executemany(self, session: Session | Transaction, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if isinstance(session, Transaction) and not session.sqlite:
            literal = literal_writer(session)
            statements = [self.render(r, literal, session) for r in rows]
            if session.script is not None:
                session.script.extend(statements)
            else:
                session.run_script(statements)
            return
        cur, sqlite = _cursor(session)
        cur.executemany(self.sql if sqlite else self._pg, [self._bind(r, sqlite) for r in rows])


class Result:
    """Rows of a statement run in a script, read the way a cursor's are."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows


class Rows:
    """Many rows written by one statement: ``executemany`` on SQLite (its loop is C), and on
    PostgreSQL one multi-row VALUES statement: psycopg spends more per statement than the
    server spends per row. ``values`` is the row's VALUES tuple with ``:name`` parameters and
    ``head``/``tail`` the statement around the list of tuples."""

    def __init__(self, statement: Statement, head: str, values: str, tail: str = "") -> None:
        self.statement = statement
        self.head, self.tail = " ".join(head.split()), " ".join(tail.split())
        self.names = re.findall(r":(\w+)", values)
        self.values = re.sub(r":(\w+)", "%s", values)
        self._slots = " ".join(self.values.replace("%s", "\0").replace("%", "%%").replace("\0", "%s").split()).encode()
        self._head, self._tail = self.head.replace("%", "%%").encode(), self.tail.replace("%", "%%").encode()
        self._dollars: dict[int, bytes] = {}

    def _dollar_sql(self, n: int) -> bytes:
        sql = self._dollars.get(n)
        if sql is None:
            numbers = iter(range(1, n * len(self.names) + 1))
            tuples = re.sub(r"%s", lambda _: f"${next(numbers)}", ", ".join([self.values] * n))
            sql = self._dollars[n] = " ".join(f"{self.head} VALUES {tuples} {self.tail}".split()).encode()
        return sql

    def write(self, tx: Transaction, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if tx.sqlite or len(rows) == 1:
            self.statement.executemany(tx, rows)
            return
        literal = literal_writer(tx)
        names, bind = self.names, self.statement._bind
        values = [literal(r[n]) for r in (bind(row, False) for row in rows) for n in names]
        statement = _execute(tx, self._dollar_sql(len(rows)), values)
        if statement is None:
            slots = b", ".join([self._slots] * len(rows))
            statement = b"%s VALUES %s %s" % (self._head, slots % tuple(values), self._tail)
        if tx.script is not None:
            tx.script.append(statement)
        else:
            tx.run_script([statement])


def fetch_all(source: Session | Transaction, queries: Sequence[tuple[Statement, Mapping[str, Any]]]) -> list[list[Any]]:
    """Run several statements and return each one's rows. On PostgreSQL inside a command they
    go as one script (a single round trip), with the BEGIN when the transaction has none yet."""
    if isinstance(source, Transaction) and not source.sqlite:
        literal = literal_writer(source)
        reads = [stmt.render(params, literal, source) for stmt, params in queries]
        pending = source.script
        if pending:  # inside a batch: its statements so far go first, in the same round trip
            source.script = []
            results = source.run_script(pending + reads)[len(pending):]
        else:
            results = source.run_script(reads)
        loader = Transformer(source.driver)
        rows = []
        for res in results:
            loader.set_pgresult(res)
            rows.append(loader.load_rows(0, res.ntuples, tuple))
        return rows
    return [stmt.execute(source, params).fetchall() for stmt, params in queries]


def _execute(tx: Transaction, sql: bytes, values: list[bytes]) -> bytes | None:
    name = tx.prepared(sql)
    if name is None:
        return None
    return b"EXECUTE %s(%s)" % (name, b", ".join(values)) if values else b"EXECUTE " + name


def literal_writer(tx: Transaction) -> Callable[[Any], bytes]:
    """SQL literals for the values fixed statements take, quoted by libpq for this connection
    (``PQescapeLiteral``); a value of any other type is an error, not a guess."""
    escape = Escaping(tx.driver.pgconn).escape_literal

    def literal(value: Any) -> bytes:
        if value is None:
            return b"NULL"
        kind = type(value)
        if kind is str:
            if "\0" in value:  # libpq's quoting would cut the text there; the driver refuses it too
                raise ValueError("PostgreSQL text cannot contain NUL (0x00) characters")
            return escape(value.encode())  # type: ignore[no-any-return]
        if kind is int:
            return b"%d" % value
        if kind is bool:
            return b"true" if value else b"false"
        if kind is dt.datetime or kind is dt.date:
            return escape(value.isoformat().encode())  # type: ignore[no-any-return]
        if kind is float:
            return b"%r" % value if math.isfinite(value) else b"'%r'::float8" % value
        if isinstance(value, int) and not isinstance(value, bool):  # e.g. an IntEnum (task states)
            return b"%d" % value
        raise TypeError(f"no SQL literal for a value of type {kind.__name__}")

    return literal


def _cursor(session: Session | Transaction) -> tuple[Any, bool]:
    if isinstance(session, Transaction):
        return session.cursor, session.sqlite
    # One driver cursor per transaction: asking the session for its connection costs more
    # than most of the statements run on it.
    cached = session.info.get("fastsql_cursor")
    if cached is not None and cached[2] is session.get_transaction():
        return cached[0], cached[1]
    conn = session.connection()
    cursor = conn.connection.driver_connection.cursor()
    sqlite = conn.dialect.name == "sqlite"
    session.info["fastsql_cursor"] = (cursor, sqlite, session.get_transaction())
    return cursor, sqlite


@functools.lru_cache(maxsize=64)
def sqlite_time(value: dt.datetime) -> str:
    """SQLAlchemy's SQLite DateTime text (UTC without offset, always with microseconds);
    ``isoformat`` writes the same as its ``strftime`` at a fraction of the cost. Cached: a
    command writes its own time into most of its rows."""
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def parse_time(value: Any) -> dt.datetime | None:
    """Read back a timestamp column fetched through a raw cursor."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def parse_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
