"""Evaluation of expressions and scripts that come from diagrams and forms.

Diagrams are user data, so their Python is checked against an allow-list of syntax before it
is compiled: no imports, no names or attributes starting with an underscore, no attribute
outside a small list of methods of plain data types, and only a handful of builtins. Loops,
comprehensions, functions and lambdas are given a step budget, every call and operator checks a
time limit and the size of what it produced, and operations whose result can be far larger than
their operands (``**``, repetition, ``<<``, ``%``, ``zfill``, ``replace``, ``join``, format widths,
``range``) are refused before the result is built, so a script cannot hang or exhaust the process.
Builtins that loop in C (``sum``, ``sorted``...) cannot be interrupted, so what bounds them is
that no value may exceed MAX_SEQUENCE elements or MAX_STRING characters and that callbacks from C
(``map``, ``key=``...) check the time too. Not bounded: one C call over a structure holding many
references to one large value (``str([big for i in range(1000)])``) and the total memory of many
values each within the limits, up to the time limit; only a separate process with OS limits
would bound those.
"""

from __future__ import annotations

import ast
import builtins
import datetime as _dt
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache, partial
from itertools import chain, islice
from types import CodeType
from typing import Any, NamedTuple

from .errors import ScriptError

MAX_STEPS = 100_000
MAX_POW_DIGITS = 10_000
MAX_SEQUENCE = 1_000_000
MAX_STRING = 1_000_000
MAX_SECONDS = 1.0  # wall clock per evaluate/execute call
MAX_DATA = 5 * MAX_SEQUENCE  # elements and characters an expression may return or a script leave in the data
MAX_DEPTH = 100  # nesting of returned data; the serializers recurse

_SAFE_BUILTINS: dict[str, Any] = {
    "abs": abs, "all": all, "any": any, "bool": bool, "dict": dict, "divmod": divmod,
    "enumerate": enumerate, "filter": filter, "float": float, "int": int, "isinstance": None,
    "len": len, "list": list, "map": map, "max": max, "min": min, "range": range,
    "reversed": reversed, "round": round, "set": set, "sorted": sorted, "str": str, "sum": sum,
    "tuple": tuple, "zip": zip, "True": True, "False": False, "None": None,
}
del _SAFE_BUILTINS["isinstance"]  # type objects would open a path to subclasses()
# range, round, map, filter, sorted, min, max and sum are replaced by checked versions, see _globals().

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

# Methods that can build a result far larger than their operands, grow a collection in place, or
# call a key function from C: reached only through Budget.call_method, even when not called at once.
_CHECKED_METHODS = frozenset({"zfill", "replace", "join", "extend", "update", "sort"})

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
_TICK, _CHECK, _METHOD = "_sb_tick", "_sb_check", "_sb_method"
_POW, _MUL, _LSHIFT, _MOD, _IADD = "_sb_pow", "_sb_mul", "_sb_lshift", "_sb_mod", "_sb_iadd"
_OPERATOR_HELPERS: dict[type[ast.operator], str] = {ast.Pow: _POW, ast.Mult: _MUL, ast.LShift: _LSHIFT, ast.Mod: _MOD}

_CONTAINERS = (list, tuple, set, frozenset, dict)
_TEXT = (str, bytes)
_SCALARS = frozenset({bool, int, float, type(None)})


def _over(digits: str | None, limit: int) -> bool:
    """Whether a decimal number written in a format exceeds ``limit`` (without int() of a huge text)."""
    if not digits:
        return False
    digits = digits.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit


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
            # So the spec is constant: a width or precision like f'{1:>400000000}' is refused here.
            spec = "".join(str(p.value) for p in ast.walk(node.format_spec) if isinstance(p, ast.Constant))
            if any(_over(digits, MAX_STRING) for digits in re.findall(r"\d+", spec)):
                self.fail(node, f"format width or precision over {MAX_STRING:,} is not allowed")
        self.generic_visit(node)


def _call(helper: str, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(helper, ast.Load()), list(args), [])


def _sliced(targets: Iterable[ast.expr]) -> list[ast.expr]:
    """Collections assigned through a slice (``x[:0] = x`` grows x in C), to be size-checked after."""
    return [_as_load(node.value) for target in targets for node in ast.walk(target)
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice)]


class _Guard(ast.NodeTransformer):
    """Adds step counting to loops, functions and lambdas, a time and size check to every call and
    operator result, and routes operations with a predictable result size through checked helpers."""

    def _checked(self, node: ast.expr) -> ast.expr:
        return ast.copy_location(_call(_CHECK, node), node)

    def _size_checks(self, node: ast.stmt, targets: list[ast.expr]) -> list[ast.stmt]:
        return [ast.copy_location(ast.Expr(_call(_CHECK, value)), node) for value in _sliced(targets)]

    def visit_While(self, node: ast.While) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_call(_TICK)))
        return node

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_call(_TICK, *_sliced([node.target]))))
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.ifs.insert(0, _call(_TICK, *_sliced([node.target])))
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_call(_TICK)))  # recursion counts against the budget too
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self.generic_visit(node)
        node.body = ast.BoolOp(ast.And(), [_call(_TICK), node.body])  # the tick returns True
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        return self._checked(node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        return self._checked(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        return self._checked(node) if isinstance(node.ctx, ast.Load) else node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load) and node.attr in _CHECKED_METHODS:
            return ast.copy_location(_call(_METHOD, node.value, ast.Constant(node.attr)), node)
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        for part in node.values:  # not generic_visit: a format spec must stay a plain JoinedStr
            if isinstance(part, ast.FormattedValue):
                part.value = self.visit(part.value)
        return self._checked(node)

    def _display(self, node: ast.List | ast.Tuple | ast.Set | ast.Dict, unpacks: bool) -> ast.AST:
        # [*x, *x] and {**d, **e} build in C: check the result like an operator's.
        self.generic_visit(node)
        loaded = isinstance(getattr(node, "ctx", ast.Load()), ast.Load)
        return self._checked(node) if unpacks and loaded else node

    def visit_List(self, node: ast.List) -> ast.AST:
        return self._display(node, any(isinstance(e, ast.Starred) for e in node.elts))

    def visit_Tuple(self, node: ast.Tuple) -> ast.AST:
        return self._display(node, any(isinstance(e, ast.Starred) for e in node.elts))

    def visit_Set(self, node: ast.Set) -> ast.AST:
        return self._display(node, any(isinstance(e, ast.Starred) for e in node.elts))

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        return self._display(node, None in node.keys)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        helper = _OPERATOR_HELPERS.get(type(node.op))
        if helper is None:
            return self._checked(node)
        return self._checked(ast.copy_location(_call(helper, node.left, node.right), node))

    def visit_Assign(self, node: ast.Assign) -> ast.AST | list[ast.stmt]:
        self.generic_visit(node)
        return [node, *self._size_checks(node, node.targets)]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | list[ast.stmt]:
        self.generic_visit(node)
        return [node, *self._size_checks(node, [node.target])]

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | list[ast.stmt]:
        self.generic_visit(node)
        target_load = ast.copy_location(_as_load(node.target), node)
        helper = _IADD if isinstance(node.op, ast.Add) else _OPERATOR_HELPERS.get(type(node.op))
        if helper is None:  # in place (sets, dicts...): check the result afterwards
            return [node, ast.copy_location(ast.Expr(_call(_CHECK, target_load)), node)]
        call = _call(_CHECK, _call(helper, target_load, node.value))
        assign = ast.copy_location(ast.Assign([node.target], call), node)
        return [assign, *self._size_checks(node, [node.target])]


def _as_load(target: ast.expr) -> ast.expr:
    clone = ast.parse(ast.unparse(target), mode="eval").body
    return clone


def _check_size(value: Any) -> None:
    if isinstance(value, (str, bytes)):
        if len(value) > MAX_STRING:
            raise ScriptError(f"text of {len(value):,} characters is over the limit of {MAX_STRING:,}")
    elif isinstance(value, _CONTAINERS) and len(value) > MAX_SEQUENCE:
        raise ScriptError(f"collection of {len(value):,} elements is over the limit of {MAX_SEQUENCE:,}")


def _measure(value: Any, cap: int) -> int:
    """Elements and characters reachable from ``value``, shared references counted each time (as
    repr, comparison and JSON see them); stops early once past ``cap``."""
    total, level = 0, [value]
    for _ in range(MAX_DEPTH + 1):  # level by level: no per-element tuples for the GC to chase
        below: list[Any] = []
        for item in level:
            if isinstance(item, _TEXT):
                total += len(item) or 1
                continue
            total += 1
            if isinstance(item, _CONTAINERS) and item:
                if total + len(below) + len(item) > cap:  # each child counts at least one
                    return cap + 1
                below.extend(chain(item.keys(), item.values()) if isinstance(item, dict) else item)
        if total > cap or not below:
            return total
        level = below
    raise ScriptError(f"data nested more than {MAX_DEPTH} levels deep (or containing itself)")


def _bounded(iterable: Any) -> Any:
    """``iterable`` as a sized collection (an iterator over a list being extended never ends)."""
    if isinstance(iterable, (str, bytes, range, *_CONTAINERS)):
        return iterable
    items = list(islice(iterable, MAX_SEQUENCE + 1))
    if len(items) > MAX_SEQUENCE:
        raise ScriptError(f"more than {MAX_SEQUENCE:,} elements are not allowed")
    return items


def _safe_range(*args: Any) -> range:
    # sum(), sorted()... loop over a range in C where no step is counted.
    numbers = range(*args)
    try:
        too_long = len(numbers) > MAX_SEQUENCE
    except OverflowError:  # longer than sys.maxsize
        too_long = True
    if too_long:
        raise ScriptError(f"range() of more than {MAX_SEQUENCE:,} numbers is not allowed")
    return numbers


def _safe_round(number: Any, ndigits: Any = None) -> Any:
    # round(5, -10**7) computes 10 ** 10**7 first.
    if isinstance(ndigits, int) and abs(ndigits) > MAX_POW_DIGITS:
        raise ScriptError(f"round() to more than {MAX_POW_DIGITS:,} digits is not allowed")
    return round(number) if ndigits is None else round(number, ndigits)


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
            # [big] * n holds n references to big, which str(), == and JSON would each expand.
            if n > 1 and isinstance(seq, (list, tuple)) and seq:
                cap = MAX_SEQUENCE // n
                if _measure(seq, cap + 1) - 1 > cap:
                    raise ScriptError("sequence repetition would be too large")
    if isinstance(a, int) and isinstance(b, int) and a and b:
        if math.log10(abs(a)) + math.log10(abs(b)) > MAX_POW_DIGITS:
            raise ScriptError("product would be too large")
    return a * b


def _safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > MAX_POW_DIGITS * 3:
        raise ScriptError("shift would be too large")
    return a << b


def _safe_iadd(a: Any, b: Any) -> Any:
    # list += iterable extends in C, without end when the iterable walks the list itself.
    if isinstance(a, list):
        b = _bounded(b)
        if len(a) + len(b) > MAX_SEQUENCE:
            raise ScriptError(f"list of more than {MAX_SEQUENCE:,} elements is not allowed")
    a += b
    return a


# printf-style conversion: %[(key)][flags][width][.precision][length modifier]type
_PERCENT_SPEC = re.compile(r"%(\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.DOTALL)


def _text_length(value: Any) -> int:
    """Characters ``value`` takes when formatted (an estimate that is never far too small)."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, int):
        return abs(value).bit_length() // 3 + 2
    if isinstance(value, _CONTAINERS):
        return _measure(value, MAX_STRING)
    return len(repr(value)) if isinstance(value, float) else 0


def _safe_mod(a: Any, b: Any) -> Any:
    if isinstance(a, (str, bytes)):
        # '%400000000d' % 1 would allocate the width before anything could be checked.
        text = a.decode("latin-1") if isinstance(a, bytes) else a
        values = list(b) if isinstance(b, tuple) else [b]
        position, length = 0, len(text)
        for match in _PERCENT_SPEC.finditer(text):
            key, width, precision, conversion = match.groups()
            for part in (width, precision):
                if part == "*":  # taken from the arguments
                    star = values[position] if position < len(values) else 0
                    position += 1
                    length += abs(star) if isinstance(star, int) else 0
                elif _over(part, MAX_STRING):
                    length += MAX_STRING + 1
                elif part:
                    length += int(part)
            if conversion == "%":
                continue
            if key is not None:
                name: Any = key[1:-1].encode("latin-1") if isinstance(a, bytes) else key[1:-1]
                value = b.get(name) if isinstance(b, Mapping) else None
            else:
                value = values[position] if position < len(values) else None
                position += 1
            length += _text_length(value)
        if length > MAX_STRING:
            raise ScriptError(f"%-formatting would produce more than {MAX_STRING:,} characters")
    return a % b


def _check_text_method(text: str | bytes, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Refuse zfill/replace/join results over MAX_STRING before they are built."""
    kind = type(text)
    if name == "zfill" and args and isinstance(args[0], int):
        length = args[0]
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], kind) and isinstance(args[1], kind):
        old, new = args[0], args[1]
        count = text.count(old) if old else len(text) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        length = len(text) + count * (len(new) - len(old))
    elif name == "join" and args:
        items = _bounded(args[0])
        length = len(text) * max(len(items) - 1, 0) + sum(len(i) for i in items if isinstance(i, (str, bytes)))
        args = (items, *args[1:])
    else:
        return args
    if length > MAX_STRING:
        raise ScriptError(f"{name}() would produce more than {MAX_STRING:,} characters")
    return args


# The builtins that call back from C are the budget's own (see _Budget), bound per call.
_BUDGET_BUILTINS = frozenset({"map", "filter", "sorted", "min", "max", "sum"})
_BUDGET_NAMES = {**{name: name for name in _BUDGET_BUILTINS}, _TICK: "tick", _CHECK: "check", _METHOD: "method"}
_CHECKED_BUILTINS: dict[str, Any] = {name: f for name, f in _SAFE_BUILTINS.items() if name not in _BUDGET_NAMES}
_CHECKED_BUILTINS.update(range=_safe_range, round=_safe_round)
_HELPERS: dict[str, Callable[..., Any]] = {
    _POW: _safe_pow, _MUL: _safe_mul, _LSHIFT: _safe_lshift, _MOD: _safe_mod, _IADD: _safe_iadd,
}


class _Program(NamedTuple):
    """Compiled code and what it needs injected, worked out once: a DMN table evaluates hundreds of
    cells, most of which name nothing."""

    code: CodeType
    names: frozenset[str]
    builtins: dict[str, Any]  # checked builtins it names
    helpers: dict[str, Callable[..., Any]]  # size-checked operators it uses
    bound: tuple[tuple[str, str], ...]  # (name, _Budget attribute) for what needs the call's budget


@lru_cache(maxsize=4096)
def _compile(source: str, mode: str) -> _Program:
    try:
        tree = ast.parse(source, mode=mode)
    except SyntaxError as exc:
        raise ScriptError(f"syntax error: {exc.msg}", line=exc.lineno, source=source) from None
    _Validator(source).visit(tree)
    tree = ast.fix_missing_locations(_Guard().visit(tree))
    code = compile(tree, "<diagram>", mode)
    names = frozenset(_names(code))
    return _Program(code, names, {name: _CHECKED_BUILTINS[name] for name in names & _CHECKED_BUILTINS.keys()},
                    {name: _HELPERS[name] for name in names & _HELPERS.keys()},
                    tuple((name, attr) for name, attr in _BUDGET_NAMES.items() if name in names))


def _names(code: CodeType) -> Iterator[str]:
    """Names the code, its functions, lambdas and comprehensions may look up."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _names(const)


def validate(source: str, mode: str = "exec") -> None:
    """Raise ScriptError when the source would be refused at run time."""
    _compile(source, mode)


class _Budget:
    """Steps and time of one evaluate/execute call, and the builtins that call back from C."""

    def __init__(self, steps: int) -> None:
        self.left = steps
        self.deadline = time.monotonic() + MAX_SECONDS

    def check(self, value: Any = None) -> Any:
        """``value`` unchanged, once the time limit and the size limits are checked."""
        if self.left < 0:  # still refused when a bare `except:` caught the first error
            raise ScriptError(f"script exceeded its budget of {MAX_STEPS} steps")
        if time.monotonic() > self.deadline:
            raise ScriptError(f"script exceeded its time limit of {MAX_SECONDS:g} s")
        if type(value) not in _SCALARS:  # the common case, without the isinstance() calls
            _check_size(value)
        return value

    def tick(self, *sized: Any) -> bool:
        # Returns True because comprehensions and lambdas call it as a condition.
        self.left -= 1
        for value in sized:
            _check_size(value)
        self.check()
        return True

    def trusted(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` (an application helper) with its own time, e.g. database reads, not counted."""

        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                self.deadline += time.monotonic() - started

        return call

    def _with_key(self, options: dict[str, Any]) -> dict[str, Any]:
        key = options.get("key")
        if key is not None:  # key=sum would otherwise be called from C with no check in between
            options["key"] = lambda item: self.check(key(item))
        return options

    def map(self, function: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        if not iterables:
            raise TypeError("map() must have at least two arguments.")
        return (self.check(function(*args)) for args in zip(*iterables, strict=False))

    def filter(self, function: Callable[[Any], Any] | None, iterable: Iterable[Any]) -> Iterator[Any]:
        if function is None:
            return builtins.filter(None, iterable)
        return (item for item in iterable if self.check(function(item)))

    def sorted(self, iterable: Iterable[Any], /, **options: Any) -> list[Any]:
        return builtins.sorted(iterable, **self._with_key(options))

    def min(self, *args: Any, **options: Any) -> Any:
        return builtins.min(*args, **self._with_key(options))

    def max(self, *args: Any, **options: Any) -> Any:
        return builtins.max(*args, **self._with_key(options))

    def sum(self, iterable: Iterable[Any], /, start: Any = 0) -> Any:
        if not isinstance(start, (list, tuple)):
            return builtins.sum(iterable, start)
        total = start  # sum(lists, []) would concatenate in C without any check
        for item in iterable:
            total = self.check(total + item)
        return total

    def method(self, obj: Any, name: str) -> Callable[..., Any]:
        return partial(self.call_method, obj, name)

    def call_method(self, obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, type) and args:  # str.join(sep, items) is sep.join(items)
            obj, args = args[0], args[1:]
        if isinstance(obj, (str, bytes)):
            args = _check_text_method(obj, name, args)
        elif name == "extend" and isinstance(obj, list) and args:
            args = (_bounded(args[0]), *args[1:])
            if len(obj) + len(args[0]) > MAX_SEQUENCE:
                raise ScriptError(f"list of more than {MAX_SEQUENCE:,} elements is not allowed")
        elif name == "sort":
            kwargs = self._with_key(kwargs)
        result = getattr(obj, name)(*args, **kwargs)
        self.check(obj)  # update() grows in place
        return result


def _globals(program: _Program, functions: Mapping[str, Callable[..., Any]], budget: _Budget) -> dict[str, Any]:
    g: dict[str, Any] = {"__builtins__": dict(program.builtins)}
    # Globals, not builtins: `del map` then finds no unchecked map to fall back to.
    g.update({name: getattr(budget, attr) for name, attr in program.bound})
    g.update(program.helpers)
    for name in program.names & functions.keys():
        g[name] = budget.trusted(functions[name]) if callable(functions[name]) else functions[name]
    return g


def _check_data(values: Iterable[Any], what: str, source: str) -> None:
    # Shared references (x = [big] * 1000) would only blow up later, in the serializer.
    if _measure(list(values), MAX_DATA + 1) > MAX_DATA + 1:  # + 1: the list itself
        raise ScriptError(f"{what} is larger than {MAX_DATA:,} elements and characters", source=source)


def evaluate(expression: str, data: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> Any:
    program = _compile(expression.strip(), "eval")
    g = _globals(program, functions, _Budget(MAX_STEPS))
    g.update(data)
    try:
        result = eval(program.code, g)  # noqa: S307 - validated and guarded above
    except ScriptError:
        raise
    except RecursionError:
        raise ScriptError("recursion too deep", source=expression) from None
    except MemoryError:
        raise ScriptError("out of memory", source=expression) from None
    if isinstance(result, _CONTAINERS):  # anything else was size-checked when it was built
        _check_data([result], "the expression's result", expression)
    return result


def execute(script: str, data: dict[str, Any], functions: Mapping[str, Callable[..., Any]]) -> None:
    """Run a script whose top-level assignments update ``data`` in place."""
    program = _compile(script, "exec")
    g = _globals(program, functions, _Budget(MAX_STEPS))
    injected = set(g) - _BUDGET_BUILTINS  # `sum = a + b` is the script's own variable, as with builtins
    g.update(data)
    try:
        exec(program.code, g)  # noqa: S102 - validated and guarded above
    except ScriptError:
        raise
    except RecursionError:
        raise ScriptError("recursion too deep", source=script) from None
    except MemoryError:
        raise ScriptError("out of memory", source=script) from None
    updates: dict[str, Any] = {}
    for key, value in g.items():
        if key in injected and key not in data:
            continue
        if callable(value) or key.startswith("_"):
            continue
        updates[key] = value
    _check_data(updates.values(), "the data the script leaves", script)  # before data changes
    data.update(updates)
    for key in [k for k in data if k not in g]:
        del data[key]  # `del x` in the script


def default_functions() -> dict[str, Callable[..., Any]]:
    """Pure helpers available to every expression."""

    def now() -> str:
        return _dt.datetime.now(_dt.UTC).isoformat()

    return {"now": now}
