"""CSV import and export: row-numbered errors, nothing half-imported, round trips, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from domain_support import DEMO, STAFF, add_users
from sqlalchemy import func, select

from engine import Database
from handlers.import_export import COLUMNS, ImportFailed, export_csv, import_csv
from handlers.models import Customer, CustomerProduct, FaqEntry, Part, StaffCertification, StaffProfile, Stock

HEADER = ",".join(COLUMNS["customers"])


def count(db: Database, model: type) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def demo(kind: str) -> str:
    return (DEMO / f"{kind}.csv").read_text(encoding="utf-8")


@pytest.fixture
def users_db(db: Database) -> Database:
    add_users(db, STAFF)
    return db


def test_demo_files_import_and_export_round_trip(users_db: Database) -> None:
    db = users_db
    results = {kind: import_csv(db, kind, demo(kind)) for kind in ("parts", "customers", "staff", "faq")}
    assert (results["customers"].created, results["customers"].updated) == (74, 0)  # 60 customers, 74 products
    assert count(db, Customer) == 60 and count(db, CustomerProduct) == 74
    assert count(db, Part) == 14 and count(db, Stock) == 20 and count(db, FaqEntry) == 29
    assert count(db, StaffProfile) == 11 and count(db, StaffCertification) == 6
    for kind in ("parts", "customers", "staff", "faq"):
        exported = export_csv(db, kind)
        again = import_csv(db, kind, exported)
        assert (again.created, again.updated, again.unchanged) == (0, 0, again.rows), kind
        assert export_csv(db, kind) == exported
    with db.read() as s:
        tech = s.get(StaffProfile, "tech")
        assert tech.technician and "refrigeration" in tech.skills and tech.training_hours == {"2025": 44, "2026": 36}


def test_errors_name_their_rows_and_nothing_is_imported(db: Database) -> None:
    text = "\n".join([
        HEADER,
        "张伟,male,35,13800001111,zhang@example.com,上海市,KFR-35GW/N1,SN1,B2409,2025-06-01,2025-06-03,上海",
        ",female,40,13800002222,,北京市,,,,,,北京",                       # row 3: no name
        "李娜,unknown,200,12,not-an-email,北京市,,SN9,,2025-13-01,,北京",  # row 4: five problems
        "张伟,male,35,13800001111,,上海市,KFR-35GW/N1,SN1,,,,上海",      # row 5: same product again
        "张三,male,35,138-0000-1111,,上海市,KFR-72LW/N2,SN2,,,,上海",     # row 6: phone of row 2, other name
    ])
    with pytest.raises(ImportFailed) as failed:
        import_csv(db, "customers", text)
    got = [(e.row, e.field) for e in failed.value.errors]
    assert got == [(3, "name"), (4, "phone"), (4, "gender"), (4, "age"), (4, "email"), (4, "purchase_date"),
                   (4, "product_model"), (5, ""), (6, "name")]
    assert str(failed.value.errors[-1]) == "row 6, name: phone 13800001111 belongs to '张伟' in row 2"
    assert count(db, Customer) == 0  # the good row 2 was not imported either


def test_a_problem_found_while_writing_rolls_everything_back(users_db: Database) -> None:
    db = users_db
    text = demo("staff") + "ghost,yes,refrigeration,上海,证书@2027-01-01,2026:10,5\n"
    with pytest.raises(ImportFailed) as failed:
        import_csv(db, "staff", text)
    assert [(e.row, e.field) for e in failed.value.errors] == [(13, "username")]
    assert count(db, StaffProfile) == 0 and count(db, StaffCertification) == 0


def test_stock_cannot_be_set_below_what_cases_have_reserved(db: Database) -> None:
    import_csv(db, "parts", demo("parts"))
    with db.write() as s:
        s.get(Stock, ("P-CAP-35", "WH-SH")).reserved = 5
    lines = demo("parts").splitlines()
    assert lines[3].startswith("P-CAP-35,") and ",WH-SH," in lines[3]  # row 4 of the file
    lines[3] = lines[3].replace(",40,0,10", ",3,0,10")  # below the 5 reserved
    sensors = next(n for n, line in enumerate(lines) if line.startswith("P-SENS-T,") and ",WH-SH," in line)
    lines[sensors] = lines[sensors].replace(",30,0,10", ",99,0,10")  # a valid change in the same file
    changed = "\n".join(lines) + "\n"
    with pytest.raises(ImportFailed) as failed:
        import_csv(db, "parts", changed)
    assert [(e.row, e.field) for e in failed.value.errors] == [(4, "on_hand")]
    with db.read() as s:
        assert s.get(Stock, ("P-SENS-T", "WH-SH")).on_hand == 30  # the valid change was not kept either


def test_header_problems_and_excel_files(db: Database) -> None:
    with pytest.raises(ImportFailed) as failed:
        import_csv(db, "faq", "question,antwort\n问题,答案\n")
    assert [(e.row, e.field) for e in failed.value.errors] == [(1, "answer"), (1, "antwort")]
    excel = "\ufeffquestion,answer\r\n怎么预约安装？,拨打热线预约。\r\n\r\n"  # BOM, CRLF, a blank line
    result = import_csv(db, "faq", excel)
    assert (result.rows, result.created) == (1, 1)
    with db.read() as s:
        assert s.scalars(select(FaqEntry)).one().language == "zh"


def test_re_import_updates_what_changed(db: Database) -> None:
    import_csv(db, "customers", HEADER + "\n张伟,male,35,13800001111,,上海市,KFR-35GW/N1,SN1,B2409,,,上海\n")
    result = import_csv(db, "customers", HEADER + "\n张伟,male,36,13800001111,z@example.com,上海市徐汇区,"
                                                  "KFR-35GW/N1,SN1,B2503,,,上海\n")
    assert (result.created, result.updated) == (0, 1)
    with db.read() as s:
        c = s.scalars(select(Customer)).one()
        assert (c.age, c.email, c.address) == (36, "z@example.com", "上海市徐汇区")
        assert s.scalars(select(CustomerProduct)).one().batch == "B2503"


def test_cli_import_export_and_demo_data(users_db: Database, db_url: str, tmp_path: Path) -> None:
    from app import cli

    env = {"AFTERCARE_DATABASE_URL": db_url, "AFTERCARE_SCHEDULER": "off", "AFTERCARE_SECRET_KEY": "cli-test"}
    runner = CliRunner()
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\n张伟,male,35,13800001111,,上海市,,,,,,\n李娜,,,,,,,,,,,\n", encoding="utf-8")
    res = runner.invoke(cli, ["import", "customers", str(bad)], env=env)
    assert res.exit_code == 1
    assert f"error: {bad}: row 3, phone: required, at least 5 digits" in res.output
    assert "nothing was imported" in res.output and count(users_db, Customer) == 0

    res = runner.invoke(cli, ["demo-data"], env=env)
    assert res.exit_code == 0, res.output
    assert "demo customers: 74 rows, 74 created" in res.output
    res = runner.invoke(cli, ["demo-data"], env=env)  # idempotent: make run calls it every time
    assert "demo customers: 74 rows, 0 created, 0 updated, 74 unchanged" in res.output
    assert count(users_db, Customer) == 60

    out = tmp_path / "faq.csv"
    res = runner.invoke(cli, ["export", "faq", "-o", str(out)], env=env)
    assert res.exit_code == 0 and out.read_bytes().startswith(b"\xef\xbb\xbf")  # Excel-friendly BOM
    res = runner.invoke(cli, ["import", "faq", str(out)], env=env)
    assert res.exit_code == 0 and "29 unchanged" in res.output
    res = runner.invoke(cli, ["export", "parts"], env=env)
    assert res.output.splitlines()[0] == ",".join(COLUMNS["parts"])
