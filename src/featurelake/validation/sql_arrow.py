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
from collections.abc import Callable, Iterable
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


def count_false(frame: pa.Table, expr: str, *, finite: Iterable[str] = ()) -> int | None:
    """Rows where ``expr`` is FALSE (NULL does not count), or None when DuckDB must evaluate it.

    ``finite``: float columns of ``frame`` already known to hold no NaN or infinity (not checked again).
    """
    fn = _compiled(expr, frame.schema)
    if fn is None:
        return None
    try:
        state = _Frame(frame)
        state.checked.update(finite)
        result = fn(state)
        if isinstance(result, pa.Scalar) or not pa.types.is_boolean(result.type):
            return None
        # FALSE rows: the non-null ones minus the TRUE ones (a boolean sum counts TRUE).
        true = int(pc.sum(result).as_py() or 0)
        return len(result) - result.null_count - true
    except (Unsupported, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


__all__ = ["count_false"]
