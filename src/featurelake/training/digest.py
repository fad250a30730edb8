"""The SHA-256 of a training set's content, and where two training sets first differ.

``table_digest(table)`` defines a training set's own SHA-256 (format 1), independent of how it is stored:

- each column is normalised first: dictionaries decoded; ``string``/``large_string``/``string_view`` are one
  type ``string`` and the binary kinds one type ``binary``; the types Parquet cannot store are taken as Parquet
  stores them (``timestamp[s]`` as ``timestamp[ms]``, ``date64`` as ``date32``, ``time32[s]`` as
  ``time32[ms]``), so a table and the same table read back from any Parquet file have the same digest;
- a column's SHA-256 covers the line ``<name>\\t<type>\\t<rows>\\n``, then, per block of 65,536 rows, one
  validity byte per row (1 valid, 0 null) followed by the values: fixed-width values as 8-byte little-endian
  integers or IEEE doubles (nulls as 0, every NaN as the one quiet NaN ``0x7ff8000000000000``), strings and
  binaries as their 8-byte lengths then their bytes (nulls empty), anything else (decimals, lists, structs)
  as length-prefixed JSON of each value;
- the table's SHA-256 covers ``featurelake.table.v1 rows=<rows>\\n`` then ``<name>\\t<type>\\t<column
  sha256>\\n`` per column, in order.

Schema metadata (the provenance), chunking, buffer layout and whatever lies under a null slot never change
it; column names, order, types and values always do.

``cell_hashes`` gives a 32-bit hash per cell of chosen columns (4 bytes per row and column); recorded beside
the digest, it lets ``compare`` name the first row and column where a rebuilt table differs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DIGEST_FORMAT = 1
_BLOCK = 65_536
_CANONICAL_NAN = np.array([0x7FF8000000000000], dtype="<u8").view("<f8")[0]
_NULL_CELL = np.uint32(0x9E3779B9)


@dataclass(frozen=True)
class ColumnDigest:
    """One column: its name, normalised type and SHA-256."""

    name: str
    type: str
    sha256: str


@dataclass(frozen=True)
class TableDigest:
    """A table's SHA-256 with its row count and each column's digest."""

    sha256: str
    rows: int
    columns: list[ColumnDigest] = field(default_factory=list)
    format: int = DIGEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "rows": self.rows,
            "format": self.format,
            "columns": [{"name": c.name, "type": c.type, "sha256": c.sha256} for c in self.columns],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableDigest:
        return cls(
            sha256=str(data["sha256"]),
            rows=int(data["rows"]),
            columns=[ColumnDigest(str(c["name"]), str(c["type"]), str(c["sha256"])) for c in data["columns"]],
            format=int(data.get("format", DIGEST_FORMAT)),
        )

    def column(self, name: str) -> ColumnDigest | None:
        return next((c for c in self.columns if c.name == name), None)


# --- normalisation ------------------------------------------------------------------------------------
def _normalise(col: pa.ChunkedArray | pa.Array) -> tuple[str, pa.Array]:
    """The column as one array of its canonical type, with that type's name."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string", arr.cast(pa.large_binary())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary", arr.cast(pa.large_binary())
    if pa.types.is_timestamp(t) and t.unit == "s":
        arr = arr.cast(pa.timestamp("ms", t.tz))
    elif pa.types.is_date64(t):
        arr = arr.cast(pa.date32(), safe=False)
    elif pa.types.is_time32(t) and t.unit == "s":
        arr = arr.cast(pa.time32("ms"))
    return _type_name(arr.type), arr


def _type_name(t: pa.DataType) -> str:
    """A type's name with the distinctions Parquet does not keep erased (string kinds, list item names)."""
    if pa.types.is_dictionary(t):
        return _type_name(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    if pa.types.is_timestamp(t) and t.unit == "s":
        return str(pa.timestamp("ms", t.tz))
    if pa.types.is_date64(t):
        return "date32[day]"
    if pa.types.is_time32(t) and t.unit == "s":
        return "time32[ms]"
    if pa.types.is_fixed_size_list(t):
        return f"list<{_type_name(t.value_type)}>[{t.list_size}]"
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    ):
        return f"list<{_type_name(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{_type_name(t.key_type)}, {_type_name(t.item_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {_type_name(f.type)}" for f in t) + ">"
    return str(t)


def _kind(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_signed_integer(t):
        return "int"
    if pa.types.is_unsigned_integer(t):
        return "uint"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_temporal(t) and not pa.types.is_interval(t):
        return "temporal"
    if pa.types.is_large_binary(t):
        return "bytes"
    return "json"


def _fixed(arr: pa.Array, kind: str) -> np.ndarray:
    """8-byte canonical values of a fixed-width array (nulls as 0, NaN canonical)."""
    if kind == "temporal":
        arr = arr.view(pa.int64() if arr.type.bit_width == 64 else pa.int32())
        kind = "int"
    if kind == "bool":
        return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype="<i8")
    if kind == "float":
        values = np.asarray(pc.fill_null(arr, 0).to_numpy(zero_copy_only=False), dtype="<f8")
        return np.where(np.isnan(values), _CANONICAL_NAN, values).astype("<f8")
    dtype = "<u8" if kind == "uint" else "<i8"
    return np.asarray(pc.fill_null(arr, 0).to_numpy(zero_copy_only=False), dtype=dtype)


def _offsets(arr: pa.Array) -> tuple[np.ndarray, memoryview]:
    """Offsets (rebased to 0) and data of a large_binary array whose nulls are empty."""
    filled = pc.fill_null(arr, b"") if arr.null_count else arr
    bufs = filled.buffers()
    offsets = np.frombuffer(bufs[1], dtype="<i8")[filled.offset : filled.offset + len(filled) + 1]
    data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
    return offsets, data[int(offsets[0]) : int(offsets[-1])] if len(offsets) else data[0:0]


def _json_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta | Decimal):
        return str(value)
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def _json_cells(arr: pa.Array) -> list[bytes]:
    return [
        json.dumps(_json_value(v), sort_keys=False, separators=(",", ":"), default=str).encode()
        for v in arr.to_pylist()
    ]


def _blocks(arr: pa.Array) -> Iterator[pa.Array]:
    for start in range(0, len(arr), _BLOCK):
        yield arr.slice(start, _BLOCK)


# --- digests ------------------------------------------------------------------------------------------
def column_digest(name: str, col: pa.ChunkedArray | pa.Array) -> ColumnDigest:
    """The SHA-256 of one column (see the module docstring for the serialization)."""
    type_name, arr = _normalise(col)
    kind = _kind(arr.type)
    h = hashlib.sha256(f"{name}\t{type_name}\t{len(arr)}\n".encode())
    for block in _blocks(arr):
        h.update(np.asarray(pc.is_valid(block).to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        if kind == "bytes":
            offsets, data = _offsets(block)
            h.update(np.diff(offsets).astype("<i8").tobytes())
            h.update(data)
        elif kind == "json":
            for cell in _json_cells(block):
                h.update(len(cell).to_bytes(8, "little"))
                h.update(cell)
        else:
            h.update(_fixed(block, kind).tobytes())
    return ColumnDigest(name, type_name, h.hexdigest())


def table_digest(table: pa.Table) -> TableDigest:
    """The training set's SHA-256 (format 1): names, normalised types and values of its columns, in order."""
    columns = [column_digest(name, table.column(i)) for i, name in enumerate(table.column_names)]
    h = hashlib.sha256(f"featurelake.table.v1 rows={table.num_rows}\n".encode())
    for c in columns:
        h.update(f"{c.name}\t{c.type}\t{c.sha256}\n".encode())
    return TableDigest(h.hexdigest(), table.num_rows, columns)


def _mix(bits: np.ndarray) -> np.ndarray:
    """splitmix64 over uint64 values (array arithmetic wraps silently)."""
    z = bits + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _column_cells(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    _, arr = _normalise(col)
    kind = _kind(arr.type)
    valid = np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=bool)
    if kind in ("bytes", "json"):
        if kind == "bytes":
            offsets, data = _offsets(arr)
            raw = bytes(data)
            base = int(offsets[0]) if len(offsets) else 0
            cells = [raw[int(a) - base : int(b) - base] for a, b in itertools.pairwise(offsets)]
        else:
            cells = _json_cells(arr)
        out = np.fromiter(
            (int.from_bytes(hashlib.blake2b(c, digest_size=4).digest(), "little") for c in cells),
            dtype=np.uint32,
            count=len(cells),
        )
    else:
        bits = _fixed(arr, kind).view("<u8")
        out = (_mix(bits) >> np.uint64(32)).astype(np.uint32)
    return np.where(valid, out, _NULL_CELL).astype(np.uint32)


def cell_hashes(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """A uint32 hash per cell of ``columns`` (same names), for locating differences later."""
    return pa.table({c: pa.array(_column_cells(table.column(c)), pa.uint32()) for c in columns})


# --- comparing ----------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """How a rebuilt table compares with a recorded digest."""

    identical: bool
    differences: list[str] = field(default_factory=list)
    first_row: int | None = None
    first_column: str | None = None


def _value_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def compare(
    recorded: TableDigest,
    rebuilt: pa.Table,
    *,
    recorded_cells: pa.Table | None = None,
    row_label: Sequence[str] = (),
) -> Comparison:
    """Compare ``rebuilt`` with the ``recorded`` digest; name what differs (rows, columns, first differing
    row and column, using ``recorded_cells`` when given; ``row_label`` columns describe that row)."""
    now = table_digest(rebuilt)
    if now.sha256 == recorded.sha256:
        return Comparison(True)
    out = Comparison(False)
    if now.rows != recorded.rows:
        out.differences.append(f"rows: recorded {recorded.rows}, rebuilt {now.rows}")
    names_then = [c.name for c in recorded.columns]
    names_now = [c.name for c in now.columns]
    missing = [n for n in names_then if n not in names_now]
    extra = [n for n in names_now if n not in names_then]
    if missing:
        out.differences.append(f"columns missing from the rebuild: {', '.join(missing)}")
    if extra:
        out.differences.append(f"columns the rebuild added: {', '.join(extra)}")
    common = [n for n in names_then if n in names_now]
    if not missing and not extra and names_then != names_now:
        out.differences.append(
            f"column order: recorded {', '.join(names_then)}; rebuilt {', '.join(names_now)}"
        )
    changed: list[str] = []
    for name in common:
        then, cur = recorded.column(name), now.column(name)
        assert then is not None and cur is not None
        if then.type != cur.type:
            out.differences.append(f"column {name}: recorded type {then.type}, rebuilt {cur.type}")
        elif then.sha256 != cur.sha256:
            changed.append(name)
    if changed and now.rows == recorded.rows:
        _locate(out, changed, rebuilt, recorded_cells, row_label)
    elif changed:
        out.differences.append(f"values differ in columns {', '.join(changed)}")
    if not out.differences:
        out.differences.append(
            f"the table's sha256 differs (recorded {recorded.sha256[:16]}..., rebuilt {now.sha256[:16]}...) "
            "although every column's does not: the recorded digest was altered"
        )
    return out


def _locate(
    out: Comparison,
    changed: list[str],
    rebuilt: pa.Table,
    recorded_cells: pa.Table | None,
    row_label: Sequence[str],
) -> None:
    located = [c for c in changed if recorded_cells is not None and c in recorded_cells.column_names]
    first: dict[str, tuple[int, int]] = {}
    for name in located:
        assert recorded_cells is not None
        then = np.asarray(recorded_cells.column(name).to_numpy(), dtype=np.uint32)
        cur = _column_cells(rebuilt.column(name))
        diff = np.flatnonzero(then != cur) if len(then) == len(cur) else np.array([], dtype=np.int64)
        if diff.size:
            first[name] = (int(diff[0]), int(diff.size))
    if first:
        row = min(r for r, _ in first.values())
        column = next(c for c in rebuilt.column_names if c in first and first[c][0] == row)
        out.first_row, out.first_column = row, column
        label = ", ".join(
            f"{c}={_value_text(rebuilt.column(c)[row].as_py())}"
            for c in row_label
            if c in rebuilt.column_names
        )
        value = _value_text(rebuilt.column(column)[row].as_py())
        out.differences.append(
            f"first difference at row {row}" + (f" ({label})" if label else "")
            + f", column {column}: rebuilt value {value}"
        )  # fmt: skip
    for name in changed:
        if name in first:
            row, count = first[name]
            out.differences.append(f"column {name}: {count} value(s) differ, the first at row {row}")
        else:
            out.differences.append(f"column {name}: its values differ (no per-row record to locate them)")
