"""Hostile input: names used as identifiers, booby-trapped pickles, and secrets that must never be echoed.

Already covered elsewhere and not repeated here: ``--where`` injection (tests/test_predict_errors.py
``test_where_injection_is_refused``), artifact keys escaping the store (tests/test_registry.py
``test_artifact_paths_that_escape_the_root_are_refused``), invalid run ids (tests/test_bad_input.py).
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.errors import ArtifactIntegrityError, ConfigError, FeaturelakeError, UsageError
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.state import Update, label_key
from featurelake.prediction.flavors import load_model
from featurelake.registry.store import ModelRegistry
from tests.helpers import day
from tests.reliability.common import REPO, VIEW, env, published_project, state

pytestmark = [pytest.mark.reliability]

HOSTILE_NAMES = [
    "user_features; DROP TABLE features.user_features",
    "user_features' OR '1'='1",
    "x\"; ATTACH '/tmp/evil.db' AS e; --",
    "../../etc/passwd",
    "/etc/passwd",
    "a" * 100_000,
    "user_features\x00",
]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return published_project(tmp_path_factory.mktemp("hostile") / "p")


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_view_names_are_refused_and_change_nothing(published: Path, name: str) -> None:
    before = state(published)
    with featurelake.open(published) as h:
        for call in (
            lambda: h.read(name),
            lambda: h.backfill(name, day(0), day(2)),
            lambda: h.history(name),
        ):
            with pytest.raises(FeaturelakeError):
                call()
    assert state(published) == before


@pytest.mark.parametrize(
    "feature",
    [
        "user_features:x; drop table features.user_features",
        "user_features:txn_count_1d FROM features.user_features; --",
        "user_features:*",
        "user_features:" + "a" * 100_000,
        "../../x:txn_count_1d",
    ],
    ids=range(5),
)
def test_hostile_feature_names_in_training_set_are_refused(published: Path, feature: str) -> None:
    import pyarrow as pa

    from tests.helpers import START

    entities = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": pa.array([START, START], pa.timestamp("us", tz="UTC")),
        }
    )
    before = state(published)
    with featurelake.open(published) as h, pytest.raises(FeaturelakeError) as ei:
        h.training_set(entities, [feature])
    assert "user_features" in str(ei.value) or "x" in str(ei.value)
    assert state(published) == before


def test_oversized_names_are_not_echoed_in_full(published: Path) -> None:
    with featurelake.open(published) as h:
        with pytest.raises(FeaturelakeError) as ei:
            h.read("a" * 100_000)
        assert len(str(ei.value)) < 2_000


@pytest.mark.parametrize(
    "name", ["../../escape", "/abs/path", "a/b", "x;drop", "a" * 10_000, ""], ids=range(6)
)
def test_hostile_model_names_are_refused(tmp_path: Path, name: str) -> None:
    art = tmp_path / "m.pkl"
    art.write_bytes(pickle.dumps({"ok": 1}))
    with ModelRegistry(f"sqlite:///{tmp_path / 'reg.db'}", str(tmp_path / "artifacts")) as reg:
        with pytest.raises(UsageError, match="is not valid"):
            reg.register(name, art, "pickle")
        blobs = tmp_path / "artifacts" / "sha256"
        assert not blobs.exists() or not any(blobs.iterdir()), "a refused registration stored its artifact"
    assert not any(p.name == "escape" for p in tmp_path.parent.rglob("escape"))


class _Trap:
    """Unpickling this touches ``marker``: proof that the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_booby_trapped_pickle_never_runs_when_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    honest = tmp_path / "honest.pkl"
    honest.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    trap = pickle.dumps(_Trap(marker))
    with ModelRegistry(f"sqlite:///{tmp_path / 'reg.db'}", str(tmp_path / "artifacts")) as reg:
        # 1. Swapped bytes: the digest check refuses them before anything is unpickled.
        mv = reg.register("swapped", honest, "pickle")
        blob = tmp_path / "artifacts" / mv.artifact_key
        blob.chmod(0o644)
        blob.write_bytes(trap)
        with pytest.raises(ArtifactIntegrityError, match="does not match its recorded digest"):
            load_model(reg, mv, allow_pickle=True)
        assert not marker.exists()
        # 2. A registered (digest-correct) trap with pickles disallowed: refused, never unpickled.
        trap_file = tmp_path / "trap.pkl"
        trap_file.write_bytes(trap)
        mv2 = reg.register("trapped", trap_file, "pickle")
        with pytest.raises(ConfigError, match="allow_pickle is false"):
            load_model(reg, mv2, allow_pickle=False)
        assert not marker.exists()


# --- secrets -------------------------------------------------------------------------------------------
PASSWORD = "Pw-s3cr3t-9f1c"
TOKEN = "tok-s3cr3t-77aa"
HOOK = "T0/B0/hook-s3cr3t-5e2d"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(root: Path, *args: str, **extra: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env(**extra),
        cwd=REPO,
    )
    return r.stdout + r.stderr


def _grep_tree(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_secrets_never_reach_outputs_logs_or_alerts(tmp_path: Path) -> None:
    port = _closed_port()
    config = (
        "project: test\nnamespace: features\nmonitoring:\n  channels: [{type: file, path: alerts.jsonl}, "
        "{type: slack, webhook_url_env: FEATURELAKE_TEST_HOOK}]\n"
    )
    root = published_project(tmp_path / "p", config=config)
    outputs: list[str] = []
    # An unreachable catalog whose URI carries a password, with and without --debug tracebacks.
    bad_uri = f"postgresql+psycopg://fl:{PASSWORD}@127.0.0.1:{port}/fl"
    for args in (("backfill", VIEW, "--start", day(0), "--end", day(1)), ("history", VIEW), ("read", VIEW)):
        for debug in ((), ("--debug",)):
            outputs.append(
                _run(root, *args, *debug, FEATURELAKE_CATALOG__URI=bad_uri, FEATURELAKE_CATALOG__RETRIES="0")
            )
    # The server token and the registry URI password set while ordinary commands run.
    outputs.append(_run(root, "history", VIEW, "--json", FEATURELAKE_SERVER__TOKEN=TOKEN))
    outputs.append(
        _run(
            root,
            "models",
            "list",
            FEATURELAKE_REGISTRY__URI=f"postgresql+psycopg://fl:{PASSWORD}@127.0.0.1:{port}/reg",
        )
    )
    # A firing alert whose Slack webhook (URL = the secret) cannot be reached: the failure is reported.
    with featurelake.open(root) as h:
        state_of(h.project).record(
            [
                Update(
                    "set",
                    "featurelake_online_store_keys",
                    "featurelake_online_store_keys",
                    label_key({"view": VIEW}),
                    0,
                    "gauge",
                )
            ],
            "synthetic",
        )
    hook_url = f"http://127.0.0.1:{port}/services/{HOOK}"
    for debug in ((), ("--debug",)):
        outputs.append(_run(root, "monitor", *debug, FEATURELAKE_TEST_HOOK=hook_url))
    joined = "\n".join(outputs)
    assert "127.0.0.1" in joined, "the commands did not even reach the failing services"
    for secret in (PASSWORD, TOKEN, HOOK):
        assert secret not in joined, f"secret {secret} printed:\n{joined}"
        assert _grep_tree(root, secret) == [], f"secret {secret} written to files"
    assert (root / "alerts.jsonl").exists(), "no alert fired, so the alert payload was not checked"
