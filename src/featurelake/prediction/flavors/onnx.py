"""The ``onnx`` flavor: an ONNX graph run by onnxruntime (``pip install 'featurelake[onnx]'``).

Inputs: either one 2-D tensor ``[batch, k]`` whose columns are the signature in order, or one ``[batch, 1]``
tensor per signature input, named like it. Outputs: a tensor whose name contains ``prob`` (scikit-learn
classifiers converted by skl2onnx with ``zipmap=False``) gives the positive-class probability; otherwise the
first tensor output is the prediction (``[batch]`` or ``[batch, 1]``; ``[batch, 2]`` is read as class
probabilities). skl2onnx's default ZipMap output (a list of dicts) is refused: convert with
``options={id(model): {"zipmap": False}}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featurelake.errors import SchemaError, UsageError
from featurelake.prediction.flavors.base import (
    ModelFlavor,
    ModelInfo,
    OutputKind,
    check_count,
    check_names,
    numeric_classes,
    require,
)

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OnnxFlavor(ModelFlavor):
    """An onnxruntime InferenceSession over the artifact's bytes (CUDA when onnxruntime-gpu offers it)."""

    name = "onnx"
    extra = "onnx"

    def __init__(
        self,
        info: ModelInfo,
        session: Any,
        dtype: np.dtype[Any],
        input_names: list[str] | None,
        single_input: str | None,
        output: str,
        kind: OutputKind,
        classes: int | None,
        label_output: str | None = None,
        class_values: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__(info)
        self._label_output = label_output
        self._class_values = class_values
        self.session = session
        self._dtype = dtype
        self._input_names = input_names
        self._single = single_input
        self._output = output
        self._kind = kind
        self._classes = classes

    @classmethod
    def validate(cls, data: bytes, info: ModelInfo) -> dict[str, Any]:
        """Parse the graph (``onnx``'s checker when installed) and build an onnxruntime session over it, which
        interprets the graph and runs no Python code, checking its inputs against the signature as scoring
        will; nothing is scored."""
        details: dict[str, Any] = {"format": "onnx"}
        onnx: Any
        try:
            import onnx
        except ImportError:  # onnx is a dev dependency: onnxruntime's parser below is the check then
            onnx = None
        if onnx is not None:
            try:
                model = onnx.load_model_from_string(data)
                onnx.checker.check_model(model)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UsageError(
                    f"{info.ref}: its artifact is registered as flavor onnx but is not a valid ONNX model "
                    f"({first}); export it with torch.onnx.export or skl2onnx and register that file"
                ) from None
            details["opsets"] = {o.domain or "ai.onnx": o.version for o in model.opset_import}
            details["producer"] = f"{model.producer_name} {model.producer_version}".strip()
        flavor = cls.from_bytes(data, info)
        try:
            details["inputs"] = [f"{i.name}: {i.type} {list(i.shape)}" for i in flavor.session.get_inputs()]
            details["output"] = flavor._output
            details["output_kind"] = flavor.output_kind
            if flavor.classes is not None:
                details["classes"] = list(flavor.classes)
        finally:
            flavor.close()
        return details

    @classmethod
    def from_bytes(cls, data: bytes, info: ModelInfo) -> OnnxFlavor:
        ort = require("onnxruntime", "onnx", "onnx")
        providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
        try:
            session = ort.InferenceSession(data, providers=[*providers, "CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).splitlines()[0]
            if "INVALID_PROTOBUF" in first:  # not ONNX at all
                advice = "register it again with the flavor it really is"
            else:  # an ONNX graph this runtime cannot run, e.g. an operator it lacks
                advice = (
                    f"export it with the standard operator sets onnxruntime {ort.__version__} supports, or "
                    "install an onnxruntime that provides its operators"
                )
            raise UsageError(
                f"{info.ref}: its artifact is registered as flavor onnx but onnxruntime cannot load it "
                f"({first}); {advice}"
            ) from exc
        inputs = session.get_inputs()
        types = {i.type for i in inputs}
        unknown = sorted(t for t in types if t not in _DTYPES)
        if unknown or len(types) != 1:
            raise SchemaError(
                f"{info.ref}: the onnx model's inputs are {', '.join(f'{i.name}: {i.type}' for i in inputs)}; "
                "batch prediction feeds one numeric element type (float, double, int64 or int32)"
            )
        dtype = np.dtype(_DTYPES[types.pop()])
        if len(inputs) == 1:
            shape = inputs[0].shape
            if len(shape) != 2:
                raise SchemaError(
                    f"{info.ref}: the onnx model's input {inputs[0].name} has shape {shape}; it must be "
                    "[batch, features]"
                )
            width = shape[1] if isinstance(shape[1], int) else None
            check_count(info, "onnx", width, f"input {inputs[0].name} {shape}")
            single, names = inputs[0].name, None
        else:
            by_name = [i.name for i in inputs]
            if set(by_name) != {f.name for f in info.inputs}:  # one tensor per input: order is by name
                check_names(info, "onnx", by_name, "its named inputs")
            single, names = None, [f.name for f in info.inputs]
        if info.multi_output:
            prob, label, values = _multi_outputs(session, info, data, dtype, single, names)
            return cls(info, session, dtype, names, single, prob, "label", len(values), label, values)
        output, kind, classes = _choose_output(session, info)
        return cls(info, session, dtype, names, single, output, kind, classes)

    @property
    def input_dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def output_kind(self) -> OutputKind:
        return self._kind

    @property
    def classes(self) -> tuple[float, ...] | None:
        return self._class_values

    @property
    def output_range(self) -> tuple[float, float] | None:
        if self._class_values:
            return (min(self._class_values), max(self._class_values))
        if self._kind == "label" and self._classes:
            return (0.0, float(self._classes - 1))
        return super().output_range

    def _feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._single is not None:
            return {self._single: np.ascontiguousarray(x)}
        assert self._input_names is not None
        return {name: np.ascontiguousarray(x[:, [j]]) for j, name in enumerate(self._input_names)}

    def predict_classes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._class_values is None:
            return super().predict_classes(x)
        n = x.shape[0]
        wanted = [self._output] + ([self._label_output] if self._label_output else [])
        outs = self.session.run(wanted, self._feed(x))
        proba = self._check_classes(outs[0], n)
        if self._label_output is not None:
            return self._one_per_row(outs[1], n), proba
        return np.asarray(self._class_values, dtype=np.float64)[proba.argmax(axis=1)], proba

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._class_values is not None:
            return self.predict_classes(x)[0]
        n = x.shape[0]
        (out,) = self.session.run([self._output], self._feed(x))
        arr = np.asarray(out)
        if arr.ndim == 2 and arr.shape[1] > 1:
            if arr.shape[1] == 2 and self._kind == "probability":
                return arr[:, 1].astype(np.float64)
            if self._kind == "label":
                return arr.argmax(axis=1).astype(np.float64)
        return self._one_per_row(arr, n)


def _graph_classes(data: bytes) -> list[Any] | None:
    """The class labels a converted classifier keeps in its graph (skl2onnx: ``classlabels_*``), if any."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load_model_from_string(data)
    except Exception:
        return None
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_ints", "classlabels_int64s") and attr.ints:
                return list(attr.ints)
            if attr.name == "classlabels_strings" and attr.strings:
                return [v.decode() for v in attr.strings]
    return None


def _multi_outputs(
    session: Any,
    info: ModelInfo,
    data: bytes,
    dtype: np.dtype[Any],
    single: str | None,
    names: list[str] | None,
) -> tuple[str, str | None, tuple[float, ...]]:
    """(probability output, label output or None, classes) of a model declared ``--output label,proba``."""
    outs = session.get_outputs()
    if any(not str(o.type).startswith("tensor(") for o in outs):
        raise SchemaError(
            f"{info.ref}: the onnx model returns its probabilities as a sequence of maps (skl2onnx's ZipMap), "
            "which cannot be scored in batches; convert it with to_onnx(model, X, options={id(model): "
            "{'zipmap': False}}) and register it again"
        )
    wide = [o for o in outs if len(o.shape) == 2 and o.shape[1] != 1]
    prob = next((o for o in wide if "prob" in o.name.lower()), wide[0] if wide else None)
    if prob is None:
        listed = ", ".join(f"{o.name} {list(o.shape)}" for o in outs)
        raise SchemaError(
            f"{info.ref} is declared --output label,proba, but none of the onnx model's outputs ({listed}) is a "
            "[batch, classes] probability tensor; register it without --output, or export its probabilities"
        )
    rest = [
        o for o in outs if o is not prob and (len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[1] == 1))
    ]
    label = next((o for o in rest if "label" in o.name.lower()), rest[0] if rest else None)
    width = _classes_of(prob.shape)
    if width is None:  # a dynamic class dimension: one row of zeros shows it
        probe = np.zeros((1, len(info.inputs)), dtype=dtype)
        feed = {single: probe} if single else {n: probe[:, [j]] for j, n in enumerate(names or [])}
        width = int(np.asarray(session.run([prob.name], feed)[0]).shape[1])
    found = _graph_classes(data)
    values = numeric_classes(info.ref, "onnx", found if found is not None else list(range(width)))
    if len(values) != width:
        raise SchemaError(
            f"{info.ref}: the onnx model's graph names {len(values)} classes but its output {prob.name} has "
            f"{width} probability columns: export the model again so that it has one probability column per class"
        )
    return prob.name, (label.name if label is not None else None), values


def _classes_of(shape: list[Any]) -> int | None:
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None


def _choose_output(session: Any, info: ModelInfo) -> tuple[str, OutputKind, int | None]:
    outs = session.get_outputs()
    tensors = [o for o in outs if str(o.type).startswith("tensor(")]
    probs = [o for o in tensors if "prob" in o.name.lower()]
    if probs:
        width = _classes_of(probs[0].shape)
        if width is None or width <= 2:
            return probs[0].name, "probability", width
        return probs[0].name, "label", width
    if any(not str(o.type).startswith("tensor(") for o in outs):
        raise SchemaError(
            f"{info.ref}: the onnx model returns its probabilities as a sequence of maps (skl2onnx's ZipMap), "
            "which cannot be scored in batches; convert it with to_onnx(model, X, options={id(model): "
            "{'zipmap': False}}) and register it again"
        )
    if not tensors:
        raise SchemaError(f"{info.ref}: the onnx model has no tensor output to read predictions from")
    first = tensors[0]
    width = _classes_of(first.shape)
    if width == 2:
        return first.name, "probability", 2
    if width is not None and width > 2:
        return first.name, "label", width
    return first.name, ("probability" if info.task == "classification" else "value"), None


__all__ = ["OnnxFlavor"]
