"""Web UI pages for things that are not there yet, which no other test opened: a view that was never applied,
a model of a project whose registry does not exist, and the HTML report of a run whose report file was
deleted.

Each is a 404 page naming the view, model or run and the command that makes it exist; opening it creates
nothing (no table, no registry database, no report).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import featurelake
from tests.helpers import day, make_project

VIEW = "user_features"
LOCAL = ("127.0.0.1", 50123)  # a browser on the server's machine


def text(html: str) -> str:
    """The page's text: tags removed, entities decoded, whitespace folded."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def not_found(client: TestClient, path: str, *needles: str) -> str:
    response = client.get(path)
    page = text(response.text)
    assert response.status_code == 404, (path, page[:400])
    assert response.headers["content-type"].startswith("text/html")
    for n in needles:
        assert n in page, f"{n!r} not in page: {page[:600]}"
    return page


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[tuple[Path, TestClient]]:
    """A project that was never applied and has no registry, with the UI open on it."""
    from featurelake.ui import create_app

    root = make_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        app = create_app(fl)
        with TestClient(app, client=LOCAL) as c:
            yield root, c
        app.state.ui.close()


def test_view_page_before_apply(bare: tuple[Path, TestClient]) -> None:
    root, client = bare
    not_found(client, f"/views/{VIEW}", f"feature view {VIEW} has no table yet", "featurelake apply")
    not_found(
        client, f"/views/{VIEW}/runs/base", f"feature view {VIEW} has no table yet", "featurelake apply"
    )
    with featurelake.open(root) as fl:
        assert not fl.project.catalog.table_exists(f"features.{VIEW}"), "a page view created the table"


def test_model_pages_without_a_registry(bare: tuple[Path, TestClient]) -> None:
    root, client = bare
    not_found(client, "/models/churn", "no model 'churn'", "the registry is empty")
    not_found(client, "/models/churn/1.0.0", "no model 'churn'", "the registry is empty")
    assert not (root / ".featurelake" / "registry.db").exists(), "a page view created the registry"


def test_report_of_a_run_whose_html_was_deleted(tmp_path: Path) -> None:
    from featurelake.ui import create_app

    root = make_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(3), run_id="base")
    reports = root / ".featurelake" / "audits" / VIEW
    (reports / "base.html").unlink()
    kept = sorted(p.name for p in reports.iterdir())
    with featurelake.open(root) as fl:
        app = create_app(fl)
        with TestClient(app, client=LOCAL) as client:
            not_found(
                client,
                f"/views/{VIEW}/runs/base/report",
                f"run base of {VIEW} has no HTML audit report",
                f"featurelake audit {VIEW} --run-id base",
            )
        app.state.ui.close()
    assert sorted(p.name for p in reports.iterdir()) == kept, "a page view changed the audit directory"
    # The way out the page names does bring the report back.
    proc = subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(root), "audit", VIEW, "--run-id", "base"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (reports / "base.html").is_file()
