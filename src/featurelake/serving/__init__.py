"""Online serving: online stores (picked by ``online_store.type`` through a lazy name -> loader map), the
lookup service behind ``fl.online`` and the HTTP server, and the Iceberg -> online store sync."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from featurelake.errors import ConfigError
from featurelake.serving.base import OnlineStore, Records, Watermark

if TYPE_CHECKING:
    from featurelake.config import ProjectConfig

# name -> (module, class, extra that provides its dependencies)
AVAILABLE_STORES: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("featurelake.serving.sqlite", "SqliteStore", None),
    "redis": ("featurelake.serving.redis", "RedisStore", "redis"),
}


def open_store(config: ProjectConfig) -> OnlineStore:
    """The project's online store as configured; a missing extra gives an install hint."""
    cfg = config.settings.online_store
    name = cfg.type
    if name not in AVAILABLE_STORES:
        raise ConfigError(f"unknown online_store.type {name!r}: use one of {', '.join(AVAILABLE_STORES)}")
    module_name, cls_name, extra = AVAILABLE_STORES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = f": pip install 'featurelake[{extra}]'" if extra else ""
        raise ConfigError(
            f"online store {name!r} is not available ({exc.name} is not installed){hint}"
        ) from exc
    store_cls: type[OnlineStore] = getattr(module, cls_name)
    return store_cls.from_config(config)


__all__ = ["AVAILABLE_STORES", "OnlineStore", "Records", "Watermark", "open_store"]
