"""Model flavor and registry error paths no other test reached through the SDK or the CLI.

Flavors: a fill default that is not a number, classifiers whose classes are text (with and without
``--output label,proba``, pickled or converted to ONNX), a ``label,proba`` model whose probabilities have the
wrong width, ONNX graphs whose inputs are text, of mixed types or not ``[batch, features]``, and a file laid
out like a TorchScript archive that ``torch.jit.load`` cannot read. Registry: reserved and malformed aliases,
a training set whose entity columns were edited, a training set built on a snapshot that was expired since,
and a ``registry.uri`` that is not a database URL or points at a file that is not a database.

Each error is a FeaturelakeError subclass whose message names the model (or alias, training set, registry)
and says what to do; afterwards the registry lists the same models, versions, stages and aliases, the user's
files have the same bytes, no predictions table was written and the feature table's main is where it was.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import featurelake
from featurelake.cli.main import main as cli_main
from featurelake.errors import ConfigError, SchemaError, UsageError
from featurelake.lakehouse import wap
from tests import predict_helpers as ph
from tests.helpers import day, make_project

VIEW = "user_features"
SIGNATURE = [
    {"name": "amount_avg_1d", "type": "double", "feature": "user_features:amount_avg_1d"},
    {"name": "txn_count_1d", "type": "long", "feature": "user_features:txn_count_1d"},
]
X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
TEXT_CLASSES = ["a", "b", "c", "a", "b", "c"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[featurelake.Featurelake]:
    """A project with user_features published over days 0..3 (two runs) and no model yet."""
    root = make_project(tmp_path_factory.mktemp("flavors") / "proj")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATURELAKE_PIPELINE_USER", "test-user")
        with featurelake.open(root) as fl:
            fl.apply()
            ph.published_project(fl, days=4)
            yield fl


@pytest.fixture(scope="module")
def train(project: featurelake.Featurelake) -> pa.Table:
    """A small point-in-time training set over user_features (with its provenance)."""
    return ph.training_set(project, n=60)


# --- what must not change ------------------------------------------------------------------------------------
def registry_state(fl: featurelake.Featurelake) -> list[tuple[str, list[tuple[str, str, list[str]]]]]:
    """Every model with each version's stage and aliases."""
    return [
        (m.name, [(v.version, v.stage.value, list(v.aliases)) for v in fl.models.versions(m.name)])
        for m in fl.models.list_models()
    ]


def table_state(fl: featurelake.Featurelake) -> dict[str, Any]:
    """The feature table's main snapshot and refs (tags), and every predictions table's main snapshot."""
    out: dict[str, Any] = {}
    tbl = fl.project.load_table(VIEW)
    out[VIEW] = (wap.main_snapshot_id(tbl), sorted(tbl.metadata.refs))
    cat = fl.project.catalog
    try:
        idents = sorted(".".join(i) for i in cat.list_tables("predictions"))
    except Exception:  # no predictions namespace yet: nothing was ever written
        idents = []
    for ident in idents:
        out[ident] = wap.main_snapshot_id(cat.load_table(ident))
    return out


def state(fl: featurelake.Featurelake) -> tuple[Any, Any]:
    return registry_state(fl), table_state(fl)


def says(exc: BaseException | str, *needles: str) -> str:
    msg = str(exc)
    for n in needles:
        assert n in msg, f"{n!r} not in message: {msg}"
    return msg


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the real entry point; its exit code and the one ``error:`` line it ended with."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ei:
        cli_main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err  # progress lines may come before it
    assert "Traceback" not in err, err
    code = ei.value.code
    assert isinstance(code, int)
    return code, errors[0]


# --- models -----------------------------------------------------------------------------------------------------
class WrongWidthProba:
    """A classifier of three classes whose predict_proba answers two columns per row."""

    classes_ = np.array([0, 1, 2])

    def predict(self, x: Any) -> Any:
        return np.zeros(len(x))

    def predict_proba(self, x: Any) -> Any:
        return np.full((len(x), 2), 0.5)


def text_classifier() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(X, TEXT_CLASSES)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def onnx_graph(inputs: list[Any], nodes: list[Any], outputs: list[Any]) -> bytes:
    from onnx import checker, helper

    proto = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 13)]
    )
    checker.check_model(proto)  # a valid ONNX model: what is wrong is only what featurelake needs of it
    return bytes(proto.SerializeToString())


def text_input_onnx() -> bytes:
    from onnx import TensorProto, helper

    return onnx_graph(
        [helper.make_tensor_value_info("X", TensorProto.STRING, [None, 2])],
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_tensor_value_info("Y", TensorProto.STRING, [None, 2])],
    )


def mixed_inputs_onnx() -> bytes:
    from onnx import TensorProto, helper

    return onnx_graph(
        [
            helper.make_tensor_value_info("amount_avg_1d", TensorProto.DOUBLE, [None, 1]),
            helper.make_tensor_value_info("txn_count_1d", TensorProto.INT64, [None, 1]),
        ],
        [
            helper.make_node("Cast", ["txn_count_1d"], ["C"], to=TensorProto.DOUBLE),
            helper.make_node("Add", ["amount_avg_1d", "C"], ["Y"]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])],
    )


def three_d_onnx() -> bytes:
    from onnx import TensorProto, helper

    return onnx_graph(
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2, 1])],
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2, 1])],
    )


def fake_torchscript() -> bytes:
    """A zip with every entry a TorchScript archive has (so registration accepts it), none of them real."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for entry in ("model/data.pkl", "model/constants.pkl", "model/version", "model/code/__torch__.py"):
            archive.writestr(entry, "garbage\n")
    return buf.getvalue()


# --- found when the version is scored -------------------------------------------------------------------------
def test_a_fill_default_that_is_not_a_number_is_refused_when_scoring(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    fl = project
    from sklearn.linear_model import LogisticRegression

    path = write(tmp_path / "m.pkl", pickle.dumps(LogisticRegression().fit(X, [0, 1, 1, 0, 1, 0])))
    written = path.read_bytes()
    mv = fl.models.register("dflt", path, "pickle", signature=SIGNATURE, defaults={"amount_avg_1d": "zero"})
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.predict(f"dflt@{mv.version}", VIEW)
    says(
        ei.value,
        f"model dflt {mv.version}",
        "input amount_avg_1d has recorded default 'zero', which is not a number",
        "register the model again with --default amount_avg_1d=NUMBER",
    )
    assert state(fl) == before
    assert "predictions.dflt" not in table_state(fl)
    assert path.read_bytes() == written


@pytest.mark.parametrize(
    ("name", "output", "needles"),
    [
        (
            "text_classes",
            None,
            [
                "a classifier with 3 non-numeric classes (a, b, c)",
                "cannot be written to the numeric prediction column",
                "encode the classes as numbers and retrain",
            ],
        ),
        (
            "text_classes_multi",
            "label,proba",
            [
                "the pickle classifier's classes (a, b, c) are not numbers",
                "--output label,proba writes the label to the numeric prediction column",
                "encode the classes as numbers and retrain",
            ],
        ),
    ],
    ids=["single-output", "label-proba"],
)
def test_a_pickled_classifier_of_text_classes_is_refused_when_scoring(
    project: featurelake.Featurelake, tmp_path: Path, name: str, output: str | None, needles: list[str]
) -> None:
    fl = project
    path = write(tmp_path / "text.pkl", pickle.dumps(text_classifier()))
    written = path.read_bytes()
    mv = fl.models.register(name, path, "pickle", signature=SIGNATURE, output=output)
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.predict(f"{name}@{mv.version}", VIEW)
    says(ei.value, f"model {name} {mv.version}", *needles)
    assert state(fl) == before
    assert f"predictions.{name}" not in table_state(fl)
    assert path.read_bytes() == written


def test_label_proba_model_whose_probabilities_are_too_narrow(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    fl = project
    path = write(tmp_path / "narrow.pkl", pickle.dumps(WrongWidthProba()))
    mv = fl.models.register("narrow_proba", path, "pickle", signature=SIGNATURE, output="label,proba")
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.predict(f"narrow_proba@{mv.version}", VIEW)
    msg = says(
        ei.value, f"model narrow_proba {mv.version}", "with --output label,proba it must return one per class"
    )
    assert re.search(
        r"the pickle model returned probabilities of shape \((\d+), 2\) for \1 rows; .*\(\1, 3\)", msg
    ), msg
    assert state(fl) == before
    assert "predictions.narrow_proba" not in table_state(fl)


def test_an_archive_torch_cannot_load_is_refused_when_scoring(
    project: featurelake.Featurelake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fl = project
    path = write(tmp_path / "fake.pt", fake_torchscript())
    written = path.read_bytes()
    # Its zip directory is a TorchScript archive's, so registration (which loads nothing) accepts it.
    mv = fl.models.register("fake_torch", path, "torchscript", signature=SIGNATURE)
    before = state(fl)
    needles = [
        f"model fake_torch {mv.version}",
        "registered as flavor torchscript but torch.jit.load cannot read it",
        "save the model with torch.jit.save(torch.jit.script(model), path) and register that file",
    ]
    with pytest.raises(UsageError) as ei:
        fl.predict(f"fake_torch@{mv.version}", VIEW)
    says(ei.value, *needles)
    assert state(fl) == before
    # The CLI: exit 2 and the same message on one line.
    code, line = run_cli(["-C", str(fl.project.root), "predict", f"fake_torch@{mv.version}", "--view", VIEW],
                         capsys)  # fmt: skip
    assert code == 2
    says(line, *needles)
    assert state(fl) == before
    assert "predictions.fake_torch" not in table_state(fl)
    assert path.read_bytes() == written


# --- found when the version is registered ------------------------------------------------------------------------
ONNX_GRAPHS = [
    (
        "text_input",
        text_input_onnx,
        [
            "the onnx model's inputs are X: tensor(string)",
            "one numeric element type (float, double, int64 or int32)",
        ],
    ),
    (
        "mixed_inputs",
        mixed_inputs_onnx,
        [
            "amount_avg_1d: tensor(double), txn_count_1d: tensor(int64)",
            "one numeric element type (float, double, int64 or int32)",
        ],
    ),
    ("three_d_input", three_d_onnx, ["input X has shape [None, 2, 1]", "it must be [batch, features]"]),
]


@pytest.mark.parametrize(("name", "build", "needles"), ONNX_GRAPHS, ids=[g[0] for g in ONNX_GRAPHS])
def test_onnx_inputs_batch_prediction_cannot_feed_register_nothing(
    project: featurelake.Featurelake, tmp_path: Path, name: str, build: Any, needles: list[str]
) -> None:
    fl = project
    path = write(tmp_path / f"{name}.onnx", build())
    written = path.read_bytes()
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.models.register(name, path, "onnx", signature=SIGNATURE)
    says(ei.value, f"model {name} (being registered)", *needles)
    assert state(fl) == before
    assert name not in {m.name for m in fl.models.list_models()}
    assert path.read_bytes() == written


def test_onnx_three_d_input_from_the_command_line(
    project: featurelake.Featurelake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fl = project
    path = write(tmp_path / "cube.onnx", three_d_onnx())
    written = path.read_bytes()
    before = state(fl)
    code, line = run_cli(
        ["-C", str(fl.project.root), "models", "register", "cube", "--artifact", str(path), "--flavor", "onnx",
         "--json"],
        capsys,
    )  # fmt: skip
    assert code == 2
    says(
        ValueError(line),
        "model cube (being registered)",
        "has shape [None, 2, 1]",
        "it must be [batch, features]",
    )
    assert state(fl) == before
    assert path.read_bytes() == written


def test_onnx_classifier_of_text_classes_declared_label_proba_registers_nothing(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    from skl2onnx import to_onnx

    fl = project
    model = text_classifier()
    onx = to_onnx(model, np.zeros((1, 2), np.float32), options={id(model): {"zipmap": False}})
    path = write(tmp_path / "text.onnx", onx.SerializeToString())
    written = path.read_bytes()
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.models.register("onnx_text", path, "onnx", signature=SIGNATURE, output="label,proba")
    says(
        ei.value,
        "model onnx_text (being registered)",
        "the onnx classifier's classes (a, b, c) are not numbers",
        "encode the classes as numbers and retrain",
    )
    assert state(fl) == before
    assert path.read_bytes() == written


def test_training_set_with_edited_entity_columns_registers_nothing(
    project: featurelake.Featurelake, train: pa.Table, tmp_path: Path
) -> None:
    fl = project
    i = train.schema.get_field_index("user_id")
    users = train["user_id"].to_numpy().copy()
    users[0] += 1000  # one entity changed after `featurelake training-set` wrote the set
    edited = train.set_column(i, train.schema.field(i), pa.array(users, pa.int64()))
    assert (
        edited.schema.metadata == train.schema.metadata
    )  # the provenance still claims the original entities
    path = ph.export_pickle(ph.fit(train), tmp_path / "m.pkl")
    written = path.read_bytes()
    before = state(fl)
    with pytest.raises(UsageError) as ei:
        fl.models.register("edited", path, "pickle", training_set=edited)
    says(
        ei.value,
        "cannot register edited",
        "the entity columns of its training set (user_id, event_timestamp; 60 rows)",
        "do not hash to the provenance's entities_sha256",
        "Register the training set as it was built",
        "or pass --no-store-entities",
    )
    assert state(fl) == before  # no version, and no model-edited-* tag on the feature table
    assert path.read_bytes() == written


def test_training_set_on_an_expired_snapshot_registers_nothing(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(2), run_id="r1")
        bound = wap.main_snapshot_id(fl.project.load_table(VIEW))  # r1's snapshot: the training set's
        train = ph.training_set(fl, n=40)
        fl.backfill(VIEW, day(2), day(4), run_id="r2")
        fl.maintain(VIEW, expire=True, expire_older_than="0s", retain_last=1, force=True)
        assert len(fl.history(VIEW, all_snapshots=True)) == 1  # r1's snapshot is gone
        path = ph.export_pickle(ph.fit(train), tmp_path / "m.pkl")
        written = path.read_bytes()
        before = state(fl)
        with pytest.raises(UsageError) as ei:
            fl.models.register("stale", path, "pickle", training_set=train)
        says(
            ei.value,
            "cannot register stale",
            f"its training set was built on snapshot {bound} of features.user_features, which has been expired since",
            "rebuild the training set on current data (featurelake training-set ...) and train again",
        )
        assert state(fl) == before
        assert registry_state(fl) == []
        assert path.read_bytes() == written


# --- aliases ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aliased(project: featurelake.Featurelake, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Model ``aliased`` 1.0.0 with alias champion."""
    from tests.online_helpers import LinearModel

    path = write(tmp_path_factory.mktemp("aliased") / "m.pkl", pickle.dumps(LinearModel([1.0, 0.5])))
    mv = project.models.register("aliased", path, "pickle", signature=SIGNATURE)
    project.models.set_alias("aliased", "champion", mv.version)
    return mv.version


@pytest.mark.parametrize(
    ("alias", "needles"),
    [
        (
            "production",
            ["alias 'production' is reserved", "NAME@production", "choose another name, e.g. champion"],
        ),
        ("Latest", ["alias 'Latest' is reserved", "choose another name, e.g. champion"]),
        (
            "my champion",
            ["alias 'my champion' is not valid", "use letters, digits, '_' or '-', starting with a letter"],
        ),
        ("2nd", ["alias '2nd' is not valid", "starting with a letter"]),
    ],
    ids=["stage-name", "latest", "space", "leading-digit"],
)
def test_alias_that_cannot_be_an_alias_changes_nothing(
    project: featurelake.Featurelake,
    aliased: str,
    alias: str,
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fl = project
    before = state(fl)
    with pytest.raises(UsageError) as ei:
        fl.models.set_alias("aliased", alias, aliased)
    says(ei.value, *needles)
    assert state(fl) == before
    code, line = run_cli(["-C", str(fl.project.root), "models", "alias", "aliased", alias, aliased], capsys)
    assert code == 2
    says(line, *needles)
    assert state(fl) == before
    assert fl.models.get("aliased", aliased).aliases == ["champion"]


def test_a_reference_with_a_malformed_alias_scores_nothing(
    project: featurelake.Featurelake, aliased: str
) -> None:
    fl = project
    before = state(fl)
    with pytest.raises(UsageError) as ei:
        fl.predict("aliased@my champion!", VIEW)
    says(
        ei.value,
        "alias 'my champion!' is not valid",
        "use letters, digits, '_' or '-', starting with a letter",
    )
    assert state(fl) == before


# --- the registry database ------------------------------------------------------------------------------------------
def test_registry_uri_that_is_not_a_database_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = "project: test\nnamespace: features\nregistry:\n  uri: 'not a url'\n"
    root = make_project(tmp_path / "proj", config=config)
    needles = [
        "registry.uri 'not a url' is not a database URL",
        "use sqlite:///path or postgresql+psycopg://",
    ]
    with featurelake.open(root) as fl, pytest.raises(ConfigError) as ei:
        fl.models.list_models()
    says(ei.value, *needles)
    code, line = run_cli(["-C", str(root), "models", "list"], capsys)
    assert code == 2
    says(line, *needles)
    assert (root / "featurelake.yaml").read_text() == config
    assert not [p for p in root.rglob("*") if "registry" in p.name]  # no registry database was created


def test_registry_file_that_is_not_a_database_is_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = write(tmp_path / "registry.db", b"these are my notes, not a database\n" * 200)
    written = junk.read_bytes()
    root = make_project(
        tmp_path / "proj",
        config=f"project: test\nnamespace: features\nregistry:\n  uri: 'sqlite:///{junk}'\n",
    )
    needles = [
        f"model registry sqlite:///{junk} cannot be read (file is not a database)",
        "featurelake leaves it as it is",
        "restore it from a backup, or point registry.uri (FEATURELAKE_REGISTRY__URI) at the registry's database",
    ]
    with featurelake.open(root) as fl:
        fl.apply()
        for call in (fl.models.list_models, lambda: fl.models.resolve("churn@latest")):
            with pytest.raises(ConfigError) as ei:
                call()
            says(ei.value, *needles)
    code, line = run_cli(["-C", str(root), "models", "list"], capsys)
    assert code == 2
    says(line, *needles)
    assert junk.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "proj",
        "registry.db",
    ]  # no -wal / -journal beside it


# --- messages that now say what to do (each was found without a next step, or with the wrong one) --------
def scripted(module: Any, path: Path) -> Path:
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), buf)
    return write(path, buf.getvalue())


def test_a_torchscript_model_of_another_width_says_what_to_register(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    import torch

    fl = project
    mv = fl.models.register("tswidth", scripted(torch.nn.Linear(5, 1), tmp_path / "w.pt"), "torchscript",
                            signature=SIGNATURE)  # fmt: skip
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.predict(f"tswidth@{mv.version}", VIEW)
    says(
        ei.value,
        f"model tswidth {mv.version}: the torchscript model rejects a [batch, 2] input",
        "amount_avg_1d, txn_count_1d",
        "register a model that takes these 2 inputs as one [batch, inputs] tensor",
        "signature of the inputs it was trained on",
    )
    assert state(fl) == before


def test_an_onnx_model_whose_input_names_differ_says_how_to_match_them(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    from onnx import TensorProto, helper

    fl = project
    graph = onnx_graph(
        [
            helper.make_tensor_value_info("amount_avg_1d", TensorProto.DOUBLE, [None, 1]),
            helper.make_tensor_value_info("refunds_7d", TensorProto.DOUBLE, [None, 1]),
        ],
        [helper.make_node("Add", ["amount_avg_1d", "refunds_7d"], ["Y"])],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])],
    )
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.models.register("names", write(tmp_path / "n.onnx", graph), "onnx", signature=SIGNATURE)
    says(
        ei.value,
        "model names (being registered): the onnx model's inputs (its named inputs) do not match",
        "missing txn_count_1d; unexpected refunds_7d",
        "Register it with a signature naming its inputs in its order",
        "rename the model's inputs to the signature's",
    )
    assert state(fl) == before


def test_verifying_a_pickle_where_pickles_are_refused_gives_the_way_out(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "p", config="project: test\nnamespace: features\nregistry:\n  allow_pickle: false\n"
    )
    path = write(tmp_path / "m.pkl", pickle.dumps(WrongWidthProba()))
    with featurelake.open(root) as fl:
        with pytest.raises(ConfigError) as ei:
            fl.models.register("pk", path, "pickle", signature={"a": "double"}, verify=True)
        says(
            ei.value,
            "model pk (being registered): --verify would load a pickle",
            "registry.allow_pickle is false",
            "export the model to ONNX or TorchScript and register that",
            "set registry.allow_pickle: true",
        )
        assert registry_state(fl) == []


def test_a_classifier_returning_scores_says_to_return_probabilities(
    project: featurelake.Featurelake, train: pa.Table, tmp_path: Path
) -> None:
    import torch

    class Scores(torch.nn.Module):  # raw scores, not probabilities
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0] * 10.0 + 5

    fl = project
    before = state(fl)
    path = scripted(Scores(), tmp_path / "s.pt")
    with pytest.raises(UsageError) as ei:
        fl.models.register("logit", path, "torchscript", training_set=train, params={"task": "classification"},
                           verify=True)  # fmt: skip
    msg = says(
        ei.value,
        "model logit (being registered) (torchscript) failed verification: its probability outputs range over",
        "outside [0, 1]",
        "return probabilities (apply a sigmoid or softmax in the model)",
        "register it without --param task=classification",
        "nothing was registered",
    )
    assert msg.count("model logit") == 1, msg
    assert state(fl) == before


def test_an_onnx_operator_the_runtime_lacks_is_not_called_the_wrong_flavor(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    from onnx import TensorProto, helper

    fl = project
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("Mystery", ["X"], ["Y"], domain="com.example")],
            "g",
            [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 2])],
            [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])],
        ),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)],
    )
    before = state(fl)
    with pytest.raises(UsageError) as ei:
        fl.models.register("custom", write(tmp_path / "c.onnx", proto.SerializeToString()), "onnx",
                           signature=SIGNATURE)  # fmt: skip
    msg = says(
        ei.value,
        "model custom (being registered): its artifact is registered as flavor onnx but onnxruntime cannot load it",
        "Mystery",
        "export it with the standard operator sets onnxruntime",
        "install an onnxruntime that provides its operators",
    )
    assert "the flavor it really is" not in msg
    assert state(fl) == before


def test_a_pickle_of_a_class_the_library_lacks_says_to_install_its_version(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    fl = project
    # What a pickle of a class renamed or moved in a newer library version fails with: no such attribute.
    path = write(tmp_path / "a.pkl", b"cbuiltins\nno_such_thing\n)\x81.")
    mv = fl.models.register("attrpkl", path, "pickle", signature=SIGNATURE)
    before = state(fl)
    with pytest.raises(ConfigError) as ei:
        fl.predict(f"attrpkl@{mv.version}", VIEW)
    msg = says(
        ei.value,
        f"model attrpkl {mv.version}: its pickle refers to something the installed libraries do not have",
        "no_such_thing",
        "install the library versions the model was trained with",
    )
    assert "the flavor it really is" not in msg
    assert state(fl) == before


def test_an_onnx_classifier_with_fewer_probability_columns_than_classes_says_to_export_again(
    project: featurelake.Featurelake, tmp_path: Path
) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    fl = project
    model = LogisticRegression().fit(X, [0, 1, 2, 0, 1, 2])
    onx = to_onnx(model, np.zeros((1, 2), np.float32), options={id(model): {"zipmap": False}})
    probabilities = next(o for o in onx.graph.output if o.name == "probabilities")
    probabilities.type.tensor_type.shape.dim[1].dim_value = 2  # declares 2 columns for 3 classes
    before = state(fl)
    with pytest.raises(SchemaError) as ei:
        fl.models.register("clscount", write(tmp_path / "k.onnx", onx.SerializeToString()), "onnx",
                           signature=SIGNATURE, output="label,proba")  # fmt: skip
    says(
        ei.value,
        "model clscount (being registered): the onnx model's graph names 3 classes",
        "has 2 probability columns",
        "export the model again so that it has one probability column per class",
    )
    assert state(fl) == before
