"""Online lookups: ``fl.online.get(...)`` for Python, and the Feast-shaped response the HTTP server returns.

Both share one core: resolve the requested features to views (cached per feature list), check the entity
keys against each view's key type, read every (view, key) in ONE store round trip, then judge each row:
``NOT_FOUND`` (never synced), ``OUTSIDE_MAX_AGE`` (older than the view's ttl: values are null, exactly as a
training set would have them, and the event time says how old the row is), else ``PRESENT``.

A view keyed by several columns (a composite key) takes one value per key column: Feast-style
``{"user_id": [1, 2], "merchant_id": [7, 8]}`` over HTTP, a dict or tuple per key in Python
(``fl.online.get("user_merchant_features", [{"user_id": 1, "merchant_id": 7}])``); each key is checked
column by column and encoded as the store holds it (``features/keys.py``).

The store answers only for its own scope (project, catalog, namespace; ``serving/scope.py``). A view whose
only data in the store is of the layout before scopes is never served from it: every key is ``NOT_FOUND``,
and the first lookup of that view logs why and what to run (:meth:`OnlineService.layout_notice`).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from featurelake.errors import RequestError, UsageError
from featurelake.features.definitions import FeatureView, shown
from featurelake.features.keys import encode_key
from featurelake.features.loader import Definitions
from featurelake.serving import codec
from featurelake.serving.base import OnlineStore, Stored
from featurelake.serving.ondemand import NULL_VALUE, OnDemandPlan, missing_request
from featurelake.serving.scope import legacy_notice

if TYPE_CHECKING:
    from featurelake.project import Project

PRESENT = "PRESENT"
NOT_FOUND = "NOT_FOUND"
OUTSIDE_MAX_AGE = "OUTSIDE_MAX_AGE"
EPOCH_ISO = "1970-01-01T00:00:00Z"
_PLAN_CACHE_SIZE = 512
log = logging.getLogger("featurelake.online")


@dataclass(frozen=True)
class OnlineRow:
    """One entity's lookup in one view: status, event time of the row and the requested values."""

    key: int | str | dict[str, int | str]
    """The key as asked: its value, or ``{column: value}`` for a composite key."""
    status: str
    event_ts: datetime | None
    values: dict[str, Any]
    statuses: dict[str, str] | None = None
    """Per feature, for a feature service or an on-demand view (``status`` is then the first that is not
    PRESENT, ``event_ts`` the oldest source row's time)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status,
            "event_ts": self.event_ts.isoformat() if self.event_ts else None,
            **self.values,
            **({"statuses": self.statuses} if self.statuses is not None else {}),
        }


@dataclass(frozen=True)
class _Group:
    """The features requested from one view, with their decoders."""

    view: str
    join_keys: tuple[str, ...]
    key_is_int: tuple[bool, ...]
    ttl_us: int | None
    fields: tuple[str, ...]
    out_names: tuple[str, ...]
    decoders: tuple[codec.Decoder | None, ...]
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    """A stored row's values of ``fields``, as a tuple (a ``KeyError`` when the row lacks one)."""
    null_row: tuple[None, ...]
    decoding: tuple[tuple[str, codec.Decoder], ...]
    """The fields that have a decoder, with it."""


def _getter(fields: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if len(fields) <= 1:  # itemgetter of one item returns the value, not a 1-tuple
        return lambda d: tuple(d[f] for f in fields)
    return operator.itemgetter(*fields)


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]
    join_keys: tuple[str, ...]
    names: tuple[str, ...]  # feature output names in request order
    order: tuple[tuple[int, int], ...]  # (group, field) per requested feature; on-demand views follow groups
    on_demand: tuple[OnDemandPlan, ...] = ()
    request_fields: frozenset[str] = frozenset()
    """Request fields of the on-demand views: sent in ``entities``, never echoed as entity columns."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class OnlineService:
    """Lookups against one online store for the views of one project (``fl.online``)."""

    def __init__(
        self,
        definitions: Definitions,
        store: OnlineStore,
        *,
        key_types: Callable[[FeatureView], tuple[bool, ...]] | None = None,
        max_entities: int = 10_000,
    ) -> None:
        self.definitions = definitions
        self.store = store
        self.max_entities = max_entities
        self._resolve_key_types = key_types
        self._plans: dict[tuple[tuple[str, ...], bool, bool], _Plan] = {}
        self._view_plans: dict[tuple[str, tuple[str, ...] | None], _Plan] = {}
        self._key_types: dict[str, tuple[bool, ...]] = {}
        self._notices: dict[str, str | None] = {}

    def close(self) -> None:
        self.store.close()

    # --- planning -------------------------------------------------------------------------------------
    def _view(self, name: str) -> FeatureView:
        view = self.definitions.views.get(name)
        if view is None:
            # Remote callers learn nothing about the views they did not name (`featurelake get` lists them).
            raise RequestError(f"unknown feature view {shown(name)}", 404)
        return view

    def key_types(self, view: FeatureView) -> tuple[bool, ...]:
        """Per key column, whether it is an integer: the entity's declared type, else the one ``apply`` gave
        the view's table (asked once)."""
        cached = self._key_types.get(view.name)
        if cached is None:
            declared = [view.entity.key_dtype(k) for k in view.join_keys]
            recorded: list[str] | None = None
            if any(d is None for d in declared):
                mark = self.store.get_watermark(view.name)
                if mark is not None and mark.key_type is not None:
                    recorded = mark.key_type.split(",")  # recorded by the last sync: no catalog round trip
                    recorded = recorded if len(recorded) == len(declared) else None
            if all(d is not None for d in declared):
                cached = tuple(d == "long" for d in declared)
            elif recorded is not None:
                cached = tuple((d or r) == "long" for d, r in zip(declared, recorded, strict=True))
            elif self._resolve_key_types is not None:
                cached = self._resolve_key_types(view)
            else:
                raise RequestError(
                    f"the key type of view {view.name!r} is unknown: declare Entity(..., dtype='long'|'string')"
                )
            self._key_types[view.name] = cached
        return cached

    def key_is_int(self, view: FeatureView) -> bool:
        """Whether the key of a one-column-key view is an integer (see :meth:`key_types`)."""
        return self.key_types(view)[0] if not view.composite else _composite(view)

    def layout_notice(self, view: str) -> str | None:
        """Why every key of ``view`` is NOT_FOUND when the store holds its data only in the layout before
        scopes (never served: it cannot be told which catalog or namespace it came from); None otherwise.
        Asked of the store once per view."""
        if view not in self._notices:
            legacy = self.store.get_watermark(view) is None and self.store.has_legacy(view)
            self._notices[view] = legacy_notice(view, self.store.location) if legacy else None
        return self._notices[view]

    def _plan(self, features: Sequence[str], full_names: bool, python: bool) -> _Plan:
        for ref in features:  # before hashing: a list or object in the request must be a 4xx, not a 500
            if not isinstance(ref, str):
                raise RequestError(
                    f"feature reference {str(ref)[:60]!r} must be a string 'view:feature', e.g. 'user_features:amount_avg_1d'"
                )
        cache_key = (tuple(features), full_names, python)
        plan = self._plans.get(cache_key)
        if plan is not None:
            return plan
        if not features:
            raise RequestError("no features requested: pass features like ['user_features:amount_avg_1d']")
        groups: dict[str, dict[str, Any]] = {}
        order: list[tuple[str, str]] = []
        on_demand: dict[str, list[str]] = {}
        for ref in features:
            if not isinstance(ref, str) or ref.count(":") != 1:
                raise RequestError(
                    f"feature reference {ref!r} must be written 'view:feature', e.g. 'user_features:amount_avg_1d'"
                )
            view_name, field = ref.split(":")
            odfv = self.definitions.on_demand.get(view_name)
            if odfv is not None:
                if field not in odfv.fields:
                    raise RequestError(
                        f"on-demand feature view {view_name!r} has no feature {shown(field)}", 404
                    )
                wanted = on_demand.setdefault(view_name, [])
                if field not in wanted:
                    wanted.append(field)
                order.append((view_name, field))
                continue
            view = self._view(view_name)
            if view_name not in self._notices and self.layout_notice(view_name):
                log.warning("%s", self._notices[view_name])  # once per view, unless the caller asked first
            types = codec.field_types(view)
            if field not in types:
                raise RequestError(f"view {view_name!r} has no feature {shown(field)}", 404)
            g = groups.setdefault(view_name, {"view": view, "types": types, "fields": []})
            if field not in g["fields"]:
                g["fields"].append(field)
            order.append((view_name, field))
        for odfv_name in on_demand:  # an on-demand view reads every feature of its source views
            for source in self.definitions.on_demand[odfv_name].views:
                g = groups.setdefault(
                    source.name, {"view": source, "types": codec.field_types(source), "fields": []}
                )
                g["fields"].extend(f for f in source.fields if f not in g["fields"])
        names: list[str] = []
        built: list[_Group] = []
        index: dict[tuple[str, str], tuple[int, int]] = {}
        for gi, (view_name, g) in enumerate(groups.items()):
            view = g["view"]
            fields = tuple(g["fields"])
            decode = codec.python_decoder if python else codec.json_decoder
            decoders = tuple(decode(g["types"][f]) for f in fields)
            built.append(
                _Group(
                    view=view_name,
                    join_keys=tuple(view.join_keys),
                    key_is_int=self.key_types(view),
                    ttl_us=int(view.ttl.total_seconds() * 1_000_000) if view.ttl else None,
                    fields=fields,
                    out_names=tuple(f"{view_name}__{f}" if full_names else f for f in fields),
                    decoders=decoders,
                    getter=_getter(fields),
                    null_row=(None,) * len(fields),
                    decoding=tuple(
                        (f, dec) for f, dec in zip(fields, decoders, strict=True) if dec is not None
                    ),
                )
            )
            for fi, f in enumerate(fields):
                index[(view_name, f)] = (gi, fi)
        ondemand = []
        for k, (odfv_name, fields_wanted) in enumerate(on_demand.items()):
            od = OnDemandPlan.build(self.definitions.on_demand[odfv_name], fields_wanted, index, full_names)
            ondemand.append(od)
            for fi, f in enumerate(fields_wanted):
                index[(odfv_name, f)] = (len(built) + k, fi)
        out_names = [g.out_names for g in built] + [od.out_names for od in ondemand]
        seen: dict[str, str] = {}
        for view_name, f in order:
            gi, fi = index[(view_name, f)]
            name = out_names[gi][fi]
            if name in seen and seen[name] != view_name:
                raise RequestError(
                    f"feature name {name!r} is requested from both {seen[name]!r} and {view_name!r}; "
                    "set full_feature_names to true to get 'view__feature' names"
                )
            seen[name] = view_name
            names.append(name)
        plan = _Plan(
            groups=tuple(built),
            join_keys=tuple(dict.fromkeys(k for g in built for k in g.join_keys)),
            names=tuple(names),
            order=tuple(index[o] for o in order),
            on_demand=tuple(ondemand),
            request_fields=frozenset(f for od in ondemand for f, _ in od.request),
        )
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[cache_key] = plan
        return plan

    # --- key checks -----------------------------------------------------------------------------------
    @staticmethod
    def _check_column(group: _Group, column: str, is_int: bool, keys: Sequence[Any]) -> None:
        if is_int:
            for k in keys:
                if type(k) is not int:
                    raise RequestError(
                        f"{column} of view {group.view!r} is an integer key; got {k!r} "
                        f"({_type_name(k)}): send numbers, e.g. [1, 2]"
                    )
            return
        for k in keys:
            if type(k) is not str:
                raise RequestError(
                    f"{column} of view {group.view!r} is a string key; got {k!r} "
                    f'({_type_name(k)}): send strings, e.g. ["u0001"]'
                )

    def _check_keys(self, group: _Group, entities: Mapping[str, Sequence[Any]]) -> list[str]:
        """The store keys of ``group``'s view for the entity columns, each column checked against its type."""
        columns = [entities[k] for k in group.join_keys]
        for column, is_int, keys in zip(group.join_keys, group.key_is_int, columns, strict=True):
            self._check_column(group, column, is_int, keys)
        if len(columns) == 1:
            return [str(k) for k in columns[0]] if group.key_is_int[0] else list(columns[0])
        return [encode_key(values) for values in zip(*columns, strict=True)]

    def _read(self, plan: _Plan, entities: Mapping[str, Sequence[Any]]) -> tuple[int, list[list[Stored]]]:
        if not isinstance(entities, Mapping) or not entities:
            example = plan.join_keys[0] if plan.join_keys else next(iter(plan.request_fields), "user_id")
            raise RequestError(
                f"entities must map join keys to lists of values, e.g. {{{example!r}: [1, 2]}}"
            )
        for od in plan.on_demand:
            if (problem := missing_request(od, entities)) is not None:
                raise problem
        n = -1
        for jk in plan.join_keys:
            if jk not in entities:
                owners = [g for g in plan.groups if jk in g.join_keys]
                if all(len(g.join_keys) == 1 for g in owners):
                    raise RequestError(
                        f"entities lack {jk!r}, the join key of {', '.join(g.view for g in owners)}"
                    )
                keyed = "; ".join(f"{g.view} is keyed by {', '.join(g.join_keys)}" for g in owners)
                raise RequestError(
                    f"entities lack {jk!r}, a column of a composite key ({keyed}): send a list for every key "
                    "column, all of the same length"
                )
        for name, values in entities.items():
            if not isinstance(values, list):
                raise RequestError(f"entities[{name!r}] must be a list of keys, got {_type_name(values)}")
            if n == -1:
                n = len(values)
            elif len(values) != n:
                raise RequestError(
                    f"entity lists differ in length: {name!r} has {len(values)} values, others {n}"
                )
        if n == 0:
            raise RequestError("the entity lists are empty: ask for at least one key")
        if n > self.max_entities:
            raise RequestError(
                f"{n} entities in one request exceed the limit of {self.max_entities} "
                "(server.max_entities); split the request",
                413,
            )
        requests = [(g.view, self._check_keys(g, entities)) for g in plan.groups]
        return n, self.store.read(requests)

    # --- the two faces --------------------------------------------------------------------------------
    def _requested(self, features: Sequence[str] | None, feature_service: str | None) -> Sequence[str]:
        """The feature references asked for: ``features``, or those of feature service ``feature_service``."""
        if feature_service is None:
            return features if features is not None else ()
        if features is not None:
            raise RequestError('give either "features" or "feature_service", not both')
        refs = (
            self.definitions.service_features.get(feature_service)
            if isinstance(feature_service, str)
            else None
        )
        if refs is None:
            # Remote callers learn nothing about the services they did not name (`featurelake services` lists them).
            raise RequestError(f"unknown feature service {shown(feature_service)}", 404)
        return refs

    def _collect(
        self, plan: _Plan, entities: Mapping[str, Sequence[Any]], now: datetime | None, *, json: bool
    ) -> tuple[int, list[list[dict[str, Any]]]]:
        """Read ``plan`` for ``entities``: per group (then per on-demand view), per field, a result column.

        Event timestamps are ISO strings (``json``) or epoch microseconds (None where not found).
        """
        n, stored = self._read(plan, entities)
        now_us = int((now.timestamp() if now else time.time()) * 1_000_000)
        columns: list[list[dict[str, Any]]] = []  # per group, per field: a result column
        sources: list[list[dict[str, Any]]] | None = [] if plan.on_demand else None
        iso_cache: dict[int, str] = {}
        empty: dict[str, Any] = {}
        for group, rows in zip(plan.groups, stored, strict=True):
            statuses: list[str] = [NOT_FOUND] * n
            stamps: list[Any] = [EPOCH_ISO if json else None] * n
            present: list[int] = []
            payloads: list[bytes | str] = []
            for i, hit in enumerate(rows):
                if hit is None:
                    continue
                ts, payload = hit
                if json:
                    stamp = iso_cache.get(ts)
                    if stamp is None:
                        stamp = iso_cache[ts] = codec.iso_utc(ts)
                    stamps[i] = stamp
                else:
                    stamps[i] = ts
                if group.ttl_us is not None and now_us - ts > group.ttl_us:
                    statuses[i] = OUTSIDE_MAX_AGE
                    continue
                statuses[i] = PRESENT
                present.append(i)
                payloads.append(payload)
            datas = _decode_payloads(payloads)
            # Column by column: the rows' values as tuples (itemgetter), transposed by zip, both in C.
            found = _values(group, datas)
            if len(found) == n:
                table = found
            else:
                table = [group.null_row] * n
                for i, row in zip(present, found, strict=True):
                    table[i] = row
            group_columns = []
            for values, dec in zip(zip(*table, strict=True), group.decoders, strict=True):
                col = list(values) if dec is None else [None if v is None else dec(v) for v in values]
                group_columns.append({"values": col, "statuses": statuses, "event_timestamps": stamps})
            columns.append(group_columns)
            if sources is not None:
                by_row: list[dict[str, Any]] = [empty] * n
                for i, d in zip(present, datas, strict=True):
                    by_row[i] = d
                sources.append(by_row)
        if sources is not None:
            fields = [g.fields for g in plan.groups]
            for od in plan.on_demand:
                out = od.compute(sources, fields, entities, n)
                columns.append(od.columns(out, n, json, EPOCH_ISO if json else None))
        return n, columns

    def get_online_features(
        self,
        features: Sequence[str] | None = None,
        entities: Mapping[str, Sequence[Any]] | None = None,
        *,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Feast's ``/get-online-features`` response: entity columns, then one column per feature.

        ``feature_service`` names a feature service instead of listing ``features``; on-demand features are
        computed from their source rows and the request fields sent in ``entities`` (which are not echoed).
        """
        plan = self._plan(self._requested(features, feature_service), full_feature_names, python=False)
        if entities is None:
            entities = {}
        n, columns = self._collect(plan, entities, now, json=True)
        echoed = (
            [k for k in entities if k not in plan.request_fields] if plan.request_fields else list(entities)
        )
        results: list[dict[str, Any]] = [
            {"values": list(entities[k]), "statuses": [PRESENT] * n, "event_timestamps": [EPOCH_ISO] * n}
            for k in echoed
        ]
        results += [columns[gi][fi] for gi, fi in plan.order]
        return {"metadata": {"feature_names": [*echoed, *plan.names]}, "results": results}

    def get(
        self,
        view: str,
        keys: Sequence[Any] | int | str | Mapping[str, Any],
        features: Sequence[str] | None = None,
        *,
        now: datetime | None = None,
        request: Mapping[str, Sequence[Any]] | None = None,
        full_feature_names: bool = False,
    ) -> list[OnlineRow]:
        """Look up ``keys`` of ``view`` (all its features unless ``features`` names some), one row per key.

        ``view`` may also name an on-demand view (``request`` then holds its request fields, one list of
        values per field, one value per key) or a feature service (all its features, across its views; keys
        are then dicts when its views have several key columns between them). Such rows carry a status per
        feature in ``statuses``.

        ``keys``: key values (``[1, 2]``; one value alone is one key); for a view with a composite key, a
        list of dicts naming every key column (``[{"user_id": 1, "merchant_id": 7}]``) or of tuples in the
        order of the view's ``join_keys`` (``[(1, 7)]``); one dict or tuple alone is one key. Rows carry
        the key as given, as a dict for a composite key.
        """
        defs = self.definitions
        if view not in defs.views and (view in defs.on_demand or view in defs.service_features):
            return self._get_many(view, keys, features, now, request, full_feature_names)
        if request is not None:
            raise RequestError(f"request data applies to on-demand feature views; {view!r} is a feature view")
        fv = self._view(view)
        plan = self._view_plan(fv, features)
        keys, entities = _key_columns(fv.name, fv.join_keys, keys)
        _, stored = self._read(plan, entities)
        group = plan.groups[0]
        now_us = int((now.timestamp() if now else time.time()) * 1_000_000)
        out: list[OnlineRow] = []
        for key, hit in zip(keys, stored[0], strict=True):
            if hit is None:
                out.append(OnlineRow(key, NOT_FOUND, None, dict.fromkeys(group.fields)))
                continue
            ts, payload = hit
            event_ts = codec.EPOCH + codec.timedelta(microseconds=ts)
            if group.ttl_us is not None and now_us - ts > group.ttl_us:
                out.append(OnlineRow(key, OUTSIDE_MAX_AGE, event_ts, dict.fromkeys(group.fields)))
                continue
            (row,) = _values(group, [orjson.loads(payload)])
            values = dict(zip(group.fields, row, strict=True))
            for field, dec in group.decoding:
                v = values[field]
                if v is not None:
                    values[field] = dec(v)
            out.append(OnlineRow(key, PRESENT, event_ts, values))
        return out

    def _view_plan(self, fv: FeatureView, features: Sequence[str] | None) -> _Plan:
        """:meth:`get`'s plan for ``features`` of ``fv`` (all of them when None), kept per request shape."""
        cache_key = (fv.name, tuple(features) if features else None)
        try:
            plan = self._view_plans.get(cache_key)
        except TypeError:  # a feature name that is not a string: _plan says so
            plan = None
        if plan is None:
            names = list(features) if features else list(fv.fields)
            plan = self._plan([f"{fv.name}:{f}" for f in names], False, python=True)
            if len(self._view_plans) >= _PLAN_CACHE_SIZE:
                self._view_plans.clear()
            self._view_plans[cache_key] = plan
        return plan

    def _get_many(
        self,
        name: str,
        keys: Any,
        features: Sequence[str] | None,
        now: datetime | None,
        request: Mapping[str, Sequence[Any]] | None,
        full_feature_names: bool,
    ) -> list[OnlineRow]:
        """:meth:`get` for a feature service or an on-demand view: rows across several views."""
        defs = self.definitions
        if name in defs.service_features:
            if features:
                raise RequestError(
                    f"feature service {name!r} fixes its features; look up views or on-demand views to choose some"
                )
            refs = defs.service_features[name]
        else:
            fields = list(features) if features else list(defs.on_demand[name].fields)
            refs = [f"{name}:{f}" for f in fields]
        plan = self._plan(refs, full_feature_names, python=True)
        if not plan.join_keys:
            raise RequestError(
                f"{name!r} reads no feature view, only request data: call get_online_features(features, "
                "entities) with the request fields in entities"
            )
        given, entities = _key_columns(name, list(plan.join_keys), keys)
        for field, column in (request or {}).items():
            if field in entities:
                raise RequestError(f"request field {field!r} is also a key column of {name!r}")
            if not isinstance(column, Sequence) or isinstance(column, str) or len(column) != len(given):
                raise RequestError(
                    f"request[{field!r}] must be a list with one value per key ({len(given)} keys)"
                )
            entities[field] = list(column)
        _, columns = self._collect(plan, entities, now, json=False)
        out: list[OnlineRow] = []
        for i, key in enumerate(given):
            values: dict[str, Any] = {}
            statuses: dict[str, str] = {}
            for out_name, (gi, fi) in zip(plan.names, plan.order, strict=True):
                col = columns[gi][fi]
                values[out_name] = col["values"][i]
                statuses[out_name] = col["statuses"][i]
            found = [columns[gi][0]["event_timestamps"][i] for gi in range(len(plan.groups))]
            oldest = min((ts for ts in found if ts is not None), default=None)
            event_ts = codec.EPOCH + codec.timedelta(microseconds=oldest) if oldest is not None else None
            status = next(
                (s for s in (NOT_FOUND, OUTSIDE_MAX_AGE, NULL_VALUE) if s in statuses.values()), PRESENT
            )
            out.append(OnlineRow(key, status, event_ts, values, statuses))
        return out


def _decode_payloads(payloads: list[bytes | str]) -> list[dict[str, Any]]:
    """The stored JSON objects, parsed as one JSON array (one parser call for any number of rows)."""
    if not payloads:
        return []
    first = payloads[0]
    if len(payloads) == 1:
        return [orjson.loads(first)]
    if isinstance(first, bytes):  # Redis answers bytes, SQLite text
        joined: bytes | str = b"[" + b",".join(payloads) + b"]"  # type: ignore[arg-type]
    else:
        joined = "[" + ",".join(payloads) + "]"  # type: ignore[arg-type]
    parsed: list[dict[str, Any]] = orjson.loads(joined)
    return parsed


def _values(group: _Group, datas: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Per stored row, the values of ``group.fields`` in order (None for a field its payload lacks: one
    written before the field was added)."""
    getter = group.getter
    try:
        return [getter(d) for d in datas]
    except KeyError:
        fields = group.fields
        return [tuple(d.get(f) for f in fields) for d in datas]


def _composite(view: FeatureView) -> NoReturn:
    raise RequestError(
        f"view {view.name!r} has a composite key ({', '.join(view.join_keys)}): ask key_types() for the type of "
        "each key column"
    )


def _key_columns(name: str, columns: list[str], keys: Any) -> tuple[list[Any], dict[str, list[Any]]]:
    """The keys of ``name`` (keyed by ``columns``) as a list (one per row asked) and as entity columns (one list
    per key column)."""
    if len(columns) == 1:
        if isinstance(keys, str | int | Mapping):
            keys = [keys]
        if not isinstance(keys, Sequence):
            raise RequestError(f"keys of view {name!r} must be a list such as [1, 2], got {_type_name(keys)}")
        values = [k[columns[0]] if isinstance(k, Mapping) and set(k) == {columns[0]} else k for k in keys]
        return values, {columns[0]: values}
    example = "{" + ", ".join(f"{c!r}: ..." for c in columns) + "}"
    if isinstance(keys, Mapping) or (
        isinstance(keys, tuple) and keys and not any(isinstance(k, tuple | list | Mapping) for k in keys)
    ):
        keys = [keys]
    if not isinstance(keys, Sequence) or isinstance(keys, str):
        raise RequestError(
            f"view {name!r} has a composite key ({', '.join(columns)}): pass a list of dicts such as "
            f"[{example}] or of tuples in that order"
        )
    out: dict[str, list[Any]] = {c: [] for c in columns}
    given: list[Any] = []
    for key in keys:
        if isinstance(key, Mapping):
            unknown = [str(c) for c in key if c not in columns]
            if unknown:
                raise RequestError(
                    f"key {key!r} of view {name!r} names {', '.join(map(repr, unknown))}, which is not a key "
                    f"column; its key columns are {', '.join(columns)}"
                )
            missing = [c for c in columns if c not in key]
            if missing:
                raise RequestError(
                    f"key {key!r} of view {name!r} lacks {', '.join(missing)}: a composite key names every key "
                    f"column ({example})"
                )
            values = [key[c] for c in columns]
        elif isinstance(key, tuple | list):
            if len(key) != len(columns):
                raise RequestError(
                    f"key {tuple(key)!r} of view {name!r} has {len(key)} value(s) but the key has "
                    f"{len(columns)} columns ({', '.join(columns)}): give one value per key column, in that order"
                )
            values = list(key)
        else:
            raise RequestError(
                f"key {key!r} of view {name!r}: the view has a composite key ({', '.join(columns)}); give each "
                f"key as a dict {example} or a tuple in that order"
            )
        for c, v in zip(columns, values, strict=True):
            out[c].append(v)
        given.append(dict(zip(columns, values, strict=True)))
    return given, out


def table_key_types(project: Project) -> Callable[[FeatureView], tuple[bool, ...]]:
    """A resolver reading a view's key types from its Iceberg table (per key column: integer or not)."""

    def resolve(view: FeatureView) -> tuple[bool, ...]:
        from pyiceberg.types import IntegerType, LongType

        try:
            tbl = project.load_table(view.name)
        except UsageError:
            raise RequestError(
                f"view {view.name!r} has no table yet: run `featurelake apply`, a backfill and `featurelake sync`",
                404,
            ) from None
        schema = tbl.schema()
        return tuple(
            isinstance(schema.find_field(k).field_type, IntegerType | LongType) for k in view.join_keys
        )

    return resolve


__all__ = ["NOT_FOUND", "OUTSIDE_MAX_AGE", "PRESENT", "OnlineRow", "OnlineService", "table_key_types"]
