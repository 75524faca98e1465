"""What the staff pages show about a case: SLA state, masked personal data, timers, links.

The masking rule lives here and only here (``sees_personal_data``).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from engine import Actor, FormInvalid
from engine.models import Timer, utcnow

# Groups whose work needs the customer's phone and address (seed 002: access by role).
PERSONAL_DATA_GROUPS = frozenset({"admin", "supervisor", "customer-care", "hotline", "dispatch", "technician",
                                  "complaints"})
_PHONE = re.compile(r"(phone|mobile|tel)$", re.I)
_ADDRESS = re.compile(r"address$", re.I)


@functools.lru_cache(maxsize=1024)
def _personal_key(key: str) -> str | None:
    """"phone", "address" or None for a field name (cached: every API response with case data
    is looked through, and the same few dozen names come back all the time)."""
    return "phone" if _PHONE.search(key) else "address" if _ADDRESS.search(key) else None
SLA_STATES = ("on_time", "warning", "breached", "paused")
WARNING_SHARE = 0.8  # the default warning point of an SLA (SPEC: 80 % of the target)


def sees_personal_data(actor: Actor) -> bool:
    return actor.system or bool(actor.groups & PERSONAL_DATA_GROUPS)


def mask_phone(value: str) -> str:
    digits = value.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    keep = 3 if len(digits) >= 10 else 1
    return digits[:keep] + "*" * (len(digits) - keep - 4) + digits[-4:]


def mask_address(value: str) -> str:
    text = value.strip()
    return text[: min(6, len(text) // 3)] + "****" if text else text


def masked(data: Any, actor: Actor) -> Any:
    """A copy of case data (or a history payload) with phone numbers and addresses masked."""
    if sees_personal_data(actor):
        return data
    return _mask(data)


def _mask(data: Any, key: str = "") -> Any:
    if isinstance(data, Mapping):
        return {k: _mask(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_mask(v, key) for v in data]
    if isinstance(data, str) and key:
        kind = _personal_key(key)
        if kind == "phone":
            return mask_phone(data)
        if kind == "address":
            return mask_address(data)
    return data


def keep_masked_values(submitted: Any, current: Any, actor: Actor) -> Any:
    """Form data from a user who was shown it masked: a field sent back exactly as its masked
    text keeps the case's real value (the mask never overwrites a phone number or address);
    a whole new value typed over it goes through as typed; masked text changed in part
    (``138****5679``) is refused naming the field, since it would store the stars."""
    if sees_personal_data(actor) or not isinstance(submitted, Mapping) or not isinstance(current, Mapping):
        return submitted
    errors: list[dict[str, str]] = []
    out = _keep_masked(submitted, current, "", errors)
    if errors:
        raise FormInvalid(f"{len(errors)} form field(s) are invalid", errors)
    return out


def _keep_masked(submitted: Mapping[str, Any], current: Mapping[str, Any], prefix: str,
                 errors: list[dict[str, str]]) -> dict[str, Any]:
    out = dict(submitted)
    for key, value in submitted.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = _keep_masked(value, old, f"{prefix}{key}.", errors)
        elif isinstance(value, str) and isinstance(old, str) and value != old:
            shown_as = _mask(old, str(key))
            if shown_as == value:
                out[key] = old
            elif shown_as != old and "*" in value:
                errors.append({"field": f"{prefix}{key}", "message": "shown masked: send it back unchanged or "
                                                                    "type the whole new value"})
    return out


def shown(payload: Any, actor: Actor, what: str, db: Any, case_id: int | None = None) -> Any:
    """``payload`` (a case, its data, its history) as ``actor`` may see it: masked for roles whose
    work does not need phone numbers and addresses; for the others the view is recorded."""
    if not sees_personal_data(actor):
        return _mask(payload)
    record_personal_view(db, actor, what, personal_fields(payload), case_id)
    return payload


def personal_fields(data: Any, prefix: str = "") -> list[str]:
    """Paths of the phone numbers and addresses present in case data (what masking would hide)."""
    return _personal_fields(data, prefix, None)


def _personal_fields(data: Any, prefix: str, key: str | None) -> list[str]:
    # ``key``: the field a list hangs from; its text items are masked by that name (``_mask``).
    found: list[str] = []
    if isinstance(data, dict | Mapping):
        for k, v in data.items():
            kind = type(v)
            if kind is str:
                if v and _personal_key(str(k)):
                    found.append(f"{prefix}{k}")
            elif kind is dict or kind is list or isinstance(v, Mapping):
                found += _personal_fields(v, f"{prefix}{k}.", str(k))
    elif isinstance(data, list):
        personal = key is not None and _personal_key(key) is not None
        for i, v in enumerate(data):
            if type(v) is str:
                if personal and v:
                    found.append(f"{prefix}{i}")
            elif type(v) is dict or type(v) is list or isinstance(v, Mapping):
                found += _personal_fields(v, f"{prefix}{i}.", key)
    return found


def record_personal_view(db: Any, actor: Actor, what: str, fields: list[str], case_id: int | None = None,
                         detail: dict[str, Any] | None = None) -> bool:
    """Record that ``actor`` was shown unmasked phone numbers or addresses (SPEC, seed 002).

    Nothing is recorded when the page showed them masked or there were none."""
    if not fields or not sees_personal_data(actor) or actor.system:
        return False
    from engine.audit.access import record_access

    with db.write() as session:
        record_access(session, actor, f"{what}: {', '.join(sorted(set(fields)))[:400]}", case_id,
                      {"fields": sorted(set(fields)), **(detail or {})})
    return True


def parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def sla_state(task: Mapping[str, Any], now: dt.datetime | None = None) -> str | None:
    """on_time, warning, breached or paused; the SLA module's own verdict wins when the task carries one."""
    given = task.get("sla_state")
    if isinstance(given, str) and given:
        return given
    return sla_state_of(parse_time(task.get("due")), parse_time(task.get("warn_at")), False,
                        parse_time(task.get("created_at")), now)


def sla_state_of(due: dt.datetime | None, warn_at: dt.datetime | None, paused: bool, created: dt.datetime | None,
                 now: dt.datetime | None = None) -> str | None:
    """The SLA state from the task's clock; without a warning time, the default 80 % of the target warns."""
    if due is None:
        return None
    if paused:
        return "paused"
    now = now or utcnow()
    if due <= now:
        return "breached"
    if warn_at is None and created is not None and due > created:
        warn_at = created + (due - created) * WARNING_SHARE
    if warn_at is not None and now >= warn_at:
        return "warning"
    return "on_time"


def pending_timers(db: Any, case_id: int) -> list[dict[str, Any]]:
    with db.read() as session:
        rows = session.scalars(select(Timer).where(Timer.case_id == case_id, Timer.status != "fired")
                               .order_by(Timer.due_at))
        return [{"id": t.id, "spec": t.spec, "kind": t.kind, "due": t.due_at.isoformat(), "status": t.status}
                for t in rows]


def case_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """Case reference and customer, from the flat keys or the procedures' nested ones (as the inbox searches)."""
    reference = data.get("reference") if isinstance(data.get("reference"), Mapping) else {}
    customer = data.get("customer") if isinstance(data.get("customer"), Mapping) else {}
    return {"case_ref": data.get("case_ref") or reference.get("case_ref"),
            "customer_name": data.get("customer_name") or customer.get("name"),
            "customer_phone": data.get("customer_phone") or customer.get("phone")}


def linked_cases(data: Mapping[str, Any]) -> list[int]:
    """Case ids from the case data field ``linked_cases`` (ids, or objects with an ``id``/``case``)."""
    raw = data.get("linked_cases") or []
    if not isinstance(raw, list):
        raw = [raw]
    out: list[int] = []
    for item in raw:
        value = item.get("id", item.get("case")) if isinstance(item, Mapping) else item
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            continue
    return out


def earlier_answers(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What people entered in the case's completed tasks, newest first."""
    answers = []
    for ev in history:
        if ev.get("type") == "task_completed" and isinstance(ev.get("payload"), Mapping):
            data = ev["payload"].get("data")
            if data:
                answers.append({"task": ev.get("task"), "actor": ev.get("actor"), "at": ev.get("at"), "data": data})
    return list(reversed(answers))
