"""The feature definitions SDK: ``Entity``, ``Source`` and ``FeatureView`` as written in ``features.py``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, Protocol, cast, get_args

from featurelake.errors import ConfigError, UsageError
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


#: The type of one key column: ``string`` or ``long`` (an integer).
KeyDtype = Literal["string", "long"]
KEY_DTYPES: tuple[str, ...] = get_args(KeyDtype)


@dataclass(frozen=True, init=False)
class Entity:
    """A business object features are keyed by: ``Entity("user", join_key="user_id")``, or with a composite
    key ``Entity("user_merchant", join_keys=["user_id", "merchant_id"])`` (give exactly one of the two).

    ``dtype`` is optional: ``"string"`` or ``"long"`` for every key column, or a dict naming the type of some
    key columns (``dtype={"user_id": "long", "merchant_id": "string"}``). A key column without a declared
    type takes the type the view's query produces for it at ``apply`` time. Key columns are never null.
    """

    name: str
    join_keys: tuple[str, ...]
    """The key columns, in order (one for a plain key)."""
    dtypes: tuple[KeyDtype | None, ...]
    """The declared type of each key column (None: taken from the query at ``apply``)."""
    description: str

    def __init__(
        self,
        name: str,
        join_key: str | None = None,
        dtype: KeyDtype | Mapping[str, KeyDtype] | None = None,
        description: str = "",
        *,
        join_keys: Sequence[str] | None = None,
    ) -> None:
        validate_identifier(name, "entity name")
        keys = _entity_keys(name, join_key, join_keys)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "join_keys", keys)
        object.__setattr__(self, "dtypes", _entity_dtypes(name, keys, dtype))
        object.__setattr__(self, "description", description)

    @property
    def composite(self) -> bool:
        """Whether the key has several columns."""
        return len(self.join_keys) > 1

    @property
    def join_key(self) -> str:
        """The key column of a one-column key (UsageError for a composite key: use ``join_keys``)."""
        if self.composite:
            raise UsageError(
                f"entity {self.name!r} has a composite key ({', '.join(self.join_keys)}), not one join_key: "
                "use join_keys"
            )
        return self.join_keys[0]

    @property
    def dtype(self) -> KeyDtype | dict[str, KeyDtype] | None:
        """As declared: the key's type for a one-column key, else ``{column: type}`` of the declared ones."""
        if not self.composite:
            return self.dtypes[0]
        declared = {k: t for k, t in zip(self.join_keys, self.dtypes, strict=True) if t is not None}
        return declared or None

    def key_dtype(self, column: str) -> KeyDtype | None:
        """The declared type of key column ``column`` (None: inferred at ``apply``)."""
        return dict(zip(self.join_keys, self.dtypes, strict=True))[column]

    def __repr__(self) -> str:
        keys = (
            f"join_key={self.join_keys[0]!r}" if not self.composite else f"join_keys={list(self.join_keys)!r}"
        )
        dtype = f", dtype={self.dtype!r}" if self.dtype is not None else ""
        return f"Entity({self.name!r}, {keys}{dtype})"


def _entity_keys(name: str, join_key: object, join_keys: object) -> tuple[str, ...]:
    what = f"entity {name!r}"
    if join_key is not None and join_keys is not None:
        raise ConfigError(
            f"{what}: give join_key='col' for a one-column key or join_keys=['col1', 'col2'] for a composite "
            "key, not both"
        )
    if join_key is None and join_keys is None:
        raise ConfigError(
            f"{what} has no key: give join_key='user_id', or join_keys=['user_id', 'merchant_id'] for a "
            "composite key"
        )
    if join_keys is None:
        keys: tuple[object, ...] = (join_key,)
    elif isinstance(join_keys, str) or not isinstance(join_keys, Sequence):
        raise ConfigError(
            f"{what}: join_keys must be a list of column names such as ['user_id', 'merchant_id'], got "
            f"{shown(join_keys)} (for one key column write join_key={shown(join_keys)})"
        )
    else:
        keys = tuple(join_keys)
        if not keys:
            raise ConfigError(
                f"{what}: join_keys is empty; list the key columns, e.g. ['user_id', 'merchant_id']"
            )
    for k in keys:
        validate_identifier(k, f"join key of {what}")  # type: ignore[arg-type]
    repeated = sorted({k for k in keys if keys.count(k) > 1})  # type: ignore[type-var]
    if repeated:
        raise ConfigError(
            f"{what}: join_keys lists {', '.join(map(str, repeated))} twice; list each key column once"
        )
    return tuple(str(k) for k in keys)


def _entity_dtypes(name: str, keys: tuple[str, ...], dtype: object) -> tuple[KeyDtype | None, ...]:
    what = f"entity {name!r}"
    allowed = " or ".join(map(repr, KEY_DTYPES))
    if dtype is None:
        return (None,) * len(keys)
    if isinstance(dtype, str):
        if dtype not in KEY_DTYPES:
            raise ConfigError(f"{what}: dtype must be {allowed}, got {shown(dtype)}")
        return (cast(KeyDtype, dtype),) * len(keys)
    if not isinstance(dtype, Mapping):
        raise ConfigError(
            f"{what}: dtype must be {allowed} (every key column), or a dict such as "
            f"{{{keys[0]!r}: 'long'}} naming key columns, got {shown(dtype)}"
        )
    unknown = [str(k) for k in dtype if k not in keys]
    if unknown:
        raise ConfigError(
            f"{what}: dtype names {', '.join(map(repr, unknown))}, which is not a key column; its key columns "
            f"are {', '.join(keys)}"
        )
    for k, t in dtype.items():
        if t not in KEY_DTYPES:
            raise ConfigError(f"{what}: dtype of key column {k!r} must be {allowed}, got {shown(t)}")
    return tuple(cast("KeyDtype | None", dtype.get(k)) for k in keys)


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
        if self.timestamp_field in self.join_keys:
            raise ConfigError(
                f"view {self.name!r}: the timestamp field {self.timestamp_field!r} is also a join key of entity "
                f"{self.entity.name!r}; key columns and the timestamp must be different columns"
            )
        reserved = {*self.join_keys, self.timestamp_field}
        for fname, ftype in self.fields.items():
            validate_identifier(fname, f"field of view {self.name!r}")
            if fname in reserved:
                raise ConfigError(
                    f"view {self.name!r}: field {fname!r} clashes with the join key or timestamp; rename the field"
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
            raise ConfigError(
                f"view {self.name!r}: ttl must be positive, e.g. ttl=timedelta(days=7) (or leave ttl out)"
            )

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
    def join_keys(self) -> list[str]:
        """The key columns, in order: one for a plain key, several for a composite key."""
        return list(self.entity.join_keys)

    @property
    def composite(self) -> bool:
        """Whether the view's entity has a composite key."""
        return self.entity.composite

    @property
    def join_key(self) -> str:
        """The key column of a one-column key; UsageError for a composite key (use ``join_keys``)."""
        if self.entity.composite:
            raise UsageError(
                f"view {self.name!r} has a composite key ({', '.join(self.join_keys)}) where one key column "
                "is assumed; use join_keys"
            )
        return self.entity.join_keys[0]

    @property
    def columns(self) -> list[str]:
        """Table column order: the key columns, the timestamp, then the fields as declared."""
        return [*self.join_keys, self.timestamp_field, *self.fields]
