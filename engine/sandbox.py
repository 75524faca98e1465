"""Evaluation of expressions and scripts that come from diagrams and forms.

Diagrams are user data, so their Python is checked against an allow-list of syntax before it
is compiled: no imports, no names or attributes starting with an underscore, no attribute
outside a small list of methods of plain data types, and only a handful of builtins. Loops
and comprehensions are given a step budget and ``**`` / repetition are size-limited, so a
script cannot hang or exhaust the process.
"""

from __future__ import annotations

import ast
import datetime as _dt
import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from .errors import ScriptError

MAX_STEPS = 100_000
MAX_POW_DIGITS = 10_000
MAX_SEQUENCE = 1_000_000

_SAFE_BUILTINS: dict[str, Any] = {
    "abs": abs, "all": all, "any": any, "bool": bool, "dict": dict, "divmod": divmod,
    "enumerate": enumerate, "filter": filter, "float": float, "int": int, "isinstance": None,
    "len": len, "list": list, "map": map, "max": max, "min": min, "range": range,
    "reversed": reversed, "round": round, "set": set, "sorted": sorted, "str": str, "sum": sum,
    "tuple": tuple, "zip": zip, "True": True, "False": False, "None": None,
}
del _SAFE_BUILTINS["isinstance"]  # type objects would open a path to subclasses()

# Methods of plain data (dict, list, str, date) that cannot reach the interpreter.
_SAFE_ATTRIBUTES = frozenset({
    # dict
    "get", "keys", "values", "items", "update", "pop", "setdefault", "copy", "clear",
    # list
    "append", "extend", "insert", "remove", "index", "count", "sort", "reverse",
    # str
    "lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "join", "startswith",
    "endswith", "replace", "find", "rfind", "isdigit", "isalpha", "isalnum", "title",
    "capitalize", "zfill", "splitlines", "casefold",
    # date and time values produced by the helper functions
    "year", "month", "day", "hour", "minute", "second", "weekday", "isoweekday",
    "isoformat", "date", "days", "seconds", "total_seconds",
})

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Module, ast.Expression, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign,
    ast.If, ast.For, ast.While, ast.Break, ast.Continue, ast.Pass, ast.Return,
    ast.FunctionDef, ast.arguments, ast.arg, ast.Lambda, ast.Try, ast.ExceptHandler, ast.Raise,
    ast.Delete, ast.IfExp, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.keyword,
    ast.Constant, ast.Name, ast.Load, ast.Store, ast.Del, ast.Attribute, ast.Subscript, ast.Slice,
    ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue, ast.Starred,
    ast.And, ast.Or, ast.Not, ast.Invert, ast.UAdd, ast.USub, ast.Add, ast.Sub, ast.Mult,
    ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
    ast.In, ast.NotIn, ast.Is, ast.IsNot, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift,
    ast.RShift, ast.Assert,
)

# Builtins that would reach the interpreter; refused by name so the error is clear at deployment.
_FORBIDDEN_NAMES = frozenset({
    "exec", "eval", "compile", "open", "input", "globals", "locals", "vars", "dir", "getattr", "setattr",
    "delattr", "hasattr", "type", "object", "super", "help", "breakpoint", "memoryview", "classmethod",
    "staticmethod", "property", "print", "exit", "quit", "id", "callable", "issubclass", "isinstance",
})

# Names the sandbox injects after validation; user code can never spell them (leading "_").
_TICK, _POW, _MUL, _LSHIFT = "_sb_tick", "_sb_pow", "_sb_mul", "_sb_lshift"


class _Validator(ast.NodeVisitor):
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: ast.AST, message: str) -> None:
        line = getattr(node, "lineno", None)
        raise ScriptError(message, line=line, source=self.source)

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, _ALLOWED_NODES):
            self.fail(node, f"{type(node).__name__} is not allowed in expressions and scripts")
        super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("_"):
            self.fail(node, f"name '{node.id}' is not allowed (names may not start with '_')")
        if node.id in _FORBIDDEN_NAMES:
            self.fail(node, f"'{node.id}' is not allowed in expressions and scripts")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr not in _SAFE_ATTRIBUTES:
            self.fail(node, f"attribute '{node.attr}' is not allowed")
        self.visit(node.value)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list or node.name.startswith("_"):
            self.fail(node, "decorators and private function names are not allowed")
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        if node.arg.startswith("_"):
            self.fail(node, f"argument '{node.arg}' is not allowed")

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None and node.arg.startswith("_"):
            self.fail(node, f"keyword '{node.arg}' is not allowed")
        self.visit(node.value)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> None:
        # A format spec is itself a JoinedStr; nested specs could call __format__ tricks.
        if node.format_spec is not None:
            for part in ast.walk(node.format_spec):
                if isinstance(part, ast.FormattedValue):
                    self.fail(node, "nested format specifications are not allowed")
        self.generic_visit(node)


class _Guard(ast.NodeTransformer):
    """Adds step counting to loops and size checks to ``**``, ``*`` and ``<<``."""

    def _tick(self) -> ast.stmt:
        return ast.Expr(ast.Call(ast.Name(_TICK, ast.Load()), [], []))

    def visit_While(self, node: ast.While) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, self._tick())
        return node

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, self._tick())
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.ifs.insert(0, ast.Call(ast.Name(_TICK, ast.Load()), [], []))
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, self._tick())  # recursion counts against the budget too
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        helper = {ast.Pow: _POW, ast.Mult: _MUL, ast.LShift: _LSHIFT}.get(type(node.op))
        if helper is None:
            return node
        return ast.copy_location(ast.Call(ast.Name(helper, ast.Load()), [node.left, node.right], []), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        helper = {ast.Pow: _POW, ast.Mult: _MUL, ast.LShift: _LSHIFT}.get(type(node.op))
        if helper is None:
            return node
        target_load = ast.copy_location(_as_load(node.target), node)
        call = ast.Call(ast.Name(helper, ast.Load()), [target_load, node.value], [])
        return ast.copy_location(ast.Assign([node.target], call), node)


def _as_load(target: ast.expr) -> ast.expr:
    clone = ast.parse(ast.unparse(target), mode="eval").body
    return clone


def _safe_pow(base: Any, exp: Any) -> Any:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if exp * math.log10(abs(base)) > MAX_POW_DIGITS:
            raise ScriptError(f"result of {base} ** {exp} would be too large")
    return base**exp


def _safe_mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, list, tuple, bytes)) and isinstance(n, int):
            if len(seq) * n > MAX_SEQUENCE:
                raise ScriptError("sequence repetition would be too large")
    if isinstance(a, int) and isinstance(b, int) and a and b:
        if math.log10(abs(a)) + math.log10(abs(b)) > MAX_POW_DIGITS:
            raise ScriptError("product would be too large")
    return a * b


def _safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > MAX_POW_DIGITS * 3:
        raise ScriptError("shift would be too large")
    return a << b


@lru_cache(maxsize=4096)
def _compile(source: str, mode: str) -> Any:
    try:
        tree = ast.parse(source, mode=mode)
    except SyntaxError as exc:
        raise ScriptError(f"syntax error: {exc.msg}", line=exc.lineno, source=source) from None
    _Validator(source).visit(tree)
    tree = ast.fix_missing_locations(_Guard().visit(tree))
    return compile(tree, "<diagram>", mode)


def validate(source: str, mode: str = "exec") -> None:
    """Raise ScriptError when the source would be refused at run time."""
    _compile(source, mode)


class _Budget:
    def __init__(self, steps: int) -> None:
        self.left = steps

    def tick(self) -> bool:
        # Returns True because comprehensions call it as their first filter.
        self.left -= 1
        if self.left < 0:
            raise ScriptError(f"script exceeded its budget of {MAX_STEPS} steps")
        return True


def _globals(functions: Mapping[str, Callable[..., Any]]) -> dict[str, Any]:
    budget = _Budget(MAX_STEPS)
    g: dict[str, Any] = {"__builtins__": dict(_SAFE_BUILTINS)}
    g.update(functions)
    g[_TICK] = budget.tick
    g[_POW] = _safe_pow
    g[_MUL] = _safe_mul
    g[_LSHIFT] = _safe_lshift
    return g


def evaluate(expression: str, data: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> Any:
    code = _compile(expression.strip(), "eval")
    g = _globals(functions)
    g.update(data)
    try:
        return eval(code, g)  # noqa: S307 - validated and guarded above
    except ScriptError:
        raise
    except RecursionError:
        raise ScriptError("recursion too deep", source=expression) from None
    except MemoryError:
        raise ScriptError("out of memory", source=expression) from None


def execute(script: str, data: dict[str, Any], functions: Mapping[str, Callable[..., Any]]) -> None:
    """Run a script whose top-level assignments update ``data`` in place."""
    code = _compile(script, "exec")
    g = _globals(functions)
    injected = set(g)
    g.update(data)
    try:
        exec(code, g)  # noqa: S102 - validated and guarded above
    except ScriptError:
        raise
    except RecursionError:
        raise ScriptError("recursion too deep", source=script) from None
    except MemoryError:
        raise ScriptError("out of memory", source=script) from None
    for key, value in g.items():
        if key in injected and key not in data:
            continue
        if callable(value) or key.startswith("_"):
            continue
        data[key] = value
    for key in [k for k in data if k not in g]:
        del data[key]  # `del x` in the script


def default_functions() -> dict[str, Callable[..., Any]]:
    """Pure helpers available to every expression."""

    def now() -> str:
        return _dt.datetime.now(_dt.UTC).isoformat()

    return {"now": now}
