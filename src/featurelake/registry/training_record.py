"""What the registry keeps of a version's training set so that it can be rebuilt from the registry alone.

At registration (``capture``, then ``insert`` in the version's own transaction):

- the training set's SHA-256 and each column's (``training.digest``: names, types and values, independent of
  Parquet writer details), its row count and which columns came from the entity frame;
- the **entity frame** (the columns the training set was built from: join keys, ``event_timestamp``, labels),
  plus any column added to the training set after it was built (a label computed later), as an Arrow IPC
  stream stored content-addressed beside the model artifacts (the same frame is stored once) and re-hashed on
  every read. The entity columns must hash to the provenance's ``entities_sha256``; types Parquet changed on
  the way (``timestamp[s]`` read back as ``[ms]``) are restored first. ``store_entities=False``
  (``--no-store-entities``) keeps all of it out: a rebuild then asks for the entity file;
- a 32-bit hash per feature cell (4 bytes per row and feature, also content-addressed), which lets a rebuild
  that differs name its first differing row and column.

The provenance itself is the version's ``training_set`` column, as before.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from featurelake.errors import ArtifactIntegrityError, UsageError
from featurelake.lakehouse.storage import is_remote, is_storage_failure, storage_error
from featurelake.registry.artifacts import StoredArtifact
from featurelake.registry.records import now, utc
from featurelake.registry.schema import training_sets
from featurelake.training.digest import TableDigest, cell_hashes, table_digest
from featurelake.training.entities import fingerprint
from featurelake.training.provenance import Provenance

if TYPE_CHECKING:
    from featurelake.registry.handle import RegistryHandle, TrainingSetSource

#: At most this many columns are tried both ways when restoring types Parquet changed (2**6 variants).
_RESTORE_LIMIT = 6


@dataclass(frozen=True)
class CapturedTrainingSet:
    """A training set's digest and the artifacts stored for it, before its version exists."""

    digest: TableDigest
    entity_columns: list[str]
    extra_columns: list[str]
    entities: StoredArtifact | None
    cells: StoredArtifact | None


@dataclass(frozen=True)
class TrainingRecord:
    """What the registry holds to rebuild one version's training set (besides the provenance)."""

    model: str
    version: str
    digest: TableDigest
    entity_columns: list[str]
    """The entity frame's columns (what ``entities_sha256`` fingerprints)."""
    extra_columns: list[str]
    """Columns added to the training set after it was built; stored with the entity frame."""
    entities_key: str | None
    entities_sha256: str | None
    entities_size: int | None
    cells_key: str | None
    cells_sha256: str | None
    created_at: datetime

    @property
    def sha256(self) -> str:
        return self.digest.sha256

    @property
    def entities_stored(self) -> bool:
        return self.entities_key is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.digest.sha256,
            "digest_format": self.digest.format,
            "rows": self.digest.rows,
            "columns": [{"name": c.name, "type": c.type, "sha256": c.sha256} for c in self.digest.columns],
            "entity_columns": list(self.entity_columns),
            "extra_columns": list(self.extra_columns),
            "entities_stored": self.entities_stored,
            "entities_key": self.entities_key,
            "entities_sha256": self.entities_sha256,
            "entities_size": self.entities_size,
            "cells_key": self.cells_key,
            "cells_sha256": self.cells_sha256,
            "created_at": self.created_at.isoformat(),
        }


# --- at registration ----------------------------------------------------------------------------------
def _read_table(reg: RegistryHandle, source: TrainingSetSource) -> pa.Table | None:
    """The training set's rows, or None when only its provenance was given (a dict, JSON file, Provenance)."""
    if isinstance(source, pa.Table):
        return source
    if not isinstance(source, str | Path) or str(source).lower().endswith(".json"):
        return None
    text = str(source)
    try:
        if is_remote(text):
            fs, path = reg.artifacts.storage.filesystem(text)
            return pq.read_table(path, filesystem=fs)
        return pq.read_table(Path(text))
    except FileNotFoundError:
        raise UsageError(f"training set {text} does not exist") from None
    except pa.ArrowInvalid as exc:
        raise UsageError(f"training set {text} cannot be read: {exc}") from None
    except OSError as exc:
        if is_storage_failure(exc):
            raise storage_error(exc, f"read training set {text}") from exc
        raise UsageError(f"training set {text} is not a Parquet file: {exc}") from None


def _parquet_variants(frame: pa.Table) -> list[pa.Table]:
    """``frame`` with the types Parquet coerces put back in every combination (``timestamp[ms]`` may have
    been ``timestamp[s]``, ``date32`` ``date64``, ``time32[ms]`` ``time32[s]``)."""
    options: list[tuple[int, pa.DataType]] = []
    for i, f in enumerate(frame.schema):
        if pa.types.is_timestamp(f.type) and f.type.unit == "ms":
            options.append((i, pa.timestamp("s", f.type.tz)))
        elif pa.types.is_date32(f.type):
            options.append((i, pa.date64()))
        elif pa.types.is_time32(f.type) and f.type.unit == "ms":
            options.append((i, pa.time32("s")))
    out = []
    for n in range(1, min(len(options), _RESTORE_LIMIT) + 1):
        for combo in itertools.combinations(options[:_RESTORE_LIMIT], n):
            variant = frame
            try:
                for i, t in combo:
                    field = variant.schema.field(i).with_type(t)
                    variant = variant.set_column(i, field, variant.column(i).cast(t, safe=True))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue  # a value that the older type cannot hold: it was not that type
            out.append(variant)
    return out


def matching_entities(table: pa.Table, columns: list[str], prov: Provenance) -> pa.Table | None:
    """``table``'s ``columns`` as the entity frame the provenance fingerprinted (types Parquet changed put
    back), or None when they are not that frame."""
    if not columns or any(c not in table.column_names for c in columns):
        return None
    frame = table.select(columns).replace_schema_metadata(None)
    if frame.num_rows != prov.entities_rows and prov.entities_rows >= 0:
        return None
    if fingerprint(frame) == prov.entities_sha256:
        return frame
    for variant in _parquet_variants(frame):
        if fingerprint(variant) == prov.entities_sha256:
            return variant
    return None


def _find_entities(
    table: pa.Table, features: list[str], prov: Provenance
) -> tuple[list[str], pa.Table | None]:
    """The entity columns of a training set and their frame: every non-feature column, or (when columns were
    added after the build) those before the first feature, which is where the build puts the entity frame."""
    cols = table.column_names
    others = [c for c in cols if c not in features]
    first = min((cols.index(c) for c in features), default=len(cols))
    leading = [c for c in cols[:first] if c not in features]
    for candidate in (others, leading):
        frame = matching_entities(table, candidate, prov)
        if frame is not None:
            return candidate, frame
    return leading, None


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(compression="zstd")
    with ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table.combine_chunks())
    return bytes(sink.getvalue().to_pybytes())


def capture(
    reg: RegistryHandle,
    name: str,
    source: TrainingSetSource,
    prov: Provenance,
    *,
    store_entities: bool = True,
) -> CapturedTrainingSet | None:
    """Digest the training set in ``source`` and store its entity frame and cell hashes (None when ``source``
    holds only a provenance: then nothing can be recorded)."""
    table = _read_table(reg, source)
    if table is None:
        return None
    features = [ref.column for ref in prov.feature_refs()]
    missing = [c for c in features if c not in table.column_names]
    if missing:
        raise UsageError(
            f"cannot register {name}: its training set lacks the feature columns {', '.join(missing)} that its "
            "provenance names; register the training set as `featurelake training-set` wrote it"
        )
    entity_columns, frame = _find_entities(table, features, prov)
    extra_columns = [c for c in table.column_names if c not in features and c not in entity_columns]
    entities = None
    if store_entities:
        if frame is None:
            raise UsageError(
                f"cannot register {name}: the entity columns of its training set ({', '.join(entity_columns)}; "
                f"{table.num_rows} rows) do not hash to the provenance's entities_sha256 {prov.entities_sha256} "
                f"({prov.entities_rows} rows): they were changed after `featurelake training-set` wrote them. "
                "Register the training set as it was built (columns may be added after it), or pass "
                "--no-store-entities (store_entities=False) to keep the entity frame out of the registry "
                "(`models reproduce` then asks for it with --entities)"
            )
        for c in extra_columns:
            frame = frame.append_column(table.schema.field(c).remove_metadata(), table.column(c))
        entities = reg.artifacts.put_bytes(_ipc(frame), f"entities of {name} ({frame.num_rows} rows)")
    digest = table_digest(table)
    cells = reg.artifacts.put_bytes(_ipc(cell_hashes(table, features)), f"cell hashes of {name}")
    return CapturedTrainingSet(digest, entity_columns, extra_columns, entities, cells)


def insert(conn: Connection, name: str, version: str, captured: CapturedTrainingSet) -> None:
    """Record ``captured`` for ``name`` ``version`` (in the transaction that creates the version)."""
    ents, cells = captured.entities, captured.cells
    conn.execute(
        training_sets.insert().values(
            model_name=name,
            version=version,
            sha256=captured.digest.sha256,
            digest_format=captured.digest.format,
            rows=captured.digest.rows,
            columns=captured.digest.to_dict()["columns"],
            entity_columns=list(captured.entity_columns),
            extra_columns=list(captured.extra_columns),
            entities_key=ents.key if ents else None,
            entities_sha256=ents.sha256 if ents else None,
            entities_size=ents.size if ents else None,
            cells_key=cells.key if cells else None,
            cells_sha256=cells.sha256 if cells else None,
            cells_size=cells.size if cells else None,
            created_at=now(),
        )
    )


def delete(conn: Connection, name: str, version: str) -> None:
    """Forget the record of a version that is being rolled back."""
    conn.execute(
        training_sets.delete().where(training_sets.c.model_name == name, training_sets.c.version == version)
    )


# --- reading --------------------------------------------------------------------------------------------
def load(conn: Connection, name: str, version: str) -> TrainingRecord | None:
    """The record of ``name`` ``version``; None when it was registered without one."""
    row = conn.execute(
        sa.select(training_sets).where(training_sets.c.model_name == name, training_sets.c.version == version)
    ).first()
    if row is None:
        return None
    return TrainingRecord(
        model=row.model_name,
        version=row.version,
        digest=TableDigest.from_dict(
            {"sha256": row.sha256, "rows": row.rows, "format": row.digest_format, "columns": row.columns}
        ),
        entity_columns=list(row.entity_columns or []),
        extra_columns=list(row.extra_columns or []),
        entities_key=row.entities_key,
        entities_sha256=row.entities_sha256,
        entities_size=int(row.entities_size) if row.entities_size is not None else None,
        cells_key=row.cells_key,
        cells_sha256=row.cells_sha256,
        created_at=utc(row.created_at),
    )


def _read_ipc(reg: RegistryHandle, key: str, sha256: str, what: str) -> pa.Table:
    data = reg.artifacts.read_verified(key, sha256, what)
    try:
        return ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:  # pragma: no cover - the bytes hash to what was stored
        raise ArtifactIntegrityError(f"{what}: artifact {key} is not an Arrow stream ({exc})") from exc


def read_entities(reg: RegistryHandle, rec: TrainingRecord) -> pa.Table:
    """The stored entity frame, after checking its bytes against the recorded digest."""
    assert rec.entities_key is not None and rec.entities_sha256 is not None
    return _read_ipc(
        reg, rec.entities_key, rec.entities_sha256, f"model {rec.model} {rec.version} entity frame"
    )


def read_cells(reg: RegistryHandle, rec: TrainingRecord) -> pa.Table | None:
    if rec.cells_key is None or rec.cells_sha256 is None:
        return None
    return _read_ipc(reg, rec.cells_key, rec.cells_sha256, f"model {rec.model} {rec.version} cell hashes")


def describe(rec: TrainingRecord) -> str:
    """One line for ``models show``."""
    where = (
        f"entity frame stored as {rec.entities_key} ({rec.entities_size} bytes)"
        if rec.entities_stored
        else "entity frame not stored (--no-store-entities: reproduce with --entities FILE)"
    )
    return (
        f"training set sha256 {rec.sha256[:16]}... ({rec.digest.rows} rows x {len(rec.digest.columns)} "
        f"columns); {where}"
    )


__all__ = [
    "CapturedTrainingSet",
    "TrainingRecord",
    "capture",
    "delete",
    "describe",
    "insert",
    "load",
    "matching_entities",
    "read_cells",
    "read_entities",
]
