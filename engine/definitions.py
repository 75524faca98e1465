"""Parsing and validation of deployment bundles (BPMN, DMN, JSON Schema forms).

A bundle is checked as a whole before anything is stored; every problem found is reported
with the file, the element id and the line where known.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from lxml import etree
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import MultiInstanceTask, StandardLoopTask
from SpiffWorkflow.dmn.engine.DMNEngine import DMNEngine
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser

from . import sandbox
from .errors import DeploymentInvalid, ScriptError
from .spiff import SAFE_XML_PARSER, spec_properties

MAX_FILE_BYTES = 5 * 1024 * 1024
KINDS = {".bpmn": "bpmn", ".dmn": "dmn", ".json": "form"}
# A parallel multi-instance task creates all its instances in the request that reaches it.
MAX_LOOP_CARDINALITY = 1000


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
        # (file, mode, text) of expressions already refused: the whole-file sweep does not
        # report them a second time under another element (a flow instead of its gateway).
        self.refused: set[tuple[str, str, str]] = set()
        self._seen: set[tuple[str | None, str | None, int | None, str]] = set()

    def add(self, file: str | None, message: str, element: str | None = None, line: int | None = None) -> None:
        key = (file, element, line, message)
        if key in self._seen:  # the spec check and the file sweep may find the same thing
            return
        self._seen.add(key)
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


def _check_expression(problems: _Problems, src: SourceFile, element: str | None, text: str | None, mode: str,
                      where: str = "") -> bool:
    """Record a problem and return False when the sandbox would refuse ``text`` at run time."""
    if not text:
        return True
    source = text.strip() if mode == "eval" else text  # the sandbox strips expressions too
    try:
        sandbox.validate(source, mode)
        return True
    except ScriptError as exc:
        message = exc.message
    except (RecursionError, MemoryError, ValueError):  # the Python parser gives up on hostile nesting
        message = "expression is nested too deeply or cannot be parsed"
    problems.refused.add((src.name, mode, source))
    prefix = f"{where}: " if where else ""
    problems.add(src.name, f"{prefix}{message} in '{text.strip()[:80]}'", element=element,
                 line=src.lines.get(element) if element else None)
    return False


def _check_cardinality(problems: _Problems, src: SourceFile, element: str | None, text: str | None) -> None:
    """Refuse a literal loop cardinality above MAX_LOOP_CARDINALITY (computed ones are counted at
    run time, when their value is known)."""
    if not text:
        return
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return  # the expression check reports it
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value > MAX_LOOP_CARDINALITY:
        problems.add(src.name, f"loop cardinality {node.value} is above the limit of {MAX_LOOP_CARDINALITY} "
                     "instances", element=element, line=src.lines.get(element) if element else None)


def _event_definitions(definition: Any) -> list[Any]:
    if definition is None:
        return []
    found = [definition]
    for inner in getattr(definition, "event_definitions", None) or []:  # MultipleEventDefinition
        found.extend(_event_definitions(inner))
    return found


def _check_specs(
    problems: _Problems,
    src: SourceFile,
    specs: Iterable[Any],
    forms: dict[str, SourceFile],
    handler_names: set[str] | None,
    files: dict[str, SourceFile] | None = None,
) -> set[str]:
    """Checks what the parser does not: forms exist, handlers exist, expressions are allowed.

    Every text SpiffWorkflow evaluates from a task spec is checked in the mode it is run in.
    """
    used_forms: set[str] = set()
    for wf_spec in specs:
        # A called process may come from another file: its lines are in that file.
        spec_src = (files or {}).get(getattr(wf_spec, "file", None) or "", src)
        # An ad hoc subprocess decides after each path whether it is done.
        _check_expression(problems, spec_src, wf_spec.name, getattr(wf_spec, "completion_condition", None), "eval")
        for ts in wf_spec.task_specs.values():
            element = getattr(ts, "bpmn_id", None)
            if element is None:
                continue
            props = spec_properties(ts)
            _check_expression(problems, spec_src, element, props.get("assignee"), "eval")
            for prop in ("formJsonSchemaFilename", "formUiSchemaFilename"):
                form_name = props.get(prop)
                if form_name:
                    if form_name not in forms:
                        problems.add(spec_src.name,
                                     f"{prop} '{form_name}' is not in this deployment or deployed before",
                                     element=element, line=spec_src.lines.get(element))
                    else:
                        used_forms.add(form_name)
            check = props.get("completionCheck")
            if check and handler_names is not None and check not in handler_names:
                problems.add(spec_src.name, f"completion check '{check}' is not a registered handler",
                             element=element, line=spec_src.lines.get(element))
            operation = getattr(ts, "operation_name", None)
            if operation is not None:
                if handler_names is not None and operation not in handler_names:
                    problems.add(spec_src.name, f"service task handler '{operation}' is not registered",
                                 element=element, line=spec_src.lines.get(element))
                for param in (getattr(ts, "operation_params", None) or {}).values():
                    _check_expression(problems, spec_src, element, param.get("value"), "eval")
            for condition, _target in getattr(ts, "cond_task_specs", []) or []:
                expr = getattr(condition, "args", [None])[0] if condition is not None else None
                if isinstance(expr, str):
                    _check_expression(problems, spec_src, element, expr, "eval")
            _check_expression(problems, spec_src, element, getattr(ts, "script", None), "exec")
            for hook in ("prescript", "postscript"):
                _check_expression(problems, spec_src, element, getattr(ts, hook, None), "exec")
            if isinstance(ts, MultiInstanceTask):
                # loopDataInputRef and the data items are names of case data, not expressions.
                _check_expression(problems, spec_src, element, ts.cardinality, "eval")
                _check_cardinality(problems, spec_src, element, ts.cardinality)
                _check_expression(problems, spec_src, element, ts.condition, "eval")
            elif isinstance(ts, StandardLoopTask):
                _check_expression(problems, spec_src, element, ts.condition, "eval")
            for definition in _event_definitions(getattr(ts, "event_definition", None)):
                # Timer, conditional and payload (message, signal, error, escalation) expressions.
                expression = getattr(definition, "expression", None)
                if isinstance(expression, str):
                    _check_expression(problems, spec_src, element, expression, "eval")
                for attr in ("correlation_properties", "process_correlations"):
                    for prop in getattr(definition, attr, None) or []:
                        retrieval = getattr(prop, "retrieval_expression", None)
                        if isinstance(retrieval, str):
                            _check_expression(problems, spec_src, element, retrieval, "eval")
    return used_forms


# --- the whole diagram, connected or not -----------------------------------------------------
#
# SpiffWorkflow leaves elements no sequence flow reaches out of the spec, so the checks above
# never see them; they are stored all the same and one edit away from running. Every place of
# a BPMN file that SpiffWorkflow reads an expression or a handler name from is checked here.

_BPMN = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"
_SPIFF = "{http://spiffworkflow.org/bpmn/schema/1.0/core}"
_EVAL_TAGS = frozenset(
    [_BPMN + n for n in ("conditionExpression", "loopCardinality", "completionCondition", "loopCondition",
                         "timeDate", "timeDuration", "timeCycle", "condition")]
    + [_SPIFF + n for n in ("messagePayload", "payloadExpression", "expression")]
)
_EXEC_TAGS = frozenset([_BPMN + "script", _SPIFF + "preScript", _SPIFF + "postScript"])
# Elements whose children are the diagram's elements; the owner of an expression is the
# element of the diagram it sits in (a task, a flow, a message), not a part of one.
_CONTAINERS = frozenset(_BPMN + n for n in ("definitions", "process", "subProcess", "adHocSubProcess",
                                            "transaction", "collaboration"))


def _owner(el: Any) -> Any:
    nearest = None
    node = el
    while node is not None:
        if isinstance(node.tag, str) and node.tag.startswith(_BPMN) and node.get("id"):
            parent = node.getparent()
            if parent is None or parent.tag in _CONTAINERS:
                return node
            nearest = nearest if nearest is not None else node
        node = node.getparent()
    return nearest


def _check_whole_file(problems: _Problems, src: SourceFile, handler_names: set[str] | None) -> None:
    for el in src.xml.iter():
        if not isinstance(el.tag, str):
            continue
        tag = el.tag
        texts: list[tuple[str | None, str]] = []
        if tag in _EVAL_TAGS:
            texts.append((el.text, "eval"))
        elif tag in _EXEC_TAGS:
            texts.append((el.text, "exec"))
        elif tag == _BPMN + "scriptTask":
            # SpiffWorkflow runs any child whose tag ends with "script" (bpmn:script is above).
            texts += [(c.text, "exec") for c in el
                      if isinstance(c.tag, str) and c.tag.endswith("script") and c.tag not in _EXEC_TAGS]
        elif tag == _BPMN + "correlationPropertyRetrievalExpression":
            children = list(el)  # SpiffWorkflow reads its first child, whatever it is
            if children:
                texts.append((children[0].text, "eval"))
        elif tag == _SPIFF + "property" and el.get("name") == "assignee":
            texts.append((el.get("value"), "eval"))
        elif tag == _SPIFF + "serviceTaskOperator":
            texts += [(p.get("value"), "eval") for p in el.iter(_SPIFF + "parameter") if "value" in p.attrib]
        else:
            continue
        owner = _owner(el)
        element = owner.get("id") if owner is not None else None
        if tag == _SPIFF + "serviceTaskOperator":
            operation = el.get("id")
            if handler_names is not None and operation not in handler_names:
                problems.add(src.name, f"service task handler '{operation}' is not registered",
                             element=element, line=src.lines.get(element) if element else None)
        if tag == _BPMN + "loopCardinality":
            _check_cardinality(problems, src, element, el.text)
        for text, mode in texts:
            if text and (src.name, mode, text.strip() if mode == "eval" else text) not in problems.refused:
                _check_expression(problems, src, element, text, mode)


# --- DMN decision tables ----------------------------------------------------------------------

_DMN_INPUT_STAND_IN = "value"  # for an input without an expression (its label's value is used)


class _RecordingScriptEngine:
    """Stands in for the case's script engine while SpiffWorkflow's DMNEngine builds the
    expression of a rule's input entry (combined with the input expression, with '==' added or
    '?' replaced), so the deployment checks the very texts a case evaluates."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def validate(self, expression: str) -> None:
        ast.parse(expression)  # what PythonScriptEngine.validate does; DMNEngine needs its SyntaxError

    def evaluate(self, task: Any, expression: str, external_context: Any = None) -> bool:
        self.texts.append(expression)
        return True


_PLACEHOLDER = "dmninputexpr"  # the name DMNEngine gives the input's value in an entry with '?'
# DMNEngine's search for '?' costs the entry's length for each '?' on every evaluation: above
# this product a cell holds a case's command for a noticeable time (about 0.1 s).
MAX_DMN_PLACEHOLDER_COST = 1_000_000


def _mark_placeholders(entry: str) -> str:
    """DMNEngine's replacement of '?' by ``dmninputexpr``, in linear time.

    Its regular expression replaces a '?' followed by an even number of quote characters (' or
    "), but scans the rest of the entry for each '?' (10,000 of them take seconds, 30,000 nearly
    two minutes). Replaced beforehand, DMNEngine finds no '?' and builds the same text.
    """
    parts: list[str] = []
    quotes = 0
    for ch in reversed(entry):
        if ch in "'\"":
            quotes += 1
        parts.append(_PLACEHOLDER if ch == "?" and quotes % 2 == 0 else ch)
    return "".join(reversed(parts))


def _input_entry_texts(input_expression: str, entry: str) -> list[str]:
    """The texts a case evaluates for one input entry, in the order it evaluates them."""
    recorder = _RecordingScriptEngine()
    task = SimpleNamespace(workflow=SimpleNamespace(script_engine=recorder), data={})
    DMNEngine(None).evaluate(input_expression, _mark_placeholders(entry), task)
    return recorder.texts


def _read_decisions(problems: _Problems, src: SourceFile, files: dict[str, SourceFile]) -> list[Any]:
    """The decisions of a DMN file as SpiffWorkflow reads them when a case runs one."""
    try:
        parser = SpiffBpmnParser()  # no schema: the bundle's parser validated the file
        parser.add_dmn_xml(_fresh_xml(src), filename=src.name)
        decisions = []
        for dmn_parser in parser.dmn_parsers.values():
            dmn_parser.parse()
            decisions.append(dmn_parser.decision)
        return decisions
    except ValidationException as exc:
        _report(problems, exc, files, src.name)
    except Exception as exc:  # noqa: BLE001 - a hostile file is a located problem, never a crash
        problems.add(src.name, f"decision table cannot be read: {type(exc).__name__}: {str(exc)[:200]}")
    return []


def _check_dmn(problems: _Problems, src: SourceFile, files: dict[str, SourceFile]) -> None:
    for decision in _read_decisions(problems, src, files):
        for table in decision.decisionTables:
            composed: dict[int, str] = {}  # id(input) -> the text its entries are combined with
            for column in table.inputs:
                where = f"decision '{decision.id}', input '{column.label or column.id}'"
                found = src.xml.xpath("//*[@id=$i]/*[local-name()='inputExpression'][@id]", i=column.id)
                element = found[0].get("id") if found else column.id
                text = column.expression
                if text and not _check_expression(problems, src, element, text, "eval", where):
                    text = None  # refused: its entries are checked with a stand-in
                composed[id(column)] = text or _DMN_INPUT_STAND_IN
            for rule in table.rules:
                where = f"decision '{decision.id}', rule '{rule.id}' (row {rule.row_number})"
                for entry in rule.inputEntries:
                    for lhs in entry.lhs:
                        if lhs is None:  # '-' or empty: any value matches
                            continue
                        marks = lhs.count("?")
                        if marks * len(lhs) > MAX_DMN_PLACEHOLDER_COST:
                            problems.add(src.name, f"{where}: an input entry of {len(lhs)} characters with {marks} "
                                         "'?' would take too long to evaluate", element=entry.id,
                                         line=src.lines.get(entry.id))
                            continue
                        try:
                            texts = _input_entry_texts(composed.get(id(entry.input), _DMN_INPUT_STAND_IN), lhs)
                        except (SyntaxError, ValueError, RecursionError, MemoryError):
                            problems.add(src.name, f"{where}: syntax error in '{lhs.strip()[:80]}'",
                                         element=entry.id, line=src.lines.get(entry.id))
                            continue
                        for text in texts:
                            _check_expression(problems, src, entry.id, text, "eval", where)
                for entry in rule.outputEntries:
                    _check_expression(problems, src, entry.id, entry.text, "eval", where)


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

    checked_dmn = {f.name for f in files if f.kind == "dmn"}
    for d in files:
        if d.kind == "dmn":
            _check_dmn(problems, d, by_name)

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
            used_forms = _check_specs(problems, src, [spec, *subprocess_specs.values()], forms, handler_names,
                                      by_name)
            bpmn_files = [src]
            for sub in subprocess_specs:
                sub_parser = parser.get_process_parser(sub)
                sub_file = by_name.get(getattr(sub_parser, "filename", None) or "")
                if sub_file is not None and sub_file not in bpmn_files:
                    bpmn_files.append(sub_file)
            decisions = _called_decisions(bpmn_files)
            dmn_files = [d for d in dmn if set(d.ids) & decisions]
            for d in dmn_files:  # deployed before: checked again with today's rules, as it will run
                if d.name not in checked_dmn:
                    checked_dmn.add(d.name)
                    _check_dmn(problems, d, by_name)
            used = {n: forms[n] for n in sorted(used_forms)}
            fingerprint = sha256(json.dumps({
                "bpmn": sorted(f.sha256 for f in bpmn_files),
                "dmn": sorted(f.sha256 for f in dmn_files),
                "forms": {n: f.sha256 for n, f in used.items()},
            }, sort_keys=True))
            name = spec.description or key
            processes.append(ParsedProcess(key, name, src, bpmn_files, dmn_files, used, fingerprint))
    for src in bpmn:
        _check_whole_file(problems, src, handler_names)
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


def starter_groups(bpmn: Iterable[SourceFile], key: str) -> frozenset[str] | None:
    """The groups that may start process ``key``: the process's own property
    ``candidateStarterGroups`` (comma-separated, as Camunda names it); None when it names none
    (any staff member may start it)."""
    for src in bpmn:
        if src.xml is None:
            continue
        for process in src.xml.iter(_BPMN + "process"):
            if process.get("id") != key:
                continue
            for ext in process.findall(_BPMN + "extensionElements"):
                for prop in ext.iter(_SPIFF + "property"):
                    if prop.get("name") == "candidateStarterGroups":
                        groups = frozenset(g.strip() for g in (prop.get("value") or "").split(",") if g.strip())
                        return groups or None
    return None

