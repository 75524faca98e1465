"""Task forms on the server: a JSON Schema rendered as HTML inputs, and the posted form read back.

Inputs are named after the JSON Schema property path (``summary``, ``customer.phone``,
``parts.0.quantity``), which is also how the engine names fields in ``FormInvalid`` errors,
so an error lands beside the input it is about. Parsing keeps what cannot be converted (a
word typed into a number field) as text, so the engine's validation names the problem and the
page shows the value as it was typed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from markupsafe import Markup, escape

INDEX = "__index__"  # placeholder in the add-row template, replaced by forms.js
TEXTAREA_FROM = 200  # strings allowed to be longer than this get a textarea
_CJK = r"\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_BILINGUAL = re.compile(rf"^(?P<zh>.*[{_CJK}][^A-Za-z{_CJK}]*?)\s+(?P<en>[A-Za-z0-9(][^{_CJK}]*)$", re.S)


# --- schema helpers ---------------------------------------------------------------------------


def schema_type(schema: Mapping[str, Any]) -> str:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t is None:
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        consts = [o.get("const") for o in schema.get("oneOf", []) if isinstance(o, Mapping)]
        if consts and all(isinstance(c, bool) for c in consts):
            return "boolean"
        return "string"
    return str(t)


def options(schema: Mapping[str, Any]) -> list[tuple[Any, str]] | None:
    """(value, label) pairs of an ``enum`` or a ``oneOf`` made of ``const``/``title``."""
    if isinstance(schema.get("enum"), list):
        names = schema.get("x-enumNames") or schema.get("enumNames") or []
        return [(v, str(names[i]) if i < len(names) else _value_label(v)) for i, v in enumerate(schema["enum"])]
    one_of = schema.get("oneOf")
    if isinstance(one_of, list) and one_of and all(isinstance(o, Mapping) and "const" in o for o in one_of):
        return [(o["const"], str(o.get("title") or _value_label(o["const"]))) for o in one_of]
    return None


def _value_label(value: Any) -> str:
    if value is True:
        return _("Yes")
    if value is False:
        return _("No")
    return "" if value is None else str(value)


def option_key(value: Any) -> str:
    """How an option's value travels in the form (strings as they are, others as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def localized_title(title: str, language: str | None) -> str:
    """Bilingual titles ("姓名 Name") show the part in the page's language."""
    m = _BILINGUAL.match(title.strip()) if language else None
    if not m:
        return title
    return m.group("en").strip() if language == "en" else m.group("zh").strip()


def field_id(path: str) -> str:
    return "f-" + re.sub(r"[^A-Za-z0-9_-]", "-", path)


# --- errors -----------------------------------------------------------------------------------

_TYPE_WORDS = {"integer": "a whole number", "number": "a number", "boolean": "yes or no", "string": "text",
               "array": "a list", "object": "a group of fields"}


def localize_message(message: str) -> str:
    """Common JSON Schema messages in the page's language; anything else as the engine said it."""
    if message == "this field is required":
        return _("This field is required.")
    m = re.search(r"is not a '([\w-]+)'$", message)
    if m:
        return _("Not a valid %(format)s.", format=_format_word(m.group(1)))
    m = re.search(r"is not of type '(\w+)'", message)
    if m:
        kind = m.group(1)
        return {"integer": _("Enter a whole number."), "number": _("Enter a number."),
                "boolean": _("Choose yes or no."), "array": _("Enter a list."),
                "object": _("Fill in this group of fields.")}.get(kind, _("Enter text."))
    m = re.search(r"is less than the minimum of (\S+)$", message)
    if m:
        return _("Must be at least %(n)s.", n=m.group(1))
    m = re.search(r"is greater than the maximum of (\S+)$", message)
    if m:
        return _("Must be at most %(n)s.", n=m.group(1))
    if message.endswith("should be non-empty") or message.endswith("is too short"):
        return _("Too short.") if not message.startswith("[") else _("Add at least one entry.")
    if message.endswith("is too long") or "is expected to be empty" in message:
        return _("Too long.")
    if "does not match" in message:
        return _("Not in the expected format.")
    if "is not one of" in message or "is not valid under any of the given schemas" in message:
        return _("Choose one of the options.")
    if message.startswith("Additional properties are not allowed"):
        return _("Contains fields that this form does not accept.")
    if message.startswith("shown masked:"):
        return _("Shown masked: leave it as it is or type the whole new value.")
    if message == "contains a NUL (0x00) character":
        return _("Contains a character that is not allowed (NUL).")
    return message


def _format_word(fmt: str) -> str:
    return {"email": _("e-mail address"), "date": _("date"), "date-time": _("date and time"),
            "uri": _("web address"), "time": _("time")}.get(fmt, fmt)


def errors_by_field(errors: Iterable[Mapping[str, Any]] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in errors or []:
        out.setdefault(str(e.get("field") or "(form)"), []).append(localize_message(str(e.get("message") or "")))
    return out


# --- rendering --------------------------------------------------------------------------------


@dataclass
class _Render:
    errors: dict[str, list[str]]
    language: str | None
    tz: dt.tzinfo
    readonly: bool
    use_defaults: bool
    placed: set[str] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)  # field path -> its title, for the error summary

    def title(self, schema: Mapping[str, Any], name: str) -> str:
        return localized_title(str(schema.get("title") or name), self.language)


def render_form(schema: Mapping[str, Any] | None, values: Mapping[str, Any] | None = None,
                errors: Iterable[Mapping[str, Any]] | None = None, *, language: str | None = None,
                tz: dt.tzinfo | None = None, readonly: bool = False, use_defaults: bool = True) -> Markup:
    """The inputs of a form (without the <form> element and buttons), errors beside fields."""
    ctx = _Render(errors_by_field(errors), language, _zone(tz), readonly, use_defaults)
    schema = schema or {"type": "object", "properties": {}}
    body: list[str] = []
    if schema.get("description"):
        body.append(f'<p class="form-description">{escape(_desc(schema, ctx))}</p>')
    body.append(_object_fields(ctx, schema, [], values or {}))
    if not schema.get("properties"):
        nothing = _("This step has no form fields.")
        body.append(f'<p class="muted">{escape(nothing)}</p>')
    return Markup(_summary(ctx) + "".join(body))


def _desc(schema: Mapping[str, Any], ctx: _Render) -> str:
    return localized_title(str(schema.get("description") or ""), ctx.language)


def _summary(ctx: _Render) -> str:
    if not ctx.errors:
        return ""
    items = []
    for path, messages in ctx.errors.items():
        label = "" if path == "(form)" else f"{ctx.labels.get(path, path)}: "
        for m in messages:
            if path == "(form)" or path not in ctx.placed:
                items.append(f"<li>{escape(label)}{escape(m)}</li>")
            else:
                items.append(f'<li><a href="#{field_id(path)}">{escape(label)}{escape(m)}</a></li>')
    heading = escape(_("Please correct the marked fields."))
    return (f'<div class="error-summary" role="alert" tabindex="-1" id="error-summary"><p><strong>{heading}</strong>'
            f'</p><ul>{"".join(items)}</ul></div>')


def _object_fields(ctx: _Render, schema: Mapping[str, Any], path: list[str], values: Mapping[str, Any]) -> str:
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    out = []
    for name, sub in props.items():
        if not isinstance(sub, Mapping):
            continue
        out.append(_property(ctx, sub, [*path, name], values.get(name, _MISSING), name in required))
    return "".join(out)


class _Missing:
    pass


_MISSING: Any = _Missing()


def _property(ctx: _Render, schema: Mapping[str, Any], path: list[str], value: Any, required: bool) -> str:
    if value is _MISSING:
        value = schema.get("default") if ctx.use_defaults else None
    t = schema_type(schema)
    name = ".".join(path)
    if t == "object":
        return _fieldset(ctx, schema, path, value if isinstance(value, Mapping) else {}, required)
    if t == "array":
        items = schema.get("items") if isinstance(schema.get("items"), Mapping) else {}
        if schema_type(items) == "object":
            return _rows(ctx, schema, items, path, value if isinstance(value, list) else [], required)
        if options(items) is not None:
            return _wrap(ctx, schema, name, required, _checkboxes(ctx, items, name, value), group=True)
        return _wrap(ctx, schema, name, required, _lines(ctx, schema, name, value))
    opts = options(schema)
    if opts is not None:
        if schema.get("x-widget") == "radio" or (t == "boolean"):
            return _wrap(ctx, schema, name, required, _radios(ctx, opts, name, value), group=True)
        return _wrap(ctx, schema, name, required, _select(ctx, opts, name, value, required))
    if t == "boolean":
        if required:
            opts = [(True, _("Yes")), (False, _("No"))]
            return _wrap(ctx, schema, name, required, _radios(ctx, opts, name, value), group=True)
        return _checkbox(ctx, schema, name, value)
    return _wrap(ctx, schema, name, required, _input(ctx, schema, t, name, value))


def _attrs(ctx: _Render, name: str, extra: Mapping[str, Any] | None = None, with_id: bool = True) -> str:
    parts = [f'name="{escape(name)}"']
    if with_id:
        parts.insert(0, f'id="{field_id(name)}"')
    if name in ctx.errors:
        parts.append('aria-invalid="true"')
        parts.append(f'aria-describedby="{field_id(name)}-error"')
    if ctx.readonly:
        parts.append("disabled")
    for k, v in (extra or {}).items():
        if v is True:
            parts.append(k)
        elif v is not None and v is not False:
            parts.append(f'{k}="{escape(str(v))}"')
    return " ".join(parts)


def _wrap(ctx: _Render, schema: Mapping[str, Any], name: str, required: bool, control: str,
          group: bool = False) -> str:
    ctx.placed.add(name)
    title = escape(ctx.title(schema, name.rsplit(".", 1)[-1]))
    ctx.labels[name] = title.unescape()
    word = escape(_("required"))
    mark = (f' <span class="required" title="{word}" aria-hidden="true">*</span>'
            f'<span class="sr-only"> ({word})</span>') if required else ""
    label = (f'<legend class="field-label">{title}{mark}</legend>' if group
             else f'<label class="field-label" for="{field_id(name)}">{title}{mark}</label>')
    desc = (f'<p class="field-help">{escape(_desc(schema, ctx))}</p>' if schema.get("description") else "")
    cls = "field" + (" has-error" if name in ctx.errors else "")
    tag = "fieldset" if group else "div"
    return (f'<{tag} class="{cls}" data-field="{escape(name)}">{label}{desc}{control}'
            f'{_field_errors(ctx, name)}</{tag}>')


def _field_errors(ctx: _Render, name: str) -> str:
    messages = ctx.errors.get(name)
    if not messages:
        return ""
    ctx.placed.add(name)
    text = " ".join(str(escape(m)) for m in messages)
    return f'<p class="field-error" id="{field_id(name)}-error">{text}</p>'


def _text(value: Any) -> str:
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _local_datetime(value: Any, tz: dt.tzinfo) -> str:
    text = _text(value)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(tz)
    return parsed.strftime("%Y-%m-%dT%H:%M")


def _input(ctx: _Render, schema: Mapping[str, Any], t: str, name: str, value: Any) -> str:
    fmt = schema.get("format")
    max_len = schema.get("maxLength")
    extra: dict[str, Any] = {}
    if t == "string" and (fmt == "textarea" or (isinstance(max_len, int) and max_len > TEXTAREA_FROM)):
        if isinstance(max_len, int):
            extra["maxlength"] = max_len
        rows = 5 if (max_len or 0) > 1000 or fmt == "textarea" else 3
        return f'<textarea {_attrs(ctx, name, extra)} rows="{rows}">{escape(_text(value))}</textarea>'
    if t in ("integer", "number"):
        kind = "number"
        extra.update({"step": "1" if t == "integer" else "any", "min": schema.get("minimum"),
                      "max": schema.get("maximum"), "inputmode": "numeric" if t == "integer" else "decimal"})
    elif fmt == "date":
        kind = "date"
    elif fmt == "date-time":
        kind = "datetime-local"
        value = _local_datetime(value, ctx.tz) if value not in (None, "") else value
    elif fmt == "time":
        kind = "time"
    elif fmt == "email":
        kind = "email"
        extra["autocomplete"] = "off"
    elif fmt in ("uri", "url"):
        kind = "url"
    elif fmt in ("tel", "phone") or name.rsplit(".", 1)[-1].endswith("phone"):
        kind = "tel"
    else:
        kind = "text"
    if isinstance(max_len, int) and kind in ("text", "email", "tel", "url"):
        extra["maxlength"] = max_len
    if schema.get("readOnly"):
        extra["readonly"] = True
    return f'<input type="{kind}" {_attrs(ctx, name, extra)} value="{escape(_text(value))}">'


def _select(ctx: _Render, opts: list[tuple[Any, str]], name: str, value: Any, required: bool) -> str:
    chosen = option_key(value) if value not in (None, _MISSING) else None
    choose = _("— choose —")
    items = [f'<option value="">{escape(choose)}</option>']
    for v, label in opts:
        key = option_key(v)
        sel = " selected" if key == chosen else ""
        items.append(f'<option value="{escape(key)}"{sel}>{escape(localized_title(label, ctx.language))}</option>')
    if chosen is not None and chosen not in {option_key(v) for v, _l in opts}:
        items.append(f'<option value="{escape(chosen)}" selected>{escape(chosen)}</option>')
    return f'<select {_attrs(ctx, name)}>{"".join(items)}</select>'


def _radios(ctx: _Render, opts: list[tuple[Any, str]], name: str, value: Any) -> str:
    chosen = option_key(value) if value not in (None, _MISSING) else None
    out = []
    for i, (v, label) in enumerate(opts):
        key = option_key(v)
        rid = f"{field_id(name)}-{i}" if i else field_id(name)
        checked = " checked" if key == chosen else ""
        attrs = _attrs(ctx, name, {"value": key}, with_id=False)
        out.append(f'<label class="choice" for="{rid}"><input type="radio" id="{rid}" {attrs}{checked}> '
                   f'{escape(localized_title(label, ctx.language))}</label>')
    return f'<div class="choices">{"".join(out)}</div>'


def _checkboxes(ctx: _Render, items: Mapping[str, Any], name: str, value: Any) -> str:
    chosen = {option_key(v) for v in value} if isinstance(value, list) else set()
    # The empty hidden value makes "none ticked" arrive as an empty list rather than nothing.
    out = [f'<input type="hidden" name="{escape(name)}" value="">']
    for i, (v, label) in enumerate(options(items) or []):
        key = option_key(v)
        cid = f"{field_id(name)}-{i}" if i else field_id(name)
        checked = " checked" if key in chosen else ""
        attrs = _attrs(ctx, name, {"value": key}, with_id=False)
        out.append(f'<label class="choice" for="{cid}"><input type="checkbox" id="{cid}" {attrs}{checked}> '
                   f'{escape(localized_title(label, ctx.language))}</label>')
    return f'<div class="choices">{"".join(out)}</div>'


def _checkbox(ctx: _Render, schema: Mapping[str, Any], name: str, value: Any) -> str:
    ctx.placed.add(name)
    checked = " checked" if value is True else ""
    title = escape(ctx.title(schema, name.rsplit(".", 1)[-1]))
    ctx.labels[name] = title.unescape()
    desc = f'<p class="field-help">{escape(_desc(schema, ctx))}</p>' if schema.get("description") else ""
    cls = "field field-checkbox" + (" has-error" if name in ctx.errors else "")
    return (f'<div class="{cls}" data-field="{escape(name)}"><input type="hidden" name="{escape(name)}" value="false">'
            f'<label class="choice" for="{field_id(name)}">'
            f'<input type="checkbox" {_attrs(ctx, name, {"value": "true"})}{checked}> {title}</label>'
            f'{desc}{_field_errors(ctx, name)}</div>')


def _lines(ctx: _Render, schema: Mapping[str, Any], name: str, value: Any) -> str:
    text = "\n".join(_text(v) for v in value) if isinstance(value, list) else _text(value)
    hint = escape(_("One entry per line."))
    return (f'<textarea {_attrs(ctx, name, {"rows": 3})}>{escape(text)}</textarea>'
            f'<p class="field-help">{hint}</p>')


def _fieldset(ctx: _Render, schema: Mapping[str, Any], path: list[str], value: Mapping[str, Any],
              required: bool) -> str:
    name = ".".join(path)
    ctx.placed.add(name)
    title = escape(ctx.title(schema, path[-1]))
    ctx.labels[name] = title.unescape()
    mark = ' <span class="required" aria-hidden="true">*</span>' if required else ""
    desc = f'<p class="field-help">{escape(_desc(schema, ctx))}</p>' if schema.get("description") else ""
    return (f'<fieldset class="group" id="{field_id(name)}" data-field="{escape(name)}"><legend>{title}{mark}</legend>'
            f'{desc}{_field_errors(ctx, name)}{_object_fields(ctx, schema, path, value)}</fieldset>')


def _rows(ctx: _Render, schema: Mapping[str, Any], items: Mapping[str, Any], path: list[str],
          value: list[Any], required: bool) -> str:
    name = ".".join(path)
    ctx.placed.add(name)
    props = {k: v for k, v in (items.get("properties") or {}).items() if isinstance(v, Mapping)}
    item_required = set(items.get("required") or [])
    title = escape(ctx.title(schema, path[-1]))
    ctx.labels[name] = title.unescape()
    mark = ' <span class="required" aria-hidden="true">*</span>' if required else ""
    star = ' <span class="required" aria-hidden="true">*</span>'
    heads = "".join(f'<th scope="col">{escape(ctx.title(s, k))}{star if k in item_required else ""}</th>'
                    for k, s in props.items())
    remove = _("Remove")
    action_head = "" if ctx.readonly else f'<th scope="col"><span class="sr-only">{escape(remove)}</span></th>'
    count = max(len(value), int(schema.get("minItems") or 0), 0 if ctx.readonly else 1)
    body = "".join(_row(ctx, props, path, str(i), value[i] if i < len(value) and isinstance(value[i], Mapping)
                        else {}) for i in range(count))
    template = "" if ctx.readonly else (
        f'<template id="{field_id(name)}-template">{_row(ctx, props, path, INDEX, {})}</template>')
    add_row = _("Add row")
    add = "" if ctx.readonly else (
        f'<button type="button" class="btn btn-small" data-add-row="{field_id(name)}">{escape(add_row)}</button>')
    desc = f'<p class="field-help">{escape(_desc(schema, ctx))}</p>' if schema.get("description") else ""
    cls = "group rows" + (" has-error" if name in ctx.errors else "")
    return (f'<fieldset class="{cls}" id="{field_id(name)}" data-field="{escape(name)}" data-next-index="{count}">'
            f'<legend>{title}{mark}</legend>{desc}{_field_errors(ctx, name)}'
            f'<table class="rows-table"><thead><tr>{heads}{action_head}</tr></thead><tbody>{body}</tbody></table>'
            f'{template}{add}</fieldset>')


def _row(ctx: _Render, props: Mapping[str, Mapping[str, Any]], path: list[str], index: str,
         value: Mapping[str, Any]) -> str:
    cells = []
    for key, sub in props.items():
        cell_path = [*path, index, key]
        name = ".".join(cell_path)
        v = value.get(key, _MISSING)
        if v is _MISSING:
            v = sub.get("default") if ctx.use_defaults else None
        t = schema_type(sub)
        opts = options(sub)
        label = escape(ctx.title(sub, key))
        if opts is not None:
            control = _select(ctx, opts, name, v, False)
        elif t == "boolean":
            checked = " checked" if v is True else ""
            control = (f'<input type="hidden" name="{escape(name)}" value="false">'
                       f'<input type="checkbox" {_attrs(ctx, name, {"value": "true"})}{checked}>')
        elif t in ("object", "array"):
            control = f'<input type="text" {_attrs(ctx, name)} value="{escape(_text(v))}" readonly>'
        else:
            control = _input(ctx, sub, t, name, v)
        control = control.replace(f'id="{field_id(name)}"', f'id="{field_id(name)}" aria-label="{label}"', 1)
        if index != INDEX:
            ctx.placed.add(name)
            ctx.labels[name] = f"{ctx.labels.get('.'.join(path), path[-1])} {int(index) + 1}: {label.unescape()}"
        errs = _field_errors(ctx, name) if index != INDEX else ""
        cls = ' class="has-error"' if name in ctx.errors and index != INDEX else ""
        cells.append(f"<td{cls}>{control}{errs}</td>")
    if not ctx.readonly:
        remove_row, remove = _("Remove row"), _("Remove")
        cells.append(f'<td class="row-actions"><button type="button" class="btn btn-small btn-quiet" data-remove-row '
                     f'title="{escape(remove_row)}">{escape(remove)}</button></td>')
    return f'<tr data-row="{index}">{"".join(cells)}</tr>'


# --- parsing ----------------------------------------------------------------------------------


def _zone(tz: dt.tzinfo | None) -> dt.tzinfo:
    """A zone that ``datetime.replace(tzinfo=...)`` may take: Flask-Babel hands out pytz zones,
    whose first offset is local mean time (Shanghai +08:06), so a typed 09:00 would be stored
    six minutes early. pytz zones are swapped for the standard library's zone of the same name."""
    if tz is None:
        return ZoneInfo("Asia/Shanghai")
    name = getattr(tz, "zone", None)  # pytz
    return ZoneInfo(name) if isinstance(name, str) else tz


def parse_form(schema: Mapping[str, Any] | None, form: Any, *, tz: dt.tzinfo | None = None) -> dict[str, Any]:
    """Typed JSON from a posted form (a werkzeug MultiDict), following the schema.

    Empty inputs are left out (so ``required`` applies); rows of a table left blank are dropped.
    """
    schema = schema or {"type": "object", "properties": {}}
    value = _parse_object(schema, [], form, _zone(tz), True)
    return value if isinstance(value, dict) else {}


def _parse_object(schema: Mapping[str, Any], path: list[str], form: Any, tz: dt.tzinfo,
                  required: bool) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    req = set(schema.get("required") or [])
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, Mapping):
            continue
        v = _parse_value(sub, [*path, name], form, tz, name in req)
        if v is not _MISSING:
            out[name] = v
    if not path or required or any(not _blank(v) for v in out.values()):
        return out
    return None


def _blank(v: Any) -> bool:
    return v is None or v is False or v == "" or v == [] or v == {}


def _parse_value(schema: Mapping[str, Any], path: list[str], form: Any, tz: dt.tzinfo, required: bool) -> Any:
    name = ".".join(path)
    t = schema_type(schema)
    if t == "object":
        v = _parse_object(schema, path, form, tz, required)
        return _MISSING if v is None else v
    if t == "array":
        items = schema.get("items") if isinstance(schema.get("items"), Mapping) else {}
        if schema_type(items) == "object":
            return _parse_rows(items, path, form, tz, required)
        opts = options(items)
        if opts is not None:
            if name not in form:
                return _MISSING
            by_key = {option_key(v): v for v, _l in opts}
            return [by_key.get(raw, raw) for raw in form.getlist(name) if raw != ""]
        raw = form.get(name)
        if raw is None:
            return _MISSING
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        if not lines and not required:
            return _MISSING
        return [_scalar(items, schema_type(items), line, tz) for line in lines]
    values = form.getlist(name) if hasattr(form, "getlist") else ([form[name]] if name in form else [])
    if not values:
        return _MISSING
    raw = values[-1]  # a ticked checkbox comes after its hidden "false"
    opts = options(schema)
    if opts is not None:
        if raw == "":
            return _MISSING
        by_key = {option_key(v): v for v, _l in opts}
        return by_key.get(raw, raw)
    return _scalar(schema, t, raw, tz)


def _scalar(schema: Mapping[str, Any], t: str, raw: str, tz: dt.tzinfo) -> Any:
    text = raw.strip()
    if t == "boolean":
        if text in ("true", "on", "1"):
            return True
        if text in ("false", "0"):
            return False
        return _MISSING if text == "" else text
    if text == "":
        return _MISSING
    if t == "integer":
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
                return int(f) if f.is_integer() else text
            except ValueError:
                return text
    if t == "number":
        try:
            return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            return text
    if schema.get("format") == "date-time":
        return _iso_datetime(text, tz)
    return raw if schema.get("format") == "textarea" or t != "string" else text


def _iso_datetime(text: str, tz: dt.tzinfo) -> str:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.isoformat()


def _parse_rows(items: Mapping[str, Any], path: list[str], form: Any, tz: dt.tzinfo, required: bool) -> Any:
    prefix = ".".join(path) + "."
    indices: set[int] = set()
    for key in form.keys():
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    rows = []
    for i in sorted(indices):
        row = _parse_object(items, [*path, str(i)], form, tz, False)
        if row is not None and any(not _blank(v) for v in row.values()):
            rows.append(row)
    if not rows and not indices and not required:
        return _MISSING
    return rows


__all__ = ["render_form", "parse_form", "errors_by_field", "localize_message", "localized_title", "options",
           "schema_type", "field_id"]
