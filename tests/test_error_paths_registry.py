"""Model registrations no other test attempted: a feature service together with a signature, a signature entry
without its type, model files that are not what their flavor says (an empty or truncated pickle, a pickle whose
opcodes do not add up, a TorchScript zip with a corrupt entry), a pickle of a module that is not installed,
and models whose predictions are text or several numbers per row.

Each is a UsageError (at predict time: ConfigError for the missing module, SchemaError for the predictions)
naming the model (or the entry) and what to give instead; the registry holds no new model afterwards, no
predictions table is written and the user's artifact file is untouched.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.errors import ConfigError, SchemaError, UsageError
from tests.helpers import DEFAULT_FEATURES, day, make_project
from tests.online_helpers import LinearModel

FEATURE = "user_features:amount_avg_1d"
SERVICE = """

from featurelake import FeatureService

scoring = FeatureService("scoring", features=["user_features:amount_avg_1d", "user_features:txn_count_1d"])
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[featurelake.Featurelake, Path]]:
    root = make_project(tmp_path_factory.mktemp("registry") / "proj", features=DEFAULT_FEATURES + SERVICE)
    artifact = root.parent / "model.pkl"
    artifact.write_bytes(pickle.dumps(LinearModel([1.0, 0.5])))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATURELAKE_PIPELINE_USER", "test-user")
        with featurelake.open(root) as fl:
            fl.apply()
            fl.backfill("user_features", day(0), day(3), run_id="base")
            yield fl, artifact


def models(fl: featurelake.Featurelake) -> list[str]:
    return [m.name for m in fl.models.list_models()]


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        (
            {"service": "scoring", "signature": {"amount_avg_1d": "double"}},
            ["model churn", "either a feature service or a signature, not both"],
        ),
        (
            {"signature": [{"name": "amount_avg_1d"}]},
            ["signature entries need a name and a type", "{'name': 'amount_avg_1d'}", "'type': 'double'"],
        ),
    ],
    ids=["service-and-signature", "signature-entry-without-type"],
)
def test_bad_registration_registers_nothing(
    project: tuple[featurelake.Featurelake, Path], kwargs: dict[str, Any], needles: list[str]
) -> None:
    fl, artifact = project
    written = artifact.read_bytes()
    before = models(fl)
    with pytest.raises(UsageError) as ei:
        fl.models.register("churn", artifact, "pickle", **kwargs)
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in message: {msg}"
    assert models(fl) == before
    assert "churn" not in models(fl)
    assert artifact.read_bytes() == written


def test_the_service_alone_registers(project: tuple[featurelake.Featurelake, Path]) -> None:
    fl, artifact = project
    mv = fl.models.register("churn_by_service", artifact, "pickle", service="scoring")
    assert [f.name for f in mv.signature] == ["amount_avg_1d", "txn_count_1d"]


# --- wrong model files ----------------------------------------------------------------------------------------
def _corrupt_zip() -> bytes:
    """A zip archive laid out like a TorchScript one whose only entry fails its CRC check."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("model/code/__torch__.py", "x = 1\n" * 50)
    data = bytearray(buf.getvalue())
    data[data.index(b"x = 1") + 2] ^= 0xFF  # flip a byte of the stored entry: the CRC no longer matches
    return bytes(data)


WRONG_FILES = [
    ("empty-pickle", "pickle", b"", ["is not a pickle", "the file is empty", "pickle.dump wrote"]),
    (
        "truncated-pickle",
        "pickle",
        pickle.dumps(LinearModel([1.0, 0.5]))[:-1],
        ["is not a pickle", "exhausted before seeing STOP"],
    ),
    ("pickle-stack-underflow", "pickle", b"\x80\x04.", ["is not a pickle", "pops 1 items from a stack of 0"]),
    (
        "corrupt-torchscript-zip",
        "torchscript",
        _corrupt_zip(),
        ["zip entry model/code/__torch__.py is corrupt"],
    ),
]


@pytest.mark.parametrize(
    ("flavor", "data", "needles"), [w[1:] for w in WRONG_FILES], ids=[w[0] for w in WRONG_FILES]
)
def test_wrong_model_file_is_refused_at_registration(
    project: tuple[featurelake.Featurelake, Path],
    tmp_path: Path,
    flavor: str,
    data: bytes,
    needles: list[str],
) -> None:
    fl, _ = project
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    before = models(fl)
    with pytest.raises(UsageError) as ei:
        fl.models.register("broken", path, flavor, signature={"amount_avg_1d": "double"})
    msg = str(ei.value)
    for n in ["broken", *needles]:
        assert n in msg, f"{n!r} not in message: {msg}"
    assert models(fl) == before
    assert path.read_bytes() == data


# A pickle of ``fl_gone_module.Model()`` (GLOBAL, EMPTY_TUPLE, NEWOBJ, STOP): a module that is not installed.
GONE = b"cfl_gone_module\nModel\n)\x81."


def test_pickle_of_a_module_that_is_not_installed_fails_at_predict(
    project: tuple[featurelake.Featurelake, Path], tmp_path: Path
) -> None:
    fl, _ = project
    path = tmp_path / "gone.pkl"
    path.write_bytes(GONE)
    mv = fl.models.register(
        "gone", path, "pickle", signature=[{"name": "amount_avg_1d", "type": "double", "feature": FEATURE}]
    )
    fl.models.promote("gone", mv.version, "Staging")
    fl.models.promote("gone", mv.version, "Production")
    tables = predictions_tables(fl)
    with pytest.raises(ConfigError) as ei:
        fl.predict("gone", "user_features")
    msg = str(ei.value)
    assert "gone" in msg and "needs the module fl_gone_module" in msg and "install the library" in msg, msg
    assert predictions_tables(fl) == tables
    assert [(v.version, v.stage) for v in fl.models.versions("gone")] == [(mv.version, "Production")]


def predictions_tables(fl: featurelake.Featurelake) -> list[str]:
    try:
        return sorted(".".join(i) for i in fl.project.catalog.list_tables("predictions"))
    except Exception:  # no predictions namespace yet: nothing was ever written
        return []


class TextModel:
    """A model whose predict answers text labels (a classifier trained on string classes, say)."""

    def predict(self, x: Any) -> Any:
        import numpy as np

        return np.array(["yes"] * len(x))


class WideModel:
    """A model whose predict answers three numbers per row."""

    def predict(self, x: Any) -> Any:
        import numpy as np

        return np.zeros((len(x), 3))


@pytest.mark.parametrize(
    ("name", "model", "needles"),
    [
        ("text_model", TextModel(), ["model returned <U3 values", "predictions must be numeric", "encode"]),
        ("wide_model", WideModel(), ["model returned shape (", ", 3) for", "one number per row"]),
    ],
    ids=["text-predictions", "three-columns-per-row"],
)
def test_model_whose_predictions_do_not_fit_writes_nothing(
    project: tuple[featurelake.Featurelake, Path],
    tmp_path: Path,
    name: str,
    model: object,
    needles: list[str],
) -> None:
    fl, _ = project
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(pickle.dumps(model))
    mv = fl.models.register(
        name, path, "pickle", signature=[{"name": "amount_avg_1d", "type": "double", "feature": FEATURE}]
    )
    fl.models.promote(name, mv.version, "Staging")
    fl.models.promote(name, mv.version, "Production")
    tables = predictions_tables(fl)
    with pytest.raises(SchemaError) as ei:
        fl.predict(name, "user_features")
    msg = str(ei.value)
    for n in [f"model {name}", *needles]:
        assert n in msg, f"{n!r} not in message: {msg}"
    assert predictions_tables(fl) == tables, "a refused run left a predictions table behind"
