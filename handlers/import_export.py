"""CSV import and export of customers, staff profiles, parts stock and FAQ entries.

An import reads and checks every row first and then writes all of them in one transaction:
any error (reported with its row number as a spreadsheet shows it, header = row 1) means
nothing is imported. Files are UTF-8, with or without the byte-order mark Excel writes.
Re-importing a file changes nothing that is already so (rows are matched by phone number,
username, part and location, or question).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.models import User, utcnow

from .customers import GENDERS, normalize_phone
from .models import (
    Customer,
    CustomerProduct,
    FaqEntry,
    Part,
    StaffCertification,
    StaffProfile,
    Stock,
    Warehouse,
)

KINDS = ("customers", "staff", "parts", "faq")
COLUMNS: dict[str, list[str]] = {
    "customers": ["name", "gender", "age", "phone", "email", "address", "product_model", "serial", "batch",
                  "purchase_date", "delivery_date", "region"],
    "staff": ["username", "technician", "skills", "region", "certifications", "training_hours", "max_open_orders"],
    "parts": ["part_no", "name", "kind", "lead_time_days", "location", "location_name", "location_region",
              "on_hand", "reserved", "reorder_level"],
    "faq": ["question", "answer", "keywords", "product_model", "language", "active"],
}
REQUIRED: dict[str, set[str]] = {
    "customers": {"name", "phone"}, "staff": {"username"}, "parts": {"part_no", "name"},
    "faq": {"question", "answer"},
}
_TRUE = {"1", "true", "yes", "y", "是", "t"}
_FALSE = {"0", "false", "no", "n", "否", "f", ""}
_GENDER_WORDS = {"男": "male", "女": "female", "m": "male", "f": "female"}
_SPLIT = re.compile(r"[;；,，、|]")


@dataclass
class RowError:
    row: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.field}: {self.message}" if self.field else f"row {self.row}: {self.message}"


class ImportFailed(Exception):
    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} error(s); nothing was imported")
        self.errors = errors


@dataclass
class ImportResult:
    kind: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return (f"{self.kind}: {self.rows} rows, {self.created} created, {self.updated} updated, "
                f"{self.unchanged} unchanged")


@dataclass
class _Row:
    line: int
    values: dict[str, str]
    errors: list[RowError] = field(default_factory=list)

    def text(self, name: str) -> str:
        return (self.values.get(name) or "").strip()

    def error(self, name: str, message: str) -> None:
        self.errors.append(RowError(self.line, name, message))

    def integer(self, name: str, default: int | None = None, minimum: int = 0) -> int | None:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.error(name, f"'{raw}' is not a whole number")
            return default
        if value < minimum:
            self.error(name, f"must be {minimum} or more")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        self.error(name, f"'{raw}' is not yes/no")
        return default

    def date(self, name: str) -> dt.date | None:
        raw = self.text(name)
        if not raw:
            return None
        try:
            return dt.date.fromisoformat(raw.replace("/", "-"))
        except ValueError:
            self.error(name, f"'{raw}' is not a date (YYYY-MM-DD)")
            return None


def read_rows(kind: str, text: str) -> list[_Row]:
    """Rows with their line numbers; header problems are reported as row 1."""
    if kind not in KINDS:
        raise ImportFailed([RowError(1, "", f"unknown kind '{kind}' (one of {', '.join(KINDS)})")])
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    errors = [RowError(1, col, "required column missing") for col in sorted(REQUIRED[kind] - set(header))]
    errors += [RowError(1, col, f"unknown column (expected: {', '.join(COLUMNS[kind])})")
               for col in header if col and col not in COLUMNS[kind]]
    if errors:
        raise ImportFailed(errors)
    reader.fieldnames = header
    rows = []
    for values in reader:
        if None in values:
            rows.append(_Row(reader.line_num, {}, [RowError(reader.line_num, "", "more fields than columns")]))
            continue
        if not any((v or "").strip() for v in values.values()):
            continue  # blank line
        rows.append(_Row(reader.line_num, {k: v or "" for k, v in values.items()}))
    return rows


# --- validation: a row becomes a record or errors ---------------------------------------------


def _customer_record(row: _Row) -> dict[str, Any]:
    phone = normalize_phone(row.text("phone"))
    if not row.text("name"):
        row.error("name", "required")
    if len(phone) < 5:
        row.error("phone", "required, at least 5 digits")
    gender = row.text("gender").lower()
    gender = _GENDER_WORDS.get(gender, gender)
    if gender and gender not in GENDERS:
        row.error("gender", f"one of {', '.join(GENDERS)}")
    age = row.integer("age", None, minimum=1)
    if age is not None and age > 130:
        row.error("age", "must be 130 or less")
    email = row.text("email")
    if email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        row.error("email", f"'{email}' is not an e-mail address")
    product = {"model": row.text("product_model"), "serial": row.text("serial"), "batch": row.text("batch"),
               "purchase_date": row.date("purchase_date"), "delivery_date": row.date("delivery_date"),
               "region": row.text("region")}
    if not product["model"] and any(product[k] for k in ("serial", "batch", "purchase_date", "delivery_date")):
        row.error("product_model", "required when product details are given")
    if product["purchase_date"] and product["delivery_date"] and product["delivery_date"] < product["purchase_date"]:
        row.error("delivery_date", "before the purchase date")
    return {"name": row.text("name"), "phone": phone, "gender": gender, "age": age, "email": email,
            "address": row.text("address"), "product": product if product["model"] else None}


def _staff_record(row: _Row) -> dict[str, Any]:
    if not row.text("username"):
        row.error("username", "required")
    certs: dict[str, dt.date] = {}
    for item in filter(None, (s.strip() for s in _SPLIT.split(row.text("certifications")))):
        name, sep, until = item.rpartition("@")
        try:
            if not sep or not name.strip():
                raise ValueError
            certs[name.strip()] = dt.date.fromisoformat(until.strip())
        except ValueError:
            row.error("certifications", f"'{item}' is not 'name@YYYY-MM-DD'")
    hours: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in _SPLIT.split(row.text("training_hours")))):
        year, sep, value = item.partition(":")
        try:
            if not sep or not re.fullmatch(r"\d{4}", year.strip()) or float(value) < 0:
                raise ValueError
            hours[year.strip()] = float(value) if "." in value else int(value)
        except ValueError:
            row.error("training_hours", f"'{item}' is not 'YYYY:hours'")
    return {"username": row.text("username"), "technician": row.boolean("technician", False),
            "skills": sorted({s.strip() for s in _SPLIT.split(row.text("skills")) if s.strip()}),
            "region": row.text("region"), "certifications": certs, "training_hours": hours,
            "max_open_orders": row.integer("max_open_orders", 5, minimum=1)}


def _part_record(row: _Row) -> dict[str, Any]:
    for name in ("part_no", "name"):
        if not row.text(name):
            row.error(name, "required")
    kind = row.text("kind") or "part"
    if kind not in ("part", "product"):
        row.error("kind", "part or product")
    location = row.text("location")
    if not location and any(row.text(c) for c in ("on_hand", "reorder_level")):
        row.error("location", "required when stock is given")
    return {"part_no": row.text("part_no"), "name": row.text("name"), "kind": kind,
            "lead_time_days": row.integer("lead_time_days", 7), "location": location,
            "location_name": row.text("location_name"), "location_region": row.text("location_region"),
            "on_hand": row.integer("on_hand", 0), "reorder_level": row.integer("reorder_level", 0)}


def _faq_record(row: _Row) -> dict[str, Any]:
    for name in ("question", "answer"):
        if not row.text(name):
            row.error(name, "required")
    language = row.text("language") or ("zh" if re.search(r"[\u4e00-\u9fff]", row.text("question")) else "en")
    if language not in ("zh", "en"):
        row.error("language", "zh or en")
    return {"question": row.text("question"), "answer": row.text("answer"), "keywords": row.text("keywords"),
            "product_model": row.text("product_model"), "language": language,
            "active": row.boolean("active", True)}


def _key(kind: str, rec: dict[str, Any]) -> Any:
    if kind == "customers":
        product = rec["product"] or {}
        return (rec["phone"], product.get("serial") or product.get("model") or "")
    if kind == "staff":
        return rec["username"]
    if kind == "parts":
        return (rec["part_no"], rec["location"])
    return rec["question"]


_VALIDATORS: dict[str, Callable[[_Row], dict[str, Any]]] = {
    "customers": _customer_record, "staff": _staff_record, "parts": _part_record, "faq": _faq_record,
}


def parse(kind: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = read_rows(kind, text)
    errors: list[RowError] = []
    records: list[tuple[int, dict[str, Any]]] = []
    seen: dict[Any, int] = {}
    names: dict[str, tuple[str, int]] = {}
    for row in rows:
        rec = _VALIDATORS[kind](row)
        key = _key(kind, rec)
        if not row.errors and key in seen:
            row.error("", f"duplicate of row {seen[key]}")
        seen.setdefault(key, row.line)
        if kind == "customers" and not row.errors:  # one phone number, one customer
            first = names.setdefault(rec["phone"], (rec["name"], row.line))
            if first[0] != rec["name"]:
                row.error("name", f"phone {rec['phone']} belongs to '{first[0]}' in row {first[1]}")
        errors.extend(row.errors)
        records.append((row.line, rec))
    if errors:
        raise ImportFailed(errors)
    return records


# --- writing ---------------------------------------------------------------------------------


def _chunks(values: list[Any], size: int = 500) -> Iterable[list[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


_CUSTOMER_FIELDS = ("name", "gender", "age", "email", "address")
_PRODUCT_FIELDS = ("model", "serial", "batch", "purchase_date", "delivery_date", "region")


def _snapshot(customer: Customer, products: list[CustomerProduct]) -> Any:
    return (tuple(getattr(customer, f) for f in _CUSTOMER_FIELDS),
            tuple(tuple(getattr(p, f) for f in _PRODUCT_FIELDS) for p in products))


def _apply_customers(s: Session, records: list[tuple[int, dict[str, Any]]], result: ImportResult,
                     only_missing: bool, errors: list[RowError]) -> None:
    """Customers matched by phone; a product matched by serial (or by model when it has none).
    Existing rows are read in bulk, not row by row."""
    now = utcnow()
    phones = sorted({rec["phone"] for _, rec in records})
    customers: dict[str, Customer] = {}
    for chunk in _chunks(phones):
        for c in s.scalars(select(Customer).where(Customer.phone.in_(chunk)).order_by(Customer.id)):
            customers.setdefault(c.phone, c)
    products: dict[int, list[CustomerProduct]] = {c.id: [] for c in customers.values()}
    for chunk in _chunks(list(products)):
        for p in s.scalars(select(CustomerProduct).where(CustomerProduct.customer_id.in_(chunk))
                           .order_by(CustomerProduct.id)):
            products[p.customer_id].append(p)
    first_rows: set[int] = set()
    for line, rec in records:  # new customers in one batch (one round trip for their ids)
        if rec["phone"] not in customers:
            customers[rec["phone"]] = Customer(name=rec["name"], phone=rec["phone"], gender=rec["gender"],
                                               age=rec["age"], email=rec["email"], address=rec["address"],
                                               created=now)
            s.add(customers[rec["phone"]])
            first_rows.add(line)
    s.flush()
    for line, rec in records:
        customer = customers[rec["phone"]]
        owned = products.setdefault(customer.id, [])
        before = _snapshot(customer, owned)
        created = line in first_rows
        if not created:
            for f in _CUSTOMER_FIELDS:
                if rec[f] not in (None, "") and (not only_missing or not getattr(customer, f)):
                    setattr(customer, f, rec[f])
        product = rec["product"]
        if product:
            match = next((p for p in owned if (p.serial == product["serial"] if product["serial"]
                                               else p.model == product["model"])), None)
            if match is None:
                match = CustomerProduct(customer_id=customer.id, model=product["model"], serial=product["serial"],
                                        batch=product["batch"], purchase_date=product["purchase_date"],
                                        delivery_date=product["delivery_date"], region=product["region"])
                s.add(match)
                owned.append(match)
                created = True
            elif not only_missing:
                for f in _PRODUCT_FIELDS:
                    if product[f] not in (None, ""):
                        setattr(match, f, product[f])
        if created:
            result.created += 1
        elif _snapshot(customer, owned) != before:
            result.updated += 1
        else:
            result.unchanged += 1
    s.flush()


def _apply_staff(s: Session, records: list[tuple[int, dict[str, Any]]], result: ImportResult,
                 only_missing: bool, errors: list[RowError]) -> None:
    """Profiles by username (the user must exist); certifications are replaced by the file's."""
    known = set(s.scalars(select(User.username)))
    profiles = {p.username: p for p in s.scalars(select(StaffProfile))}
    certs: dict[str, dict[str, StaffCertification]] = {}
    for c in s.scalars(select(StaffCertification)):
        certs.setdefault(c.username, {})[c.name] = c
    for line, rec in records:
        name = rec["username"]
        if name not in known:
            errors.append(RowError(line, "username", f"no user '{name}' (add it with `aftercare user add`)"))
            continue
        profile = profiles.get(name)
        if profile is not None and only_missing:
            result.unchanged += 1
            continue
        current = certs.setdefault(name, {})
        state = _staff_state(profile, current)
        if profile is None:
            profile = profiles[name] = StaffProfile(username=name)
            s.add(profile)
            s.flush()  # before its certifications (no ORM relationship orders the inserts)
        profile.technician, profile.skills, profile.region = rec["technician"], rec["skills"], rec["region"]
        profile.max_open_orders, profile.training_hours = rec["max_open_orders"], rec["training_hours"]
        for cert_name in [n for n in current if n not in rec["certifications"]]:
            s.delete(current.pop(cert_name))
        for cert_name, until in rec["certifications"].items():
            if cert_name in current:
                current[cert_name].valid_until = until
            else:
                current[cert_name] = StaffCertification(username=name, name=cert_name, valid_until=until)
                s.add(current[cert_name])
        if state is None:
            result.created += 1
        elif _staff_state(profile, current) != state:
            result.updated += 1
        else:
            result.unchanged += 1
    s.flush()


def _staff_state(profile: StaffProfile | None, certs: dict[str, StaffCertification]) -> Any:
    if profile is None:
        return None
    return (profile.technician, tuple(profile.skills or []), profile.region, profile.max_open_orders,
            tuple(sorted((profile.training_hours or {}).items())),
            tuple(sorted((n, c.valid_until) for n, c in certs.items())))


def _apply_parts(s: Session, records: list[tuple[int, dict[str, Any]]], result: ImportResult,
                 only_missing: bool, errors: list[RowError]) -> None:
    """Parts by number, warehouses by code, stock by (part, location); existing rows read in bulk
    and stock rows locked, so a reservation cannot slip in between the check and the write."""
    parts = {p.part_no: p for p in s.scalars(select(Part))}
    warehouses = {w.code: w for w in s.scalars(select(Warehouse))}
    stock = {(st.part_no, st.location): st for st in s.scalars(select(Stock).with_for_update())}
    for line, rec in records:
        created = changed = False
        part = parts.get(rec["part_no"])
        if part is None:
            part = parts[rec["part_no"]] = Part(part_no=rec["part_no"], name=rec["name"], kind=rec["kind"],
                                                lead_time_days=rec["lead_time_days"])
            s.add(part)
            created = True
        elif not only_missing and (part.name, part.kind, part.lead_time_days) != (
                rec["name"], rec["kind"], rec["lead_time_days"]):
            part.name, part.kind, part.lead_time_days = rec["name"], rec["kind"], rec["lead_time_days"]
            changed = True
        location = rec["location"]
        if location:
            wh = warehouses.get(location)
            if wh is None:
                wh = warehouses[location] = Warehouse(code=location, name=rec["location_name"] or location,
                                                      region=rec["location_region"])
                s.add(wh)
            elif not only_missing and (rec["location_name"] or rec["location_region"]):
                wh.name = rec["location_name"] or wh.name
                wh.region = rec["location_region"] or wh.region
            row = stock.get((rec["part_no"], location))
            if row is None:
                s.flush()  # the part and warehouse first (foreign keys)
                stock[(rec["part_no"], location)] = Stock(part_no=rec["part_no"], location=location,
                                                         on_hand=rec["on_hand"], reserved=0,
                                                         reorder_level=rec["reorder_level"])
                s.add(stock[(rec["part_no"], location)])
                created = True
            elif not only_missing and (row.on_hand, row.reorder_level) != (rec["on_hand"], rec["reorder_level"]):
                if rec["on_hand"] < row.reserved:
                    errors.append(RowError(line, "on_hand", f"{rec['on_hand']} is less than the {row.reserved} "
                                                            "reserved for open cases"))
                    continue
                row.on_hand, row.reorder_level = rec["on_hand"], rec["reorder_level"]
                changed = True
        if created:
            result.created += 1
        elif changed:
            result.updated += 1
        else:
            result.unchanged += 1
    s.flush()


def _apply_faq(s: Session, records: list[tuple[int, dict[str, Any]]], result: ImportResult,
               only_missing: bool, errors: list[RowError]) -> None:
    now = utcnow()
    fields = ("answer", "keywords", "product_model", "language", "active")
    entries: dict[str, FaqEntry] = {}
    for e in s.scalars(select(FaqEntry).order_by(FaqEntry.id.desc())):
        entries[e.question] = e  # the oldest entry of a question wins
    for _line, rec in records:
        entry = entries.get(rec["question"])
        if entry is None:
            s.add(FaqEntry(**rec, updated_at=now))
            result.created += 1
        elif only_missing or all(getattr(entry, f) == rec[f] for f in fields):
            result.unchanged += 1
        else:
            for f in fields:
                setattr(entry, f, rec[f])
            entry.updated_at = now
            result.updated += 1
    s.flush()


_APPLY = {"customers": _apply_customers, "staff": _apply_staff, "parts": _apply_parts, "faq": _apply_faq}


def import_csv(db: Any, kind: str, text: str, only_missing: bool = False) -> ImportResult:
    """Check every row, then write all of them in one transaction (or none, on any error).
    ``only_missing`` adds what is not there yet and leaves existing rows alone (demo data)."""
    records = parse(kind, text)
    result = ImportResult(kind, rows=len(records))
    errors: list[RowError] = []

    class _Rollback(Exception):
        pass

    try:
        with db.write() as s:
            _APPLY[kind](s, records, result, only_missing, errors)
            if errors:
                raise _Rollback
    except _Rollback:
        raise ImportFailed(errors) from None
    return result


# --- export ----------------------------------------------------------------------------------


def _iso(value: dt.date | None) -> str:
    return value.isoformat() if value else ""


def export_rows(db: Any, kind: str) -> list[dict[str, Any]]:
    with db.read() as s:
        if kind == "customers":
            out = []
            products: dict[int, list[CustomerProduct]] = {}
            for p in s.scalars(select(CustomerProduct).order_by(CustomerProduct.id)):
                products.setdefault(p.customer_id, []).append(p)
            for c in s.scalars(select(Customer).order_by(Customer.id)):
                base = {"name": c.name, "gender": c.gender, "age": c.age or "", "phone": c.phone, "email": c.email,
                        "address": c.address}
                for p in products.get(c.id) or [None]:
                    out.append({**base, **({"product_model": p.model, "serial": p.serial, "batch": p.batch,
                                            "purchase_date": _iso(p.purchase_date),
                                            "delivery_date": _iso(p.delivery_date), "region": p.region} if p else {})})
            return out
        if kind == "staff":
            certs: dict[str, list[str]] = {}
            for c in s.scalars(select(StaffCertification).order_by(StaffCertification.name)):
                certs.setdefault(c.username, []).append(f"{c.name}@{c.valid_until.isoformat()}")
            return [{"username": p.username, "technician": "yes" if p.technician else "no",
                     "skills": ";".join(p.skills or []), "region": p.region,
                     "certifications": ";".join(certs.get(p.username, [])),
                     "training_hours": ";".join(f"{y}:{h}" for y, h in sorted((p.training_hours or {}).items())),
                     "max_open_orders": p.max_open_orders}
                    for p in s.scalars(select(StaffProfile).order_by(StaffProfile.username))]
        if kind == "parts":
            warehouses = {w.code: w for w in s.scalars(select(Warehouse))}
            stock: dict[str, list[Stock]] = {}
            for st in s.scalars(select(Stock).order_by(Stock.part_no, Stock.location)):
                stock.setdefault(st.part_no, []).append(st)
            out = []
            for part in s.scalars(select(Part).order_by(Part.part_no)):
                base = {"part_no": part.part_no, "name": part.name, "kind": part.kind,
                        "lead_time_days": part.lead_time_days}
                for st in stock.get(part.part_no) or [None]:
                    wh = warehouses.get(st.location) if st else None
                    out.append({**base, **({"location": st.location, "location_name": wh.name if wh else "",
                                            "location_region": wh.region if wh else "", "on_hand": st.on_hand,
                                            "reserved": st.reserved, "reorder_level": st.reorder_level}
                                           if st else {})})
            return out
        if kind == "faq":
            return [{"question": f.question, "answer": f.answer, "keywords": f.keywords,
                     "product_model": f.product_model, "language": f.language, "active": "yes" if f.active else "no"}
                    for f in s.scalars(select(FaqEntry).order_by(FaqEntry.id))]
    raise ValueError(f"unknown kind '{kind}'")


def export_csv(db: Any, kind: str) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS[kind], extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in export_rows(db, kind):
        writer.writerow(row)
    return buffer.getvalue()
