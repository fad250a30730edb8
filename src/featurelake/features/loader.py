"""Load ``features.py`` from a project directory and collect the entities and views it defines."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from featurelake.errors import ConfigError, UsageError
from featurelake.features.definitions import Entity, FeatureView, shown


@dataclass
class Definitions:
    """Everything one ``features.py`` defines, by name."""

    entities: dict[str, Entity] = field(default_factory=dict)
    views: dict[str, FeatureView] = field(default_factory=dict)

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            known = ", ".join(sorted(self.views)) or "none"
            raise UsageError(f"unknown feature view {shown(name)}: features.py defines {known}") from None


def load_definitions(path: Path) -> Definitions:
    """Import ``path`` as a fresh module and collect module-level ``Entity``/``FeatureView`` objects."""
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
    try:
        spec.loader.exec_module(module)
    except ConfigError as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise ConfigError(f"{path}{where}: {exc}") from exc
    except Exception as exc:
        # The line in features.py that raised, not the innermost frame inside featurelake.
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        frame = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
        raise ConfigError(
            f"{path} failed to load at line {frame.lineno}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added:
            sys.path.remove(project_dir)
    defs = Definitions()
    for value in vars(module).values():
        if isinstance(value, Entity):
            defs.entities[value.name] = value
        elif isinstance(value, FeatureView):
            if value.name in defs.views and defs.views[value.name] is not value:
                raise ConfigError(f"{path}: two feature views are named {value.name!r}")
            defs.views[value.name] = value
            defs.entities.setdefault(value.entity.name, value.entity)
    return defs
