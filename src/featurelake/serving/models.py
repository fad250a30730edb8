"""Online prediction: the Production version of a registered model, scored on features looked up online.

When the server starts, every model's Production version is loaded in a background thread, which then
re-resolves them every ``server.model_refresh_seconds``; when a different version has become Production it
is loaded through the batch-prediction flavors (``featurelake.prediction.flavors.load_model``:
digest-verified bytes, ``registry.allow_pickle`` honoured) and swapped in, so a promotion is picked up
within seconds without a restart (requests in flight finish on the version they started with) and no
request pays for a load, except one that arrives before its model's first load finished: it waits, and
the server leaves that wait out of ``featurelake_prediction_latency_seconds`` (it is load time, recorded as
``featurelake_model_load_seconds``), so a cold start never turns ``prediction_latency_high`` pending.

Inputs follow the version's recorded signature: each input names the ``view:feature`` it came from (models
registered from a training set have this), or a feature name that exactly one view defines. An entity with an
input that is not PRESENT (or is null) gets the input's recorded default when ``prediction.nan_policy`` is
``fill`` and there is one; otherwise it is not scored: its prediction is null and its status says why.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featurelake.errors import NotFoundError, RequestError
from featurelake.features.definitions import shown
from featurelake.prediction.flavors.base import proba_column
from featurelake.serving import metrics
from featurelake.serving.lookup import PRESENT, OnlineService

if TYPE_CHECKING:
    from featurelake.prediction.flavors import ModelFlavor
    from featurelake.registry import ModelRegistry, ModelVersion

log = logging.getLogger("featurelake.serving")


@dataclass(frozen=True)
class ServedModel:
    """One loaded version: its inputs as feature references, their fill defaults, and its flavor."""

    name: str
    version: str
    features: tuple[str, ...]
    defaults: tuple[float | None, ...]
    flavor: ModelFlavor


def _inputs(mv: ModelVersion, service: OnlineService) -> tuple[str, ...]:
    if not mv.signature:
        raise RequestError(
            f"model {mv.ref} has no input signature, so the server cannot know which features to look up; "
            "register it with --training-set (or a signature naming view:feature inputs)",
            422,
        )
    refs = []
    views = service.definitions.views
    for field in mv.signature:
        if field.feature:
            refs.append(field.feature)
            continue
        owners = [v for v, fv in views.items() if field.name in fv.fields]
        if len(owners) != 1:
            where = f"views {', '.join(owners)}" if owners else "no view"
            raise RequestError(
                f"input {field.name!r} of model {mv.ref} names no view and {where} defines it; "
                "register the model from a training set so its inputs carry view:feature references",
                422,
            )
        refs.append(f"{owners[0]}:{field.name}")
    return tuple(refs)


def _load(
    mv: ModelVersion, registry: ModelRegistry, service: OnlineService, allow_pickle: bool
) -> ServedModel:
    from featurelake.prediction.flavors import load_model

    features = _inputs(mv, service)
    flavor = load_model(registry, mv, allow_pickle=allow_pickle)
    for field in flavor.info.inputs:
        flavor.check_input_type(field)
    defaults = tuple(f.default for f in flavor.info.inputs)
    return ServedModel(mv.name, mv.version, features, defaults, flavor)


class ModelServer:
    """Scores ``/predict/{model}`` requests; one instance per server process.

    :meth:`start` (the server calls it when it starts) loads every model's Production version in a
    background thread and then re-resolves them there twice per ``refresh_seconds``, loading a newly
    promoted version beside the old one and swapping it in: requests never pay for a load, except one for a
    model the thread has not loaded yet, which waits for it (:meth:`predict_timed` says how long, so the
    server can keep load time out of its latency histogram). A request that finds its version older than
    ``refresh_seconds`` (no background thread: tests, embedding) re-resolves it itself.
    """

    def __init__(
        self,
        service: OnlineService,
        registry: Callable[[], ModelRegistry],
        *,
        refresh_seconds: float = 2.0,
        allow_pickle: bool = True,
        fill_defaults: bool = True,
        registry_exists: Callable[[], bool] = lambda: True,
    ) -> None:
        self.service = service
        #: False while there is no registry yet (the background thread then does not create one).
        self._registry_exists = registry_exists
        self._registry_factory = registry
        self._registry: ModelRegistry | None = None
        self.refresh_seconds = refresh_seconds
        self.allow_pickle = allow_pickle
        self.fill_defaults = fill_defaults
        self._lock = threading.Lock()
        self._served: dict[str, tuple[ServedModel, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the background thread has tried every Production model once.
        self.warmed = threading.Event()

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    def start(self) -> None:
        """Load every Production model now, in the background, and keep them current there."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._keep_current, name="featurelake-models", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for served, _ in self._served.values():
            served.flavor.close()
        if self._registry is not None:
            self._registry.close()

    def _keep_current(self) -> None:
        while not self._stop.is_set():
            self.refresh_all()
            self.warmed.set()
            # Twice per refresh period, so a request practically never finds its version stale.
            self._stop.wait(self.refresh_seconds / 2)

    def refresh_all(self) -> list[str]:
        """Resolve (and load when new) the Production version of every model that has one; returns them."""
        try:
            with self._lock:
                listed = self.registry.list_models() if self._registry_exists() else []
                names = {m.name for m in listed if m.production is not None}
        except Exception as exc:  # the registry may be briefly unreachable: keep serving what is loaded
            log.warning("could not list the registry's models (%s); serving the versions loaded", exc)
            names = set()
        done = []
        for name in sorted(names | set(self._served)):
            if self._stop.is_set():
                break
            try:
                self._resolve(name)
                done.append(name)
            except NotFoundError:
                self._served.pop(name, None)  # no Production version any more: requests get the 404
            except Exception as exc:
                log.warning("could not load the Production version of model %s: %s", name, exc)
        return done

    def _resolve(self, model: str) -> ServedModel:
        """Re-resolve ``model``'s Production version and load it when it changed (registry reads serialised)."""
        with self._lock:
            cached = self._served.get(model)
            if cached is not None and time.monotonic() - cached[1] < self.refresh_seconds / 2:
                return cached[0]  # another caller just did it
            try:
                mv = self.registry.resolve(f"{model}@production")
            except NotFoundError as exc:
                # The registry's message names its database and every model: for the log, not the caller.
                raise NotFoundError(self._not_served(model)) from exc
            if cached is not None and cached[0].version == mv.version:
                served = cached[0]
            else:
                t0 = time.perf_counter()
                served = _load(mv, self.registry, self.service, self.allow_pickle)
                metrics.MODEL_LOAD_SECONDS.labels(model).set(time.perf_counter() - t0)
            self._served[model] = (served, time.monotonic())
            return served

    def _not_served(self, model: str) -> str:
        """Why ``model`` cannot be served, naming nothing but ``model`` itself."""
        try:
            self.registry.versions(model)
        except NotFoundError:
            return f"unknown model {shown(model)}"
        return (
            f"model {shown(model)} has no version in Production: promote one with "
            f"`featurelake models promote {model} VERSION Production`"
        )

    def current(self, model: str) -> ServedModel:
        """The Production version of ``model`` (see the class docstring for when it is re-resolved)."""
        return self._current(model)[0]

    def _current(self, model: str) -> tuple[ServedModel, float]:
        """``(served version, seconds this call spent loading it or waiting for its load)``."""
        cached = self._served.get(model)
        if cached is not None and time.monotonic() - cached[1] < self.refresh_seconds:
            return cached[0], 0.0  # with the background thread running, (almost) always
        t0 = time.perf_counter()
        version = cached[0].version if cached is not None else None
        served = self._resolve(model)  # waits while the background thread loads it
        return served, (time.perf_counter() - t0) if served.version != version else 0.0

    def predict(self, model: str, entities: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Look up the model's inputs for ``entities`` in one round trip and score the complete rows."""
        return self.predict_timed(model, entities)[0]

    def predict_timed(
        self, model: str, entities: Mapping[str, Sequence[Any]]
    ) -> tuple[dict[str, Any], float]:
        """:meth:`predict`, and the seconds of it spent loading the model (or waiting for its load)."""
        served, loading = self._current(model)
        found = self.service.get_online_features(served.features, entities, full_feature_names=True)
        # the feature columns follow the echoed entity columns (request fields of on-demand views are not echoed)
        columns = found["results"][len(found["results"]) - len(served.features) :]
        n = len(columns[0]["values"]) if columns else 0
        statuses = [PRESENT] * n
        matrix = np.empty((n, len(columns)), dtype=np.float64)
        for j, (col, default) in enumerate(zip(columns, served.defaults, strict=True)):
            fill = default if self.fill_defaults else None
            for i, (value, status) in enumerate(zip(col["values"], col["statuses"], strict=True)):
                if status == PRESENT and value is not None:
                    matrix[i, j] = float(value)  # "NaN"/"Infinity" strings of the JSON form parse too
                elif fill is not None:
                    matrix[i, j] = fill
                elif statuses[i] == PRESENT:
                    statuses[i] = status if status != PRESENT else "NULL_VALUE"
        complete = [i for i, s in enumerate(statuses) if s == PRESENT]
        predictions: list[float | None] = [None] * n
        classes = served.flavor.classes  # --output label,proba: the label, and a probability per class
        probabilities: dict[str, list[float | None]] = {proba_column(c): [None] * n for c in classes or ()}
        if complete:
            x = np.asarray(matrix[complete], dtype=served.flavor.input_dtype, order=served.flavor.input_order)
            if classes is not None:
                labels, proba = served.flavor.predict_classes(x)
                for j, column in enumerate(probabilities.values()):
                    for i, p in zip(complete, proba[:, j].tolist(), strict=True):
                        column[i] = p if math.isfinite(p) else None
            else:
                labels = served.flavor.predict(x)
            for i, value in zip(complete, labels.tolist(), strict=True):
                predictions[i] = None if math.isnan(value) else value
        return {
            "model": served.name,
            "model_version": served.version,
            "predictions": predictions,
            **({"probabilities": probabilities} if classes is not None else {}),
            "statuses": statuses,
            "features": list(served.features),
        }, loading


__all__ = ["ModelServer", "ServedModel"]
