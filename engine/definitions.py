"""Parsing and validation of deployment bundles (BPMN, DMN, JSON Schema forms).

A bundle is checked as a whole before anything is stored; every problem found is reported
with the file, the element id and the line where known.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from lxml import etree
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser

from . import sandbox
from .errors import DeploymentInvalid, ScriptError
from .spiff import SAFE_XML_PARSER, spec_properties

MAX_FILE_BYTES = 5 * 1024 * 1024
KINDS = {".bpmn": "bpmn", ".dmn": "dmn", ".json": "form"}


@dataclass
class SourceFile:
    name: str
    kind: str
    content: str
    sha256: str
    xml: Any = None
    lines: dict[str, int] = field(default_factory=dict)  # element id -> line
    ids: list[str] = field(default_factory=list)  # process or decision ids defined here
    file_id: int | None = None  # set when it comes from the database


@dataclass
class ParsedProcess:
    key: str
    name: str
    bpmn: SourceFile
    bpmn_files: list[SourceFile]
    dmn_files: list[SourceFile]
    forms: dict[str, SourceFile]
    fingerprint: str


class _Problems:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, file: str | None, message: str, element: str | None = None, line: int | None = None) -> None:
        self.items.append({"file": file, "element": element, "line": line, "message": message})

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            where = f"{first['file']}" + (f" ({first['element']})" if first["element"] else "")
            raise DeploymentInvalid(f"deployment rejected: {where}: {first['message']}", self.items)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_VALID_SCHEMAS: set[str] = set()


def _check_schema(digest: str, schema: dict[str, Any]) -> None:
    # Checking a schema against the meta-schema is most of a deployment's time; a form's
    # content hash says whether it was checked before.
    if digest in _VALID_SCHEMAS:
        return
    Draft202012Validator.check_schema(schema)
    _VALID_SCHEMAS.add(digest)


def read_source(name: str, raw: bytes | str, problems: _Problems | None = None) -> SourceFile | None:
    """Classify and pre-parse one uploaded file; problems are collected, not raised."""
    local = problems or _Problems()
    base = name.rsplit("/", 1)[-1]
    suffix = "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""
    kind = KINDS.get(suffix)
    if kind is None:
        local.add(base, f"unsupported file type '{suffix or base}': expected .bpmn, .dmn or .json")
        return None
    if len(raw) > MAX_FILE_BYTES:
        local.add(base, f"file is larger than {MAX_FILE_BYTES} bytes")
        return None
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        local.add(base, f"not UTF-8 text: {exc.reason} at byte {exc.start}")
        return None
    src = SourceFile(base, kind, text, sha256(text))
    if kind == "form":
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            local.add(base, f"invalid JSON: {exc.msg}", line=exc.lineno)
            return None
        except RecursionError:  # hostile nesting: a form is never this deep
            local.add(base, "invalid JSON: nested too deeply")
            return None
        if not isinstance(schema, dict):
            local.add(base, "a form must be a JSON Schema object")
            return None
        try:
            _check_schema(src.sha256, schema)
        except SchemaError as exc:
            path = "/".join(str(p) for p in exc.path) or None
            local.add(base, f"invalid JSON Schema: {exc.message}", element=path)
            return None
        return src
    try:
        root = etree.fromstring(text.encode("utf-8"), SAFE_XML_PARSER)
    except etree.XMLSyntaxError as exc:
        local.add(base, f"XML syntax error: {exc.msg}", line=exc.lineno)
        return None
    if root.getroottree().docinfo.doctype:
        local.add(base, "DOCTYPE declarations are not allowed", line=1)
        return None
    src.xml = root
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        el_id = el.get("id")
        if el_id:
            src.lines.setdefault(el_id, el.sourceline)
        local_name = etree.QName(el).localname
        if (kind == "bpmn" and local_name == "process") or (kind == "dmn" and local_name == "decision"):
            if el_id:
                src.ids.append(el_id)
    if kind == "bpmn" and not src.ids:
        local.add(base, "no <process> element found")
        return None
    if kind == "dmn" and not src.ids:
        local.add(base, "no <decision> element found")
        return None
    return src


def _fresh_xml(src: SourceFile) -> Any:
    # The parser keeps references to the tree; re-parse so cached trees stay untouched.
    return etree.fromstring(src.content.encode("utf-8"), SAFE_XML_PARSER)


def make_parser(bpmn: Iterable[SourceFile], dmn: Iterable[SourceFile], validate: bool = True) -> SpiffBpmnParser:
    parser = SpiffBpmnParser(validator=VALIDATOR if validate else None)
    for d in dmn:
        parser.add_dmn_xml(_fresh_xml(d), filename=d.name)
    for b in bpmn:
        parser.add_bpmn_xml(_fresh_xml(b), filename=b.name)
    return parser


def build_spec(bpmn: list[SourceFile], dmn: list[SourceFile], key: str) -> tuple[Any, dict[str, Any]]:
    parser = make_parser(bpmn, dmn, validate=False)
    return parser.get_spec(key), parser.get_subprocess_specs(key)


def _report(problems: _Problems, exc: Exception, files: dict[str, SourceFile], default_file: str) -> None:
    if isinstance(exc, ValidationException):
        file_name = exc.file_name or default_file
        element = getattr(exc, "id", None) or None
        line = exc.line_number or None
        src = files.get(file_name)
        if line in ("", None) and src and element:
            line = src.lines.get(element)
        problems.add(file_name, str(exc).split("\n")[0], element=element, line=line or None)
    else:
        task_spec = getattr(exc, "task_spec", None)
        element = getattr(task_spec, "bpmn_id", None) if task_spec else None
        src = files.get(default_file)
        problems.add(default_file, str(exc).split("\n")[0], element=element,
                     line=src.lines.get(element) if src and element else None)


def _check_expression(problems: _Problems, src: SourceFile, element: str, text: str | None, mode: str) -> None:
    if not text:
        return
    try:
        sandbox.validate(text.strip() if mode == "eval" else text, mode)
    except ScriptError as exc:
        line = src.lines.get(element)
        problems.add(src.name, f"{exc.message} in '{text.strip()[:80]}'", element=element, line=line)


def _check_specs(
    problems: _Problems,
    src: SourceFile,
    specs: Iterable[Any],
    forms: dict[str, SourceFile],
    handler_names: set[str] | None,
) -> set[str]:
    """Checks what the parser does not: forms exist, handlers exist, expressions are allowed."""
    used_forms: set[str] = set()
    for wf_spec in specs:
        for ts in wf_spec.task_specs.values():
            element = getattr(ts, "bpmn_id", None)
            if element is None:
                continue
            props = spec_properties(ts)
            _check_expression(problems, src, element, props.get("assignee"), "eval")
            for prop in ("formJsonSchemaFilename", "formUiSchemaFilename"):
                form_name = props.get(prop)
                if form_name:
                    if form_name not in forms:
                        problems.add(src.name, f"{prop} '{form_name}' is not in this deployment or deployed before",
                                     element=element, line=src.lines.get(element))
                    else:
                        used_forms.add(form_name)
            operation = getattr(ts, "operation_name", None)
            if operation is not None:
                if handler_names is not None and operation not in handler_names:
                    problems.add(src.name, f"service task handler '{operation}' is not registered",
                                 element=element, line=src.lines.get(element))
                for pname, param in (getattr(ts, "operation_params", None) or {}).items():
                    _check_expression(problems, src, element, param.get("value"), "eval")
                    del pname
            for condition, _target in getattr(ts, "cond_task_specs", []) or []:
                expr = getattr(condition, "args", [None])[0] if condition is not None else None
                if isinstance(expr, str):
                    _check_expression(problems, src, element, expr, "eval")
            _check_expression(problems, src, element, getattr(ts, "script", None), "exec")
            for hook in ("prescript", "postscript"):
                _check_expression(problems, src, element, getattr(ts, hook, None), "exec")
            definition = getattr(ts, "event_definition", None)
            expression = getattr(definition, "expression", None)
            if isinstance(expression, str) and type(definition).__name__.endswith("TimerEventDefinition"):
                _check_expression(problems, src, element, expression, "eval")
    return used_forms


def parse_bundle(
    uploaded: list[tuple[str, bytes | str]],
    known: list[SourceFile],
    handler_names: set[str] | None = None,
) -> tuple[list[SourceFile], list[ParsedProcess]]:
    """Validate an upload against what is already deployed (``known``: latest file per name).

    Returns the uploaded files and every process they define. Raises DeploymentInvalid
    listing all problems; nothing is stored by this function.
    """
    problems = _Problems()
    if not uploaded:
        problems.add(None, "no files given")
        problems.raise_if_any()
    files: list[SourceFile] = []
    seen: set[str] = set()
    for name, raw in uploaded:
        src = read_source(name, raw, problems)
        if src is None:
            continue
        if src.name in seen:
            problems.add(src.name, "the same file name appears twice in one deployment")
        seen.add(src.name)
        files.append(src)
    problems.raise_if_any()

    new_names = {f.name for f in files}
    new_ids = {i for f in files for i in f.ids}
    bpmn = [f for f in files if f.kind == "bpmn"]
    # Earlier files stay in play for call activities and decisions unless replaced now.
    context_bpmn = [k for k in known if k.kind == "bpmn" and k.name not in new_names and not set(k.ids) & new_ids]
    dmn = [f for f in files if f.kind == "dmn"]
    dmn += [k for k in known if k.kind == "dmn" and k.name not in new_names and not set(k.ids) & new_ids]
    forms = {k.name: k for k in known if k.kind == "form"}
    forms.update({f.name: f for f in files if f.kind == "form"})
    by_name = {f.name: f for f in files + known}

    parser = SpiffBpmnParser(validator=VALIDATOR)
    for d in dmn:
        try:
            parser.add_dmn_xml(_fresh_xml(d), filename=d.name)
        except (SpiffWorkflowException, etree.LxmlError, ValueError) as exc:
            _report(problems, exc, by_name, d.name)
    for b in bpmn + context_bpmn:
        try:
            parser.add_bpmn_xml(_fresh_xml(b), filename=b.name)
        except (SpiffWorkflowException, etree.LxmlError, ValueError) as exc:
            _report(problems, exc, by_name, b.name)
    problems.raise_if_any()

    processes: list[ParsedProcess] = []
    executable = set(parser.get_process_ids())
    for src in bpmn:
        for key in src.ids:
            if key not in executable:
                continue
            try:
                spec = parser.get_spec(key)
                subprocess_specs = parser.get_subprocess_specs(key)
            except (SpiffWorkflowException, KeyError, ValueError, TypeError) as exc:
                _report(problems, exc, by_name, src.name)
                continue
            used_forms = _check_specs(problems, src, [spec, *subprocess_specs.values()], forms, handler_names)
            bpmn_files = [src]
            for sub in subprocess_specs:
                sub_parser = parser.get_process_parser(sub)
                sub_file = by_name.get(getattr(sub_parser, "filename", None) or "")
                if sub_file is not None and sub_file not in bpmn_files:
                    bpmn_files.append(sub_file)
            decisions = _called_decisions(bpmn_files)
            dmn_files = [d for d in dmn if set(d.ids) & decisions]
            used = {n: forms[n] for n in sorted(used_forms)}
            fingerprint = sha256(json.dumps({
                "bpmn": sorted(f.sha256 for f in bpmn_files),
                "dmn": sorted(f.sha256 for f in dmn_files),
                "forms": {n: f.sha256 for n, f in used.items()},
            }, sort_keys=True))
            name = spec.description or key
            processes.append(ParsedProcess(key, name, src, bpmn_files, dmn_files, used, fingerprint))
    if not processes and bpmn:
        problems.add(bpmn[0].name, "no executable process (isExecutable=\"true\") found")
    problems.raise_if_any()
    return files, processes


def _called_decisions(bpmn_files: list[SourceFile]) -> set[str]:
    found: set[str] = set()
    for f in bpmn_files:
        for el in f.xml.iter():
            if isinstance(el.tag, str) and etree.QName(el).localname == "calledDecisionId" and el.text:
                found.add(el.text.strip())
    return found
