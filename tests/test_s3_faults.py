"""Faults of object storage and of a REST catalog, against real servers on loopback.

S3 goes down (the proxy in front of moto is killed, moto keeps every object) during a backfill's branch write
and during its publish: main is unchanged, the error says so and what to run, and the re-run gives exactly
the rows of a run that never failed. ``503 SlowDown`` answers are retried with backoff; throttling that never
stops is a clear error. A REST catalog that is down, refuses the token or loses a race answers as the spec
says, and featurelake reports it without leaking the secret.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table.update import AssertRefSnapshotId

import featurelake
from featurelake.lakehouse import compat, wap
from tests.helpers import day
from tests.rest_catalog import RestCatalogProcess
from tests.s3_project import cli_here, s3_project, sorted_rows
from tests.s3_servers import S3Bucket, S3Proxy, moto_s3, s3

_FIXTURES = (moto_s3, s3)
pytestmark = pytest.mark.s3
VIEW = "user_features"


@pytest.fixture
def proxy(s3: S3Bucket, tmp_path: Path) -> Iterator[S3Proxy]:
    """A killable S3 endpoint in front of the session's moto server."""
    p = S3Proxy(s3.endpoint.removeprefix("http://"), log=tmp_path / "proxy.log").start()
    try:
        yield p
    finally:
        p.kill()


def reference_rows(s3: S3Bucket, tmp_path: Path, windows: list[tuple[str, str]]) -> list[dict[str, object]]:
    """What main holds after ``windows`` were backfilled by runs that never failed (same data, own warehouse)."""
    root = s3_project(tmp_path / "reference", s3, extra="")
    (root / "featurelake.yaml").write_text(
        (root / "featurelake.yaml").read_text().replace("/warehouse", "/reference-warehouse")
    )
    with featurelake.open(root) as fl:
        fl.apply()
        for i, (start, end) in enumerate(windows):
            fl.backfill(VIEW, start, end, run_id=f"ref{i}")
        return sorted_rows(fl.read(VIEW))


def kill_once(proxy: S3Proxy, target: Callable[..., Any]) -> Callable[..., Any]:
    """``target`` that first takes S3 down (once, whichever thread gets there first)."""
    lock = threading.Lock()

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with lock:
            proxy.kill()
        return target(*args, **kwargs)

    return wrapped


def test_s3_down_during_the_branch_write_keeps_main_and_the_rerun_is_exact(
    s3: S3Bucket, proxy: S3Proxy, tmp_path: Path
) -> None:
    root = s3_project(tmp_path / "proj", s3, endpoint=proxy.endpoint)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        before = fl.project.load_table(VIEW).metadata.current_snapshot_id
        with pytest.MonkeyPatch.context() as mp, pytest.raises(featurelake.StorageUnavailableError) as caught:
            mp.setattr(compat, "write_data_files", kill_once(proxy, compat.write_data_files))
            fl.backfill(VIEW, day(5), day(10), run_id="second")
    message = str(caught.value)
    assert "object storage failed while trying to write audit_second" in message
    # With S3 down the table's metadata cannot be read to tell whether the branch exists: both ways are named.
    assert "main is unchanged" in message
    assert (
        "repeat the backfill under a new --run-id (or none) and drop branch audit_second with "
        "`featurelake discard user_features --run-id second` if it was created" in message
    )
    assert "storage.s3.endpoint" in message  # what to check

    proxy.start()  # S3 is back, with everything moto kept
    with featurelake.open(root) as fl:
        tbl = fl.project.load_table(VIEW)
        # The branch is created in the write's own commit, which never landed: nothing to discard.
        assert tbl.metadata.current_snapshot_id == before and "audit_second" not in tbl.metadata.refs
        fl.backfill(VIEW, day(5), day(10), run_id="second")
        after = sorted_rows(fl.read(VIEW))
    assert after == reference_rows(s3, tmp_path, [(day(0), day(5)), (day(5), day(10))])


def test_s3_down_during_publish_keeps_main_and_publish_finishes_exactly(
    s3: S3Bucket,
    proxy: S3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = s3_project(tmp_path / "proj", s3, endpoint=proxy.endpoint)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        before = fl.project.load_table(VIEW).metadata.current_snapshot_id
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wap, "fast_forward", kill_once(proxy, wap.fast_forward))
        r = cli_here(
            capsys, root, "backfill", VIEW, "--start", day(5), "--end", day(10), "--run-id", "second"
        )
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: object storage failed while trying to publish audit_second")
    assert "Nothing was lost: branch audit_second is kept and main is unchanged" in line
    assert "featurelake publish user_features --run-id second" in line

    proxy.start()
    with featurelake.open(root) as fl:
        tbl = fl.project.load_table(VIEW)
        assert tbl.metadata.current_snapshot_id == before
        assert wap.ref_snapshot_id(tbl, "audit_second") is not None
        published = fl.publish(VIEW, "second")
        assert published.previous_snapshot_id == before
        after = sorted_rows(fl.read(VIEW))
    assert after == reference_rows(s3, tmp_path, [(day(0), day(5)), (day(5), day(10))])


def test_slowdown_answers_are_retried_with_backoff(s3: S3Bucket, tmp_path: Path) -> None:
    throttled = S3Proxy(s3.endpoint.removeprefix("http://"), slowdown=4, log=tmp_path / "slow.log").start()
    try:
        root = s3_project(tmp_path / "proj", s3, endpoint=throttled.endpoint)
        with featurelake.open(root) as fl:
            fl.apply()
            result = fl.backfill(VIEW, day(0), day(3), run_id="throttled")
            assert fl.read(VIEW).num_rows == result.rows > 0
    finally:
        throttled.kill()
    assert throttled.slowdowns() == 4  # each answered 503 SlowDown, and each request was tried again


def test_slowdown_that_never_stops_is_a_clear_error(
    s3: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = s3_project(tmp_path / "proj", s3)
    with featurelake.open(root) as fl:
        fl.apply()
    throttled = S3Proxy(
        s3.endpoint.removeprefix("http://"), slowdown=10_000, log=tmp_path / "slow.log"
    ).start()
    try:
        monkeypatch.setenv("FEATURELAKE_STORAGE__S3__ENDPOINT", throttled.endpoint)
        with featurelake.open(root) as fl, pytest.raises(featurelake.StorageUnavailableError) as caught:
            fl.backfill(VIEW, day(0), day(3), run_id="never")
    finally:
        throttled.kill()
    assert "object storage failed while trying to" in str(caught.value)
    assert "SLOW_DOWN" in str(caught.value) or "HTTP status 503" in str(caught.value)
    assert "the store kept throttling (503 SlowDown) through 6 tries with backoff" in str(caught.value)
    assert throttled.slowdowns() >= 6  # the request was tried S3_ATTEMPTS times before giving up


# --- REST catalog faults -----------------------------------------------------------------------------------


@pytest.fixture
def rest(s3: S3Bucket, tmp_path: Path) -> Iterator[RestCatalogProcess]:
    server = RestCatalogProcess(
        f"sqlite:///{tmp_path}/rest.db",
        s3.url("warehouse"),
        s3_endpoint=s3.endpoint,
        token="good-token-4711",
        credential="featurelake:client-secret-0815",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def rest_catalog(url: str, prop: str, env: str) -> str:
    return (
        f"  type: rest\n  uri: {url}\n  properties:\n    {prop}: '${{{env}}}'\n"
        f"    oauth2-server-uri: {url}/v1/oauth/tokens\n"
    )


def test_rest_catalog_with_client_credentials(
    s3: S3Bucket, rest: RestCatalogProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_TEST_CREDENTIAL", "featurelake:client-secret-0815")
    root = s3_project(
        tmp_path / "proj", s3, catalog=rest_catalog(rest.url, "credential", "FL_TEST_CREDENTIAL")
    )
    with featurelake.open(root) as fl:
        assert [r.action for r in fl.apply()] == ["created"]
        assert fl.backfill(VIEW, day(0), day(2), run_id="oauth").rows > 0
        assert "client-secret-0815" not in repr(fl.project.config.settings.catalog)


@pytest.mark.parametrize(
    ("prop", "value"), [("token", "wrong-token-1234"), ("credential", "featurelake:wrong-secret-9999")]
)
def test_rest_catalog_refusing_the_secret_is_a_config_error_without_it(
    s3: S3Bucket,
    rest: RestCatalogProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prop: str,
    value: str,
) -> None:
    monkeypatch.setenv("FL_TEST_SECRET", value)
    root = s3_project(tmp_path / "proj", s3, catalog=rest_catalog(rest.url, prop, "FL_TEST_SECRET"))
    with featurelake.open(root) as fl, pytest.raises(featurelake.ConfigError) as caught:
        fl.apply()
    message = str(caught.value)
    assert f"rest catalog {rest.url} refused the credentials" in message
    assert "catalog.properties" in message
    secret = value.split(":")[-1]
    assert secret not in message
    r = cli_here(capsys, root, "apply")
    assert r.returncode == 2 and "refused the credentials" in r.stderr
    assert secret not in r.stderr + r.stdout


def test_rest_catalog_down_is_catalog_unavailable(
    s3: S3Bucket, rest: RestCatalogProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_TEST_TOKEN", "good-token-4711")
    root = s3_project(tmp_path / "proj", s3, catalog=rest_catalog(rest.url, "token", "FL_TEST_TOKEN"))
    with featurelake.open(root) as fl:
        fl.apply()
    rest.stop()
    with featurelake.open(root) as fl, pytest.raises(featurelake.CatalogUnavailableError) as caught:
        fl.history(VIEW)
    message = str(caught.value)
    assert f"catalog {rest.url} is unavailable while trying to open the catalog" in message
    assert "check that the catalog server is running" in message
    assert "good-token-4711" not in message


def test_rest_commit_requirements_are_checked_by_the_server(
    s3: S3Bucket, rest: RestCatalogProcess, caplog: pytest.LogCaptureFixture
) -> None:
    props = {
        "uri": rest.url,
        "token": "good-token-4711",
        "s3.endpoint": s3.endpoint,
        "s3.region": "us-east-1",
        "s3.force-virtual-addressing": "false",
    }
    cat = load_catalog("race", type="rest", **props)
    cat.create_namespace("race")
    schema = pa.schema([pa.field("n", pa.int64())])
    cat.create_table("race.t", schema)
    a, b = cat.load_table("race.t"), cat.load_table("race.t")
    a.append(pa.table({"n": [1]}, schema=schema))
    # b still believes main has no snapshot: the server checks that and answers 409
    with pytest.raises(CommitFailedException, match="main"):
        cat.commit_table(b, (AssertRefSnapshotId(ref="main", snapshot_id=None),), ())  # type: ignore[call-arg]
    # PyIceberg's append re-bases after the 409 by itself: both rows land, none twice
    b.append(pa.table({"n": [2]}, schema=schema))
    assert "Commit failed due to a concurrent update" in caplog.text
    assert sorted(cat.load_table("race.t").scan().to_arrow()["n"].to_pylist()) == [1, 2]
