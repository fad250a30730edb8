"""The ``torchscript`` flavor: a TorchScript module loaded with ``torch.jit.load`` (``featurelake[torch]``).

The module is called on a ``[batch, k]`` tensor (columns in signature order, in the dtype of its first
floating-point parameter, float32 when it has none) and returns ``[batch]`` or ``[batch, 1]`` (a value, or a
probability when the version was registered with ``--param task=classification``), ``[batch, 2]`` (class
probabilities: the second column is taken) or ``[batch, c]`` (scores: the arg-max class is taken). It runs on
CUDA when torch sees a GPU, else on the CPU.

A model registered with ``--output label,proba`` returns either ``(label [batch], proba [batch, c])`` (two
outputs, in either order) or ``proba [batch, c]`` alone (the label is then its arg-max); its classes are
``0 .. c-1``.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from featurelake.errors import SchemaError, UsageError
from featurelake.prediction.flavors.base import ModelFlavor, ModelInfo, OutputKind, require


class TorchScriptFlavor(ModelFlavor):
    """A scripted or traced ``torch.nn.Module``, in eval mode, under ``torch.inference_mode``."""

    name = "torchscript"
    extra = "torch"

    def __init__(
        self,
        info: ModelInfo,
        torch: Any,
        module: Any,
        device: Any,
        dtype: Any,
        width: int | None,
        proba_index: int | None = None,
    ) -> None:
        super().__init__(info)
        #: Multi-output: where the probabilities are in the module's output tuple (-1: the output itself).
        self._proba_index = proba_index
        self._torch, self.module, self.device, self._tdtype = torch, module, device, dtype
        self._width = width
        self._np_dtype = np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
        if proba_index is not None:
            self._kind: OutputKind = "label"
        elif width == 2:
            self._kind = "probability"
        elif width is not None and width > 2:
            self._kind = "label"
        else:
            self._kind = "probability" if info.task == "classification" else "value"

    @classmethod
    def validate(cls, data: bytes, info: ModelInfo) -> dict[str, Any]:
        """Check the archive's structure on its zip directory (nothing is loaded): what ``torch.jit.save``
        writes, not ``torch.save``. Its inputs are only proven by loading it (``models register --verify``)."""
        from featurelake.prediction.flavors.scan import torchscript_entries

        try:
            found = torchscript_entries(data)
        except ValueError as exc:
            raise UsageError(
                f"{info.ref}: its artifact is registered as flavor torchscript but is not a TorchScript archive "
                f"({exc}); save the model with torch.jit.save(torch.jit.script(model), path) and register that file"
            ) from None
        return {"format": "torchscript", **found}

    @classmethod
    def from_bytes(cls, data: bytes, info: ModelInfo) -> TorchScriptFlavor:
        torch = require("torch", "torchscript", "torch")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            with warnings.catch_warnings():
                # torch 2.9+ marks TorchScript deprecated; it is still the format this flavor exists for.
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning
                )
                module = torch.jit.load(io.BytesIO(data), map_location=device)
        except Exception as exc:
            raise UsageError(
                f"{info.ref}: its artifact is registered as flavor torchscript but torch.jit.load cannot read it "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); save the model with "
                "torch.jit.save(torch.jit.script(model), path) and register that file"
            ) from exc
        module.eval()
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
        # TorchScript keeps no input signature: one row of zeros proves the width and shows the output.
        k = len(info.inputs)
        try:
            with torch.inference_mode():
                probe = module(torch.zeros((1, k), dtype=dtype, device=device))
        except Exception as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise SchemaError(
                f"{info.ref}: the torchscript model rejects a [batch, {k}] input (its recorded signature: "
                f"{', '.join(f.name for f in info.inputs)}): {first}; register a model that takes these {k} "
                "inputs as one [batch, inputs] tensor, or give it the signature of the inputs it was trained on"
            ) from exc
        if info.multi_output:
            index, classes = _proba_output(info, torch, probe)
            return cls(info, torch, module, device, dtype, classes, index)
        if not isinstance(probe, torch.Tensor):
            hint = (
                " (a module returning a label and class probabilities is registered with --output label,proba)"
                if isinstance(probe, tuple | list)
                else ""
            )
            raise SchemaError(
                f"{info.ref}: the torchscript model returns {type(probe).__name__}; batch prediction needs a "
                f"tensor{hint}"
            )
        width = int(probe.shape[1]) if probe.dim() == 2 else None
        return cls(info, torch, module, device, dtype, width)

    @property
    def input_dtype(self) -> np.dtype[Any]:
        return self._np_dtype

    @property
    def output_kind(self) -> OutputKind:
        return self._kind

    @property
    def classes(self) -> tuple[float, ...] | None:
        if self._proba_index is None or not self._width:
            return None
        return tuple(float(c) for c in range(self._width))

    def predict_classes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._proba_index is None:
            return super().predict_classes(x)
        torch, n = self._torch, x.shape[0]
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
            if self._proba_index < 0:
                proba = out.detach().to("cpu").numpy()
                labels = None
            else:
                proba = out[self._proba_index].detach().to("cpu").numpy()
                labels = out[1 - self._proba_index].detach().to("cpu").numpy()
        checked = self._check_classes(proba, n)
        if labels is None:
            return checked.argmax(axis=1).astype(np.float64), checked
        return self._one_per_row(labels, n), checked

    @property
    def output_range(self) -> tuple[float, float] | None:
        if self._kind == "label" and self._width:
            return (0.0, float(self._width - 1))
        return super().output_range

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._proba_index is not None:
            return self.predict_classes(x)[0]
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            out = self.module(t)
            if out.dim() == 2 and out.shape[1] > 1:
                out = out[:, 1] if self._kind == "probability" else out.argmax(dim=1)
            arr = out.detach().to("cpu").numpy()
        return self._one_per_row(arr, x.shape[0])


def _proba_output(info: ModelInfo, torch: Any, probe: Any) -> tuple[int, int]:
    """(index of the probabilities in the output tuple, -1 for the output itself; number of classes)."""

    def is_proba(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() == 2 and int(t.shape[1]) > 1

    if isinstance(probe, torch.Tensor) and is_proba(probe):
        return -1, int(probe.shape[1])
    if isinstance(probe, tuple | list) and len(probe) == 2:
        for i, t in enumerate(probe):
            other = probe[1 - i]
            if is_proba(t) and isinstance(other, torch.Tensor) and not is_proba(other):
                return i, int(t.shape[1])
    shape = (
        [list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in probe]
        if isinstance(probe, tuple | list)
        else list(probe.shape)
        if isinstance(probe, torch.Tensor)
        else type(probe).__name__
    )
    raise SchemaError(
        f"{info.ref} is declared --output label,proba, but the torchscript model returns {shape}; it must return "
        "(label [batch], proba [batch, classes]) or proba [batch, classes]"
    )


__all__ = ["TorchScriptFlavor"]
