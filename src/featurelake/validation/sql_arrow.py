"""Simple SQL predicates of ``checks.sql`` evaluated with Arrow compute instead of a DuckDB query.

A check such as ``sql("amount_sum >= amount_avg")`` is a handful of comparisons over a few columns;
DuckDB spends ~6x the CPU of Arrow's kernels on it (query setup, threads, its own vectors). The predicate
is parsed by DuckDB itself (``json_serialize_sql``), and a small, safe subset is translated:

- column references; integer, decimal, string and boolean constants;
- ``= <> < <= > >=``, ``BETWEEN``, ``AND``/``OR`` (three-valued, as SQL), ``NOT``, ``IS [NOT] NULL``;
- ``+ - *`` and unary minus (overflow-checked, as DuckDB).

Anything else (functions, casts, division, timestamps...) returns None and DuckDB evaluates it as before.
SQL and IEEE floats disagree on NaN (DuckDB orders NaN above every number, IEEE compares it unequal to
all), so a float column holding NaN or an infinity, or arithmetic that produces one, also goes to DuckDB.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurelake import duck


class Unsupported(Exception):
    """The predicate (or this data) is outside the subset: let DuckDB evaluate it."""


Node = dict[str, Any]


class _Frame:
    """The table a compiled predicate runs on, and which of its float columns were found finite."""

    def __init__(self, table: pa.Table) -> None:
        self.table, self.checked = table, set[str]()


Eval = Callable[[_Frame], Any]

_COMPARE = {
    "COMPARE_EQUAL": pc.equal,
    "COMPARE_NOTEQUAL": pc.not_equal,
    "COMPARE_LESSTHAN": pc.less,
    "COMPARE_GREATERTHAN": pc.greater,
    "COMPARE_LESSTHANOREQUALTO": pc.less_equal,
    "COMPARE_GREATERTHANOREQUALTO": pc.greater_equal,
}
_ARITH = {"+": pc.add_checked, "-": pc.subtract_checked, "*": pc.multiply_checked}


@functools.lru_cache(maxsize=256)
def _parse(expr: str) -> Node | None:
    with duck.cursor() as con:
        row = con.execute("SELECT json_serialize_sql(?)", [f"SELECT {expr}"]).fetchone()
    tree = json.loads(row[0]) if row else {}
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        return None
    node = tree["statements"][0]["node"]
    if node.get("type") != "SELECT_NODE" or node.get("from_table", {}).get("type") != "EMPTY":
        return None
    select = node.get("select_list") or []
    return select[0] if len(select) == 1 else None


def _finite_floats(col: Any) -> None:
    """Refuse (Unsupported) a float array holding NaN or an infinity: SQL orders NaN, IEEE does not."""
    if isinstance(col, pa.ChunkedArray | pa.Array) and pa.types.is_floating(col.type):
        total = pc.sum(col).as_py()
        if total is not None and not np.isfinite(total):
            raise Unsupported


def _constant(node: Node) -> Any:
    lit = node.get("literal") or {}
    kind, text = lit.get("kind"), lit.get("text")
    if text is None:
        raise Unsupported
    if kind in ("INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT"):
        return pa.scalar(int(text), pa.int64())
    if kind in ("NUMERIC", "DECIMAL", "DOUBLE", "FLOAT"):
        value = float(text)
        if not np.isfinite(value):
            raise Unsupported
        return pa.scalar(value, pa.float64())
    if kind in ("VARCHAR", "STRING"):
        return pa.scalar(text, pa.string())
    if kind == "BOOLEAN":
        return pa.scalar(text.lower() == "true", pa.bool_())
    raise Unsupported


def _compile(node: Node, schema: pa.Schema) -> Eval:
    cls, typ = node.get("class"), node.get("type")
    if cls == "COLUMN_REF":
        names = node.get("column_names") or []
        if len(names) != 1 or names[0] not in schema.names:
            raise Unsupported
        t = schema.field(names[0]).type
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_boolean(t)
        ):
            raise Unsupported
        name = names[0]

        def column(frame: _Frame) -> Any:
            col = frame.table.column(name)
            if name not in frame.checked:  # a column the predicate reads twice is checked once
                _finite_floats(col)
                frame.checked.add(name)
            return col

        return column
    if cls == "CONSTANT":
        value = _constant(node)
        return lambda frame: value
    if cls == "COMPARISON" and typ in _COMPARE:
        fn, left, right = _COMPARE[typ], _compile(node["left"], schema), _compile(node["right"], schema)
        return lambda frame: fn(left(frame), right(frame))
    if cls == "BETWEEN":
        x, lo, hi = (_compile(node[k], schema) for k in ("input", "lower", "upper"))
        return lambda frame: pc.and_kleene(
            pc.greater_equal(x(frame), lo(frame)), pc.less_equal(x(frame), hi(frame))
        )
    if cls == "CONJUNCTION" and typ in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
        parts = [_compile(c, schema) for c in node.get("children") or []]
        if len(parts) < 2:
            raise Unsupported
        join = pc.and_kleene if typ == "CONJUNCTION_AND" else pc.or_kleene
        return lambda frame: functools.reduce(join, (p(frame) for p in parts))
    if cls == "OPERATOR":
        children = [_compile(c, schema) for c in node.get("children") or []]
        if len(children) != 1:
            raise Unsupported
        (child,) = children
        if typ == "OPERATOR_NOT":
            return lambda frame: pc.invert(child(frame))
        if typ == "OPERATOR_IS_NULL":
            return lambda frame: pc.is_null(child(frame))
        if typ == "OPERATOR_IS_NOT_NULL":
            return lambda frame: pc.is_valid(child(frame))
        raise Unsupported
    if cls == "FUNCTION" and node.get("is_operator") and not node.get("distinct"):
        args = [_compile(a["expression"], schema) for a in node.get("arguments") or []]
        name = node.get("function_name")
        if name == "-" and len(args) == 1:
            (arg,) = args
            return lambda frame: _checked(pc.negate_checked(arg(frame)))
        if name in _ARITH and len(args) == 2:
            fn, a, b = _ARITH[name], args[0], args[1]
            return lambda frame: _checked(fn(a(frame), b(frame)))
    raise Unsupported


def _checked(result: Any) -> Any:
    _finite_floats(result)  # an overflow to inf (or inf - inf) must not meet IEEE comparisons
    return result


@functools.lru_cache(maxsize=256)
def _compiled(expr: str, schema: pa.Schema) -> Eval | None:
    node = _parse(expr)
    if node is None:
        return None
    try:
        return _compile(node, schema)
    except (Unsupported, KeyError, TypeError, ValueError):
        return None


# --- proofs from column bounds ---------------------------------------------------------------------------
#
# With the min and max of every column a predicate reads (which the audit computes anyway for its range
# checks), interval arithmetic often proves that no row can make the predicate FALSE: ``f0 <= f1 + 1000``
# holds on every row when max(f0) <= min(f1) + 1000. IEEE rounding is monotonic, so a bound computed in
# floating point bounds every row's value computed the same way. A value set is (lo, hi, nullable); a
# truth set is the subset of {True, False, None} the expression can take (None: SQL NULL).

_Interval = tuple[Any, Any, bool]
_Truths = frozenset[bool | None]
_BOTH: _Truths = frozenset({True, False})


def _bound_value(node: Node, bounds: dict[str, tuple[Any, Any]], nullable: set[str]) -> _Interval:
    cls = node.get("class")
    if cls == "COLUMN_REF":
        names = node.get("column_names") or []
        if len(names) != 1 or names[0] not in bounds:
            raise Unsupported
        lo, hi = bounds[names[0]]
        return lo, hi, names[0] in nullable
    if cls == "CONSTANT":
        value = _constant(node).as_py()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unsupported
        return value, value, False
    if cls == "FUNCTION" and node.get("is_operator") and not node.get("distinct"):
        args = [_bound_value(a["expression"], bounds, nullable) for a in node.get("arguments") or []]
        name = node.get("function_name")
        if name == "-" and len(args) == 1:
            lo, hi, null = args[0]
            return _finite(-hi), _finite(-lo), null
        if name in _ARITH and len(args) == 2:
            (alo, ahi, anull), (blo, bhi, bnull) = args
            if any(isinstance(v, float) for v in (alo, ahi, blo, bhi)):  # DuckDB computes in double then
                alo, ahi, blo, bhi = float(alo), float(ahi), float(blo), float(bhi)
            if name == "+":
                lo, hi = alo + blo, ahi + bhi
            elif name == "-":
                lo, hi = alo - bhi, ahi - blo
            else:
                products = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
                lo, hi = min(products), max(products)
            return _finite(lo), _finite(hi), anull or bnull
    raise Unsupported


def _finite(v: Any) -> Any:
    """``v`` if it is a finite double or an int64; an overflow is left to DuckDB (it raises or gives inf)."""
    if isinstance(v, float) and not np.isfinite(v):
        raise Unsupported
    if isinstance(v, int) and not -(2**63) <= v < 2**63:
        raise Unsupported
    return v


def _kleene(op: str, a: bool | None, b: bool | None) -> bool | None:
    if op == "and":
        return False if a is False or b is False else (None if a is None or b is None else True)
    return True if a is True or b is True else (None if a is None or b is None else False)


def _truths(node: Node, bounds: dict[str, tuple[Any, Any]], nullable: set[str]) -> _Truths:
    cls, typ = node.get("class"), node.get("type")
    if cls == "COMPARISON" and typ in _COMPARE:
        (alo, ahi, anull) = _bound_value(node["left"], bounds, nullable)
        (blo, bhi, bnull) = _bound_value(node["right"], bounds, nullable)
        if any(isinstance(v, float) for v in (alo, ahi, blo, bhi)):  # compared as doubles, as DuckDB does
            alo, ahi, blo, bhi = float(alo), float(ahi), float(blo), float(bhi)
        always, never = {
            "COMPARE_LESSTHAN": (ahi < blo, alo >= bhi),
            "COMPARE_LESSTHANOREQUALTO": (ahi <= blo, alo > bhi),
            "COMPARE_GREATERTHAN": (alo > bhi, ahi <= blo),
            "COMPARE_GREATERTHANOREQUALTO": (alo >= bhi, ahi < blo),
            "COMPARE_EQUAL": (alo == ahi == blo == bhi, ahi < blo or bhi < alo),
            "COMPARE_NOTEQUAL": (ahi < blo or bhi < alo, alo == ahi == blo == bhi),
        }[typ]
        out: set[bool | None] = {True} if always else ({False} if never else set(_BOTH))
        return frozenset(out | ({None} if anull or bnull else set()))
    if cls == "BETWEEN":
        x, lo, hi = (node[k] for k in ("input", "lower", "upper"))
        ge = {"class": "COMPARISON", "type": "COMPARE_GREATERTHANOREQUALTO", "left": x, "right": lo}
        le = {"class": "COMPARISON", "type": "COMPARE_LESSTHANOREQUALTO", "left": x, "right": hi}
        return _combine("and", [_truths(ge, bounds, nullable), _truths(le, bounds, nullable)])
    if cls == "CONJUNCTION" and typ in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
        parts = [_truths(c, bounds, nullable) for c in node.get("children") or []]
        if len(parts) < 2:
            raise Unsupported
        return _combine("and" if typ == "CONJUNCTION_AND" else "or", parts)
    if cls == "OPERATOR":
        children = node.get("children") or []
        if len(children) != 1:
            raise Unsupported
        if typ == "OPERATOR_NOT":
            return frozenset(None if t is None else not t for t in _truths(children[0], bounds, nullable))
        if typ in ("OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL"):
            null = _bound_value(children[0], bounds, nullable)[2]
            return frozenset({typ == "OPERATOR_IS_NULL", typ != "OPERATOR_IS_NULL"} if null else {False})
    raise Unsupported


def _combine(op: str, parts: list[_Truths]) -> _Truths:
    result = parts[0]
    for part in parts[1:]:
        result = frozenset(_kleene(op, a, b) for a in result for b in part)
    return result


def never_false(frame: pa.Table, expr: str, bounds: dict[str, tuple[Any, Any]]) -> bool:
    """True when the column ``bounds`` (DuckDB's min and max of each column's non-null values) prove that
    ``expr`` is FALSE on no row of ``frame``; False when they do not tell."""
    node = _parse(expr)
    if node is None:
        return False
    usable = {
        c: (lo, hi)
        for c, (lo, hi) in bounds.items()
        if c in frame.schema.names
        # BIGINT and DOUBLE only: DuckDB computes narrower types in their own width (an INTEGER sum can
        # overflow where an int64 bound does not, FLOAT rounds differently).
        and frame.schema.field(c).type in (pa.int64(), pa.float64())
        and all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in (lo, hi))
    }
    nullable = {c for c in usable if frame.column(c).null_count}
    try:
        return False not in _truths(node, usable, nullable)
    except (Unsupported, KeyError, TypeError, ValueError):
        return False


def count_false(
    frame: pa.Table, expr: str, *, bounds: dict[str, tuple[Any, Any]] | None = None
) -> int | None:
    """Rows where ``expr`` is FALSE (NULL does not count), or None when DuckDB must evaluate it.

    ``bounds``: DuckDB's min and max of the non-null values of some columns, when already known. A float
    column with finite bounds holds no NaN or infinity (it is not checked again), and when the bounds prove
    that no row is FALSE (see :func:`never_false`) no row is read at all.
    """
    if bounds and never_false(frame, expr, bounds):
        return 0
    fn = _compiled(expr, frame.schema)
    if fn is None:
        return None
    try:
        state = _Frame(frame)
        state.checked.update(
            c
            for c, (lo, hi) in (bounds or {}).items()
            if all(isinstance(v, float) and np.isfinite(v) for v in (lo, hi))
        )
        result = fn(state)
        if isinstance(result, pa.Scalar) or not pa.types.is_boolean(result.type):
            return None
        # FALSE rows: the non-null ones minus the TRUE ones (a boolean sum counts TRUE).
        true = int(pc.sum(result).as_py() or 0)
        return len(result) - result.null_count - true
    except (Unsupported, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


__all__ = ["count_false", "never_false"]
