"""Load ``features.py`` from a project directory and collect the entities and views it defines."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurelake.errors import ConfigError, UsageError
from featurelake.features.definitions import Entity, FeatureView, shown
from featurelake.features.load_guard import run_definitions
from featurelake.features.ondemand import OnDemandFeatureView
from featurelake.features.services import FeatureService, resolve_services, unknown_service


@dataclass
class Definitions:
    """Everything one ``features.py`` defines, by name."""

    entities: dict[str, Entity] = field(default_factory=dict)
    views: dict[str, FeatureView] = field(default_factory=dict)
    on_demand: dict[str, OnDemandFeatureView] = field(default_factory=dict)
    """On-demand (request-time) views, by name (``features/ondemand.py``)."""
    services: dict[str, FeatureService] = field(default_factory=dict)
    service_features: dict[str, list[str]] = field(default_factory=dict)
    """Each service's features as ``view:feature`` references, resolved and checked when the file loaded."""

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            if name in self.on_demand:
                raise UsageError(
                    f"{name!r} is an on-demand feature view: it is computed when asked for (training sets, online "
                    "lookups), never stored, so it has no table"
                ) from None
            if name in self.services:
                raise UsageError(
                    f"{name!r} is a feature service, not a feature view: use it where a feature list goes "
                    f"(training-set --service {name}, fl.online.get({name!r}, keys), POST /get-online-features "
                    f'with "feature_service": "{name}")'
                ) from None
            known = ", ".join(sorted(self.views)) or "none"
            raise UsageError(f"unknown feature view {shown(name)}: features.py defines {known}") from None

    def service(self, name: str) -> list[str]:
        """The features of feature service ``name`` as ``view:feature`` (UsageError when there is none)."""
        if not isinstance(name, str) or name not in self.service_features:
            raise unknown_service(name, list(self.services))
        return list(self.service_features[name])


def load_definitions(path: Path, *, timeout: float | None = None) -> Definitions:
    """Import ``path`` as a fresh module and collect module-level ``Entity``/``FeatureView`` objects.

    Whatever goes wrong while it runs is a ConfigError naming ``file:line`` (``features/load_guard.py``);
    ``timeout`` (seconds, ``features.load_timeout``) bounds the run; a file without views warns on stderr.
    """
    if not path.is_file():
        raise ConfigError(f"no feature definitions at {path}: create features.py (see `featurelake init`)")
    module_name = f"_featurelake_defs_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Definitions may import sibling modules of the project; make the project directory importable.
    project_dir = str(path.parent)
    added = project_dir not in sys.path
    if added:
        sys.path.insert(0, project_dir)
    loader = spec.loader
    try:
        run_definitions(path, lambda: loader.exec_module(module), timeout)
    finally:
        if added:
            sys.path.remove(project_dir)
    defs = Definitions()
    for value in vars(module).values():
        if isinstance(value, Entity):
            defs.entities[value.name] = value
        elif isinstance(value, FeatureView):
            if value.name in defs.views and defs.views[value.name] is not value:
                raise ConfigError(f"{path}: two feature views are named {value.name!r}; rename one")
            defs.views[value.name] = value
            defs.entities.setdefault(value.entity.name, value.entity)
        elif isinstance(value, OnDemandFeatureView):
            if defs.on_demand.get(value.name, value) is not value:
                raise ConfigError(f"{path}: two on-demand feature views are named {value.name!r}; rename one")
            defs.on_demand[value.name] = value
        elif isinstance(value, FeatureService):
            if defs.services.get(value.name, value) is not value:
                raise ConfigError(f"{path}: two feature services are named {value.name!r}; rename one")
            defs.services[value.name] = value
    try:
        for svc in defs.services.values():  # views a service holds as objects are views of the project too
            for entry in svc.features:
                if isinstance(entry, FeatureView | OnDemandFeatureView):
                    kind: dict[str, Any] = defs.views if isinstance(entry, FeatureView) else defs.on_demand
                    if kind.setdefault(entry.name, entry) is not entry:
                        raise ConfigError(
                            f"feature service {svc.name!r} lists a second view named {entry.name!r}"
                        )
                    if isinstance(entry, FeatureView):
                        defs.entities.setdefault(entry.entity.name, entry.entity)
        for odfv in defs.on_demand.values():
            if odfv.name in defs.views:
                raise ConfigError(
                    f"on-demand feature view {odfv.name!r} has the name of a feature view; rename one"
                )
            for source in odfv.views:  # a source view defined inline is still a view of the project
                if defs.views.setdefault(source.name, source) is not source:
                    raise ConfigError(f"two feature views are named {source.name!r}; rename one")
                defs.entities.setdefault(source.entity.name, source.entity)
        defs.service_features = resolve_services(defs.services, defs.views, defs.on_demand)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not defs.views:  # nothing to apply, backfill or serve: say so instead of a silent exit 0
        print(
            f"warning: {path} defines no feature views (no module-level FeatureView objects); "
            "commands have nothing to work on: define views (see `featurelake init`)",
            file=sys.stderr,
            flush=True,
        )
    return defs
