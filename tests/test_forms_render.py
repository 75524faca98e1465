"""Task forms rendered from JSON Schema and read back: names, widgets, types, errors, values kept."""

from __future__ import annotations

import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from werkzeug.datastructures import MultiDict

from engine.forms import field_errors
from web.forms_render import localize_message, localized_title, parse_form, render_form

ROOT = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")

SCHEMA = {
    "title": "维修 Repair",
    "type": "object",
    "required": ["summary", "customer", "severity", "visit", "fixed", "parts"],
    "properties": {
        "summary": {"type": "string", "title": "摘要 Summary", "description": "一句话 One line", "minLength": 2},
        "notes": {"type": "string", "title": "备注 Notes", "maxLength": 2000},
        "story": {"type": "string", "format": "textarea"},
        "email": {"type": "string", "format": "email", "title": "邮箱 E-mail"},
        "count": {"type": "integer", "minimum": 1},
        "fee": {"type": "number"},
        "fixed": {"type": "boolean", "title": "已修复 Fixed"},
        "apologised": {"type": "boolean"},
        "severity": {"type": "string", "enum": ["low", "high"]},
        "channel": {"type": "string", "x-widget": "radio",
                    "oneOf": [{"const": "phone", "title": "电话 Phone"}, {"const": "web", "title": "网站 Web"}]},
        "level": {"type": "integer", "oneOf": [{"const": 1, "title": "一级 Level 1"}, {"const": 2, "title": "二级"}]},
        "visit": {"type": "string", "format": "date"},
        "arrived_at": {"type": "string", "format": "date-time"},
        "customer": {"type": "object", "title": "客户 Customer", "required": ["name", "phone"],
                     "properties": {"name": {"type": "string"}, "phone": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["noise", "leak"]}},
        "models": {"type": "array", "items": {"type": "string"}},
        "parts": {"type": "array", "title": "零件 Parts", "items": {
            "type": "object", "required": ["part", "quantity"],
            "properties": {"part": {"type": "string", "title": "零件 Part"}, "quantity": {"type": "integer"},
                           "warranty": {"type": "boolean"}}}},
    },
}


def names_in(html: str) -> set[str]:
    return set(re.findall(r'name="([^"]+)"', html))


def control(html: str, name: str) -> str:
    m = re.search(rf'<(input|select|textarea)[^>]*name="{re.escape(name)}"[^>]*>', html)
    assert m, f"no control named {name}"
    return m.group(0)


def test_inputs_are_named_after_the_schema_property_paths() -> None:
    html = str(render_form(SCHEMA, {"parts": [{"part": "fan", "quantity": 2}]}))
    assert {"summary", "notes", "story", "email", "count", "fee", "fixed", "apologised", "severity", "channel",
            "level", "visit", "arrived_at", "customer.name", "customer.phone", "tags", "models", "parts.0.part",
            "parts.0.quantity", "parts.0.warranty", "parts.__index__.part"} <= names_in(html)
    assert 'value="fan"' in control(html, "parts.0.part")


def test_widgets_follow_type_and_format() -> None:
    html = str(render_form(SCHEMA, {}))
    assert control(html, "summary").startswith('<input type="text"')
    assert control(html, "notes").startswith("<textarea")  # maxLength > 200
    assert control(html, "story").startswith("<textarea")  # format: textarea
    assert 'type="email"' in control(html, "email")
    assert 'type="number"' in control(html, "count") and 'step="1"' in control(html, "count")
    assert 'step="any"' in control(html, "fee")
    assert 'type="date"' in control(html, "visit")
    assert 'type="datetime-local"' in control(html, "arrived_at")
    assert control(html, "severity").startswith("<select")
    assert 'type="radio"' in control(html, "channel")
    assert 'type="radio"' in control(html, "fixed")  # a required yes/no is asked, not defaulted
    assert re.search(r'<input type="checkbox"[^>]*name="apologised"', html)  # an optional yes/no is a tick box
    assert re.search(r'<input type="checkbox"[^>]*name="tags"[^>]*value="leak"', html)
    assert "电话 Phone" in html and "一级 Level 1" in html
    assert html.count('class="required"') >= 6  # required marks, including on nested fields and row columns
    assert "一句话 One line" in html  # descriptions


def test_titles_show_the_part_in_the_page_language() -> None:
    assert localized_title("客户 Customer", "en") == "Customer"
    assert localized_title("客户 Customer", "zh") == "客户"
    assert localized_title("收费（元） Fee charged (CNY)", "en") == "Fee charged (CNY)"
    assert localized_title("SLA 策略 SLA policy", "zh") == "SLA 策略"
    assert localized_title("Only English", "zh") == "Only English"
    html = str(render_form(SCHEMA, {}, language="en"))
    assert ">Summary" in html and "摘要" not in html


def test_posted_form_becomes_typed_json() -> None:
    form = MultiDict([
        ("summary", " Noisy fan "), ("count", "3"), ("fee", "12.5"), ("fixed", "true"),
        ("apologised", "false"), ("apologised", "true"), ("severity", "high"), ("channel", "web"), ("level", "2"),
        ("visit", "2026-11-30"), ("arrived_at", "2026-11-30T09:15"),
        ("customer.name", "王芳"), ("customer.phone", "13800001111"),
        ("tags", ""), ("tags", "leak"), ("models", "KFR-35\n\n KFR-50 "),
        ("parts.0.part", "fan"), ("parts.0.quantity", "2"), ("parts.0.warranty", "false"),
        ("parts.3.part", ""), ("parts.3.quantity", ""), ("parts.3.warranty", "false"),  # a blank row
        ("parts.7.part", "belt"), ("parts.7.quantity", "1"), ("parts.7.warranty", "false"),
        ("parts.7.warranty", "true"), ("csrf_token", "x"), ("action", "complete"), ("email", ""),
    ])
    data = parse_form(SCHEMA, form, tz=SHANGHAI)
    assert data == {
        "summary": "Noisy fan", "count": 3, "fee": 12.5, "fixed": True, "apologised": True, "severity": "high",
        "channel": "web", "level": 2, "visit": "2026-11-30", "arrived_at": "2026-11-30T09:15:00+08:00",
        "customer": {"name": "王芳", "phone": "13800001111"}, "tags": ["leak"], "models": ["KFR-35", "KFR-50"],
        "parts": [{"part": "fan", "quantity": 2, "warranty": False},
                  {"part": "belt", "quantity": 1, "warranty": True}],
    }
    assert field_errors(json.dumps(SCHEMA), data) == []


def test_typed_times_keep_their_standard_offset_in_the_zone_the_staff_pages_use() -> None:
    """The staff pages pass Flask-Babel's zone (a pytz zone, whose first offset is Shanghai's local
    mean time, +08:06): a typed 09:00 is stored as 09:00+08:00 and shows as 09:00 again."""
    from flask import Flask
    from flask_babel import Babel, get_timezone

    app = Flask(__name__)
    Babel(app, default_timezone="Asia/Shanghai")
    with app.test_request_context():
        zone = get_timezone()
    data = parse_form(SCHEMA, MultiDict([("arrived_at", "2026-12-08T09:00")]), tz=zone)
    assert data["arrived_at"] == "2026-12-08T09:00:00+08:00"
    html = str(render_form(SCHEMA, data, tz=zone))
    assert 'value="2026-12-08T09:00"' in control(html, "arrived_at")


def test_what_cannot_be_converted_is_kept_as_typed_and_named_by_validation() -> None:
    form = MultiDict([("summary", "x"), ("count", "three"), ("email", "not-an-email"), ("parts.0.part", "fan"),
                      ("parts.0.quantity", "two")])
    data = parse_form(SCHEMA, form, tz=SHANGHAI)
    assert data["count"] == "three" and data["parts"] == [{"part": "fan", "quantity": "two"}]
    errors = field_errors(json.dumps(SCHEMA), data)
    fields = {e["field"] for e in errors}
    assert {"summary", "count", "email", "parts.0.quantity", "customer.name", "severity", "visit", "fixed"} <= fields
    html = str(render_form(SCHEMA, data, errors, use_defaults=False))
    # every error sits beside its input, which keeps what was typed
    for name in ("summary", "count", "email", "parts.0.quantity"):
        assert f'id="f-{name.replace(".", "-")}-error"' in html, name
        assert 'aria-invalid="true"' in control(html, name)
    assert 'value="three"' in control(html, "count")
    assert 'value="not-an-email"' in control(html, "email")
    assert 'value="two"' in control(html, "parts.0.quantity")
    assert 'id="error-summary"' in html and 'href="#f-count"' in html


def test_error_messages_are_translated_into_plain_words() -> None:
    assert localize_message("this field is required") == "This field is required."
    assert localize_message("'abc' is not of type 'integer'") == "Enter a whole number."
    assert localize_message("'x' is not a 'email'") == "Not a valid e-mail address."
    assert localize_message("0 is less than the minimum of 1") == "Must be at least 1."
    assert localize_message("something unusual") == "something unusual"


def test_values_are_escaped() -> None:
    html = str(render_form(SCHEMA, {"summary": '"><script>alert(1)</script>', "notes": "</textarea><b>x"}))
    assert "<script>" not in html and "</textarea><b>" not in html


def test_date_time_values_are_shown_in_the_staff_time_zone() -> None:
    html = str(render_form(SCHEMA, {"arrived_at": "2026-11-30T01:15:00+00:00"}, tz=SHANGHAI))
    assert 'value="2026-11-30T09:15"' in control(html, "arrived_at")


def test_defaults_fill_a_new_form_but_not_a_resubmitted_one() -> None:
    schema = {"type": "object", "properties": {"fee": {"type": "number", "default": 0}}}
    assert 'value="0"' in control(str(render_form(schema, {})), "fee")
    assert 'value=""' in control(str(render_form(schema, {}, use_defaults=False)), "fee")


def test_read_only_forms_have_no_row_buttons_and_disabled_inputs() -> None:
    html = str(render_form(SCHEMA, {"parts": [{"part": "fan", "quantity": 1}]}, readonly=True))
    assert "data-add-row" not in html and "data-remove-row" not in html
    assert " disabled" in control(html, "summary")


@pytest.mark.parametrize("path", sorted((ROOT / "forms").glob("*.json")), ids=lambda p: p.name)
def test_every_bundled_form_renders_and_reads_back(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    html = str(render_form(schema, {}, language="zh"))
    assert "<" in html
    data = parse_form(schema, MultiDict(), tz=SHANGHAI)
    assert isinstance(data, dict)
    # whatever validation says about an empty form names fields that exist on the page
    for error in field_errors(json.dumps(schema), data):
        top = error["field"].split(".")[0]
        assert top in schema.get("properties", {}) or top == "(form)", error
