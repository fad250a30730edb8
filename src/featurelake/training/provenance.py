"""Provenance of a training set: which snapshot of which view, which features, which entity rows.

It travels inside the training set itself, as JSON under the Parquet/Arrow schema metadata key
``featurelake.provenance``, so a file handed to ``models register --training-set`` still says exactly what
data the model learned from. The JSON holds nothing that varies between runs (no wall-clock times, no run
ids): rebuilding from it writes the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from featurelake.errors import UsageError

METADATA_KEY = b"featurelake.provenance"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureRef:
    """One requested feature: ``view:feature``, its column in the training set, and its type name."""

    view: str
    feature: str
    column: str
    type: str

    @property
    def ref(self) -> str:
        return f"{self.view}:{self.feature}"


@dataclass
class Provenance:
    """What a training set was built from; enough to rebuild it byte for byte."""

    views: dict[str, int | None]
    """Snapshot id read per view (None when the view's table had no snapshot)."""
    features: list[str]
    """The requested features as ``view:feature``, in output order."""
    entities_sha256: str
    entities_rows: int
    columns: dict[str, str] = field(default_factory=dict)
    """Output column per feature reference."""
    feature_types: dict[str, str] = field(default_factory=dict)
    """Type name per feature reference (``double``, ``long``, ...): the model's input signature."""
    ttl_seconds: dict[str, float | None] = field(default_factory=dict)
    """Each view's ttl when the set was built; a rebuild uses these, not the current definitions."""
    join_keys: dict[str, str | list[str]] = field(default_factory=dict)
    """Each view's key column, or the list of its key columns for a composite key."""
    timestamp_fields: dict[str, str] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    timestamp_column: str = "event_timestamp"
    format: int = FORMAT_VERSION
    on_demand: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per on-demand view computed into the set: its sources, inputs, fields, mode and udf digest."""
    service: dict[str, Any] | None = None
    """The feature service the features came from: ``{"name", "version"}`` (None: listed one by one)."""

    # --- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "views": dict(self.views),
            "features": list(self.features),
            "columns": dict(self.columns),
            "feature_types": dict(self.feature_types),
            "ttl_seconds": dict(self.ttl_seconds),
            "join_keys": {k: (list(v) if isinstance(v, list) else v) for k, v in self.join_keys.items()},
            "timestamp_fields": dict(self.timestamp_fields),
            "tables": dict(self.tables),
            "timestamp_column": self.timestamp_column,
            "entities_rows": self.entities_rows,
            "entities_sha256": self.entities_sha256,
            # Only when used, so the provenance (and bytes) of a set without them is as it always was.
            **({"on_demand": dict(self.on_demand)} if self.on_demand else {}),
            **({"service": dict(self.service)} if self.service else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "provenance") -> Provenance:
        try:
            views = {str(k): (int(v) if v is not None else None) for k, v in data["views"].items()}
            features = [str(f) for f in data["features"]]
            sha = str(data["entities_sha256"])
            rows = int(data.get("entities_rows", -1))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(
                f"{source} is not a featurelake training-set provenance (needs views, features and "
                f"entities_sha256): {exc!r}"
            ) from None
        if int(data.get("format", FORMAT_VERSION)) > FORMAT_VERSION:
            raise UsageError(
                f"{source} was written by a newer featurelake (format {data['format']}): upgrade"
            )
        return cls(
            views=views,
            features=features,
            entities_sha256=sha,
            entities_rows=rows,
            columns={str(k): str(v) for k, v in (data.get("columns") or {}).items()},
            feature_types={str(k): str(v) for k, v in (data.get("feature_types") or {}).items()},
            ttl_seconds={
                str(k): (float(v) if v is not None else None)
                for k, v in (data.get("ttl_seconds") or {}).items()
            },
            join_keys={
                str(k): ([str(c) for c in v] if isinstance(v, list) else str(v))
                for k, v in (data.get("join_keys") or {}).items()
            },
            timestamp_fields={str(k): str(v) for k, v in (data.get("timestamp_fields") or {}).items()},
            tables={str(k): str(v) for k, v in (data.get("tables") or {}).items()},
            timestamp_column=str(data.get("timestamp_column", "event_timestamp")),
            on_demand={str(k): dict(v) for k, v in (data.get("on_demand") or {}).items()},
            service=dict(data["service"]) if isinstance(data.get("service"), dict) else None,
        )

    @classmethod
    def from_schema(cls, schema: pa.Schema, source: str) -> Provenance:
        raw = (schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise UsageError(
                f"{source} carries no training-set provenance (schema metadata key "
                f"{METADATA_KEY.decode()}): build it with `featurelake training-set` or fl.training_set(...)"
            )
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UsageError(f"{source}: provenance metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{source}: provenance metadata must be a JSON object")
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, source: Provenance | pa.Table | dict[str, Any] | str | Path) -> Provenance:
        """Provenance from a training set (Arrow table or Parquet file), a JSON file, or a dict."""
        if isinstance(source, Provenance):
            return source
        if isinstance(source, pa.Table):
            return cls.from_schema(source.schema, "the training set table")
        if isinstance(source, dict):
            return cls.from_dict(source)
        if isinstance(source, str | Path):
            path = Path(source)
            if not path.is_file():
                raise UsageError(
                    f"training set {path} does not exist: give the .parquet file (or provenance .json) that "
                    "`featurelake training-set` wrote"
                )
            if path.suffix.lower() == ".json":
                try:
                    return cls.from_dict(json.loads(path.read_text()), str(path))
                except ValueError as exc:
                    raise UsageError(
                        f"{path} is not valid JSON: {exc}; give the provenance .json that featurelake wrote"
                    ) from None
            try:
                schema = pq.read_schema(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise UsageError(
                    f"training set {path} is not a Parquet file: {exc}; give the .parquet file that "
                    "`featurelake training-set` wrote"
                ) from None
            return cls.from_schema(schema, str(path))
        raise UsageError(f"cannot read a provenance from {type(source).__name__}")

    # --- views of the content -----------------------------------------------------------------------
    def feature_refs(self) -> list[FeatureRef]:
        out = []
        for ref in self.features:
            view, _, feat = ref.partition(":")
            out.append(
                FeatureRef(view, feat, self.columns.get(ref, feat), self.feature_types.get(ref, "unknown"))
            )
        return out

    def ttl(self, view: str) -> timedelta | None:
        secs = self.ttl_seconds.get(view)
        return timedelta(seconds=secs) if secs is not None else None


def attach(table: pa.Table, provenance: Provenance) -> pa.Table:
    """``table`` with ``provenance`` as its only schema metadata."""
    return table.replace_schema_metadata({METADATA_KEY: provenance.to_json().encode()})
