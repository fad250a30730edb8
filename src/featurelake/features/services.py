"""Feature services: a named, versioned list of features a model reads, declared once in ``features.py``.

``FeatureService("fraud_inputs", features=["user_features:amount_avg_1d", user_windows, "txn_context"])``:
each entry is a ``"view:feature"`` reference, a view's name or the view itself (all its features, in declared
order), for feature views and on-demand views alike. The service is checked against the other definitions
when ``features.py`` loads (:func:`resolve_services`): an unknown view or feature is refused there, naming the
service. ``featurelake apply`` records each service's resolved feature list in the catalog
(``features.service_log``), with a version that increments whenever that list changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from featurelake.errors import ConfigError, UsageError
from featurelake.features.definitions import FeatureView, shown, validate_identifier
from featurelake.features.ondemand import OnDemandFeatureView

#: What a service entry may be: ``"view:feature"``, ``"view"``, or a (on-demand) view object.
Entry = str | FeatureView | OnDemandFeatureView


@dataclass
class FeatureService:
    """A named list of features (see the module docstring); ``features`` keeps the entries as written."""

    name: str
    features: list[Entry]
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_identifier(self.name, "feature service name")
        what = f"feature service {self.name!r}"
        if isinstance(self.features, str | FeatureView | OnDemandFeatureView) or not isinstance(
            self.features, Sequence
        ):
            raise ConfigError(
                f"{what}: features must be a list such as ['user_features:amount_avg_1d', user_windows]"
            )
        if not self.features:
            raise ConfigError(f"{what} lists no features: give 'view:feature' references or views")
        self.features = list(self.features)
        for entry in self.features:
            if isinstance(entry, FeatureView | OnDemandFeatureView):
                continue
            if not isinstance(entry, str):
                raise ConfigError(
                    f"{what}: entry {shown(entry)} must be 'view:feature', a view's name or a view"
                )
            view, sep, feat = entry.partition(":")
            if not view or (sep and (not feat or ":" in feat)):
                raise ConfigError(
                    f"{what}: entry {shown(entry)} must be written 'view:feature' (or a view's name for all its "
                    "features), e.g. 'user_features:amount_avg_1d'"
                )
        if not isinstance(self.tags, Mapping):
            raise ConfigError(f"{what}: tags must be a dict of strings")
        self.tags = {str(k): str(v) for k, v in self.tags.items()}


def _fields(
    name: str, views: Mapping[str, FeatureView], on_demand: Mapping[str, OnDemandFeatureView]
) -> dict[str, str] | None:
    if name in views:
        return dict(views[name].fields)
    if name in on_demand:
        return dict(on_demand[name].fields)
    return None


def service_refs(
    service: FeatureService, views: Mapping[str, FeatureView], on_demand: Mapping[str, OnDemandFeatureView]
) -> list[str]:
    """The service's features as ``view:feature`` references, in order (views expanded to all their features);
    ConfigError naming the service for an unknown view or feature, or a feature listed twice."""
    what = f"feature service {service.name!r}"
    known = ", ".join(sorted({*views, *on_demand})) or "none"
    refs: list[str] = []
    for entry in service.features:
        if isinstance(entry, FeatureView | OnDemandFeatureView):
            name, feat = entry.name, ""
        else:
            name, _, feat = entry.partition(":")
        fields = _fields(name, views, on_demand)
        if fields is None:
            raise ConfigError(f"{what} names unknown feature view {shown(name)}; features.py defines {known}")
        if feat and feat not in fields:
            raise ConfigError(
                f"{what} names feature {shown(feat)} of view {name!r}, which has no such feature; its features "
                f"are {', '.join(fields)}"
            )
        for f in [feat] if feat else list(fields):
            ref = f"{name}:{f}"
            if ref in refs:
                raise ConfigError(
                    f"{what} lists {ref} twice (directly or through its whole view); list it once"
                )
            refs.append(ref)
    return refs


def resolve_services(
    services: Mapping[str, FeatureService],
    views: Mapping[str, FeatureView],
    on_demand: Mapping[str, OnDemandFeatureView],
) -> dict[str, list[str]]:
    """Check every service against the views (refused when ``features.py`` loads); ``{service: refs}``."""
    out: dict[str, list[str]] = {}
    for name, svc in services.items():
        if name in views or name in on_demand:
            raise ConfigError(
                f"feature service {name!r} has the name of a feature view; lookups take either, so rename one"
            )
        out[name] = service_refs(svc, views, on_demand)
    return out


def unknown_service(name: object, known: Sequence[str]) -> UsageError:
    listed = ", ".join(sorted(known)) or "none"
    return UsageError(
        f"unknown feature service {shown(name)}: features.py defines {listed} (declare it with "
        "FeatureService(name, features=[...]) and run `featurelake apply`)"
    )


__all__ = ["FeatureService", "resolve_services", "service_refs", "unknown_service"]
