"""Hardening findings 4, 5, 6, 8 and 11 (docs/reliability.md): secrets in reprs, unexpected errors where a
clear one belongs, ``features.py`` mishaps, data loss by careless paths, unquoted paths in hints.

Each test feeds the bad input, checks the message (one ``error:`` line, exit 2 for usage/config) and that
nothing was lost (files and tables unchanged). The CLI runs in this process (``featurelake.cli.main``).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.config import ProjectConfig, reveal
from featurelake.errors import ConfigError, UsageError
from featurelake.features.loader import load_definitions
from featurelake.lakehouse.storage import Storage, io_failure, same_location
from tests.helpers import DEFAULT_FEATURES, day, make_project

pytestmark = [pytest.mark.reliability]

VIEW = "user_features"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``featurelake ARGS`` in this process: exit code, stdout, stderr."""
    from featurelake.cli.main import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def one_error(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The single ``error:`` line of a failed command (never ``error: unexpected <Type>``)."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "unexpected" not in lines[0] and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256 (what "nothing changed" compares), but the metrics state,
    where a failed job records that it failed (docs/monitoring.md)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "metrics.db"
    }


def main_snapshot(root: Path) -> int | None:
    with featurelake.open(root) as fl:
        snap = fl.project.load_table(VIEW).current_snapshot()
        return snap.snapshot_id if snap else None


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with days 0..2 published by run ``base`` (shared: tests must leave it as they found it)."""
    root = make_project(tmp_path_factory.mktemp("hardening") / "p")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(2), run_id="base")
    return root


# --- finding 4: secrets in repr / str / dumps --------------------------------------------------------------

SECRETS = {
    "FEATURELAKE_CATALOG__URI": ("postgresql+psycopg://fl:catpw4711@db:5432/f", "catpw4711"),
    "FEATURELAKE_REGISTRY__URI": ("postgresql+psycopg://fl:regpw4712@db:5432/r", "regpw4712"),
    "FEATURELAKE_ONLINE_STORE__URL": ("redis://:redispw4713@cache:6379/0", "redispw4713"),
    "FEATURELAKE_SERVER__TOKEN": ("tok4714-bearer", "tok4714-bearer"),
    "FEATURELAKE_MONITORING__PUSHGATEWAY": ("http://jobs:pushpw4715@gw:9091", "pushpw4715"),
    "FEATURELAKE_MONITORING__PROMETHEUS_URL": (
        "https://u:prompw4716@prom:9090/?api_token=qtok4717",
        "prompw4716",
    ),
    "FEATURELAKE_CATALOG__PROPERTIES": (
        json.dumps({"credential": "cid:csec4718", "scope": "all"}),
        "csec4718",
    ),
    "FEATURELAKE_ENGINE__SPARK__CONF": (
        json.dumps({"spark.hadoop.fs.s3a.secret.key": "s3sec4719", "spark.executor.memory": "2g"}),
        "s3sec4719",
    ),
    "FEATURELAKE_MONITORING__CHANNELS": (
        json.dumps([{"type": "slack", "webhook_url": "https://hooks.example/T0/hook4720"}]),
        "hook4720",
    ),
}


def test_no_config_section_shows_a_secret_in_repr_str_or_dumps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "featurelake.yaml").write_text("project: s\n")
    for var, (value, _) in SECRETS.items():
        monkeypatch.setenv(var, value)
    cfg = ProjectConfig.load(tmp_path)
    s = cfg.settings
    objects = [s, *(getattr(s, name) for name in type(s).model_fields)]
    shown = []
    for obj in objects:
        shown += [repr(obj), str(obj)]
        if hasattr(obj, "model_dump"):
            shown += [obj.model_dump_json(), json.dumps(obj.model_dump(mode="json")), repr(obj.model_dump())]
    text = "\n".join(shown)
    for var, (_, secret) in SECRETS.items():
        assert secret not in text, f"{var}'s secret shows in a repr, str or dump"
    # What is shown still says where things are; code that needs the real value asks for it.
    assert "postgresql+psycopg://fl:***@db:5432/f" in repr(s.catalog)
    assert "qtok4717" not in str(s.monitoring.prometheus_url) and "prom:9090" in str(
        s.monitoring.prometheus_url
    )
    assert cfg.catalog_uri == SECRETS["FEATURELAKE_CATALOG__URI"][0]
    assert cfg.catalog_properties["credential"] == "cid:csec4718"
    assert reveal(s.registry.uri) == SECRETS["FEATURELAKE_REGISTRY__URI"][0]
    assert reveal(s.online_store.url) == SECRETS["FEATURELAKE_ONLINE_STORE__URL"][0]
    assert s.server.token is not None and s.server.token.get_secret_value() == "tok4714-bearer"
    assert s.engine.spark.conf["spark.hadoop.fs.s3a.secret.key"] == "s3sec4719"  # Spark gets it as is


def test_a_webhook_url_written_in_a_channel_is_refused_from_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_project(
        tmp_path / "p",
        config="monitoring:\n  channels:\n    - {type: slack, webhook_url: 'https://hooks.example/T0/hook4721'}\n",
    )
    before = tree(root)
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert "monitoring.channels[0].webhook_url holds a secret" in line and "webhook_url_env" in line
    assert "hook4721" not in line
    assert tree(root) == before


# --- finding 5: unexpected errors where a clear one belongs -------------------------------------------------


def test_a_binary_featurelake_yaml_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_project(tmp_path / "p")
    (root / "featurelake.yaml").write_bytes(bytes(range(256)) * 4)
    before = tree(root)
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert f"{root.resolve() / 'featurelake.yaml'} is not UTF-8 text (byte 0x80 at offset 128)" in line
    assert tree(root) == before


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("project: a\nproject: b\n", "project", (1, 2)),
        ("catalog:\n  retries: 1\n  warehouse: w\n  retries: 2\n", "retries", (2, 4)),
        ("monitoring:\n  channels:\n    - {type: console, type: file}\n", "type", (3, 3)),
    ],
)
def test_a_key_written_twice_is_refused_naming_it_and_its_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, lines: tuple[int, int]
) -> None:
    root = make_project(tmp_path / "p", config=text)
    before = tree(root)
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert f"key {key!r} is written twice in the same mapping (line {lines[0]} and line {lines[1]})" in line
    assert tree(root) == before  # nothing created: no .featurelake/


def test_yaml_merge_keys_may_still_override(tmp_path: Path) -> None:
    (tmp_path / "featurelake.yaml").write_text(
        "engine:\n  spark:\n    conf: &base {a: '1', b: '2'}\nmaintenance:\n  keep_ancestry_tag_prefixes: [x]\n"
        "backfill:\n  keep_published_branches: true\n"
        "registry:\n  <<: {allow_pickle: true, lock_timeout_seconds: 3.0}\n  lock_timeout_seconds: 4.0\n"
    )
    assert ProjectConfig.load(tmp_path).settings.registry.lock_timeout_seconds == 4.0


@pytest.mark.parametrize("namespace", ["../../etc", "a/b", "a.b", "x; drop", "", "9lives", "n" * 129])
def test_a_namespace_that_is_not_an_identifier_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], namespace: str
) -> None:
    root = make_project(tmp_path / "p", config=f"namespace: {json.dumps(namespace)}\n")
    before = tree(root)
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert "'namespace':" in line and "is not a namespace: use letters, digits and '_'" in line
    assert tree(root) == before


def test_a_warehouse_that_cannot_be_written_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    for warehouse, reason in (("/proc", "(ENOENT)"), (str(blocker / "wh"), "(ENOTDIR)")):
        root = make_project(
            tmp_path / f"p{len(reason)}{warehouse.count('/')}", config=f"catalog:\n  warehouse: {warehouse}\n"
        )
        line = one_error(cli(capsys, "-C", str(root), "apply"))
        assert f"in the warehouse at {warehouse}:" in line and reason in line
        assert "set catalog.warehouse (or FEATURELAKE_CATALOG__WAREHOUSE) to a directory" in line
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("name", ["/proc/x.parquet", "/proc/x.csv", "FILE/x.parquet", "DIR"])
def test_read_output_that_cannot_be_written_is_one_clear_line(
    published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    (tmp_path / "file").write_text("keep me\n")
    (tmp_path / "dir.csv").mkdir()
    target = name.replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path / "dir.csv"))
    before, snapshot = tree(tmp_path), main_snapshot(published)
    line = one_error(cli(capsys, "-C", str(published), "read", VIEW, "--output", target))
    assert line.startswith(f"error: cannot write the --output file at {target}: ")
    assert "choose a path in a directory you can write" in line
    assert tree(tmp_path) == before and main_snapshot(published) == snapshot


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (
            ("audit", VIEW, "--run-id", "base", "--html", "/proc/report.html"),
            "write the HTML report (--html)",
        ),
        (("monitor", "--export-prometheus-rules", "/proc/rules.yml"), "write the Prometheus rules file"),
        (
            (
                "training-set",
                "--entities",
                "E",
                "--features",
                f"{VIEW}:amount_avg_1d",
                "--output",
                "/proc/t.parquet",
            ),
            "write the training set",
        ),
    ],
)
def test_other_user_file_writers_fail_in_one_clear_line(
    published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], what: str
) -> None:
    entities = tmp_path / "e.parquet"
    ts = pa.array([datetime(2024, 1, 2, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "event_timestamp": ts}), entities)
    args = tuple(str(entities) if a == "E" else a for a in args)
    reports = published / ".featurelake" / "audits"
    before, snapshot = tree(reports), main_snapshot(published)
    line = one_error(cli(capsys, "-C", str(published), *args))
    assert line.startswith(f"error: cannot {what} at {args[-1]}: ") and "(ENOENT)" in line
    assert tree(reports) == before and main_snapshot(published) == snapshot


def test_init_where_nothing_can_be_created_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(cli(capsys, "init", "/proc/featurelake-x"))
    assert "cannot create the project directory at /proc/featurelake-x" in line and "(ENOENT)" in line


def test_io_failure_tells_a_full_disk_from_a_bad_path() -> None:
    import errno

    full = io_failure(
        OSError(errno.ENOSPC, "No space left on device"), "/data/t.parquet", "write the training set"
    )
    assert type(full).__name__ == "FeaturelakeError" and full.exit_code == 1
    assert str(full) == (
        "cannot write the training set at /data/t.parquet: no space left on the device (ENOSPC); free space (or "
        "fix the disk) and run the command again"
    )
    denied = io_failure(PermissionError(errno.EACCES, "Permission denied"), "/x", "write the audit report")
    assert isinstance(denied, UsageError) and "permission denied (EACCES)" in str(denied)


def test_an_existing_output_is_replaced_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.csv as pacsv

    out = tmp_path / "out.csv"
    out.write_text("old,content\n1,2\n")

    def half_then_fail(table: pa.Table, where: str) -> None:
        Path(where).write_text("half of the new")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pacsv, "write_csv", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        Storage().write_csv(pa.table({"a": [1]}), out)
    assert out.read_text() == "old,content\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary left behind


# --- finding 6: features.py mishaps ----------------------------------------------------------------------


def _defs(tmp_path: Path, source: str, config: str = "") -> Path:
    return make_project(tmp_path / "p", features=source, config=config or "project: t\n")


def test_a_syntax_error_names_the_file_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _defs(tmp_path, "from featurelake import Entity\nx = 1\ny = = 2\n")
    before = tree(root)
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert (
        line
        == f"error: {root.resolve() / 'features.py'}:3: SyntaxError: invalid syntax in `y = = 2`; fix the file and run the command again"
    )
    assert tree(root) == before


def test_a_syntax_error_in_an_imported_project_module_names_that_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _defs(tmp_path, "import helper\n")
    (root / "helper.py").write_text("def f(:\n    pass\n")
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert f"{root.resolve() / 'helper.py'}:1: SyntaxError:" in line


def test_a_runtime_error_names_the_line_of_features_py_and_of_the_module_that_raised(tmp_path: Path) -> None:
    root = _defs(tmp_path, "import helper\nx = 1\nhelper.f()\n")
    (root / "helper.py").write_text("def f():\n    return 1 / 0\n")
    with pytest.raises(ConfigError) as info:
        load_definitions(root.resolve() / "features.py")
    assert str(info.value) == (
        f"{root.resolve() / 'features.py'}:3 (raised at {root.resolve() / 'helper.py'}:2): ZeroDivisionError: "
        "division by zero (raised while loading the feature definitions)"
    )


@pytest.mark.parametrize("call", ["sys.exit(3)", "raise SystemExit('bye')", "sys.exit()"])
def test_exiting_from_features_py_is_a_config_error_not_a_silent_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], call: str
) -> None:
    root = _defs(tmp_path, f"import sys\nfrom featurelake import Entity\n{call}\n")
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert "features.py:3: the definitions called sys.exit(" in line and "remove the call" in line


def test_a_file_without_views_warns_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _defs(tmp_path, "from featurelake import Entity\nuser = Entity('user', join_key='user_id')\n")
    r = cli(capsys, "-C", str(root), "apply")
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"warning: {root.resolve() / 'features.py'} defines no feature views (no module-level FeatureView "
        "objects); commands have nothing to work on: define views (see `featurelake init`)"
    ]


def test_a_features_py_that_hangs_is_stopped_by_the_load_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bare `except:` swallows the first interrupt; the timer fires again a second later.
    hang = "import time\ntry:\n    time.sleep(600)\nexcept:\n    time.sleep(600)\n"
    root = _defs(tmp_path, hang, config="features:\n  load_timeout: 1s\n")
    previous = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert time.monotonic() - started < 30
    assert line.startswith(
        f"error: {root.resolve() / 'features.py'}:5: loading the feature definitions took longer than 1s"
    )
    assert "features.load_timeout (FEATURELAKE_FEATURES__LOAD_TIMEOUT)" in line
    # The timer and the handler are put back as they were.
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) == previous


def test_the_load_timeout_outside_the_main_thread_abandons_the_load(tmp_path: Path) -> None:
    root = _defs(tmp_path, "import time\ntime.sleep(3)\n")
    failures: list[BaseException] = []

    def load() -> None:
        try:
            load_definitions(root.resolve() / "features.py", timeout=0.5)
        except ConfigError as exc:
            failures.append(exc)

    worker = threading.Thread(target=load)
    started = time.monotonic()
    worker.start()
    worker.join(30)
    assert time.monotonic() - started < 3 and len(failures) == 1
    assert "took longer than 0.5s (outside the main thread it cannot be interrupted" in str(failures[0])


def test_a_bad_load_timeout_names_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _defs(tmp_path, DEFAULT_FEATURES, config="features:\n  load_timeout: soon\n")
    line = one_error(cli(capsys, "-C", str(root), "apply"))
    assert "'features.load_timeout': 'soon' is not a duration" in line


# --- finding 8: data loss by careless paths -----------------------------------------------------------------


def test_training_set_output_may_not_be_its_entities_file(
    published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    entities = tmp_path / "ents.parquet"
    ts = datetime(2024, 1, 2, tzinfo=UTC)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2], pa.int64()),
                "event_timestamp": pa.array([ts, ts], pa.timestamp("us", tz="UTC")),
            }
        ),
        entities,
    )
    (tmp_path / "link.parquet").symlink_to(entities)
    (tmp_path / "hard.parquet").hardlink_to(entities)
    before = tree(tmp_path)
    spellings = [
        ("ents.parquet", "ents.parquet"),
        ("ents.parquet", "./sub/../ents.parquet"),
        ("ents.parquet", str(entities)),
        ("ents.parquet", "link.parquet"),
        ("link.parquet", "ents.parquet"),
        ("hard.parquet", "ents.parquet"),
    ]
    for given, output in spellings:
        r = cli(
            capsys,
            "-C",
            str(published),
            "training-set",
            "--entities",
            given,
            "--features",
            f"{VIEW}:amount_avg_1d",
            "--output",
            output,
        )
        line = one_error(r)
        assert (
            f"--output {output} is the same file as --entities {given}" in line
            and "give another --output" in line
        )
    assert tree(tmp_path) == before
    # A different file is fine (and a second run replaces it in one rename).
    for _ in range(2):
        ok = cli(
            capsys,
            "-C",
            str(published),
            "training-set",
            "--entities",
            "ents.parquet",
            "--features",
            f"{VIEW}:amount_avg_1d",
            "--output",
            "train.parquet",
        )
        assert ok.returncode == 0, ok.stderr
    assert pq.read_table(tmp_path / "train.parquet").num_rows == 2
    assert same_location("s3a://b/k.parquet", "s3://b/k.parquet") and not same_location(
        "a.parquet", "b.parquet"
    )


def test_a_reused_run_id_never_overwrites_the_earlier_runs_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_project(tmp_path / "p")
    audits = root / ".featurelake" / "audits" / VIEW
    with featurelake.open(root) as fl:
        fl.apply()
        first = fl.backfill(VIEW, day(0), day(2), run_id="r1")
        earlier = {p.name: p.read_bytes() for p in audits.glob("r1.*")}
        assert set(earlier) == {"r1.json", "r1.html"}
        fl.backfill(VIEW, day(2), day(4), run_id="r2")
        # Expiry forgets r1's snapshot, so the run id may be used again (the _audits log keeps both runs).
        fl.maintain(VIEW, expire=True, retain_last=1, now=datetime.now(UTC) + timedelta(days=30))
        again = fl.backfill(VIEW, day(4), day(6), run_id="r1")
        logged = fl.audits(VIEW, run_id="r1")
    kept = audits / f"r1.{first.snapshot_id}.json"
    assert any(str(kept.relative_to(root)) in note for note in again.notes), again.notes
    assert (
        kept.read_bytes() == earlier["r1.json"]
        and kept.with_suffix(".html").read_bytes() == earlier["r1.html"]
    )
    latest = json.loads((audits / "r1.json").read_text())
    assert latest["window_start"].startswith(day(4)) and latest["snapshot_id"] == again.snapshot_id
    assert sorted(cast(int, a.snapshot_id) for a in logged) == sorted([first.snapshot_id, again.snapshot_id])
    # `featurelake audit VIEW --run-id` still shows the run now holding the id.
    r = cli(capsys, "-C", str(root), "audit", VIEW, "--run-id", "r1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["window_start"].startswith(day(4))
    assert kept.read_bytes() == earlier["r1.json"]


# --- finding 11: paths in hints are quoted ------------------------------------------------------------------


def test_init_quotes_the_directory_in_its_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "bad name; x"
    r = cli(capsys, "init", str(directory))
    assert r.returncode == 0, r.stderr
    hint = r.stdout.strip().splitlines()[-1]
    command = hint.split("`")[1]
    assert shlex.split(command) == ["featurelake", "-C", str(directory.resolve()), "apply"]
    assert ProjectConfig.load(directory).settings.project == "bad name; x"
    odd = tmp_path / "a: b" / "#c"
    assert cli(capsys, "init", str(odd)).returncode == 0
    assert ProjectConfig.load(odd).settings.project == "#c"  # written as a quoted YAML string


def test_the_missing_project_hint_quotes_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "no project $(here)"
    directory.mkdir()
    line = one_error(cli(capsys, "-C", str(directory), "apply"))
    command = line.split("`")[1]
    assert shlex.split(command) == ["featurelake", "init", str(directory.resolve())]
