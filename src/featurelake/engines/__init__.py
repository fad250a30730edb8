"""Execution engines, picked by ``engine.type`` through a lazy name -> loader map.

Domains whose work changes with the engine (batch prediction, online sync, maintenance) keep their own
``engine.type`` -> backend map and pick from it with :func:`load_backend`; a Spark backend gets its engine with
:func:`spark_engine`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyiceberg.catalog import Catalog

from featurelake.engines.base import Engine
from featurelake.errors import ConfigError

if TYPE_CHECKING:
    from featurelake.engines.spark import SparkEngine

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


# extra -> the module it installs: checked before a backend that needs the extra is imported, since backend
# modules import their engine's library lazily.
_EXTRA_PROVIDES = {"spark": "pyspark"}


def load_backend(available: Mapping[str, tuple[str, str, str | None]], engine_type: str, what: str) -> Any:
    """The class ``available`` (engine.type -> (module, class, extra)) names for ``engine_type``.

    The module is imported only now; a missing extra gives an install hint naming what needs it.
    """
    if engine_type not in available:
        raise ConfigError(f"{what} has no {engine_type!r} backend: use engine.type {' or '.join(available)}")
    module_name, cls_name, extra = available[engine_type]
    hint = f": pip install 'featurelake[{extra}]'" if extra else ""
    needed = _EXTRA_PROVIDES.get(extra) if extra else None
    if needed is not None and importlib.util.find_spec(needed) is None:
        raise ConfigError(f"{what} on {engine_type} needs {needed}, which is not installed{hint}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{what} on {engine_type} is not available ({exc.name} is not installed){hint}"
        ) from exc
    return getattr(module, cls_name)


def spark_engine(engine: Engine, what: str) -> SparkEngine:
    """``engine`` as the SparkEngine a Spark backend needs; a ConfigError for any other engine."""
    from featurelake.engines.spark import SparkEngine

    if not isinstance(engine, SparkEngine):
        raise ConfigError(f"{what} on Spark needs engine.type: spark (this project has {engine.name})")
    return engine


__all__ = ["AVAILABLE_ENGINES", "Engine", "load_backend", "load_engine", "spark_engine"]
