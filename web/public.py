"""Customer-facing pages, no login: intake (web form and ``POST /api/intake``), survey links,
and the published service process and fee standards.

Intake starts the procedure that fits the request (inquiry, complaint, repair dispatch,
installation) as the system actor with ``intake_complete: true`` and every field the
procedure's register form requires, so the case skips the register task. The data is
checked here with messages naming each field, then against the deployed register form, so
a process owner's change to that form applies to intake too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from engine import SYSTEM, InvalidInput, NotFound, Unavailable
from engine.forms import field_errors
from engine.models import utcnow
from handlers import surveys

from .auth import check_csrf, services
from .openapi import route
from .params import json_object

public = Blueprint("public", __name__)

# kind -> (process key, register form the intake stands in for)
KINDS: dict[str, tuple[str, str]] = {
    "inquiry": ("inquiry", "inquiry-register.schema.json"),
    "complaint": ("complaint", "complaint-register.schema.json"),
    "repair": ("dispatch", "dispatch-register.schema.json"),
    "installation": ("installation", "installation-register.schema.json"),
}
KIND_TITLES = {"inquiry": "咨询 Inquiry", "complaint": "投诉 Complaint", "repair": "报修 Repair",
               "installation": "配送安装 Delivery and installation"}
CHANNELS = ("phone", "email", "web", "chat", "wechat", "walk_in")
# The installation register form names order channels, not contact channels.
INSTALLATION_CHANNELS = {"phone": "phone", "walk_in": "store", "web": "online", "email": "online",
                         "chat": "online", "wechat": "online"}
FAULT_TYPES = {"no_power": "不通电 No power", "not_cooling_heating": "不制冷/不制热 Not cooling or heating",
               "water_leak": "漏水 Water leak", "noise_vibration": "噪音/振动 Noise or vibration",
               "error_code": "显示故障代码 Error code", "control_fault": "遥控/控制故障 Control fault",
               "other": "其他 Other"}
URGENCIES = {"normal": "一般 Normal", "urgent": "加急 Urgent", "safety_hazard": "有安全隐患 Safety hazard"}
PHONE_RE = re.compile(r"^\+?[0-9][0-9 \-]{5,19}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_TEXT = 4000
ITEM_ROWS = 3  # order lines on the web form

INTAKE_BODY = {
    "type": "object", "required": ["kind", "channel", "customer", "text"],
    "properties": {
        "kind": {"type": "string", "enum": list(KINDS)},
        "channel": {"type": "string", "enum": list(CHANNELS)},
        "customer": {"type": "object", "required": ["name", "phone"], "properties": {
            "name": {"type": "string"}, "phone": {"type": "string"}, "email": {"type": "string"},
            "address": {"type": "string", "description": "required for repair and installation"}}},
        "product": {"type": "object", "properties": {"model": {"type": "string"}, "serial": {"type": "string"}}},
        "text": {"type": "string", "description": "the question, complaint or fault in the customer's words"},
        "occurred_at": {"type": "string", "format": "date-time", "description": "complaint: when it happened"},
        "location": {"type": "string", "description": "complaint: where it happened"},
        "region": {"type": "string", "description": "repair and installation: service region"},
        "fault_type": {"type": "string", "enum": list(FAULT_TYPES), "description": "repair"},
        "urgency": {"type": "string", "enum": list(URGENCIES), "description": "repair (default normal)"},
        "order_no": {"type": "string", "description": "installation"},
        "order_items": {"type": "array", "description": "installation", "items": {
            "type": "object", "required": ["product_model", "quantity"],
            "properties": {"product_model": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}},
    },
}


# --- rate limit -----------------------------------------------------------------------------


class RateLimiter:
    """At most ``limit`` requests per ``window`` seconds per client address (in this process)."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Count a request; returns 0 when allowed, else the seconds until the next is allowed."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(1.0, hits[0] + self.window - now)
            hits.append(now)
            if len(self._hits) > 10_000:  # forget idle addresses
                for k in [k for k, v in self._hits.items() if not v]:
                    del self._hits[k]
            return 0.0


def _limiter() -> RateLimiter:
    return current_app.extensions["aftercare.intake_limiter"]


def _client() -> str:
    return request.remote_addr or "unknown"


def _too_many(wait: float) -> str:
    seconds = int(wait) + 1
    return (f"提交过于频繁，请 {seconds} 秒后再试。 "
            f"Too many requests from your address; please try again in {seconds} s.")


# --- intake: validation and start -----------------------------------------------------------


def _zone() -> ZoneInfo:
    return ZoneInfo(os.environ.get("AFTERCARE_TIMEZONE", "Asia/Shanghai"))


class _Check:
    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        if not any(e["field"] == field for e in self.errors):
            self.errors.append({"field": field, "message": message})

    def text(self, obj: Mapping[str, Any], key: str, field: str, required: bool, max_len: int = 300) -> str | None:
        value = obj.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.add(field, "必填 / this field is required")
            return None
        if not isinstance(value, str):
            self.add(field, "应为文字 / expected a string")
            return None
        value = value.strip()
        if len(value) > max_len:
            self.add(field, f"最多 {max_len} 字 / at most {max_len} characters")
            return None
        return value

    def choice(self, obj: Mapping[str, Any], key: str, options: Mapping[str, str] | tuple[str, ...], required: bool,
               default: str | None = None) -> str | None:
        value = self.text(obj, key, key, required and default is None, 40)
        if value is None:
            return default
        if value not in options:
            self.add(key, f"应为 / must be one of: {', '.join(options)}")
            return None
        return value

    def moment(self, obj: Mapping[str, Any], key: str, required: bool) -> str | None:
        value = self.text(obj, key, key, required, 40)
        if value is None:
            return None
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.add(key, "日期时间格式应为 2026-05-01T14:30 / expected a date and time like 2026-05-01T14:30")
            return None
        if when.tzinfo is None:  # the web form's datetime-local: the customer's (service) time zone
            when = when.replace(tzinfo=_zone())
        if when > utcnow() + dt.timedelta(minutes=5):
            self.add(key, "不能是将来的时间 / cannot be in the future")
            return None
        return when.isoformat()


def build_intake(body: Any, via: str) -> tuple[str, str, dict[str, Any]]:
    """(kind, process key, case data) from an intake request; InvalidInput names each bad field."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", [{"field": "(body)", "message": "expected an object"}])
    c = _Check()
    kind = c.choice(body, "kind", tuple(KINDS), True)
    channel = c.choice(body, "channel", CHANNELS, True)
    raw_customer = body.get("customer")
    needs_address = kind in ("repair", "installation")
    customer: dict[str, Any] = {}
    if not isinstance(raw_customer, dict):
        c.add("customer", "必填，含姓名和电话 / required: an object with name and phone")
    else:
        for key, required, max_len in (("name", True, 100), ("phone", True, 20), ("email", False, 200),
                                       ("address", needs_address, 300)):
            value = c.text(raw_customer, key, f"customer.{key}", required, max_len)
            if value is not None:
                customer[key] = value
    if "phone" in customer and not PHONE_RE.match(customer["phone"]):
        c.add("customer.phone", "请填写有效电话号码 / not a valid phone number")
    if "email" in customer and not EMAIL_RE.match(customer["email"]):
        c.add("customer.email", "请填写有效电子邮件地址 / not a valid e-mail address")
    raw_product = body.get("product", {})
    if raw_product is None:
        raw_product = {}
    if not isinstance(raw_product, dict):
        c.add("product", "应为对象 / expected an object with model and serial")
        raw_product = {}
    product: dict[str, Any] = {}
    model = c.text(raw_product, "model", "product.model", kind == "repair", 100)
    if model:
        product["model"] = model
    serial = c.text(raw_product, "serial", "product.serial", False, 100)
    if serial is None and "serial_number" in raw_product:
        serial = c.text(raw_product, "serial_number", "product.serial", False, 100)
    if serial:
        product["serial_number"] = serial
    text = c.text(body, "text", "text", kind != "installation", MAX_TEXT)

    now = utcnow()
    data: dict[str, Any] = {
        "channel": channel, "customer": customer, "product": product, "received_at": now.isoformat(),
        "intake_complete": True, "customer_name": customer.get("name"), "customer_phone": customer.get("phone"),
        "intake": {"kind": kind, "via": via, "channel": channel, "text": text},
    }
    if kind == "inquiry":
        data["question"] = text
    elif kind == "complaint":
        data["description"] = text
        data["occurred_at"] = c.moment(body, "occurred_at", True)
        data["location"] = c.text(body, "location", "location", True, 300)
        for key in ("people_involved", "customer_request"):
            value = c.text(body, key, key, False, 2000)
            if value:
                data[key] = value
    elif kind == "repair":
        data["fault_description"] = text
        data["region"] = c.text(body, "region", "region", True, 100)
        data["fault_type"] = c.choice(body, "fault_type", FAULT_TYPES, True)
        data["urgency"] = c.choice(body, "urgency", URGENCIES, False, default="normal")
        preferred = c.text(body, "preferred_time", "preferred_time", False, 200)
        if preferred:
            data["preferred_time"] = preferred
    elif kind == "installation":
        data["channel"] = INSTALLATION_CHANNELS.get(channel or "", "online")
        data["order_no"] = c.text(body, "order_no", "order_no", True, 60)
        data["region"] = c.text(body, "region", "region", True, 100)
        data["order_items"] = _order_items(c, body.get("order_items"))
        site = c.text(body, "installation_site", "installation_site", False, 300)
        if site:
            data["installation_site"] = site
        if text:
            data["customer_note"] = text
    if c.errors:
        raise InvalidInput(f"{len(c.errors)} intake field(s) are invalid", c.errors)
    assert kind is not None
    process_key, form = KINDS[kind]
    _check_register_form(form, data)
    return kind, process_key, {k: v for k, v in data.items() if v is not None}


def _order_items(c: _Check, raw: Any) -> list[dict[str, Any]] | None:
    if not isinstance(raw, list) or not raw:
        c.add("order_items", "至少一项：型号和数量 / at least one line with product_model and quantity")
        return None
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            c.add(f"order_items.{i}", "应为对象 / expected an object")
            continue
        model = c.text(item, "product_model", f"order_items.{i}.product_model", True, 100)
        qty = item.get("quantity")
        if isinstance(qty, str) and qty.strip().isdigit():
            qty = int(qty.strip())
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 1 or qty > 999:
            c.add(f"order_items.{i}.quantity", "数量应为 1–999 的整数 / a whole number from 1 to 999")
            continue
        if model:
            items.append({"product_model": model, "quantity": qty})
    return items


def _check_register_form(form_name: str, data: dict[str, Any]) -> None:
    """The deployed register form is the contract of the skipped task: check against it too."""
    try:
        schema = services().engine.get_form(form_name)
    except NotFound:
        return  # a deployment without that form (other diagrams): the checks above stand
    props = json.loads(schema).get("properties", {})
    subset = {k: v for k, v in data.items() if k in props and v is not None}
    errors = field_errors(schema, subset)
    if errors:
        raise InvalidInput(f"{len(errors)} intake field(s) do not fit the {form_name} form", errors)


def start_intake(body: Any, via: str) -> dict[str, Any]:
    kind, process_key, data = build_intake(body, via)
    try:
        case = services().engine.start_case(process_key, data, SYSTEM)
    except NotFound as exc:
        raise Unavailable(f"intake for {kind} is not available right now (process '{process_key}' is not "
                          "deployed); please call the service hotline") from exc
    return {"instance": case["id"], "process": case["process"], "kind": kind,
            "case_ref": (case.get("data") or {}).get("case_ref"), "status": case["status"]}


@route(public, "/api/intake", "POST", "Customer intake (no login): start the procedure for an inquiry, "
       "complaint, repair or installation request; rate-limited per client address", auth=False,
       body=INTAKE_BODY, responses={201: "intake", 422: "Error", 429: "Error", 503: "Error"})
def api_intake() -> tuple[Response, int] | Response:
    wait = _limiter().hit(_client())
    if wait:
        res = jsonify({"error": _too_many(wait)})
        res.status_code = 429
        res.headers["Retry-After"] = str(int(wait) + 1)
        return res
    return jsonify(start_intake(json_object(required=True), "api")), 201


# --- intake: web form -----------------------------------------------------------------------


def _form_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The web form's flat fields in the API's shape."""
    kind = form.get("kind", "")
    body: dict[str, Any] = {
        "kind": kind, "channel": "web",
        "customer": {k: form.get(f"customer_{k}", "") for k in ("name", "phone", "email", "address")},
        "product": {"model": form.get("product_model", ""), "serial": form.get("product_serial", "")},
        "text": form.get("text", ""),
    }
    for key in ("occurred_at", "location", "region", "fault_type", "urgency", "order_no", "installation_site"):
        if form.get(key):
            body[key] = form[key]
    if kind == "installation":
        items = []
        for i in range(1, ITEM_ROWS + 1):
            model, qty = form.get(f"item_model_{i}", "").strip(), form.get(f"item_qty_{i}", "").strip()
            if model or qty:
                items.append({"product_model": model, "quantity": qty})
        body["order_items"] = items
    return body


def _input_name(field: str) -> str:
    """Which web-form input an API field error belongs to."""
    parts = field.split(".")
    if parts[0] in ("customer", "product") and len(parts) > 1:
        return f"{parts[0]}_{'serial' if parts[1] in ('serial', 'serial_number') else parts[1]}"
    if parts[0] == "order_items" and len(parts) > 2 and parts[1].isdigit():
        return f"item_{'model' if parts[2] == 'product_model' else 'qty'}_{int(parts[1]) + 1}"
    if parts[0] == "order_items":
        return "item_model_1"
    if field in ("question", "description", "fault_description"):
        return "text"
    return parts[0]


INPUT_LABELS = {
    "kind": "服务类型 Service", "customer_name": "姓名 Name", "customer_phone": "电话 Phone",
    "customer_email": "电子邮件 E-mail", "customer_address": "地址 Address", "region": "所在区域 Region",
    "product_model": "型号 Model", "product_serial": "序列号 Serial number", "text": "问题描述 Description",
    "occurred_at": "发生时间 When it happened", "location": "发生地点 Where it happened",
    "fault_type": "故障类型 Fault type", "urgency": "紧急程度 Urgency", "order_no": "订单号 Order number",
    "installation_site": "安装位置 Installation site",
}


def _label(field: str) -> str:
    name = _input_name(field)
    if name.startswith("item_"):
        _, what, row = name.split("_")
        return f"{'商品型号 Product model' if what == 'model' else '数量 Quantity'} {row}"
    return INPUT_LABELS.get(name, field)


def _intake_page(values: Mapping[str, str], errors: list[dict[str, str]], status: int = 200,
                 message: str = "") -> tuple[str, int]:
    by_input: dict[str, str] = {}
    for e in errors:
        by_input.setdefault(_input_name(e["field"]), e["message"])
    errors = [{**e, "label": _label(e["field"])} for e in errors]
    return render_template("public/intake.html", values=values, errors=errors, field_errors=by_input,
                           kinds=KIND_TITLES, fault_types=FAULT_TYPES, urgencies=URGENCIES, item_rows=ITEM_ROWS,
                           message=message), status


@public.get("/intake")
def intake_form() -> tuple[str, int]:
    kind = request.args.get("kind", "")
    return _intake_page({"kind": kind if kind in KINDS else "inquiry", "urgency": "normal"}, [])


@public.post("/intake")
def intake_submit() -> tuple[str, int]:
    check_csrf()  # the form carries the token of the visitor's session, like every staff form
    values = request.form.to_dict()
    wait = _limiter().hit(_client())
    if wait:
        return _intake_page(values, [], 429, _too_many(wait))
    try:
        started = start_intake(_form_body(values), "web_form")
    except InvalidInput as exc:
        return _intake_page(values, exc.errors, 422, "请检查标出的内容。 Please check the marked fields.")
    except Unavailable as exc:
        return _intake_page(values, [], 503, exc.message)
    return render_template("public/intake_done.html", started=started, kind_title=KIND_TITLES[started["kind"]]), 201


# --- surveys --------------------------------------------------------------------------------

SURVEY_PAGES = {  # state -> (HTTP status, template heading zh, en)
    "invalid": (404, "链接无效", "This survey link is not valid"),
    "expired": (410, "问卷已过期", "This survey has expired"),
    "answered": (409, "问卷已提交", "This survey has already been answered"),
}


def _survey_state_page(view: surveys.SurveyView, status: int | None = None) -> tuple[str, int]:
    code, zh, en = SURVEY_PAGES[view.state]
    return render_template("public/survey_state.html", view=view, heading_zh=zh, heading_en=en), status or code


def _no_store(page: tuple[str, int]) -> Response:
    res = current_app.make_response(page)
    res.headers["Cache-Control"] = "no-store"
    return res


@public.get("/survey/<token>")
def survey_form(token: str) -> Response:
    view = surveys.find_survey(services().db, token)
    if view.state != "open":
        # Looking at an answered survey again is not an error; sending it again is (409 on POST).
        return _no_store(_survey_state_page(view, 200 if view.state == "answered" else None))
    return _no_store((render_template("public/survey.html", view=view, values={}, errors={},
                                      kind_title=surveys.KIND_TITLES.get(view.kind, ("服务", "service")),
                                      expires=surveys.local_time(view.expires_at) if view.expires_at else ""), 200))


@public.post("/survey/<token>")
def survey_answer(token: str) -> Response:
    svc = services()
    view = surveys.find_survey(svc.db, token)
    if view.state != "open":
        return _no_store(_survey_state_page(view))
    check_csrf()
    score, comment, errors = surveys.validate_answer(request.form.get("score"), request.form.get("comment"))
    if errors or score is None:
        return _no_store((render_template(
            "public/survey.html", view=view, values=request.form, errors={e["field"]: e["message"] for e in errors},
            kind_title=surveys.KIND_TITLES.get(view.kind, ("服务", "service")),
            expires=surveys.local_time(view.expires_at) if view.expires_at else ""), 422))
    result = surveys.answer_survey(svc.db, svc.engine, token, score, comment)
    if not result.recorded:
        return _no_store(_survey_state_page(result))
    return _no_store((render_template("public/survey_thanks.html", view=result), 200))


# --- published standards (seed 003) ---------------------------------------------------------

# Seed 003 asks for the service process and the fee standard to be published; it names no
# amounts, so these are defaults of ours. A service department publishes its own table with
# AFTERCARE_STANDARDS_FILE (JSON: {"fees": [{"item", "in_warranty", "out_of_warranty", "note"}]}).
DEFAULT_FEES: list[dict[str, str]] = [
    {"item": "上门检测 On-site inspection", "in_warranty": "免费 Free",
     "out_of_warranty": "50 元/次 CNY 50 per visit", "note": "维修后免收 Waived when the repair is done"},
    {"item": "小修（更换易损件、调整）Minor repair", "in_warranty": "免费 Free",
     "out_of_warranty": "80 元 CNY 80", "note": "不含配件 Parts extra"},
    {"item": "中修（更换主要部件）Medium repair", "in_warranty": "免费 Free",
     "out_of_warranty": "150 元 CNY 150", "note": "不含配件 Parts extra"},
    {"item": "大修（制冷系统、主板）Major repair", "in_warranty": "免费 Free",
     "out_of_warranty": "250 元 CNY 250", "note": "不含配件 Parts extra"},
    {"item": "配件 Parts", "in_warranty": "免费 Free",
     "out_of_warranty": "按公布的配件价目表 As in the published parts price list",
     "note": "旧件可交还客户 Replaced parts are returned on request"},
    {"item": "标准安装 Standard installation", "in_warranty": "随机免费 Included with purchase",
     "out_of_warranty": "—", "note": "含 3 米标准管路 Includes 3 m of standard piping"},
    {"item": "加长管路 Extra piping", "in_warranty": "60 元/米 CNY 60 per metre",
     "out_of_warranty": "60 元/米 CNY 60 per metre", "note": "按实际用量 By actual length"},
    {"item": "远程上门（30 公里以外）Travel beyond 30 km", "in_warranty": "免费 Free",
     "out_of_warranty": "2 元/公里 CNY 2 per km", "note": "按单程计 One way"},
]


def load_fees() -> list[dict[str, str]]:
    path = os.environ.get("AFTERCARE_STANDARDS_FILE")
    if not path:
        return DEFAULT_FEES
    fees = json.loads(Path(path).read_text(encoding="utf-8")).get("fees")
    if not isinstance(fees, list):
        raise ValueError(f"{path}: expected {{\"fees\": [...]}}")
    return [{k: str(v) for k, v in fee.items()} for fee in fees if isinstance(fee, dict)]


@public.get("/standards")
def standards() -> str:
    return render_template("public/standards.html", fees=load_fees())


# --- wiring ---------------------------------------------------------------------------------


@public.context_processor
def public_layout() -> dict[str, Any]:
    # The staff layout needs the language switch and sign-in pages; without them (an app
    # built with the API only) the public pages use their own small layout.
    ready = {"i18n", "auth"} <= set(current_app.blueprints) and "csrf_token" in current_app.jinja_env.globals
    return {"public_layout": "layout.html" if ready else "public/base.html"}


def init_public(app: Flask) -> None:
    """Register the public pages, the intake rate limit and the survey-link signing key."""
    limit = int(app.config.get("INTAKE_RATE_LIMIT") or os.environ.get("AFTERCARE_INTAKE_RATE_LIMIT") or 10)
    app.extensions["aftercare.intake_limiter"] = RateLimiter(limit, 60.0)
    surveys.configure_signing(str(app.config["SECRET_KEY"]))
    app.register_blueprint(public)
