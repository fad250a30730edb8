"""Checking a model artifact when it is registered; optionally loading and scoring it in a jailed subprocess.

The registry calls :class:`ArtifactChecker` (``ModelRegistry.artifact_check``, set by ``featurelake.open(dir)
.models``) with the artifact's bytes before anything is stored. Always, and without running the artifact's
code, the flavor's :meth:`~featurelake.prediction.flavors.base.ModelFlavor.validate` hook checks its format
(pickle opcodes, the ONNX graph and its inputs against the signature, the TorchScript archive's entries).
With ``verify=True`` (``models register --verify``) the model is also loaded and scores a sample of the
training set in a child process limited in CPU seconds and address space (``resource.setrlimit``); the output
shape, type and range are recorded. A failure refuses the registration: nothing is stored.

The child is ``python -m featurelake.prediction.flavors.check``; it reads one request from stdin.
"""

from __future__ import annotations

import json
import resource
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from featurelake.errors import ConfigError, FeaturelakeError, UsageError
from featurelake.prediction.flavors import flavor_class, load_flavor
from featurelake.prediction.flavors.base import ModelInfo, ModelInput

#: Rows of the training set scored by ``--verify``.
SAMPLE_ROWS = 256


@dataclass(frozen=True)
class ArtifactChecker:
    """What the registry calls with a new version's artifact bytes; returns what to record about them."""

    allow_pickle: bool = True
    cpu_seconds: int = 60
    """``--verify``: CPU seconds the child may use (RLIMIT_CPU)."""
    memory_bytes: int = 8 << 30
    """``--verify``: address space of the child (RLIMIT_AS; runtimes like torch reserve a lot of it)."""

    def __call__(
        self,
        name: str,
        flavor: str,
        data: bytes,
        signature: Sequence[Any],
        params: Mapping[str, Any],
        *,
        training_set: Any = None,
        verify: bool = False,
    ) -> dict[str, Any]:
        info = ModelInfo(
            name,
            "(being registered)",
            tuple(ModelInput(f.name, f.type, _number(f.default), f.feature) for f in signature),
            dict(params),
        )
        details = flavor_class(flavor).validate(data, info)
        if verify:
            if flavor == "pickle" and not self.allow_pickle:
                raise ConfigError(
                    f"{info.ref}: --verify would load a pickle, and this project refuses pickles "
                    "(registry.allow_pickle is false), so it could never score this model either: export the "
                    "model to ONNX or TorchScript and register that, or set registry.allow_pickle: true if you "
                    "trust every registered pickle"
                )
            details["verified"] = self.verify(flavor, data, info, sample(training_set, info))
        return details

    def verify(self, flavor: str, data: bytes, info: ModelInfo, x: np.ndarray) -> dict[str, Any]:
        """Load and score ``x`` in a child process under the resource limits; what it returned."""
        header = json.dumps(
            {
                "flavor": flavor,
                "name": info.name,
                "inputs": [[f.name, f.type, f.default, f.feature] for f in info.inputs],
                "params": dict(info.params),
                "shape": list(x.shape),
            }
        ).encode()
        matrix = np.ascontiguousarray(x, dtype=np.float64).tobytes()
        payload = struct.pack(">III", len(header), len(matrix), len(data)) + header + matrix + data
        cpu, mem = self.cpu_seconds, self.memory_bytes

        def limits() -> None:  # runs in the child before it executes python
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

        what = f"{info.ref} ({flavor})"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "featurelake.prediction.flavors.check"],
                input=payload,
                capture_output=True,
                preexec_fn=limits,
                timeout=cpu * 10,  # a model that sleeps instead of computing
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise UsageError(
                f"{what} failed verification: it did not finish within {cpu * 10} s; nothing was registered"
            ) from None
        if done.returncode == 0:
            result: dict[str, Any] = json.loads(done.stdout)
            return result
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            why = f"it used more than its {cpu} CPU seconds"
        elif "MemoryError" in why or "bad_alloc" in why:
            why = f"it needed more than its {mem >> 20} MiB of address space ({why})"
        raise UsageError(f"{what} failed verification: {why}; nothing was registered")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def sample(training_set: Any, info: ModelInfo, rows: int = SAMPLE_ROWS) -> np.ndarray:
    """Up to ``rows`` rows of the training set's input columns in signature order (missing values filled with
    the input's default, else 0); one row of zeros when there is no training set table to read."""
    table: pa.Table | None = None
    if isinstance(training_set, pa.Table):
        table = training_set
    elif isinstance(training_set, str | Path) and str(training_set).lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(str(training_set)).read_row_group(0)
        except (OSError, ValueError):
            table = None  # a remote or unreadable set: registration reports that itself
    names = [f.name for f in info.inputs]
    if table is None or not names or not set(names) <= set(table.column_names):
        return np.zeros((1, len(names)), dtype=np.float64)
    table = table.slice(0, rows)
    columns = []
    for f in info.inputs:
        col = table[f.name].to_numpy(zero_copy_only=False).astype(np.float64)
        columns.append(np.where(np.isnan(col), f.default if f.default is not None else 0.0, col))
    return np.column_stack(columns) if table.num_rows else np.zeros((1, len(names)), dtype=np.float64)


def _child() -> int:
    """Load the model from stdin's request, score the sample, print what came out as JSON."""
    raw = sys.stdin.buffer.read()
    n_header, n_matrix, n_data = struct.unpack(">III", raw[:12])
    header = json.loads(raw[12 : 12 + n_header])
    start = 12 + n_header
    x = np.frombuffer(raw[start : start + n_matrix], dtype=np.float64).reshape(header["shape"])
    data = raw[start + n_matrix : start + n_matrix + n_data]
    info = ModelInfo(
        header["name"],
        "(being registered)",
        tuple(ModelInput(*f) for f in header["inputs"]),
        header["params"],
    )
    try:
        t0 = time.perf_counter()
        model = load_flavor(header["flavor"], data, info)
        for field in info.inputs:
            model.check_input_type(field)
        loaded = time.perf_counter() - t0
        out = model.predict(np.asarray(x, dtype=model.input_dtype, order=model.input_order))
        finite = out[np.isfinite(out)]
        result = {
            "rows": int(x.shape[0]),
            "output_shape": list(out.shape),
            "output_dtype": str(out.dtype),
            "output_kind": model.output_kind,
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "non_finite": int(out.size - finite.size),
            "load_seconds": round(loaded, 3),
        }
        if model.output_range is not None and finite.size:
            lo, hi = model.output_range
            if finite.min() < lo or finite.max() > hi:
                hint = (
                    "return probabilities (apply a sigmoid or softmax in the model), or register it without "
                    "--param task=classification"
                    if model.output_kind == "probability"
                    else "register a model whose outputs lie in that range"
                )
                raise UsageError(
                    f"its {model.output_kind} outputs range over [{finite.min():g}, {finite.max():g}], "
                    f"outside [{lo:g}, {hi:g}]: {hint}"
                )
        model.close()
    except FeaturelakeError as exc:
        print(" ".join(str(exc).split()), file=sys.stderr)
        return 3
    except BaseException as exc:
        print(f"loading or scoring it raised {type(exc).__name__}: {exc}", file=sys.stderr)
        return 4
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
