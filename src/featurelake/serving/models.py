"""Online prediction: the Production version of a registered model, scored on features looked up online.

The served version is re-resolved from the registry at most every ``server.model_refresh_seconds``; when a
different version has become Production it is loaded through the batch-prediction flavors
(``featurelake.prediction.flavors.load_model``: digest-verified bytes, ``registry.allow_pickle`` honoured) and
swapped in, so a promotion is picked up within seconds without a restart (requests in flight finish on the
version they started with).

Inputs follow the version's recorded signature: each input names the ``view:feature`` it came from (models
registered from a training set have this), or a feature name that exactly one view defines. An entity with an
input that is not PRESENT (or is null) gets the input's recorded default when ``prediction.nan_policy`` is
``fill`` and there is one; otherwise it is not scored: its prediction is null and its status says why.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featurelake.errors import RequestError
from featurelake.serving.lookup import PRESENT, OnlineService

if TYPE_CHECKING:
    from featurelake.prediction.flavors import ModelFlavor
    from featurelake.registry import ModelRegistry, ModelVersion


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
    """Scores ``/predict/{model}`` requests; one instance per server process."""

    def __init__(
        self,
        service: OnlineService,
        registry: Callable[[], ModelRegistry],
        *,
        refresh_seconds: float = 2.0,
        allow_pickle: bool = True,
        fill_defaults: bool = True,
    ) -> None:
        self.service = service
        self._registry_factory = registry
        self._registry: ModelRegistry | None = None
        self.refresh_seconds = refresh_seconds
        self.allow_pickle = allow_pickle
        self.fill_defaults = fill_defaults
        self._lock = threading.Lock()
        self._served: dict[str, tuple[ServedModel, float]] = {}

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    def close(self) -> None:
        for served, _ in self._served.values():
            served.flavor.close()
        if self._registry is not None:
            self._registry.close()

    def current(self, model: str) -> ServedModel:
        """The Production version of ``model``, re-resolved at most every ``refresh_seconds``."""
        now = time.monotonic()
        cached = self._served.get(model)
        if cached is not None and now - cached[1] < self.refresh_seconds:
            return cached[0]
        with self._lock:
            cached = self._served.get(model)
            if cached is not None and time.monotonic() - cached[1] < self.refresh_seconds:
                return cached[0]
            mv = self.registry.resolve(f"{model}@production")
            if cached is not None and cached[0].version == mv.version:
                served = cached[0]
            else:
                served = _load(mv, self.registry, self.service, self.allow_pickle)
            self._served[model] = (served, time.monotonic())
            return served

    def predict(self, model: str, entities: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Look up the model's inputs for ``entities`` in one round trip and score the complete rows."""
        served = self.current(model)
        found = self.service.get_online_features(served.features, entities, full_feature_names=True)
        columns = found["results"][len(entities) :]
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
        if complete:
            x = np.asarray(matrix[complete], dtype=served.flavor.input_dtype, order=served.flavor.input_order)
            for i, value in zip(complete, served.flavor.predict(x).tolist(), strict=True):
                predictions[i] = None if math.isnan(value) else value
        return {
            "model": served.name,
            "model_version": served.version,
            "predictions": predictions,
            "statuses": statuses,
            "features": list(served.features),
        }


__all__ = ["ModelServer", "ServedModel"]
