"""Request-time features: ``RequestSource`` and ``OnDemandFeatureView``, declared once in ``features.py``.

An on-demand view computes its fields with a Python function (the ``udf``) over the features of its source
views and the fields of its request sources, at the moment they are asked for: in a training set after the
point-in-time join (request fields are columns of the entity frame), online for each lookup (request fields
travel in the request's ``entities``, as Feast sends them). Both paths build the same input table (one column
per input, in the declared types, nulls where a source row is missing or out of its ttl) and call
:meth:`OnDemandFeatureView.transform`, so a value is computed the same way wherever it is served.

``mode`` says what the udf takes and returns:

- ``"arrow"`` (default): a ``pyarrow.Table`` in; a ``pyarrow.Table``, a ``RecordBatch`` or a dict of arrays
  (or lists) out;
- ``"pandas"``: a ``pandas.DataFrame`` in (Arrow's ``to_pandas``: an integer column with nulls arrives as
  float64 with NaN), a ``DataFrame`` or a dict of columns out;
- ``"python"``: a dict of lists in (``None`` for nulls), a dict of lists out.

The output must hold every declared field, one value per input row; each column is cast to its declared
type (other columns are ignored).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, get_args

import pyarrow as pa

from featurelake.errors import ConfigError, DataError
from featurelake.features.definitions import FeatureView, shown, validate_identifier

if TYPE_CHECKING:
    from featurelake.features.definitions import Entity

#: What the udf takes and returns (see the module docstring).
Mode = Literal["arrow", "pandas", "python"]
MODES: tuple[str, ...] = get_args(Mode)


def arrow_type(type_name: str) -> pa.DataType:
    """The Arrow type both paths build an input or output column in, for a declared field type."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from featurelake.lakehouse.schema import parse_type

    t = schema_to_pyarrow(parse_type(type_name))
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def _schema(value: object, what: str) -> dict[str, str]:
    """``{"name": "type"}``, or Feast's ``[("name", "type")]`` / ``[Field(name=..., dtype=...)]`` shapes."""
    from featurelake.lakehouse.schema import parse_type

    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = []
        for entry in value:
            if isinstance(entry, tuple) and len(entry) == 2:
                items.append(entry)
            elif hasattr(entry, "name") and hasattr(entry, "dtype"):
                items.append((entry.name, entry.dtype))
            else:
                raise ConfigError(f"{what}: schema entries are (name, type) pairs, got {shown(entry)}")
    else:
        raise ConfigError(f"{what}: schema must be a dict such as {{'amount': 'double'}}, got {shown(value)}")
    if not items:
        raise ConfigError(
            f"{what}: the schema is empty; declare at least one field, e.g. {{'amount': 'double'}}"
        )
    out: dict[str, str] = {}
    for name, type_ in items:
        validate_identifier(name, f"field of {what}")
        if name in out:
            raise ConfigError(f"{what}: field {name!r} is declared twice")
        try:
            parse_type(str(type_))
        except ValueError as exc:
            raise ConfigError(f"{what}, field {name!r}: {exc}") from None
        out[name] = str(type_)
    return out


@dataclass(frozen=True, init=False)
class RequestSource:
    """Fields that only the request knows: ``RequestSource({"amount": "double"}, name="txn")``.

    In a training set they are columns of the entity frame; online they are sent beside the join keys in
    ``entities`` (``{"user_id": [1], "amount": [12.5]}``).
    """

    name: str
    schema: dict[str, str]

    def __init__(self, schema: object = None, name: str = "request") -> None:
        validate_identifier(name, "request source name")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "schema", _schema(schema, f"request source {name!r}"))


@dataclass
class OnDemandFeatureView:
    """Features computed when they are asked for, by ``udf`` over ``sources`` (see the module docstring).

    ``sources``: feature views (the udf sees all their features, by feature name) and request sources (their
    fields). ``fields``: the outputs and their types, ``{"amount_vs_avg": "double"}``.
    """

    name: str
    sources: list[FeatureView | RequestSource]
    fields: dict[str, str]
    udf: Callable[[Any], Any]
    mode: Mode = "arrow"
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_identifier(self.name, "on-demand feature view name")
        what = f"on-demand feature view {self.name!r}"
        if self.name.startswith("_"):
            raise ConfigError(
                f"{what}: names starting with '_' are reserved for featurelake's own tables; rename the view"
            )
        if self.mode not in MODES:
            raise ConfigError(
                f"{what}: mode must be one of {', '.join(map(repr, MODES))}, got {shown(self.mode)}"
            )
        if not callable(self.udf):
            raise ConfigError(f"{what}: udf must be a function, got {type(self.udf).__name__}")
        if isinstance(self.sources, FeatureView | RequestSource) or not isinstance(self.sources, Sequence):
            raise ConfigError(f"{what}: sources must be a list such as [user_features, RequestSource(...)]")
        if not self.sources:
            raise ConfigError(f"{what} has no sources: list feature views and/or RequestSource(...)")
        self.sources = list(self.sources)
        seen: dict[str, str] = {}
        names: set[str] = set()
        for src in self.sources:
            if not isinstance(src, FeatureView | RequestSource):
                raise ConfigError(
                    f"{what}: a source must be a FeatureView or a RequestSource, got {type(src).__name__}"
                )
            label = f"view {src.name!r}" if isinstance(src, FeatureView) else f"request source {src.name!r}"
            if src.name in names:
                raise ConfigError(f"{what}: {label} is listed twice in sources")
            names.add(src.name)
            columns = src.fields if isinstance(src, FeatureView) else src.schema
            for col in columns:
                if col in seen:
                    raise ConfigError(
                        f"{what}: input {col!r} comes from both {seen[col]} and {label}; the udf sees inputs by "
                        "name, so rename one of them"
                    )
                seen[col] = label
        keys = {k for v in self.views for k in v.join_keys}
        clash = sorted(keys & set(self.request_fields))
        if clash:
            raise ConfigError(
                f"{what}: request field(s) {', '.join(clash)} are also join keys of its views; request fields "
                "travel beside the keys in entities, so give them other names"
            )
        if not isinstance(self.fields, Mapping) or not self.fields:
            raise ConfigError(f"{what} declares no fields: add fields={{'name': 'double', ...}}")
        self.fields = _schema(self.fields, what)

    # --- what it reads ------------------------------------------------------------------------------
    @property
    def views(self) -> list[FeatureView]:
        """The source feature views, in the order given."""
        return [s for s in self.sources if isinstance(s, FeatureView)]

    @property
    def request_sources(self) -> list[RequestSource]:
        return [s for s in self.sources if isinstance(s, RequestSource)]

    @property
    def request_fields(self) -> dict[str, str]:
        """``{field: type}`` of every request source, in order."""
        return {k: t for s in self.request_sources for k, t in s.schema.items()}

    @property
    def inputs(self) -> dict[str, str]:
        """``{input: type}`` as the udf sees them: the views' features, then the request fields."""
        out = {k: t for v in self.views for k, t in v.fields.items()}
        out.update(self.request_fields)
        return out

    @property
    def input_refs(self) -> list[str]:
        """``view:feature`` of every view input (what a lookup or training set reads for it)."""
        return [f"{v.name}:{f}" for v in self.views for f in v.fields]

    @property
    def entities(self) -> list[Entity]:
        return [v.entity for v in self.views]

    @property
    def udf_sha256(self) -> str:
        """A digest of the udf's source (of its bytecode when the source is not available)."""
        try:
            text = inspect.getsource(self.udf).encode()
        except (OSError, TypeError):
            code = getattr(self.udf, "__code__", None)
            text = code.co_code if code is not None else repr(self.udf).encode()
        return hashlib.sha256(text).hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a training set's provenance records about this view (a rebuild refuses a changed one)."""
        return {
            "sources": [s.name for s in self.sources],
            "inputs": dict(self.inputs),
            "fields": dict(self.fields),
            "mode": self.mode,
            "udf_sha256": self.udf_sha256,
        }

    # --- computing ----------------------------------------------------------------------------------
    def input_schema(self) -> pa.Schema:
        """The udf's input table schema: one column per input, in :attr:`inputs` order."""
        return self._schemas[0]

    @cached_property
    def _schemas(self) -> tuple[pa.Schema, dict[str, pa.DataType]]:
        # Asked on every online lookup: built once (the definition does not change after features.py loads).
        inputs = pa.schema([pa.field(k, arrow_type(t)) for k, t in self.inputs.items()])
        return inputs, {k: arrow_type(t) for k, t in self.fields.items()}

    def transform(self, inputs: pa.Table) -> pa.Table:
        """Run the udf over ``inputs`` (one column per input, in :meth:`input_schema`'s types): the declared
        fields, each cast to its type, one row per input row. Raises DataError naming the view when the udf
        fails or returns something else."""
        schema, outputs = self._schemas
        if not inputs.schema.equals(schema):
            inputs = inputs.select(schema.names).cast(schema)
        n = inputs.num_rows
        what = f"on-demand feature view {self.name!r}"
        try:
            if self.mode == "arrow":
                out: Any = self.udf(inputs)
            elif self.mode == "pandas":
                out = self.udf(inputs.to_pandas())
            else:
                out = self.udf(inputs.to_pydict())
        except Exception as exc:
            raise DataError(
                f"{what}: its udf (mode {self.mode}) raised {type(exc).__name__}: {exc}; fix the udf in "
                "features.py (its inputs may be null where a source row is missing)"
            ) from exc
        columns = _columns(out, what, self.mode)
        missing = [f for f in self.fields if f not in columns]
        if missing:
            raise DataError(
                f"{what}: its udf returned no column {', '.join(missing)} (it returned "
                f"{', '.join(map(str, columns)) or 'nothing'}); return every declared field"
            )
        arrays = []
        for name, type_name in self.fields.items():
            arrays.append(_column(columns[name], outputs[name], n, what, name, type_name))
        return pa.Table.from_arrays(arrays, names=list(self.fields))


def _columns(out: Any, what: str, mode: str) -> Mapping[str, Any]:
    if isinstance(out, pa.Table | pa.RecordBatch):
        return {name: out.column(name) for name in out.column_names}
    if isinstance(out, Mapping):
        return out
    if type(out).__name__ == "DataFrame" and hasattr(out, "columns"):
        return {str(c): out[c] for c in out.columns}
    wanted = {
        "arrow": "a pyarrow.Table or a dict of arrays",
        "pandas": "a DataFrame or a dict of columns",
        "python": "a dict of lists",
    }[mode]
    raise DataError(
        f"{what}: its udf returned {type(out).__name__}; in mode {mode!r} it must return {wanted}"
    )


def _column(value: Any, type_: pa.DataType, n: int, what: str, name: str, type_name: str) -> pa.Array:
    try:
        if isinstance(value, pa.ChunkedArray):
            arr: pa.Array = value.combine_chunks()
        elif isinstance(value, pa.Array):
            arr = value
        elif type(value).__name__ in ("Series", "ndarray"):
            arr = pa.array(value, from_pandas=True)
        else:
            arr = pa.array(list(value))
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(f"{what}: output {name!r} cannot be read as a column ({exc})") from None
    if len(arr) != n:
        raise DataError(
            f"{what}: output {name!r} has {len(arr)} values for {n} input rows; return one value per row"
        )
    if arr.type == type_:
        return arr
    try:
        return arr.cast(type_)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(
            f"{what}: output {name!r} is {arr.type}, which does not convert to its declared type {type_name} "
            f"({exc}); return {type_name} values or change fields"
        ) from None


__all__ = ["MODES", "Mode", "OnDemandFeatureView", "RequestSource", "arrow_type"]
