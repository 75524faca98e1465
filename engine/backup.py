"""Backup and restore of the whole database: SQLite's online backup API, or pg_dump/pg_restore."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from .db import Database
from .errors import EngineError


class BackupError(EngineError):
    pass


def _pg_args(db: Database) -> tuple[list[str], dict[str, str]]:
    url = make_url(db.url)
    args = ["--host", url.host or "127.0.0.1", "--port", str(url.port or 5432),
            "--username", url.username or "postgres", "--dbname", url.database or "postgres"]
    env = {"PGPASSWORD": url.password} if url.password else {}
    return args, env


def _run(cmd: list[str], env: dict[str, str]) -> None:
    import os

    tool = cmd[0]
    if shutil.which(tool) is None:
        raise BackupError(f"{tool} is not installed; it is needed for PostgreSQL backups")
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise BackupError(f"{tool} failed: {detail}")


def backup(db: Database, target: Path) -> Path:
    """Write a consistent copy of the database to ``target`` while the service keeps running."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if db.is_sqlite:
        source = make_url(db.url).database
        if not source or source == ":memory:":
            raise BackupError("an in-memory database cannot be backed up")
        src = sqlite3.connect(source)
        dst = sqlite3.connect(str(target))
        try:
            with dst:
                src.backup(dst)  # page-by-page copy that sees one consistent snapshot
        finally:
            dst.close()
            src.close()
        return target
    args, env = _pg_args(db)
    _run(["pg_dump", "--format=custom", "--no-owner", "--file", str(target), *args], env)
    return target


def restore(db: Database, source: Path) -> None:
    """Replace the database's content with a backup made by ``backup``."""
    source = Path(source)
    if not source.is_file():
        raise BackupError(f"no backup file at {source}")
    db.dispose()
    if db.is_sqlite:
        target = make_url(db.url).database
        if not target or target == ":memory:":
            raise BackupError("cannot restore into an in-memory database")
        try:
            src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            src.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{source} is not a SQLite backup: {exc}") from None
        dst = sqlite3.connect(target)
        try:
            with dst:
                src.backup(dst)
        finally:
            dst.close()
            src.close()
        return
    args, env = _pg_args(db)
    _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction", *args, str(source)], env)
