"""Registering a model checks its artifact without running it; `--verify` loads and scores it in a jailed child.

Before this, any file registered as any flavor (`/etc/passwd` as pickle, ONNX and TorchScript) and failed
only when scored. Now: a pickle's opcodes are walked (never unpickled) and the modules it would import are
reported; an ONNX graph is parsed and its inputs checked against the training set's signature; a TorchScript
archive's zip entries are checked. A refused artifact leaves nothing behind: no version, no stored blob.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import featurelake
from featurelake.cli.main import cli
from featurelake.errors import SchemaError, UsageError
from featurelake.prediction.flavors.check import ArtifactChecker
from tests.helpers import make_project
from tests.predict_helpers import (
    export_onnx,
    export_pickle,
    export_torchscript,
    features_matrix,
    fit,
    published_project,
    training_set,
)

PASSWD = Path("/etc/passwd")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A published project, its training set written to Parquet, and a model fit on it."""
    root = tmp_path_factory.mktemp("validate") / "p"
    make_project(root)
    with featurelake.open(root) as fl:
        fl.apply()
        published_project(fl)
        ts = training_set(fl)
    path = root / "train.parquet"
    pq.write_table(ts, path)
    return root, path, fit(ts)


def _nothing_stored(fl: featurelake.Featurelake, name: str) -> None:
    assert name not in {m.name for m in fl.models.list_models()}
    blobs = fl.project.config.path(".featurelake/artifacts/sha256")
    assert not blobs.exists() or not any(
        p.read_bytes() == PASSWD.read_bytes() for p in blobs.iterdir() if p.is_file()
    )


@pytest.mark.parametrize(
    ("flavor", "what"),
    [
        ("pickle", "registered as flavor pickle but is not a pickle"),
        ("onnx", "registered as flavor onnx but is not a valid ONNX model"),
        ("torchscript", "registered as flavor torchscript but is not a TorchScript archive (it is not a zip"),
    ],
)
def test_etc_passwd_registers_as_no_flavor(trained: tuple[Path, Path, Any], flavor: str, what: str) -> None:
    root, ts, _ = trained
    with featurelake.open(root) as fl:
        with pytest.raises(UsageError) as err:
            fl.models.register("passwd", PASSWD, flavor, training_set=ts)
        assert str(err.value).startswith("model passwd (being registered): its artifact")
        assert what in str(err.value)
        _nothing_stored(fl, "passwd")
    # The CLI: exit 2, one error line naming the model and the flavor.
    out = CliRunner().invoke(
        cli,
        ["-C", str(root), "models", "register", "passwd", "--artifact", str(PASSWD), "--flavor", flavor],
    )
    assert out.exit_code != 0 and isinstance(out.exception, UsageError)
    assert "model passwd" in str(out.exception) and flavor in str(out.exception)


def test_pickles_are_read_as_opcodes_and_their_imports_reported(
    trained: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    root, ts, model = trained
    trap = tmp_path / "trap-ran"
    booby = tmp_path / "booby.pkl"
    booby.write_bytes(pickle.dumps(Trap(str(trap))))
    with featurelake.open(root) as fl:
        good = fl.models.register(
            "churn_pickle", export_pickle(model, tmp_path / "m.pkl"), "pickle", training_set=ts
        )
        found = good.params["featurelake.artifact"]
        assert found["format"] == "pickle" and found["dangerous_imports"] == []
        assert "sklearn.linear_model._logistic.LogisticRegression" in found["imports"]

        # A pickle whose loading runs a command registers (pickles are code: registry.allow_pickle decides
        # whether they load), but what it would import is on record and the trap did not run.
        trapped = fl.models.register("trapped", booby, "pickle")
        assert trapped.params["featurelake.artifact"]["dangerous_imports"] == ["posix.system"]
        assert not trap.exists()

        truncated = tmp_path / "cut.pkl"
        truncated.write_bytes(pickle.dumps(model)[:-40])
        with pytest.raises(
            UsageError, match=r"model cut \(being registered\): .* flavor pickle but is not a pickle"
        ):
            fl.models.register("cut", truncated, "pickle")
        _nothing_stored(fl, "cut")

    out = CliRunner().invoke(
        cli,
        ["-C", str(root), "models", "register", "trapped", "--artifact", str(booby), "--flavor", "pickle"],
    )
    assert out.exit_code == 0, out.output
    assert "pickle imports: posix.system" in out.output
    assert "which can run commands when it is loaded" in " ".join(out.output.split())
    assert not trap.exists()


class Trap:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.path}",)


def test_onnx_inputs_are_checked_against_the_training_set(
    trained: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    root, ts, model = trained
    with featurelake.open(root) as fl:
        good = fl.models.register(
            "churn_onnx", export_onnx(model, tmp_path / "m.onnx"), "onnx", training_set=ts
        )
        found = good.params["featurelake.artifact"]
        assert found["format"] == "onnx" and found["output_kind"] == "probability"
        assert len(found["inputs"]) == 1 and "[None, 3]" in found["inputs"][0]

        # A graph taking 2 columns, registered with a 3-feature training set.
        from sklearn.linear_model import LogisticRegression

        two = LogisticRegression().fit(
            np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), [0, 1, 1, 0]
        )
        with pytest.raises(SchemaError) as err:
            fl.models.register(
                "narrow", export_onnx(two, tmp_path / "two.onnx", k=2), "onnx", training_set=ts
            )
        assert "model narrow (being registered): the onnx model takes 2 input columns" in str(err.value)
        assert "recorded signature has 3 (txn_count_1d, amount_sum_1d, amount_avg_1d)" in str(err.value)
        _nothing_stored(fl, "narrow")


def test_torchscript_archives_are_checked_by_their_entries(
    trained: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    import io
    import warnings

    import torch

    from tests.predict_helpers import torch_module

    root, ts, model = trained
    with featurelake.open(root) as fl:
        good = fl.models.register(
            "churn_torch", export_torchscript(model, tmp_path / "m.pt"), "torchscript", training_set=ts
        )
        assert good.params["featurelake.artifact"]["format"] == "torchscript"

        # torch.save of the weights (a zip too, but no TorchScript code): refused before anything loads it.
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(torch_module(model).state_dict(), buf)
        saved = tmp_path / "saved.pt"
        saved.write_bytes(buf.getvalue())
        with pytest.raises(UsageError) as err:
            fl.models.register("saved", saved, "torchscript", training_set=ts)
        assert "model saved (being registered): its artifact is registered as flavor torchscript" in str(
            err.value
        )
        assert "code/*.py (it looks like torch.save of a module or its weights)" in str(err.value)

        other = tmp_path / "other.zip"
        with zipfile.ZipFile(other, "w") as z:
            z.writestr("notes.txt", "hello")
        with pytest.raises(UsageError, match=r"has one top directory; this one has notes\.txt"):
            fl.models.register("zipped", other, "torchscript")
        for name in ("saved", "zipped"):
            _nothing_stored(fl, name)


class Hungry:
    """A model whose predict asks for far more memory than any machine has."""

    def predict(self, x: Any) -> Any:
        return np.ones((10**7, 10**6))


class Spinner:
    """A model whose predict never returns (it computes)."""

    def predict(self, x: Any) -> Any:
        while True:
            sum(range(10_000))


def test_verify_scores_a_sample_in_a_limited_child(trained: tuple[Path, Path, Any], tmp_path: Path) -> None:
    root, ts, model = trained
    with featurelake.open(root) as fl:
        mv = fl.models.register(
            "verified", export_pickle(model, tmp_path / "v.pkl"), "pickle", training_set=ts, verify=True
        )
        verified = mv.params["featurelake.artifact"]["verified"]
        assert verified["rows"] == 256 and verified["output_shape"] == [256]
        assert verified["output_dtype"] == "float64" and verified["output_kind"] == "probability"
        assert 0.0 <= verified["min"] <= verified["max"] <= 1.0 and verified["non_finite"] == 0
        rows = pq.read_table(ts).slice(0, 256)
        direct = model.predict_proba(features_matrix(rows))[:, 1]
        assert verified["min"] == pytest.approx(direct.min()) and verified["max"] == pytest.approx(
            direct.max()
        )

        sig = {"a": "double"}
        hungry = tmp_path / "hungry.pkl"
        hungry.write_bytes(pickle.dumps(Hungry()))
        with pytest.raises(UsageError) as err:
            fl.models.register("hungry", hungry, "pickle", signature=sig, verify=True)
        assert "model hungry (being registered) (pickle) failed verification" in str(err.value)
        assert "MemoryError" in str(err.value) and "nothing was registered" in str(err.value)

        spinner = tmp_path / "spin.pkl"
        spinner.write_bytes(pickle.dumps(Spinner()))
        fl.models.artifact_check = ArtifactChecker(cpu_seconds=1)
        with pytest.raises(UsageError, match=r"failed verification: it used more than its 1 CPU seconds"):
            fl.models.register("spinner", spinner, "pickle", signature=sig, verify=True)
        for name in ("hungry", "spinner"):
            _nothing_stored(fl, name)
