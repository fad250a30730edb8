"""Warnings about queries that read across rows in time but declare no lookback.

A window function (``lag``, ``avg(...) OVER (...)``, ``row_number``) or a join of ``source`` with itself
computes each row from other source rows. Without ``lookback`` a backfill only reads its own window, so the
rows near the window's start miss their history and differ depending on how a range was split into
backfills. The query is parsed by DuckDB's own parser (``json_serialize_sql``, always available), never
matched with regular expressions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import duckdb

from featurelake import duck

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView

SOURCE = "source"


def _serialized(query: str) -> dict[str, Any] | None:
    """DuckDB's JSON tree of ``query`` (with ``error`` set when it is not made of SELECTs), None on failure."""
    try:
        with duck.cursor() as con:
            rows = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchall()
    except duckdb.Error:
        return None
    tree = json.loads(rows[0][0])
    return tree if isinstance(tree, dict) else None


def parse_statements(query: str) -> list[dict[str, Any]] | None:
    """The statements of ``query`` as DuckDB's JSON tree, or None when DuckDB cannot parse it."""
    tree = _serialized(query)
    if tree is None or tree.get("error"):
        return None
    return [s["node"] for s in tree.get("statements", []) if isinstance(s, dict) and "node" in s]


@functools.lru_cache(maxsize=256)  # a backfill computes its batches with the same query
def statement_problem(query: str) -> str | None:
    """Why ``query`` is not one SELECT statement, checked before anything runs it (DuckDB would execute a
    ``CREATE``, ``SET`` or ``DROP`` it is handed); None when it is one, or when DuckDB cannot parse it (running
    it reports the syntax error)."""
    tree = _serialized(query)
    if tree is None:
        return None
    if tree.get("error"):
        message = str(tree.get("error_message", ""))
        return "it is not a SELECT (a view's query only reads source)" if "Only SELECT" in message else None
    count = len(tree.get("statements", []))
    return f"it holds {count} statements" if count > 1 else None


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict of a parsed tree (``node`` itself first), depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def _ctes(root: Any) -> dict[str, Any]:
    """Every common table expression defined anywhere in the tree: name -> its query."""
    out: dict[str, Any] = {}
    for node in walk(root):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                out[str(entry.get("key", "")).lower()] = entry.get("value")
    return out


def _reads_source(node: Any, ctes: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``node`` reads ``source``, directly or through common table expressions."""
    for n in walk(node):
        if n.get("type") != "BASE_TABLE" or n.get("schema_name"):
            continue
        name = str(n.get("table_name", "")).lower()
        if name in ctes and name not in seen:
            if _reads_source(ctes[name], ctes, seen | {name}):
                return True
        elif name == SOURCE:
            return True
    return False


def edge_constructs(query: str) -> list[str]:
    """The constructs of ``query`` that read other rows of ``source`` than the one being computed:
    window functions (by name) and joins of ``source`` with itself. Empty when the query cannot be parsed
    (running it reports that)."""
    statements = parse_statements(query)
    if not statements:
        return []
    found: list[str] = []
    for root in statements:
        ctes = _ctes(root)
        for node in walk(root):
            if node.get("class") == "WINDOW":
                found.append(f"window function {str(node.get('function_name', '')).lower()}()")
            elif node.get("type") == "JOIN" and all(
                _reads_source(node.get(side), ctes) for side in ("left", "right")
            ):
                found.append("a self-join of source")
    return list(dict.fromkeys(found))  # each construct once, in order of appearance


def lookback_warnings(view: FeatureView) -> list[str]:
    """One warning per view whose query needs history before the backfill window but declares no lookback."""
    if view.lookback or not view.query.strip():
        return []
    constructs = edge_constructs(view.query)
    if not constructs:
        return []
    return [
        f"view {view.name!r}: the query uses {', '.join(constructs)} but declares no lookback, so rows near "
        "the start of each backfill window are computed without the source rows before it (and differ "
        "with how a range is split into backfills); add lookback=timedelta(...) covering the longest "
        "history it reads (docs/features.md, Lookback)"
    ]


__all__ = ["edge_constructs", "lookback_warnings"]
