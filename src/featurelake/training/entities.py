"""The entity frame of a training set: load it, check it, and fingerprint its content."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from featurelake.errors import UsageError
from featurelake.lakehouse.storage import Storage, is_remote, is_storage_failure, storage_error

TIMESTAMP_COLUMN = "event_timestamp"

EntitySource: TypeAlias = pa.Table | str | Path | Any
"""An Arrow table, a pandas DataFrame, or the path of a Parquet or CSV file."""


def load_entities(entities: EntitySource, storage: Storage | None = None) -> pa.Table:
    """The entity frame as an Arrow table without schema metadata (which would otherwise leak into outputs).

    A path may be a URL (``s3://bucket/entities.parquet``), read through ``storage``.
    """
    if isinstance(entities, pa.Table):
        table = entities
    elif isinstance(entities, str | Path) and is_remote(entities):
        table = _read_remote(str(entities), storage or Storage())
    elif isinstance(entities, str | Path):
        table = _read_file(Path(entities))
    elif type(entities).__module__.startswith("pandas") and hasattr(entities, "columns"):
        table = pa.Table.from_pandas(entities, preserve_index=False)
    else:
        raise UsageError(
            f"entities must be an Arrow table, a pandas DataFrame or a .parquet/.csv path, "
            f"not {type(entities).__name__}"
        )
    return table.replace_schema_metadata(None)


def _read_remote(url: str, storage: Storage) -> pa.Table:
    suffix = Path(url).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UsageError(f"entity file {url}: use a .parquet or .csv file")
    try:
        fs, path = storage.filesystem(url)
        if suffix == ".parquet":
            return pq.read_table(path, filesystem=fs)
        with fs.open_input_stream(path) as f:
            return pacsv.read_csv(f)
    except FileNotFoundError:
        raise UsageError(f"entity file {url} does not exist: give a Parquet or CSV file") from None
    except pa.ArrowInvalid as exc:
        raise UsageError(f"entity file {url} cannot be read as {suffix[1:]}: {exc}") from exc
    except OSError as exc:
        if is_storage_failure(exc):
            raise storage_error(exc, f"read entity file {url}") from exc
        raise UsageError(f"entity file {url} cannot be read as {suffix[1:]}: {exc}") from exc


def _read_file(path: Path) -> pa.Table:
    if not path.is_file():
        raise UsageError(f"entity file {path} does not exist: give a Parquet or CSV file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            return pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(
            f"entity file {path} cannot be read as {suffix[1:]}: {exc}; give a valid Parquet or CSV file"
        ) from exc
    raise UsageError(f"entity file {path}: use a .parquet or .csv file")


def check_timestamps(table: pa.Table, column: str = TIMESTAMP_COLUMN) -> None:
    """Require a tz-aware timestamp column without nulls: naive times would shift joins by a UTC offset."""
    if column not in table.column_names:
        raise UsageError(
            f"the entity frame has no {column!r} column (its columns: {', '.join(table.column_names) or 'none'}); "
            "add the time each row's features are wanted at"
        )
    t = table.schema.field(column).type
    if not pa.types.is_timestamp(t):
        raise UsageError(
            f"entity column {column!r} is {t}, not a timestamp: store it as a timestamp with a time zone "
            "(in CSV write ISO times with an offset, e.g. 2024-01-05T12:00:00Z)"
        )
    if t.tz is None:
        raise UsageError(
            f"entity column {column!r} holds timestamps without a time zone: make them UTC-aware "
            "(pandas: df[col] = df[col].dt.tz_localize('UTC'); CSV: add 'Z' or an offset)"
        )
    nulls = table.column(column).null_count
    if nulls:
        raise UsageError(
            f"{nulls} entity rows have a null {column!r}: every row needs the time its features are wanted at"
        )


def join_key_column(table: pa.Table, key: str, key_type: pa.DataType, view: str) -> pa.Array:
    """The entity frame's ``key`` column cast to the view's key type (integer widths and string kinds mix)."""
    if key not in table.column_names:
        raise UsageError(
            f"the entity frame has no column {key!r}, the join key of view {view!r} "
            f"(its columns: {', '.join(table.column_names)})"
        )
    col = table.column(key).combine_chunks()
    if pa.types.is_dictionary(col.type):  # e.g. a pandas categorical
        col = col.dictionary_decode()
    if col.type == key_type:
        return col
    ints = pa.types.is_integer(col.type) and pa.types.is_integer(key_type)
    strings = (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and (
        pa.types.is_string(key_type) or pa.types.is_large_string(key_type)
    )
    if pa.types.is_null(col.type) or ints or strings:
        try:
            return col.cast(key_type, safe=True)
        except pa.ArrowInvalid as exc:
            raise UsageError(
                f"entity column {key!r} does not fit view {view!r}'s key type {key_type}: {exc}"
            ) from exc
    raise UsageError(
        f"entity column {key!r} is {col.type} but view {view!r} keys its rows by {key_type}: "
        "convert the column (keys that differ in type never match)"
    )


def fingerprint(table: pa.Table) -> str:
    """SHA-256 of the frame's content (column names, types, values), independent of chunking and metadata."""
    canonical = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, canonical.schema) as writer:
        for batch in canonical.to_batches():
            writer.write_batch(batch)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
