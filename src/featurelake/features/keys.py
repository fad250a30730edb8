"""Entity keys of one or several columns: how a key is written, encoded for the online stores and parsed.

An entity's key is one column (``Entity("user", join_key="user_id")``) or several
(``Entity("user_merchant", join_keys=["user_id", "merchant_id"])``). Everything that handles key *values*
goes through this module, so every engine and store agrees on them:

- **Store encoding** (:func:`encode_key`, :func:`key_sql`): an online store keys a view's rows by one string.
  A one-column key is the value's text, exactly as before composite keys existed (``42``, ``u0001``). A
  composite key is the texts of its values in key order, each with ``%`` written ``%25`` and ``,`` written
  ``%2C``, joined by ``,`` (``(1, "a,b")`` -> ``1,a%2Cb``). Every ``,`` of the result is a separator, so
  distinct keys of one view (whose key columns and their types are fixed) never share a string, whatever
  their values hold (commas, ``=``, ``%``, separators of any other scheme); :func:`decode_key` inverts it.
  DuckDB (the local sync and the Spark executors) and Spark SQL build the same string with :func:`key_sql`.
- **Text form** (:func:`parse_key_text`, :func:`describe_key`): on the command line and in messages a
  composite key is written ``user_id=1,merchant_id=7``; a value holding ``,`` or ``"`` is double-quoted,
  with ``""`` for a quote inside (``merchant_id="a,b"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from featurelake.errors import UsageError

SEPARATOR = ","


def as_keys(key: str | Sequence[str]) -> tuple[str, ...]:
    """One key column name or a sequence of them, as a tuple of column names."""
    return (key,) if isinstance(key, str) else tuple(key)


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace(",", "%2C")


def _unescape(text: str) -> str:
    # Every '%' of an escaped text starts '%25' or '%2C', so the two replacements cannot overlap.
    return text.replace("%2C", ",").replace("%25", "%")


def encode_key(values: Sequence[object]) -> str:
    """The online store's string for a key of ``values`` (ints or strings, in key-column order)."""
    if len(values) == 1:
        return str(values[0])
    return SEPARATOR.join(_escape(str(v)) for v in values)


def decode_key(text: str, columns: int) -> list[str]:
    """The texts of the values of a key of ``columns`` columns encoded by :func:`encode_key`."""
    if columns == 1:
        return [text]
    parts = text.split(SEPARATOR)
    if len(parts) != columns:
        raise ValueError(f"stored key {text!r} does not have {columns} values")
    return [_unescape(p) for p in parts]


def key_sql(columns: Sequence[str], quote: Callable[[str], str], text_type: str = "VARCHAR") -> str:
    """SQL building :func:`encode_key`'s string from the key columns (DuckDB; Spark SQL with ``STRING``)."""
    if len(columns) == 1:
        return f"CAST({quote(columns[0])} AS {text_type})"
    parts = [f"replace(replace(CAST({quote(c)} AS {text_type}), '%', '%25'), ',', '%2C')" for c in columns]
    return f"concat_ws(',', {', '.join(parts)})"


def _quoted(text: str) -> str:
    if SEPARATOR in text or '"' in text or text != text.strip() or text == "":
        return '"' + text.replace('"', '""') + '"'
    return text


def describe_key(columns: Sequence[str], values: Sequence[object]) -> str:
    """A key for messages and tables: the value of a one-column key, else ``user_id=1,merchant_id=7``."""
    if len(columns) == 1:
        return str(values[0])
    return SEPARATOR.join(f"{c}={_quoted(str(v))}" for c, v in zip(columns, values, strict=True))


def _split(text: str, view: str, example: str) -> list[tuple[str, str]]:
    """``col=value`` pairs of ``text``; a value may be double-quoted (``""`` is a quote inside)."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i <= n:
        eq = text.find("=", i)
        comma = text.find(SEPARATOR, i)
        if eq < 0 or (0 <= comma < eq):
            part = text[i : comma if comma >= 0 else n]
            raise UsageError(
                f"key {text!r} of view {view!r}: {part!r} is not COLUMN=VALUE; view {view!r} has a composite "
                f'key, written {example} (double-quote a value holding a comma: col="a,b")'
            )
        column = text[i:eq].strip()
        j = eq + 1
        if j < n and text[j] == '"':
            out: list[str] = []
            j += 1
            while True:
                if j >= n:
                    raise UsageError(
                        f"key {text!r} of view {view!r}: the quoted value of {column} is not closed; end it "
                        'with " (write "" for a quote inside)'
                    )
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        out.append('"')
                        j += 2
                        continue
                    j += 1
                    break
                out.append(text[j])
                j += 1
            value = "".join(out)
            if j < n and text[j] != SEPARATOR:
                raise UsageError(
                    f"key {text!r} of view {view!r}: after the quoted value of {column} comes {text[j:]!r}; "
                    "separate key columns with ','"
                )
        else:
            end = text.find(SEPARATOR, j)
            end = n if end < 0 else end
            value, j = text[j:end], end
        pairs.append((column, value))
        if j >= n:
            break
        i = j + 1
        if i >= n:
            raise UsageError(f"key {text!r} of view {view!r} ends with ','; remove it")
    return pairs


def parse_key_text(text: str, columns: Sequence[str], view: str) -> list[str]:
    """The values (as text, in key-column order) of a composite key written ``col1=v1,col2=v2``.

    UsageError naming the view and the column for a missing, unknown or repeated key column.
    """
    example = ",".join(f"{c}=..." for c in columns)
    given: dict[str, str] = {}
    for column, value in _split(text, view, example):
        if column not in columns:
            raise UsageError(
                f"key {text!r}: view {view!r} has no key column {column!r}; its key columns are "
                f"{', '.join(columns)} (write {example})"
            )
        if column in given:
            raise UsageError(f"key {text!r} of view {view!r} gives {column} twice; give each key column once")
        given[column] = value
    missing = [c for c in columns if c not in given]
    if missing:
        raise UsageError(
            f"key {text!r} of view {view!r} lacks {', '.join(missing)}: a composite key names every key "
            f"column ({example})"
        )
    return [given[c] for c in columns]


__all__ = [
    "SEPARATOR",
    "as_keys",
    "decode_key",
    "describe_key",
    "encode_key",
    "key_sql",
    "parse_key_text",
]
