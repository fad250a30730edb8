"""catalog.type / catalog.properties / storage.s3 configuration, secrets, and lakehouse.storage on a real S3
server (moto on loopback): globs and hive directories, the window read with its filter pushed down, outputs."""

from __future__ import annotations

import io
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.config import ProjectConfig, redact_properties, redact_text
from featurelake.errors import ConfigError, StorageUnavailableError, UsageError
from featurelake.lakehouse.storage import ObjectStoreRetry, Storage, glob_regex, is_storage_failure
from featurelake.lakehouse.window import Window
from tests.helpers import START, day, make_project, transactions
from tests.s3_project import cli_here, s3_project
from tests.s3_servers import S3Bucket, moto_s3, s3

_FIXTURES = (moto_s3, s3)


def load(tmp_path: Path, text: str) -> ProjectConfig:
    (tmp_path / "featurelake.yaml").write_text(text)
    return ProjectConfig.load(tmp_path)


# --- configuration -----------------------------------------------------------------------------------------


def test_defaults_are_the_embedded_sql_catalog(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    c = cfg.settings.catalog
    assert (c.type, c.uri, c.properties) == ("sql", None, {})
    assert cfg.catalog_uri == f"sqlite:///{tmp_path.resolve()}/.featurelake/catalog.db"
    assert cfg.catalog_properties == {}
    assert cfg.settings.storage.s3.model_dump() == {"endpoint": None, "region": None, "path_style": False}


def test_rest_catalog_properties_reference_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_REST_TOKEN", "tok-12345")
    monkeypatch.setenv("FEATURELAKE_CATALOG__PROPERTIES__SCOPE", "catalog:read")
    cfg = load(
        tmp_path,
        "catalog:\n  type: REST\n  uri: https://cat.example.com/api\n  warehouse: s3a://bkt/wh\n"
        "  properties:\n    token: '${FL_REST_TOKEN}'\n    header.Authorization: 'Bearer ${FL_REST_TOKEN}'\n"
        "    token-refresh-enabled: true\n    header.X-Iceberg-Access-Delegation: vended-credentials\n"
        "    price: '$$5'\n",
    )
    assert cfg.settings.catalog.type == "rest"
    assert cfg.catalog_uri == "https://cat.example.com/api"
    assert cfg.warehouse == "s3://bkt/wh"  # s3a:// is a synonym
    assert cfg.catalog_properties == {
        "token": "tok-12345",
        "header.Authorization": "Bearer tok-12345",
        "token-refresh-enabled": "true",
        "header.X-Iceberg-Access-Delegation": "vended-credentials",
        "price": "$5",
        "scope": "catalog:read",  # from the environment, merged key by key
    }
    shown = repr(cfg.settings.catalog)
    assert (
        "${FL_REST_TOKEN}" not in shown and "'token': '***'" in shown and "'scope': 'catalog:read'" in shown
    )


def test_secrets_from_the_environment_are_redacted_in_repr_and_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURELAKE_CATALOG__PROPERTIES", '{"credential": "id:s3cr3t-value", "scope": "x"}')
    cfg = load(tmp_path, "catalog:\n  type: rest\n  uri: http://127.0.0.1:1\n")
    props = cfg.catalog_properties
    assert props["credential"] == "id:s3cr3t-value"  # the environment may hold it
    assert "s3cr3t-value" not in repr(cfg.settings) and "s3cr3t-value" not in str(cfg.settings)
    assert redact_properties(props) == {"credential": "***", "scope": "x"}
    assert redact_text("server said: bad id:s3cr3t-value", props) == "server said: bad ***"


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "credential",
        "s3.secret-access-key",
        "s3.session-token",
        "header.Authorization",
        "adls.account-key",
    ],
)
def test_a_literal_secret_in_the_file_is_refused_without_echoing_it(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            f"catalog:\n  type: rest\n  uri: http://h\n  properties:\n    {key}: 'hunter2-literal'\n",
        )
    message = str(caught.value)
    assert f"catalog.properties.{key} holds a secret" in message
    assert "${FL_CATALOG_SECRET}" in message and "hunter2-literal" not in message


def test_a_missing_environment_variable_names_the_property_and_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project(tmp_path, config="catalog:\n  type: rest\n  uri: http://127.0.0.1:1\n  properties:\n"
                 "    token: '${FL_NOT_SET_ANYWHERE}'\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"catalog.properties.token references \$\{FL_NOT_SET_ANYWHERE\}"):
        _ = ProjectConfig.load(tmp_path).catalog_properties
    r = cli_here(capsys, tmp_path, "history", "user_features")
    assert r.returncode == 2 and "environment variable FL_NOT_SET_ANYWHERE is not set" in r.stderr


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        ("type: rest", "catalog.type rest needs catalog.uri"),
        ("type: rest\n  uri: sqlite:///x.db", "catalog.type rest needs catalog.uri"),
        ("uri: https://cat.example.com", "catalog.uri is an http(s) URL but catalog.type is sql"),
        ("type: 'no such'", "is not a catalog type"),
    ],
)
def test_catalog_type_and_uri_must_fit(tmp_path: Path, catalog: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"catalog:\n  {catalog}\n")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("catalog_type", "message"),
    [
        (
            "nessie",
            "catalog.type 'nessie' is not a catalog PyIceberg knows: use sql (the default) or one of rest",
        ),
        ("hive", "pip install 'pyiceberg[hive]'"),
    ],
)
def test_catalog_types_pyiceberg_cannot_load_are_config_errors(
    tmp_path: Path, catalog_type: str, message: str
) -> None:
    make_project(tmp_path, config=f"catalog:\n  type: {catalog_type}\n  uri: thrift://127.0.0.1:1\n")
    with featurelake.open(tmp_path) as fl, pytest.raises(ConfigError) as caught:
        fl.history("user_features")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("s3_yaml", "message"),
    [
        ("endpoint: minio:9000", "is not an endpoint URL: write http(s)://host[:port]"),
        ("endpoint: 'http://key:secret@minio:9000'", "the endpoint holds credentials"),
        ("access_key_id: AKIA", "S3 credentials are never read from the file"),
        ("secret_access_key: x", "S3 credentials are never read from the file"),
        ("bucket: x", "unknown key 'storage.s3.bucket'"),
    ],
)
def test_storage_s3_is_checked_when_the_config_loads(tmp_path: Path, s3_yaml: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"storage:\n  s3:\n    {s3_yaml}\n")
    assert message in str(caught.value)
    assert "secret@" not in str(caught.value)


def test_storage_s3_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURELAKE_STORAGE__S3__ENDPOINT", "http://127.0.0.1:9000/")
    monkeypatch.setenv("FEATURELAKE_STORAGE__S3__PATH_STYLE", "true")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    cfg = load(tmp_path, "storage:\n  s3: {region: eu-central-1}\n")
    storage = Storage.from_config(cfg.settings.storage)
    assert storage == Storage("http://127.0.0.1:9000", "eu-central-1", True)
    props = storage.iceberg_properties()
    assert props == {
        "s3.endpoint": "http://127.0.0.1:9000",
        "s3.region": "eu-central-1",
        "s3.force-virtual-addressing": "false",
        "s3.retry-strategy-impl": "featurelake.lakehouse.storage.ObjectStoreRetry",
    }
    assert Storage.from_properties(props) == storage
    assert not any("key" in k or "secret" in k for k in props)  # credentials: the AWS chain only


def test_region_and_addressing_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert Storage().iceberg_properties() == {
        "s3.retry-strategy-impl": "featurelake.lakehouse.storage.ObjectStoreRetry"
    }
    assert Storage("http://minio:9000").iceberg_properties()["s3.region"] == "us-east-1"
    assert Storage("http://minio:9000").iceberg_properties()["s3.force-virtual-addressing"] == "true"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert Storage().iceberg_properties()["s3.region"] == "ap-south-1"
    assert ObjectStoreRetry().max_attempts == 6


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*.parquet", ["a.parquet"], ["d/a.parquet", "a.csv"]),
        ("**/*.parquet", ["a.parquet", "d/a.parquet", "d/e/a.parquet"], ["a.csv"]),
        ("dt=*/[!_]*.parquet", ["dt=1/a.parquet"], ["dt=1/_a.parquet", "dt=1/x/a.parquet"]),
        ("part-?.parquet", ["part-1.parquet"], ["part-10.parquet"]),
        ("a+b(1).parquet", ["a+b(1).parquet"], ["aab(1).parquet"]),
    ],
)
def test_glob_regex(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = glob_regex(pattern)
    assert all(regex.match(m) for m in matches)
    assert not any(regex.match(m) for m in misses)


def test_unknown_schemes_are_usage_errors_and_fsspec_urls_still_work() -> None:
    with pytest.raises(UsageError, match="nope:// is not a storage featurelake can reach"):
        Storage().filesystem("nope://bucket/x")
    fs, path = Storage().fsspec("memory://fl-test-storage/x.bin")
    with fs.open(path, "wb") as f:
        f.write(b"ok")
    assert Storage().read_bytes("memory://fl-test-storage/x.bin") == b"ok"


# --- on a real S3 server -----------------------------------------------------------------------------------


def _put_parquet(s3: S3Bucket, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put(key, buf.getvalue())


@pytest.mark.s3
def test_glob_lists_objects_and_hive_directories(s3: S3Bucket) -> None:
    t = pa.table({"x": [1]})
    for key in (
        "ev/dt=1/a.parquet",
        "ev/dt=2/b.parquet",
        "ev/dt=2/_SUCCESS",
        "ev/.hidden/c.parquet",
        "ev/x.csv",
    ):
        _put_parquet(s3, key, t)
    st = Storage(s3.endpoint, "us-east-1", True)
    b = s3.bucket
    assert st.glob(f"s3://{b}/ev/*/*.parquet") == [f"s3://{b}/ev/.hidden/c.parquet", f"s3://{b}/ev/dt=1/a.parquet",
                                                    f"s3://{b}/ev/dt=2/b.parquet"]  # fmt: skip
    assert st.glob(f"s3a://{b}/ev/dt=*/*.parquet") == [
        f"s3://{b}/ev/dt=1/a.parquet",
        f"s3://{b}/ev/dt=2/b.parquet",
    ]
    assert st.glob(f"s3://{b}/ev/**/*.csv") == [f"s3://{b}/ev/x.csv"]
    # a directory: every data file under it, without _SUCCESS and hidden ones
    assert st.glob(f"s3://{b}/ev/") == [f"s3://{b}/ev/dt=1/a.parquet", f"s3://{b}/ev/dt=2/b.parquet",
                                        f"s3://{b}/ev/x.csv"]  # fmt: skip
    assert st.glob(f"s3://{b}/ev/dt=1/a.parquet") == [f"s3://{b}/ev/dt=1/a.parquet"]
    assert st.glob(f"s3://{b}/nothing/*.parquet") == [] and st.glob(f"s3://{b}/nothing") == []


@pytest.mark.s3
def test_the_window_read_pushes_the_filter_down_and_adds_hive_columns(s3: S3Bucket) -> None:
    from featurelake.engines.local import read_remote_parquet

    st = Storage(s3.endpoint, "us-east-1", True)
    data = transactions(days=4, rows_per_day=50)
    for d in range(4):
        lo, hi = START + timedelta(days=d), START + timedelta(days=d + 1)
        part = data.filter((pa.compute.field("ts") >= lo) & (pa.compute.field("ts") < hi))
        _put_parquet(s3, f"tx/dt=2024-01-0{d + 1}/part.parquet", part)
    files = st.glob(s3.url("tx/"))
    window = Window.parse(day(1), day(3))
    got = read_remote_parquet(files, "ts", window, st, "v")
    assert got.num_rows == 100 and "dt" in got.column_names
    ts = got["ts"].to_pylist()
    assert min(ts) >= window.start and max(ts) < window.end
    assert read_remote_parquet(files, "ts", None, st, "v").num_rows == 0
    with pytest.raises(ConfigError, match="source has no timestamp field 'when'"):
        read_remote_parquet(files, "when", window, st, "v")
    # naive timestamps are UTC, as DuckDB reads them
    naive = data.set_column(1, "ts", data["ts"].cast(pa.timestamp("us")))
    _put_parquet(s3, "naive/part.parquet", naive)
    assert read_remote_parquet(st.glob(s3.url("naive/*.parquet")), "ts", window, st, "v").num_rows == 100
    s3.put("broken/part.parquet", b"not parquet")
    with pytest.raises(ConfigError, match="source objects cannot be read as Parquet"):
        read_remote_parquet(st.glob(s3.url("broken/*.parquet")), "ts", window, st, "v")


@pytest.mark.s3
def test_a_source_matching_no_objects_is_a_config_error(s3: S3Bucket, tmp_path: Path) -> None:
    root = s3_project(tmp_path / "proj", s3)
    (root / "features.py").write_text(
        (root / "features.py").read_text().replace("raw/transactions/", "raw/nothing/*.parquet")
    )
    with featurelake.open(root) as fl, pytest.raises(ConfigError, match="matches no objects"):
        fl.apply()


@pytest.mark.s3
def test_outputs_go_to_s3(s3: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = s3_project(tmp_path / "proj", s3)
    with featurelake.open(root) as fl:
        fl.apply()
        rows = fl.backfill("user_features", day(0), day(2), run_id="out").rows
    r = cli_here(capsys, root, "read", "user_features", "--output", s3.url("exports/now.csv"))
    assert r.returncode == 0, r.stderr
    assert len(s3.get("exports/now.csv").decode().strip().splitlines()) == rows + 1
    r = cli_here(capsys, root, "read", "user_features", "--output", s3.url("exports/now.json"))
    assert r.returncode == 2 and "use a .parquet or .csv file name" in r.stderr
    r = cli_here(
        capsys, root, "training-set", "--entities", s3.url("missing.parquet"),
        "--features", "user_features:amount_avg_1d", "--output", s3.url("t.parquet"),
    )  # fmt: skip
    assert r.returncode == 2 and f"entity file {s3.url('missing.parquet')} does not exist" in r.stderr


def test_unreachable_s3_is_storage_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    st = Storage(f"http://127.0.0.1:{port}", "us-east-1", True)
    with pytest.raises(OSError) as caught:
        st.glob("s3://bucket/prefix/*.parquet")
    assert is_storage_failure(caught.value)
    from featurelake.engines.base import source_files
    from featurelake.features.definitions import Source

    with pytest.raises(StorageUnavailableError, match="list the source s3://bucket/p/ of view 'v'"):
        source_files(Source.parquet("s3://bucket/p/", "ts"), tmp_path, "v", storage=st)


def test_naive_window_bound_is_utc() -> None:
    from featurelake.engines.local import _bound

    t = pa.timestamp("us")
    assert _bound(datetime(2024, 1, 2, tzinfo=UTC), t).as_py() == datetime(2024, 1, 2)


def test_storage_errors_say_what_to_check() -> None:
    from featurelake.lakehouse.storage import storage_error

    denied = storage_error(
        OSError("AWS Error ACCESS_DENIED during PutObject operation: Access Denied"), "write x"
    )
    assert "refused the credentials: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)" in str(
        denied
    )
    down = storage_error(OSError("AWS Error NETWORK_CONNECTION during HeadObject operation"), "load t")
    assert str(down).startswith("object storage failed while trying to load t (AWS Error NETWORK_CONNECTION")
    assert not is_storage_failure(FileNotFoundError("AWS Error NO_SUCH_KEY"))
    assert not is_storage_failure(OSError("disk full"))


def test_an_object_store_failure_nothing_wrapped_is_still_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project(tmp_path)

    def boom(*_a: object, **_k: object) -> None:
        raise OSError(
            "When reading key 'k' in bucket 'b': AWS Error NETWORK_CONNECTION during GetObject operation"
        )

    monkeypatch.setattr(featurelake.Featurelake, "history", boom)
    r = cli_here(capsys, tmp_path, "history", "user_features")
    assert r.returncode == 1
    assert r.stderr.startswith(
        "error: object storage failed while trying to finish the command (When reading key"
    )
    assert "unexpected" not in r.stderr


def test_the_spark_engine_refuses_other_catalog_types(tmp_path: Path) -> None:
    pytest.importorskip("pyspark")
    from featurelake.config import CatalogConfig, SparkConfig
    from featurelake.engines.spark import SparkEngine

    class Cat:
        name = "featurelake"
        properties: ClassVar[dict[str, str]] = {"uri": "http://127.0.0.1:1", "warehouse": "s3://b/wh"}

    settings = CatalogConfig(type="glue")  # sql and rest are shared with Spark (tests/test_spark_s3.py)
    with pytest.raises(
        ConfigError, match=r"the Spark engine .* needs catalog.type sql or rest \(this project has glue\)"
    ):
        SparkEngine(Cat(), tmp_path, SparkConfig(), settings)


@pytest.mark.s3
def test_a_server_that_is_no_rest_catalog_is_a_config_error_without_the_secret(
    s3: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_TEST_TOKEN", "tok-should-not-show")
    make_project(
        tmp_path,
        config=f"catalog:\n  type: rest\n  uri: {s3.endpoint}\n  properties:\n    token: '${{FL_TEST_TOKEN}}'\n",
    )  # moto's S3 endpoint answers /v1/config, but not as an Iceberg REST catalog
    with featurelake.open(tmp_path) as fl, pytest.raises(ConfigError) as caught:
        fl.history("user_features")
    assert f"rest catalog {s3.endpoint} cannot be opened" in str(caught.value)
    assert "tok-should-not-show" not in str(caught.value)
