"""The feature definitions SDK: ``Entity``, ``Source`` and ``FeatureView`` as written in ``features.py``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, Protocol, get_args

from featurelake.errors import ConfigError
from featurelake.features.aggregations import Aggregation, resolve


class Check(Protocol):
    """What a view needs of a declared check (``featurelake.checks``); evaluation lives in ``validation``.

    Definitions sit below validation: a view only asks a check which columns it reads and whether it fits
    the view, so ``features.py`` errors surface when the file loads.
    """

    name: str

    def columns(self) -> list[str]: ...

    def validate(self, view: FeatureView) -> None: ...


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TABLE_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so hostile or huge names never flood a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def validate_identifier(value: str, what: str) -> str:
    """Refuse names that are not plain SQL identifiers: they end up in SQL text and file paths."""
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ConfigError(
            f"{what} {shown(value)} is not a valid name: use letters, digits and underscores, starting with a letter"
        )
    return value


#: How a view's table is partitioned on its timestamp field: ``day``, ``month`` or ``year`` of it, or not at all.
Partition = Literal["day", "month", "year", "none"]
PARTITIONS: tuple[str, ...] = get_args(Partition)


class Field(str):
    """A declared feature type that carries more than its name: ``Field("double", renamed_from="old")``.

    A ``Field`` *is* its type name (a ``str``), so everything that reads ``view.fields`` as
    ``{name: type}`` keeps working; ``renamed_from`` tells ``apply`` to rename that existing column through
    its Iceberg field id instead of dropping it and adding an empty one.
    """

    renamed_from: str | None

    def __new__(cls, type: str, *, renamed_from: str | None = None) -> Field:
        if not isinstance(type, str):
            raise ConfigError(f"Field type must be a type name such as 'double', got {shown(type)}")
        obj = super().__new__(cls, type)
        obj.renamed_from = renamed_from
        return obj

    def __repr__(self) -> str:
        extra = f", renamed_from={self.renamed_from!r}" if self.renamed_from else ""
        return f"Field({str.__repr__(self)}{extra})"


@dataclass(frozen=True)
class Entity:
    """A business object features are keyed by, e.g. ``Entity("user", join_key="user_id")``.

    ``dtype`` (``"string"`` or ``"long"``) is optional: when omitted it is taken from the type the view's
    query produces for the join key at ``apply`` time.
    """

    name: str
    join_key: str
    dtype: Literal["string", "long"] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        validate_identifier(self.name, "entity name")
        validate_identifier(self.join_key, f"join key of entity {self.name!r}")
        if self.dtype not in (None, "string", "long"):
            raise ConfigError(f"entity {self.name!r}: dtype must be 'string' or 'long', got {self.dtype!r}")


@dataclass(frozen=True)
class Source:
    """Where a view's raw rows come from: Parquet files or an Iceberg table."""

    kind: Literal["parquet", "table"]
    location: str
    timestamp_field: str

    @classmethod
    def parquet(cls, path: str, timestamp_field: str) -> Source:
        """Parquet files matching ``path`` (a glob; relative paths resolve against the project directory)."""
        validate_identifier(timestamp_field, f"timestamp field of source {path!r}")
        return cls("parquet", path, timestamp_field)

    @classmethod
    def table(cls, name: str, timestamp_field: str) -> Source:
        """An Iceberg table of the project's catalog, e.g. ``Source.table("raw.transactions", ...)``."""
        if not _TABLE_IDENT.match(name):
            raise ConfigError(f"source table {name!r} must be written 'namespace.table'")
        validate_identifier(timestamp_field, f"timestamp field of source {name!r}")
        return cls("table", name, timestamp_field)


@dataclass
class FeatureView:
    """A set of features computed by one SQL query (or declared ``aggregations``) over one source, stored as one
    Iceberg table.

    ``lookback``: the query reads the source from that long before each backfill window (rows it produces
    before the window are not written). ``aggregations`` + ``step``: sliding-window features, with their
    lookback and fields derived (``features/aggregations.py``); a ``query`` then prepares the rows they
    aggregate.
    """

    name: str
    entity: Entity
    source: Source
    query: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    timestamp_field: str = "event_ts"
    checks: list[Check] = field(default_factory=list)
    ttl: timedelta | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    partition: Partition = "day"
    lookback: timedelta | None = None
    aggregations: list[Aggregation] = field(default_factory=list)
    step: timedelta | None = None

    def __post_init__(self) -> None:
        from featurelake.lakehouse.schema import parse_type

        validate_identifier(self.name, "feature view name")
        if self.name.startswith("_"):
            raise ConfigError(
                f"feature view name {self.name!r} starts with '_', which is reserved for featurelake's own "
                "tables (<namespace>._audits, ._stats); rename the view"
            )
        validate_identifier(self.timestamp_field, f"timestamp field of view {self.name!r}")
        if not isinstance(self.entity, Entity):
            raise ConfigError(
                f"view {self.name!r}: entity must be an Entity, got {type(self.entity).__name__}"
            )
        if not isinstance(self.source, Source):
            raise ConfigError(f"view {self.name!r}: source must be Source.parquet(...) or Source.table(...)")
        resolve(self)  # lookback, aggregations and step; fills in the aggregation outputs' fields
        if not self.fields:
            raise ConfigError(f"view {self.name!r} declares no fields: add fields={{'name': 'double', ...}}")
        reserved = {self.entity.join_key, self.timestamp_field}
        for fname, ftype in self.fields.items():
            validate_identifier(fname, f"field of view {self.name!r}")
            if fname in reserved:
                raise ConfigError(
                    f"view {self.name!r}: field {fname!r} clashes with the join key or timestamp"
                )
            try:
                parse_type(ftype)
            except ValueError as exc:
                raise ConfigError(f"view {self.name!r}, field {fname!r}: {exc}") from exc
        self._check_renames(reserved)
        if self.partition not in PARTITIONS:
            raise ConfigError(
                f"view {self.name!r}: partition must be one of {', '.join(map(repr, PARTITIONS))}, "
                f"got {shown(self.partition)}"
            )
        known = {*self.fields, *reserved}
        for check in self.checks:
            for col in check.columns():
                if col not in known:
                    raise ConfigError(
                        f"view {self.name!r}: check {check.name} refers to unknown column {col!r}; "
                        f"known columns: {', '.join(sorted(known))}"
                    )
            check.validate(self)  # types, bounds, SQL: refused when features.py loads, not at run time
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise ConfigError(f"view {self.name!r}: ttl must be positive")

    def _check_renames(self, reserved: set[str]) -> None:
        seen: dict[str, str] = {}
        for fname, old in self.renames.items():
            where = f"view {self.name!r}, field {fname!r}"
            validate_identifier(old, f"renamed_from of {where}")
            if old == fname:
                raise ConfigError(f"{where}: renamed_from names the field itself; remove renamed_from")
            if old in reserved:
                raise ConfigError(
                    f"{where}: renamed_from {old!r} is the join key or timestamp, which cannot be renamed; "
                    "rename the view to create a new table instead"
                )
            if old in self.fields:
                raise ConfigError(
                    f"{where}: renamed_from {old!r} is also declared as a field, so it would be both kept and "
                    f"renamed; remove {old!r} from fields (a rename keeps its values under {fname!r})"
                )
            if old in seen:
                raise ConfigError(
                    f"{where}: {old!r} is already renamed to {seen[old]!r}; a column can be renamed only once"
                )
            seen[old] = fname

    @property
    def renames(self) -> dict[str, str]:
        """``{new name: old name}`` of the fields declared with ``Field(..., renamed_from=...)``."""
        return {
            name: t.renamed_from for name, t in self.fields.items() if isinstance(t, Field) and t.renamed_from
        }

    @property
    def join_key(self) -> str:
        return self.entity.join_key

    @property
    def columns(self) -> list[str]:
        """Table column order: join key, timestamp, then the fields as declared."""
        return [self.join_key, self.timestamp_field, *self.fields]
