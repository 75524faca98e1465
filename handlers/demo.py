"""A believable demo data set (``aftercare demo-data``, run by ``make run``): customers with their
air conditioners, staff profiles for the demo users, spare parts and products in two
warehouses, and FAQ entries in Chinese and English from the service manuals.

Loading adds only what is missing, so running it again changes nothing (stock levels and
profiles edited since are kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.identity import add_user
from engine.models import User

from .import_export import ImportResult, import_csv

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"
ORDER = ("parts", "customers", "staff", "faq")  # staff profiles need their users first (below)
# Technicians beyond the one-per-role demo logins, so assignment has a choice to make:
# tech3's certificate has expired (never assigned), tech4 installs in Guangzhou.
EXTRA_TECHNICIANS: list[tuple[str, str, list[str]]] = [
    ("tech2", "维修技师 王师傅 Technician Wang", ["technician"]),
    ("tech3", "维修技师 李师傅（证书过期） Technician Li (certificate expired)", ["technician"]),
    ("tech4", "安装技师 陈师傅 Installer Chen", ["technician"]),
]


def ensure_users(db: Any, users: list[tuple[str, str, list[str]]], password: str) -> list[str]:
    """Create the users that do not exist yet (existing ones keep their password and groups)."""
    created = []
    with db.write() as s:
        existing = set(s.scalars(select(User.username)))
        for username, title, groups in users:
            if username not in existing:
                add_user(s, username, password, groups, title)
                created.append(username)
    return created


def load_demo_data(db: Any, staff: list[tuple[str, str, list[str]]], password: str,
                   directory: Path = DEMO_DIR) -> tuple[list[str], list[ImportResult]]:
    users = ensure_users(db, [*staff, *EXTRA_TECHNICIANS], password)
    results = []
    for kind in ORDER:
        path = directory / f"{kind}.csv"
        if path.exists():
            results.append(import_csv(db, kind, path.read_text(encoding="utf-8-sig"), only_missing=True))
    return users, results
