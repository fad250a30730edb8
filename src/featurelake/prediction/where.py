"""``--where``: a row filter typed by a user, evaluated by DuckDB over the feature batches and nothing else.

It is SQL from the command line, so it is held to one boolean expression before it gets anywhere near a
query (:func:`check_where`):

- at most 2,000 characters; no ``;``, no comments, no ``$``/``?`` parameters, balanced parentheses;
- no statement or clause keywords (``SELECT``, ``FROM``, ``UNION``, ``ATTACH``, ``COPY``, ``PRAGMA``, ``SET``,
  ``INSTALL``, ``OVER``...), so there are no subqueries and no second statement;
- function calls only from an allow-list of scalar functions (arithmetic, string, date, null handling);
- DuckDB must parse ``SELECT * FROM batch WHERE (<expr>)`` as exactly one SELECT, and bind it against the
  view's columns (unknown columns are named).

And it runs on a DuckDB connection with ``enable_external_access=false`` and a locked configuration
(:func:`sandbox`): even an expression that slipped through could not read or write a file, load an extension
or reach the network. It only ever sees the Arrow batches registered on that connection.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from featurelake.errors import UsageError

MAX_LENGTH = 2000

_FORBIDDEN = frozenset(
    """select from with union intersect except insert update delete merge upsert create drop alter
    attach detach copy pragma set reset install load force call export import checkpoint vacuum
    analyze begin commit rollback abort transaction grant revoke execute prepare deallocate use
    describe show summarize pivot unpivot table values returning into over window qualify limit
    offset order group having lateral join using exists any all some recursive materialized macro
    function sequence view schema database secret extension""".split()  # noqa: SIM905 - a word list reads better as text
)

#: Scalar functions a filter may call.
ALLOWED_FUNCTIONS = frozenset(
    """abs sign round floor ceil ceiling trunc sqrt cbrt exp ln log log2 log10 pow power mod greatest
    least isnan isinf isfinite coalesce ifnull nullif if lower upper lcase ucase length strlen len
    trim ltrim rtrim substr substring left right starts_with ends_with contains prefix suffix
    like_escape regexp_matches replace concat date_trunc date_part datepart extract epoch epoch_ms
    year month day hour minute second dayofweek dayofyear week quarter to_timestamp make_date
    make_timestamp cast try_cast hash md5_number decimal numeric varchar""".split()  # noqa: SIM905 - a word list reads better as text
)

#: Keywords that may stand right before ``(`` without being a function call.
_SYNTAX_BEFORE_PAREN = frozenset(
    """and or not in is between like ilike glob similar when then else case escape null""".split()  # noqa: SIM905 - a word list reads better as text
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    """(type, text) of each token, using DuckDB's own tokenizer (so strings and quoted names are respected)."""
    try:
        raw = duckdb.tokenize(expr)
    except duckdb.Error as exc:  # pragma: no cover - the tokenizer accepts any text
        raise UsageError(f"--where {expr!r} cannot be read as SQL: {exc}") from None
    out: list[tuple[str, str]] = []
    for i, (pos, kind) in enumerate(raw):
        end = raw[i + 1][0] if i + 1 < len(raw) else len(expr)
        out.append((str(kind).rsplit(".", 1)[-1], expr[pos:end].strip()))
    return out


def _refuse(expr: str, why: str) -> UsageError:
    return UsageError(
        f"--where {expr!r} is refused: {why}. It must be one boolean expression over the view's columns, "
        'e.g. --where "txn_count_1d > 3 AND amount_avg_1d IS NOT NULL"'
    )


def check_where(expr: str, columns: list[str]) -> tuple[str, list[str]]:
    """Validate a ``--where`` expression; returns it (stripped) and the view columns it mentions.

    ``columns`` are the columns the expression may use. Raises UsageError saying what is not allowed.
    """
    text = (expr or "").strip()
    if not text:
        raise _refuse(expr, "it is empty")
    if len(text) > MAX_LENGTH:
        raise _refuse(text[:60] + "...", f"it is longer than {MAX_LENGTH} characters")
    tokens = _tokens(text)
    depth = 0
    used: list[str] = []
    lower_cols = {c.lower(): c for c in columns}
    for i, (kind, tok) in enumerate(tokens):
        low = tok.lower()
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "comment":
            raise _refuse(text, "comments are not allowed")
        if kind == "operator":
            if ";" in tok:
                raise _refuse(text, "';' would start a second statement")
            if tok.startswith(("$", "?")):
                raise _refuse(text, "parameters ($1, ?) are not allowed")
            depth += tok.count("(") - tok.count(")")
            if depth < 0:
                raise _refuse(text, "it closes a parenthesis it never opened")
            continue
        if kind == "keyword" and low in _FORBIDDEN:
            raise _refuse(text, f"{tok.upper()} is not allowed (no statements, clauses or subqueries)")
        if nxt.startswith("(") and kind in ("identifier", "keyword"):
            if kind == "keyword" and low in _SYNTAX_BEFORE_PAREN:
                continue
            if low not in ALLOWED_FUNCTIONS:
                raise _refuse(
                    text, f"function {tok}() is not on the allowed list (docs/prediction.md lists them)"
                )
            continue
        if kind == "identifier":
            name = tok[1:-1].replace('""', '"') if tok.startswith('"') and tok.endswith('"') else tok
            if name.lower() in lower_cols and lower_cols[name.lower()] not in used:
                used.append(lower_cols[name.lower()])
    if depth != 0:
        raise _refuse(text, "its parentheses are not balanced")
    statements = duckdb.extract_statements(f"SELECT * FROM batch WHERE ({text})")
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise _refuse(text, "it does not read as a single filter expression")
    return text, used


def sandbox(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can see only what is registered on it: no files, extensions or settings
    (``threads``: how many threads its queries may use; default DuckDB's, one per core)."""
    config: dict[str, Any] = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if threads is not None:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    con.execute("SET TimeZone='UTC'")
    con.execute("SET lock_configuration=true")
    return con


def bind_where(expr: str, schema: pa.Schema, view: str) -> None:
    """Prove ``expr`` binds over ``schema`` (unknown columns and type errors named) before any row is read."""
    con = sandbox()
    try:
        con.register("batch", schema.empty_table())
        try:
            con.execute(f"SELECT * FROM batch WHERE ({expr}) LIMIT 0").fetchall()
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(
                f"--where {expr!r} is not valid over view {view} ({first}); its columns are "
                f"{', '.join(schema.names)}"
            ) from None
    finally:
        con.close()


__all__ = ["ALLOWED_FUNCTIONS", "MAX_LENGTH", "bind_where", "check_where", "sandbox"]
