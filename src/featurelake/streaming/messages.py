"""Stream messages -> rows of a view: the format ``featurelake ingest`` reads, and what it keeps aside.

A message is one JSON object whose names are the view's columns::

    {"user_id": 42, "event_ts": "2026-12-07T10:00:00Z", "txn_count_1d": 3, "amount_sum_1d": 57.5}

- the entity key column(s) and the timestamp field are required and non-null;
- the event timestamp is ISO 8601 text with a zone (``Z`` or ``+01:00``), or a number of seconds since the
  Unix epoch (UTC); text without a zone is refused (it would be read in some machine's local time);
- a feature field left out is null (the view's checks judge nulls); names the view does not have are ignored;
- values are cast to the column types as Arrow does (``3`` fits a ``double``; ``3.5`` does not fit a
  ``long``, nor ``"3"`` a ``long``).

A message that is not such an object is **bad**: it is kept aside with the reason (never dropped, never
blocking the messages after it). Decoding a whole batch column by column is the fast path; only a batch
that fails it is decoded message by message, to tell the bad ones from the good.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from featurelake.features.definitions import FeatureView
from featurelake.streaming.brokers import Message


@dataclass(frozen=True)
class BadMessage:
    """A message that could not become a row, and why."""

    message: Message
    reason: str


@dataclass
class Decoded:
    """A batch's rows (in the view's schema, in message order), and the messages kept aside."""

    rows: pa.Table
    bad: list[BadMessage]


class _Bad(ValueError):
    pass


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Bad(f"{value!r} is not a timestamp")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise _Bad(f"{value!r} is not a time in seconds since the epoch ({exc})") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad(f"{value!r} is not an ISO 8601 timestamp") from None
        if parsed.tzinfo is None:
            raise _Bad(f"{value!r} has no time zone: write it with Z or an offset (2026-12-07T10:00:00Z)")
        return parsed
    raise _Bad(f"{type(value).__name__} {value!r} is not a timestamp")


def _decimal(value: Any) -> decimal.Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"{value!r} is not a number")
    try:
        return decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        raise _Bad(f"{value!r} is not a number") from None


class MessageDecoder:
    """Turns messages into rows of one view (``schema``: the view's columns as the table stores them)."""

    def __init__(self, view: FeatureView, schema: pa.Schema) -> None:
        self.view = view
        columns = view.columns
        self.schema = pa.schema([pa.field(n, schema.field(n).type, nullable=True) for n in columns])
        self.target = pa.schema([schema.field(n) for n in columns])
        self.required = [*view.join_keys, view.timestamp_field]

    # --- one column, all messages ----------------------------------------------------------------------
    def _array(self, values: list[Any], field: pa.Field) -> pa.Array:
        t = field.type
        if pa.types.is_timestamp(t):
            try:
                return pa.array(values, pa.string()).cast(t)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return pa.array([_timestamp(v) for v in values], t)
        if pa.types.is_decimal(t):
            return pa.array([_decimal(v) for v in values], t)
        if pa.types.is_date(t):
            return pa.array(values, pa.string()).cast(t)
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            # Inferred, then a safe cast: pa.array(values, int64) would truncate 1.5 to 1 silently.
            inferred = pa.array(values)
            if pa.types.is_boolean(inferred.type) or not (
                pa.types.is_integer(inferred.type)
                or pa.types.is_floating(inferred.type)
                or pa.types.is_null(inferred.type)
            ):
                raise _Bad(f"{values[0] if len(values) == 1 else 'a value'!r} is not a number")
            return inferred.cast(t)
        return pa.array(values, t)

    def _columns(self, objects: list[dict[str, Any]]) -> pa.Table:
        arrays = [self._array([o.get(f.name) for o in objects], f) for f in self.schema]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        for name in self.required:
            if table.column(name).null_count:
                raise _Bad(
                    f"{name!r} is missing or null (the entity key and the event timestamp are required)"
                )
        return table.cast(self.target)

    def _check_one(self, obj: dict[str, Any]) -> str | None:
        """Why this object cannot be a row (None when it can)."""
        for f in self.schema:
            value = obj.get(f.name)
            if value is None:
                if f.name in self.required:
                    return (
                        f"{f.name!r} is missing or null (the entity key and the event timestamp are required)"
                    )
                continue
            try:
                self._array([value], f)
            except _Bad as exc:
                return f"column {f.name!r} ({f.type}): {exc}"
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
                return f"column {f.name!r} ({f.type}): {value!r} does not fit ({str(exc).splitlines()[0]})"
        return None

    # --- a batch -----------------------------------------------------------------------------------------
    def decode(self, messages: Sequence[Message]) -> Decoded:
        objects: list[dict[str, Any]] = []
        kept: list[Message] = []
        bad: list[BadMessage] = []
        for m in messages:
            try:
                obj = orjson.loads(m.data)
            except orjson.JSONDecodeError as exc:
                reason = "empty message (deleted from the stream?)" if not m.data else f"not JSON: {exc}"
                bad.append(BadMessage(m, reason))
                continue
            if not isinstance(obj, dict):
                bad.append(BadMessage(m, f"not a JSON object but a {type(obj).__name__}"))
                continue
            objects.append(obj)
            kept.append(m)
        if not objects:
            return Decoded(self.target.empty_table(), bad)
        try:
            return Decoded(self._columns(objects), bad)
        except (_Bad, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            pass
        # Slow path: find the objects that break the batch, decode the others together.
        good: list[dict[str, Any]] = []
        bad_at: dict[int, str] = {}
        for i, obj in enumerate(objects):
            why = self._check_one(obj)
            if why is None:
                good.append(obj)
            else:
                bad_at[i] = why
        bad.extend(BadMessage(kept[i], r) for i, r in bad_at.items())
        bad.sort(key=lambda b: b.message.position)
        rows = self._columns(good) if good else self.target.empty_table()
        return Decoded(rows, bad)


def bad_rows(source: str, bad: Sequence[BadMessage]) -> pa.Table:
    """Bad messages as rows to keep aside: where they came from, their offset, the reason, the payload."""
    return pa.table(
        {
            "source": pa.array([source] * len(bad), pa.string()),
            "offset": pa.array([b.message.offset for b in bad], pa.string()),
            "reason": pa.array([b.reason for b in bad], pa.string()),
            "message": pa.array([b.message.data.decode("utf-8", errors="replace") for b in bad], pa.string()),
        }
    )


__all__ = ["BadMessage", "Decoded", "MessageDecoder", "bad_rows"]
