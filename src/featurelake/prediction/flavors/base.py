"""The one interface every model flavor implements, and what all of them share.

A flavor turns the registry's verified artifact bytes into something that scores a numeric matrix whose
columns are the model's recorded input signature, in order. Everything around that (binding the signature
to a view's columns, missing-value policy, Arrow batches, lineage) is the same for every flavor and lives in
``featurelake.prediction.inputs`` and ``featurelake.prediction.scoring``.

There is deliberately no constructor from a file path: a flavor only ever sees bytes the registry has
re-hashed against the digest recorded at registration (``ModelRegistry.artifact_bytes``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np

from featurelake.errors import ConfigError, SchemaError

#: Signature type names (``lakehouse.schema`` spelling) every flavor can take, converted to its dtype.
NUMERIC_TYPES = frozenset({"int", "long", "float", "double", "boolean"})
INTEGER_TYPES = frozenset({"int", "long", "boolean"})

OutputKind = Literal["probability", "label", "value"]
#: The params key recording a model's declared outputs (``models register --output label,proba``).
OUTPUT_PARAM = "featurelake.output"  # as featurelake.registry.declared records it
#: The one multi-output declaration: the predicted class in ``prediction``, a probability per class beside it.
LABEL_PROBA = "label,proba"


@dataclass(frozen=True)
class ModelInput:
    """One input of a model: its name, signature type, recorded fill default and ``view:feature`` source."""

    name: str
    type: str
    default: float | None = None
    feature: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a flavor knows about the version it loads (for messages and output interpretation)."""

    name: str
    version: str
    inputs: tuple[ModelInput, ...]
    params: Mapping[str, Any]

    @property
    def ref(self) -> str:
        return f"model {self.name} {self.version}"

    @property
    def multi_output(self) -> bool:
        """Declared at registration with ``--output label,proba``: a label and one probability per class."""
        return self.params.get(OUTPUT_PARAM) == LABEL_PROBA

    @property
    def task(self) -> str | None:
        """``classification`` / ``regression`` when recorded with ``--param task=...`` at registration."""
        task = self.params.get("task")
        return str(task).lower() if task is not None else None


def require(module: str, flavor: str, extra: str) -> ModuleType:
    """Import a flavor's runtime, or say exactly what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a runtime whose own import is broken
        raise ConfigError(
            f"the {flavor} model flavor needs {module}, which is not installed or cannot be imported "
            f"({exc}): pip install 'featurelake[{extra}]'"
        ) from exc


class ModelFlavor(ABC):
    """A loaded model that maps an ``(n, k)`` matrix (signature order) to one number per row."""

    #: Registry flavor name (``pickle``, ``onnx``, ``torchscript``).
    name: ClassVar[str]
    #: The pip extra that installs the flavor's runtime (None: nothing beyond featurelake).
    extra: ClassVar[str | None] = None

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    # --- building -------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_bytes(cls, data: bytes, info: ModelInfo) -> ModelFlavor:
        """Deserialize the model from the registry's digest-verified artifact bytes.

        Raises ConfigError when the flavor's runtime is missing and SchemaError when the model's own
        inputs disagree with the recorded signature (count, names or types).
        """

    @classmethod
    def validate(cls, data: bytes, info: ModelInfo) -> dict[str, Any]:
        """Check at registration, without running the artifact's code, that ``data`` is this flavor's format
        (and, where the format says, that its inputs fit ``info``'s signature); return what to record about
        it (JSON). Raises UsageError / SchemaError naming the model, the flavor and what is wrong."""
        return {}

    # --- what it takes ----------------------------------------------------------------------------------
    @property
    @abstractmethod
    def input_dtype(self) -> np.dtype[Any]:
        """The NumPy dtype the model's input matrix is built in."""

    #: Memory order of the input matrix the model is fastest with (``F``: one contiguous copy per column).
    input_order: ClassVar[Literal["C", "F"]] = "C"

    def check_input_type(self, field: ModelInput) -> None:
        """Refuse a signature type this flavor cannot take (SchemaError naming the input)."""
        if field.type not in NUMERIC_TYPES:
            raise SchemaError(
                f"{self.info.ref}: input {field.name} is {field.type}, which the {self.name} flavor cannot take "
                f"(it takes {', '.join(sorted(NUMERIC_TYPES))}); encode it as a number in the view's query "
                "and retrain, or register a model whose artifact does the encoding"
            )
        if np.issubdtype(self.input_dtype, np.integer) and field.type not in INTEGER_TYPES:
            raise SchemaError(
                f"{self.info.ref}: input {field.name} is {field.type} but the model takes {self.input_dtype} "
                "inputs; converting would truncate it. Export the model with floating-point inputs"
            )

    # --- what it gives ------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def output_kind(self) -> OutputKind:
        """``probability`` (of the positive class), ``label`` (a class) or ``value`` (a regression)."""

    @property
    def output_range(self) -> tuple[float, float] | None:
        """Bounds every prediction must lie in (audited), or None when the output is unbounded."""
        if self.output_kind == "probability":
            return (0.0, 1.0)
        return None

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Score ``x`` (``(n, k)``, :attr:`input_dtype`, no missing values): one float64 per row."""

    # --- multi-output models (``--output label,proba``) -----------------------------------------------
    @property
    def classes(self) -> tuple[float, ...] | None:
        """The class labels, in probability-column order, of a model declared ``label,proba`` (else None)."""
        return None

    def predict_classes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score ``x``: the label per row (float64) and the probability per row and class (``(n, c)``)."""
        raise SchemaError(
            f"{self.info.ref}: the {self.name} flavor cannot give a label and class probabilities; register the "
            "model without --output label,proba"
        )

    def _check_classes(self, proba: Any, n: int) -> np.ndarray:
        """The ``(n, c)`` probabilities of a multi-output model, checked against its classes."""
        arr = np.asarray(proba, dtype=np.float64)
        classes = self.classes or ()
        if arr.ndim != 2 or arr.shape != (n, len(classes)):
            raise SchemaError(
                f"{self.info.ref}: the {self.name} model returned probabilities of shape {tuple(arr.shape)} for {n} "
                f"rows; with --output label,proba it must return one per class ({n}, {len(classes)})"
            )
        return arr

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (sessions, devices)."""

    # --- shared helpers --------------------------------------------------------------------------------
    def _one_per_row(self, out: Any, n: int) -> np.ndarray:
        arr = np.asarray(out)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or arr.shape[0] != n:
            raise SchemaError(
                f"{self.info.ref}: the {self.name} model returned shape {tuple(arr.shape)} for {n} rows; "
                "batch prediction needs one number per row (or class probabilities)"
            )
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
            raise SchemaError(
                f"{self.info.ref}: the {self.name} model returned {arr.dtype} values; predictions must be numeric: "
                "encode the labels as numbers and retrain, then register the new model"
            )
        return arr.astype(np.float64, copy=False)


def check_count(info: ModelInfo, flavor: str, found: int | None, where: str) -> None:
    """The model's own input width must equal the recorded signature's length."""
    if found is not None and found != len(info.inputs):
        raise SchemaError(
            f"{info.ref}: the {flavor} model takes {found} input columns ({where}) but its recorded signature "
            f"has {len(info.inputs)} ({', '.join(f.name for f in info.inputs)}); register it with the training "
            "set it was fit on"
        )


def check_names(info: ModelInfo, flavor: str, names: Sequence[str], where: str) -> None:
    """A model that knows its input names must know the signature's, in the same order."""
    expected = [f.name for f in info.inputs]
    if list(names) != expected:
        missing = [n for n in expected if n not in names]
        extra = [n for n in names if n not in expected]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected {', '.join(extra)}")
        if not detail:
            detail.append(f"order {', '.join(names)} instead of {', '.join(expected)}")
        raise SchemaError(
            f"{info.ref}: the {flavor} model's inputs ({where}) do not match its recorded signature: "
            f"{'; '.join(detail)}. Register it with a signature naming its inputs in its order (or with the "
            "training set it was fit on), or rename the model's inputs to the signature's"
        )


def proba_column(value: float) -> str:
    """The predictions column of one class's probability: ``proba_1``, ``proba_m1`` (-1), ``proba_0_5``."""
    text = str(int(value)) if float(value).is_integer() else repr(float(value))
    return "proba_" + text.replace("-", "m").replace(".", "_").replace("+", "")


def numeric_classes(ref: str, flavor: str, classes: Any) -> tuple[float, ...]:
    """Class labels as floats (the ``prediction`` column is numeric), or SchemaError naming them."""
    values = np.asarray(classes)
    if not np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_:
        raise SchemaError(
            f"{ref}: the {flavor} classifier's classes ({', '.join(map(str, values[:5]))}) are not numbers; "
            "--output label,proba writes the label to the numeric prediction column: encode the classes as "
            "numbers and retrain"
        )
    return tuple(float(v) for v in values.tolist())


__all__ = [
    "INTEGER_TYPES",
    "LABEL_PROBA",
    "NUMERIC_TYPES",
    "OUTPUT_PARAM",
    "ModelFlavor",
    "ModelInfo",
    "ModelInput",
    "OutputKind",
    "check_count",
    "check_names",
    "numeric_classes",
    "proba_column",
    "require",
]
