"""The command path's fixed statements (engine/fastsql.py): on PostgreSQL a batch and a group of
reads go to the server as one script with the values written in as literals, so quoting is
the whole of its safety; on SQLite they run on the driver's cursor with bound parameters."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from sqlalchemy import text

from engine.db import Database
from engine.fastsql import Rows, Statement, fetch_all

HOSTILE = [
    "it's",
    "''; DROP TABLE scratch_literals; --",
    "back\\slash \\' \\\\",
    "E'\\x41'",
    "$$dollar$$ $tag$ x $tag$",
    "%s %(id)s %% :id ::text",
    "双引号\"与单引号'混合 — ☎ 😀",
    "line\nbreak\ttab\r",
    "",
]

_INSERT = Statement("INSERT INTO scratch_literals (id, t, j, ts, f, b) VALUES (:id, :t, :j, :ts, :f, :b)",
                    json_params=("j",), time_params=("ts",))
_ROWS = Rows(_INSERT, "INSERT INTO scratch_literals (id, t, j, ts, f, b)", "(:id, :t, :j, :ts, :f, :b)")
_SELECT = Statement("SELECT id, t, j, ts, f, b FROM scratch_literals WHERE id = :id")
_COUNT = Statement("SELECT count(*) FROM scratch_literals WHERE t = :t")


@pytest.fixture
def scratch(db: Database) -> Any:
    json_type = "text" if db.is_sqlite else "jsonb"
    time_type = "text" if db.is_sqlite else "timestamptz"
    with db.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE scratch_literals (id integer PRIMARY KEY, t text, j {json_type}, "
                          f"ts {time_type}, f double precision, b boolean)"))
    yield db
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE scratch_literals"))


def _row(i: int, t: str) -> dict[str, Any]:
    return {"id": i, "t": t, "j": {"value": t, "nested": [t, i]},
            "ts": dt.datetime(2026, 1, 31, 23, 59, 59, 123456, tzinfo=dt.UTC), "f": i / 3, "b": i % 2 == 0}


def _read(db: Database, i: int) -> tuple[Any, ...]:
    with db.command() as tx:
        [rows] = fetch_all(tx, [(_SELECT, {"id": i})])
    assert len(rows) == 1
    return tuple(rows[0])


def _json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def _time(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    return value


def test_hostile_text_round_trips_through_batches_and_reads(scratch: Database) -> None:
    db = scratch
    with db.command() as tx:
        with tx.batch():
            _INSERT.executemany(tx, [_row(i, t) for i, t in enumerate(HOSTILE[:4])])
            _ROWS.write(tx, [_row(i, t) for i, t in enumerate(HOSTILE[4:], start=4)])  # one multi-row statement
    for i, t in enumerate(HOSTILE):
        rid, got, j, ts, f, b = _read(db, i)
        assert (rid, got) == (i, t), f"text {t!r} came back as {got!r}"
        assert _json(j) == {"value": t, "nested": [t, i]}
        assert _time(ts) == dt.datetime(2026, 1, 31, 23, 59, 59, 123456, tzinfo=dt.UTC)
        assert f == pytest.approx(i / 3) and bool(b) == (i % 2 == 0)
    # The table survived the injection attempt and the values are compared as values.
    with db.command() as tx:
        [[(n,)]] = fetch_all(tx, [(_COUNT, {"t": HOSTILE[1]})])
    assert n == 1


def test_several_reads_come_back_in_order(scratch: Database) -> None:
    db = scratch
    with db.command() as tx, tx.batch():
        _INSERT.executemany(tx, [_row(1, "one"), _row(2, "two")])
    with db.command() as tx:
        a, b, none = fetch_all(tx, [(_SELECT, {"id": 2}), (_SELECT, {"id": 1}), (_SELECT, {"id": 3})])
    assert [r[1] for r in a] == ["two"] and [r[1] for r in b] == ["one"] and none == []


def test_a_failing_statement_fails_the_batch_and_the_command(scratch: Database) -> None:
    db = scratch
    with pytest.raises(Exception, match="(?i)unique") as caught:
        with db.command() as tx, tx.batch():
            _INSERT.execute(tx, _row(10, "first"))
            _INSERT.execute(tx, _row(10, "same key"))
    assert "scratch_literals" in str(caught.value) or db.is_sqlite  # PostgreSQL names the constraint
    with db.command() as tx:
        [rows] = fetch_all(tx, [(_SELECT, {"id": 10})])
    assert rows == []  # the first insert went with the failed command


def test_commit_with_batch_commits(scratch: Database) -> None:
    """On PostgreSQL the COMMIT goes with the batch: the transaction is over when the batch
    ends, before the command's own commit (which then finds nothing to do)."""
    db = scratch
    with db.command() as tx:
        with tx.batch():
            _INSERT.execute(tx, _row(20, "committed"))
            tx.commit_with_batch()
        if not db.is_sqlite:
            from psycopg.pq import TransactionStatus

            assert tx.driver.pgconn.transaction_status == TransactionStatus.IDLE
            with db.command() as other:  # another connection sees the row already
                [rows] = fetch_all(other, [(_SELECT, {"id": 20})])
            assert [r[1] for r in rows] == ["committed"]
    assert _read(db, 20)[1] == "committed"


def test_special_floats_and_unsupported_values(scratch: Database) -> None:
    db = scratch
    if db.is_sqlite:
        pytest.skip("SQLite binds values; literals are written only for PostgreSQL")
    with db.command() as tx, tx.batch():
        _INSERT.execute(tx, {**_row(30, "inf"), "f": math.inf})
        _INSERT.execute(tx, {**_row(31, "nan"), "f": math.nan})
    assert _read(db, 30)[4] == math.inf and math.isnan(_read(db, 31)[4])
    with pytest.raises(TypeError, match="no SQL literal for a value of type bytes"):
        with db.command() as tx, tx.batch():
            _INSERT.execute(tx, {**_row(32, "x"), "t": b"raw"})
    with pytest.raises(ValueError, match=r"NUL \(0x00\)"):  # refused, not cut short at the NUL
        with db.command() as tx, tx.batch():
            _INSERT.execute(tx, {**_row(33, "x"), "t": "before\0after"})
    with db.command() as tx:
        assert fetch_all(tx, [(_SELECT, {"id": 32}), (_SELECT, {"id": 33})]) == [[], []]


def test_reads_inside_a_batch_see_the_writes_before_them(scratch: Database) -> None:
    db = scratch
    with db.command() as tx, tx.batch():
        _INSERT.execute(tx, _row(40, "queued"))
        seen = _SELECT.execute(tx, {"id": 40}).fetchall()  # a read: the queued write goes first
        [again] = fetch_all(tx, [(_SELECT, {"id": 40})])
        _INSERT.execute(tx, _row(41, "after the read"))
    assert [r[1] for r in seen] == ["queued"] and [r[1] for r in again] == ["queued"]
    assert _read(db, 41)[1] == "after the read"


def test_sqlalchemy_statements_inside_a_batch_keep_the_command_order(scratch: Database) -> None:
    """An ORM session on the command's connection (handlers, the SLA clock) sees what the batch
    wrote before it, and the batch's later statements see what it wrote."""
    db = scratch
    with db.command() as tx, tx.batch():
        _INSERT.execute(tx, _row(50, "from the batch"))
        tx.session.execute(text("UPDATE scratch_literals SET t = t || ' and the session' WHERE id = 50"))
        tx.session.execute(text("INSERT INTO scratch_literals (id, t) VALUES (51, 'session')"))
        _UPDATE_TEXT.execute(tx, {"id": 51, "t": "session, then the batch"})
    assert _read(db, 50)[1] == "from the batch and the session"
    assert _read(db, 51)[1] == "session, then the batch"


_UPDATE_TEXT = Statement("UPDATE scratch_literals SET t = :t WHERE id = :id")
