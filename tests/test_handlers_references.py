"""Case references: readable, per procedure and year (China time), unique under concurrency."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from domain_support import context, make_case
from sqlalchemy import select

from engine import Database, InvalidInput
from handlers.models import CaseReference
from handlers.references import assign_reference, new_reference


def test_references_count_per_procedure_and_year(db: Database) -> None:
    now = dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.UTC)
    with db.write() as s:
        refs = [new_reference(s, p, now) for p in ("complaint", "complaint", "inquiry", "dispatch",
                                                      "installation", "emergency")]
    assert refs == ["CMP-2026-000001", "CMP-2026-000002", "INQ-2026-000001", "REP-2026-000001",
                    "INS-2026-000001", "EMG-2026-000001"]
    # 16:30 UTC on New Year's Eve is already 2027 in China: the count starts again.
    with db.write() as s:
        assert new_reference(s, "complaint", dt.datetime(2026, 12, 31, 16, 30, tzinfo=dt.UTC)) == "CMP-2027-000001"
        assert new_reference(s, "complaint", dt.datetime(2026, 12, 31, 15, 30, tzinfo=dt.UTC)) == "CMP-2026-000003"
    with db.write() as s, pytest.raises(InvalidInput):
        new_reference(s, "warranty", now)


def test_references_stay_unique_when_cases_start_at_the_same_moment(db: Database) -> None:
    now = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    got: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                with db.write() as s:
                    got.append(new_reference(s, "dispatch", now))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == [f"REP-2026-{n:06d}" for n in range(1, 41)]


def test_assign_reference_keeps_the_reference_and_reports_intake(db: Database) -> None:
    with db.write() as s:
        case_id = make_case(s)
        ctx = context(s, case_id, {"intake_complete": True, "received_at": "2026-05-01T09:00:00+08:00"})
        first = assign_reference(ctx, "inquiry")
        again = assign_reference(ctx, "inquiry")  # the step runs again (a retry): same reference
        assert first == again == {"case_ref": first["case_ref"], "received_at": "2026-05-01T09:00:00+08:00",
                                  "intake_complete": True}
        assert s.scalars(select(CaseReference).where(CaseReference.case_id == case_id)).one().ref == first["case_ref"]
        staff = assign_reference(context(s, make_case(s), {"intake_complete": "yes"}), "inquiry")
        assert staff["intake_complete"] is False  # only a real true skips registration
        assert staff["case_ref"] != first["case_ref"]
