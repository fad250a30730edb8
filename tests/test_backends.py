"""One backend per job, chosen once from ``engine.type``: batch prediction's scoring, the online sync and
maintenance each have a small interface with a local and a Spark implementation, picked by the domain's
``backend_for``. These tests choose backends only (no Spark session starts); the Spark tests run them."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import featurelake
from featurelake.engines import load_backend
from featurelake.errors import ConfigError
from featurelake.maintenance import backend as maintenance_backend
from featurelake.prediction import backend as prediction_backend
from featurelake.serving import backend as serving_backend
from tests.helpers import make_project

JOBS = Path(featurelake.__file__).parent / "jobs"


def _sync_for(project: Any) -> Any:
    return serving_backend.backend_for(project, SimpleNamespace(type_name="redis"))  # type: ignore[arg-type]


# domain -> (backend_for, map, interface, local class, Spark class)
DOMAINS: dict[str, tuple[Callable[[Any], Any], dict[str, Any], type[Any], str, str]] = {
    "prediction": (
        prediction_backend.backend_for,
        prediction_backend.AVAILABLE_SCORING,
        prediction_backend.ScoringBackend,
        "LocalScoring",
        "SparkScoring",
    ),
    "sync": (
        _sync_for,
        serving_backend.AVAILABLE_SYNCS,
        serving_backend.SyncBackend,
        "LocalSync",
        "SparkSync",
    ),
    "maintenance": (
        maintenance_backend.backend_for,
        maintenance_backend.AVAILABLE_MAINTENANCE,
        maintenance_backend.MaintenanceBackend,
        "LocalMaintenance",
        "SparkMaintenance",
    ),
}


def _open(tmp_path: Path, engine: str) -> Iterator[featurelake.Featurelake]:
    root = tmp_path / engine
    root.mkdir()
    (root / "featurelake.yaml").write_text(f"engine:\n  type: {engine}\n")
    with featurelake.open(root) as fl:
        yield fl


@pytest.fixture
def local(tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    yield from _open(tmp_path, "local")


@pytest.fixture
def spark_project(tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    yield from _open(tmp_path, "spark")


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_every_engine_type_has_a_concrete_backend(domain: str) -> None:
    _, available, interface, _, _ = DOMAINS[domain]
    assert set(available) == {"local", "spark"}
    for engine_type in available:
        cls = load_backend(available, engine_type, domain)
        assert issubclass(cls, interface) and not inspect.isabstract(cls), cls


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_backend_for_picks_by_engine_type(
    domain: str, local: featurelake.Featurelake, spark_project: featurelake.Featurelake
) -> None:
    backend_for, _, interface, local_cls, spark_cls = DOMAINS[domain]
    chosen = backend_for(local.project)
    assert isinstance(chosen, interface) and type(chosen).__name__ == local_cls
    chosen = backend_for(spark_project.project)
    assert isinstance(chosen, interface) and type(chosen).__name__ == spark_cls
    assert chosen.project is spark_project.project
    assert "engine" not in vars(spark_project.project)  # choosing starts no Spark session


def test_a_sqlite_store_is_always_synced_locally(spark_project: featurelake.Featurelake) -> None:
    sqlite = SimpleNamespace(type_name="sqlite")
    chosen = serving_backend.backend_for(spark_project.project, sqlite)  # type: ignore[arg-type]
    assert type(chosen) is serving_backend.LocalSync


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_missing_pyspark_gives_an_install_hint(
    domain: str, spark_project: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without_pyspark(name: str, *args: Any) -> Any:
        return None if name == "pyspark" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_pyspark)
    backend_for = DOMAINS[domain][0]
    with pytest.raises(
        ConfigError, match=r"needs pyspark, which is not installed: pip install 'featurelake\[spark\]'"
    ):
        backend_for(spark_project.project)


def test_a_missing_module_and_an_unknown_engine_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"no 'flink' backend: use engine.type local or spark"):
        load_backend(maintenance_backend.AVAILABLE_MAINTENANCE, "flink", "maintenance")
    broken = {"local": ("featurelake.no_such_module", "X", "gpu")}
    with pytest.raises(
        ConfigError, match=r"not available \(featurelake.no_such_module is not installed\): pip"
    ):
        load_backend(broken, "local", "scoring")


def test_a_spark_backend_refuses_a_local_engine(local: featurelake.Featurelake) -> None:
    from featurelake.maintenance.spark import SparkMaintenance

    with pytest.raises(
        ConfigError, match=r"maintenance on Spark needs engine.type: spark \(this project has local\)"
    ):
        _ = SparkMaintenance(local.project).engine


@pytest.mark.parametrize("job", ["batch_predict.py", "online_sync.py", "maintain.py"])
def test_jobs_stay_composition_only(job: str) -> None:
    """No job picks an engine by name or checks which engine it got: its domain's backend_for does."""
    tree = ast.parse((JOBS / job).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            pytest.fail(f"jobs/{job}:{node.lineno} checks a type; let the domain's backend decide")
        if isinstance(node, ast.Attribute) and node.attr in ("engine", "SparkEngine"):
            pytest.fail(f"jobs/{job}:{node.lineno} reaches for the engine; use the domain's backend_for")
        if isinstance(node, ast.Assert):
            pytest.fail(f"jobs/{job}:{node.lineno} asserts")


#: Run in a child process: a module imported afresh there cannot leave a second copy in this one's.
_MISSING_EXTRA = """
import sys
import featurelake
for name in sys.argv[2:]:
    sys.modules[name] = None  # `import name` raises ModuleNotFoundError, as without the extra
with featurelake.open(sys.argv[1]) as fl:
    try:
        fl.project.engine
        fl.online.store
    except featurelake.ConfigError as exc:
        print(exc)
"""


@pytest.mark.parametrize(
    ("env", "value", "block", "expected"),
    [
        (
            "FEATURELAKE_ENGINE__TYPE",
            "spark",
            ("sqlglot", "pyspark"),
            "engine 'spark' is not available (sqlglot is not installed): pip install 'featurelake[spark]'",
        ),
        (
            "FEATURELAKE_ONLINE_STORE__TYPE",
            "redis",
            ("redis",),
            "online store 'redis' is not available (redis is not installed): pip install 'featurelake[redis]'",
        ),
    ],
)
def test_an_engine_or_store_whose_extra_is_missing_names_the_extra_to_install(
    tmp_path: Path, env: str, value: str, block: tuple[str, ...], expected: str
) -> None:
    """As on a plain `pip install featurelake`: the backend's module imports a library that is not there."""
    root = make_project(tmp_path / "p")
    child = subprocess.run(
        [sys.executable, "-c", _MISSING_EXTRA, str(root), *block],
        env={**os.environ, env: value},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == expected
