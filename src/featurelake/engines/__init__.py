"""Execution engines, picked by ``engine.type`` through a lazy name -> loader map."""

from __future__ import annotations

import importlib
from pathlib import Path

from pyiceberg.catalog import Catalog

from featurelake.engines.base import Engine
from featurelake.errors import ConfigError

# name -> (module, class, extra that provides its dependencies)
AVAILABLE_ENGINES: dict[str, tuple[str, str, str | None]] = {
    "local": ("featurelake.engines.local", "LocalEngine", None),
    "spark": ("featurelake.engines.spark", "SparkEngine", "spark"),
}


def load_engine(name: str, catalog: Catalog, project_dir: Path) -> Engine:
    """Instantiate the engine called ``name``; a missing extra gives an install hint."""
    if name not in AVAILABLE_ENGINES:
        raise ConfigError(f"unknown engine.type {name!r}: use one of {', '.join(AVAILABLE_ENGINES)}")
    module_name, cls_name, extra = AVAILABLE_ENGINES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = f": pip install 'featurelake[{extra}]'" if extra else ""
        raise ConfigError(f"engine {name!r} is not available ({exc.name} is not installed){hint}") from exc
    engine_cls: type[Engine] = getattr(module, cls_name)
    return engine_cls(catalog, project_dir)


__all__ = ["AVAILABLE_ENGINES", "Engine", "load_engine"]
