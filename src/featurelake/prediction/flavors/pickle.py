"""The ``pickle`` flavor: scikit-learn estimators and anything else with ``predict`` / ``predict_proba``.

Unpickling runs code chosen by whoever wrote the file. featurelake therefore unpickles only the bytes the
registry hands out after re-hashing them against the digest recorded at registration (a swapped or edited
artifact is refused before ``pickle.loads`` sees it), and ``registry.allow_pickle: false`` refuses the
flavor outright. Register pickles only from people you would let run code on the scoring machines.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np

from featurelake.errors import ConfigError, SchemaError, UsageError
from featurelake.prediction.flavors.base import (
    ModelFlavor,
    ModelInfo,
    OutputKind,
    check_count,
    check_names,
    numeric_classes,
)


class PickleFlavor(ModelFlavor):
    """A pickled Python object with ``predict`` (and, for classifiers, ``predict_proba``)."""

    name = "pickle"
    extra = None
    input_order: ClassVar[Literal["C", "F"]] = "F"  # BLAS takes column-major as is; one memcpy per column

    def __init__(self, info: ModelInfo, model: Any) -> None:
        super().__init__(info)
        self.model = model
        self._proba = callable(getattr(model, "predict_proba", None))
        classes = getattr(model, "classes_", None)
        self._classes = np.asarray(classes) if classes is not None else None
        names = getattr(model, "feature_names_in_", None)
        self._names = [str(n) for n in names] if names is not None else None
        self._kind: OutputKind
        self._class_values: tuple[float, ...] | None = None
        if info.multi_output:
            if not self._proba or self._classes is None:
                raise SchemaError(
                    f"{info.ref} is declared --output label,proba, but the unpickled {type(model).__name__} has "
                    f"no {'predict_proba' if not self._proba else 'classes_'}: register a classifier with "
                    "predict_proba and classes_ (scikit-learn's), or register without --output"
                )
            self._class_values = numeric_classes(info.ref, "pickle", self._classes)
            self._kind = "label"
        elif self._proba and self._classes is not None and len(self._classes) == 2:
            self._kind = "probability"
        elif self._classes is not None and (self._proba or info.task == "classification"):
            if not np.issubdtype(self._classes.dtype, np.number):
                raise SchemaError(
                    f"{info.ref}: a classifier with {len(self._classes)} non-numeric classes "
                    f"({', '.join(map(str, self._classes[:5]))}) cannot be written to the numeric prediction "
                    "column; encode the classes as numbers and retrain"
                )
            self._kind = "label"
        elif self._proba and self._classes is None:
            self._kind = "probability"
        else:
            self._kind = "probability" if info.task == "classification" else "value"

    @classmethod
    def validate(cls, data: bytes, info: ModelInfo) -> dict[str, Any]:
        """Walk the pickle's opcodes (nothing is unpickled): refuse what is not one whole pickle, and report
        every ``module.name`` it would import when loaded, flagging those that can run commands."""
        from featurelake.prediction.flavors.scan import dangerous, pickle_imports

        try:
            protocol, imports = pickle_imports(data)
        except ValueError as exc:
            raise UsageError(
                f"{info.ref}: its artifact is registered as flavor pickle but is not a pickle ({exc}); register "
                "the file pickle.dump wrote, or give the flavor it really is (onnx, torchscript)"
            ) from None
        return {
            "format": "pickle",
            "protocol": protocol,
            "imports": imports,
            "dangerous_imports": dangerous(imports),
        }

    @classmethod
    def from_bytes(cls, data: bytes, info: ModelInfo) -> PickleFlavor:
        try:
            model = pickle.loads(data)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"{info.ref}: its pickle needs the module {exc.name}, which is not installed here: install the "
                "library the model was trained with (same version) and retry"
            ) from exc
        except AttributeError as exc:  # a class the installed library no longer has (renamed or moved)
            raise ConfigError(
                f"{info.ref}: its pickle refers to something the installed libraries do not have ({exc}): "
                "install the library versions the model was trained with and retry"
            ) from exc
        except Exception as exc:
            raise UsageError(
                f"{info.ref}: its artifact is registered as flavor pickle but cannot be unpickled ({exc}); "
                "register it again with the flavor it really is"
            ) from exc
        if not callable(getattr(model, "predict", None)):
            raise UsageError(
                f"{info.ref}: the unpickled {type(model).__name__} has no predict(); the pickle flavor needs an "
                "object with predict (and predict_proba for classifiers)"
            )
        check_count(info, "pickle", _int_or_none(getattr(model, "n_features_in_", None)), "n_features_in_")
        names = getattr(model, "feature_names_in_", None)
        if names is not None:
            check_names(info, "pickle", [str(n) for n in names], "feature_names_in_")
        return cls(info, model)

    @property
    def input_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float64)

    @property
    def output_kind(self) -> OutputKind:
        return self._kind

    @property
    def output_range(self) -> tuple[float, float] | None:
        if self._kind == "label" and self._classes is not None:
            return (float(self._classes.min()), float(self._classes.max()))
        return super().output_range

    @property
    def classes(self) -> tuple[float, ...] | None:
        return self._class_values

    def _features(self, x: np.ndarray) -> Any:
        if self._names is None:
            return x
        # Fitted on a DataFrame: scikit-learn warns (and may reorder) when handed a bare array.
        import pandas as pd

        return pd.DataFrame(x, columns=self._names, copy=False)

    def predict_classes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._class_values is None:
            return super().predict_classes(x)
        n = x.shape[0]
        features = self._features(x)
        with _inputs_checked():
            proba = self._check_classes(self.model.predict_proba(features), n)
            labels = self._one_per_row(self.model.predict(features), n)
        return labels, proba

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._class_values is not None:
            return self.predict_classes(x)[0]
        n = x.shape[0]
        features = self._features(x)
        with _inputs_checked():
            if self._kind == "probability" and self._proba:
                proba = np.asarray(self.model.predict_proba(features))
                if proba.ndim != 2 or proba.shape != (n, 2):
                    return self._one_per_row(proba, n)
                return proba[:, 1].astype(np.float64, copy=False)
            return self._one_per_row(self.model.predict(features), n)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def _inputs_checked() -> Iterator[None]:
    """The scorer has already refused or filled every NaN/inf: let scikit-learn skip its own full scan."""
    sklearn = sys.modules.get("sklearn")
    if sklearn is None:
        yield
        return
    with sklearn.config_context(assume_finite=True):
        yield


__all__ = ["PickleFlavor"]
