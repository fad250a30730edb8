"""Bad training-set inputs and CLI argument mixes no other test tried: an entity file that is not Parquet, an
entity file of an unknown kind, entities of an unknown type, a provenance that is missing, not JSON, not Parquet
or of an unknown type, no features at all, a training set written to .csv, an on-demand output named like an
entity column, ``--from-provenance`` with ``--features``, and ``models alias --delete`` with a version.

Each gives a UsageError (exit 2 on the command line) naming the file or option and what to give instead; the
user's files are left as they were and no output is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.errors import UsageError
from tests.helpers import DEFAULT_FEATURES, day, make_project
from tests.training_helpers import entities, run_cli

VIEW = "user_features"
FEATURES = [f"{VIEW}:amount_avg_1d", f"{VIEW}:txn_count_1d"]
JUNK = b"these bytes are not what the suffix says\n" * 8


def says(exc: BaseException | str, *needles: str) -> str:
    msg = str(exc)
    for n in needles:
        assert n in msg, f"{n!r} not in message: {msg}"
    return msg


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project with days 0..4 published (read only: no test here may change it)."""
    root = make_project(tmp_path_factory.mktemp("training") / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="base")
    yield root


def junk_file(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_bytes(JUNK)
    return path


# --- entity files ----------------------------------------------------------------------------------------
def test_entity_file_that_is_not_parquet(published: Path, tmp_path: Path) -> None:
    bad = junk_file(tmp_path, "entities.parquet")
    with featurelake.open(published) as fl, pytest.raises(UsageError) as ei:
        fl.training_set(bad, FEATURES)
    says(ei.value, f"entity file {bad}", "cannot be read as parquet", "give a valid Parquet or CSV file")
    assert bad.read_bytes() == JUNK


def test_entity_file_of_an_unknown_kind(published: Path, tmp_path: Path) -> None:
    bad = tmp_path / "entities.json"
    bad.write_text('{"user_id": [1]}')
    with featurelake.open(published) as fl, pytest.raises(UsageError) as ei:
        fl.training_set(bad, FEATURES)
    says(ei.value, f"entity file {bad}", "use a .parquet or .csv file")


def test_entities_of_an_unknown_type(published: Path) -> None:
    with featurelake.open(published) as fl, pytest.raises(UsageError) as ei:
        fl.training_set([{"user_id": 1}], FEATURES)
    says(ei.value, "entities must be an Arrow table, a pandas DataFrame or a .parquet/.csv path", "not list")


# --- provenances ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("gone.parquet", None, ["does not exist", "`featurelake training-set` wrote"]),
        ("prov.json", b"{not json", ["is not valid JSON", "the provenance .json"]),
        ("train.parquet", JUNK, ["is not a Parquet file", "`featurelake training-set` wrote"]),
    ],
    ids=["missing", "bad-json", "not-parquet"],
)
def test_bad_provenance_file(
    published: Path, tmp_path: Path, name: str, content: bytes | None, needles: list[str]
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with featurelake.open(published) as fl, pytest.raises(UsageError) as ei:
        fl.training_set(entities(50), provenance=path)
    says(ei.value, str(path), *needles)
    if content is None:
        assert not path.exists()
    else:
        assert path.read_bytes() == content, "the provenance file was modified"


def test_provenance_of_an_unknown_type(published: Path) -> None:
    with featurelake.open(published) as fl, pytest.raises(UsageError) as ei:
        fl.training_set(entities(50), provenance=42)
    says(ei.value, "cannot read a provenance from int")


# --- command line ----------------------------------------------------------------------------------------------
def test_cli_from_provenance_with_features_writes_nothing(
    published: Path, tmp_path: Path, capsys: Any
) -> None:
    ents = tmp_path / "ents.parquet"
    pq.write_table(entities(50), ents)
    first = tmp_path / "first.parquet"
    code, _, err = run_cli(
        capsys,
        published,
        "training-set",
        "--entities",
        str(ents),
        "--features",
        FEATURES[0],
        "--output",
        str(first),
    )
    assert code == 0, err
    again = tmp_path / "again.parquet"
    code, out, err = run_cli(
        capsys,
        published,
        "training-set",
        "--entities",
        str(ents),
        "--from-provenance",
        str(first),
        "--features",
        FEATURES[1],
        "--output",
        str(again),
    )
    assert code == 2, err
    assert "Traceback" not in err
    says(err, "error:", "--from-provenance already fixes features and snapshots", "drop --features")
    assert not again.exists(), "a refused command wrote its output"
    assert out == ""


def test_cli_alias_delete_with_a_version(published: Path, capsys: Any) -> None:
    code, out, err = run_cli(capsys, published, "models", "alias", "fraud", "champion", "1.0.0", "--delete")
    assert code == 2, err
    assert "Traceback" not in err
    says(err, "error:", "--delete takes no VERSION", "featurelake models alias fraud champion --delete")
    assert out == ""


# --- building and writing -------------------------------------------------------------------------------------
def test_no_features_requested(published: Path) -> None:
    with featurelake.open(published) as fl, pytest.raises(UsageError) as ei:
        fl.training_set(entities(50))
    says(ei.value, "no features requested", "features=['view:feature', ...]", "feature service", "provenance")


def test_writing_a_training_set_to_csv_is_refused(published: Path, tmp_path: Path) -> None:
    from featurelake.training import write_training_set

    with featurelake.open(published) as fl:
        table = fl.training_set(entities(50), FEATURES)
    out = tmp_path / "train.csv"
    with pytest.raises(UsageError) as ei:
        write_training_set(table, out)
    says(ei.value, f"training set output {out}", "use a .parquet file", "provenance")
    assert not out.exists()


ON_DEMAND = """

import pyarrow.compute as pc
from featurelake import OnDemandFeatureView, RequestSource


def _ratio(t):
    return {"amount_vs_avg": pc.divide(t["amount"], t["amount_avg_1d"])}


ratio = OnDemandFeatureView(
    name="ratio",
    sources=[user_features, RequestSource({"amount": "double"}, name="txn")],
    fields={"amount_vs_avg": "double"},
    udf=_ratio,
)
"""


def test_on_demand_output_named_like_an_entity_column(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", features=DEFAULT_FEATURES + ON_DEMAND)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="base")
        ents = entities(20)
        ents = ents.append_column("amount", pa.array([10.0] * ents.num_rows))
        ents = ents.append_column("amount_vs_avg", pa.array([0.0] * ents.num_rows))
        with pytest.raises(UsageError) as ei:
            fl.training_set(ents, ["ratio:amount_vs_avg"])
        says(
            ei.value,
            "feature ratio:amount_vs_avg",
            "column 'amount_vs_avg', which already exists",
            "full_feature_names=True",
            "--full-feature-names",
        )
        full = fl.training_set(ents, ["ratio:amount_vs_avg"], full_feature_names=True)
    assert "ratio__amount_vs_avg" in full.column_names and full.num_rows == ents.num_rows


def test_a_feature_added_after_the_pinned_snapshot_is_named_with_the_way_out(tmp_path: Path) -> None:
    """A training set pinned to a snapshot written before a feature was added cannot read that feature."""
    root = make_project(tmp_path / "p")
    with featurelake.open(root) as fl:
        fl.apply()
        first = fl.backfill(VIEW, day(0), day(5), run_id="base").snapshot_id
    src = (root / "features.py").read_text()
    src = src.replace(
        "avg(amount) AS amount_avg_1d", "avg(amount) AS amount_avg_1d, max(amount) AS amount_max"
    ).replace('"amount_avg_1d": "double"}', '"amount_avg_1d": "double", "amount_max": "double"}')
    (root / "features.py").write_text(src)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="again")
        with pytest.raises(UsageError) as ei:
            fl.training_set(entities(days=5), [f"{VIEW}:amount_max"], as_of={VIEW: first})
        says(
            ei.value,
            f"features.{VIEW} at snapshot {first} cannot provide amount_max",
            "was a feature added later",
            "read a later snapshot (as_of), or leave those features out of the request",
        )
        # Unpinned, the same request reads the feature.
        assert fl.training_set(entities(days=5), [f"{VIEW}:amount_max"]).column("amount_max").null_count < 300


def test_rebuilding_a_set_whose_on_demand_view_was_removed_says_what_to_restore(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", features=DEFAULT_FEATURES + ON_DEMAND)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="base")
        ents = entities(20).append_column("amount", pa.array([10.0] * 20))
        built = fl.training_set(ents, ["ratio:amount_vs_avg"])
    (root / "features.py").write_text(DEFAULT_FEATURES)  # the on-demand view removed
    with featurelake.open(root) as fl:
        with pytest.raises(UsageError) as ei:
            fl.training_set(ents, provenance=built)
        says(
            ei.value,
            "on-demand feature view 'ratio', which features.py no longer defines",
            "restore the view's definition",
        )
    (root / "features.py").write_text(DEFAULT_FEATURES + ON_DEMAND)  # restored: the same set again
    with featurelake.open(root) as fl:
        again = fl.training_set(ents, provenance=built)
    assert again.column("amount_vs_avg").equals(built.column("amount_vs_avg"))
