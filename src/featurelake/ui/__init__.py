"""The web UI: a thin read-only layer over the platform's read APIs, with four actions (docs/ui.md).

``featurelake ui`` serves it on its own; ``featurelake serve`` mounts it under ``/ui`` (:func:`mount`).
Pages are server-rendered HTML (:mod:`.pages`) from what :mod:`.data` reads through the ``api`` facade, the
history, audit and stats logs, the registry, the online store and the monitoring state; one small script and
stylesheet shipped in the wheel (``static/``) draw the charts and lineage graphs. Nothing is loaded from
the network; no build step. It needs the ``server`` extra (Starlette, uvicorn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featurelake.ui.app import Mounted, create_app, mount

__all__ = ["Mounted", "create_app", "mount"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from featurelake.ui import app

        return getattr(app, name)
    raise AttributeError(name)
