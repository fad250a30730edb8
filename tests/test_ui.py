"""The web UI's pages, errors, token and actions, through Starlette's TestClient on a project built here:
two views, published runs, a refused run kept on its branch, two models with stage changes and an alias, a
batch prediction run, a sync and a firing alert (docs/ui.md). tests/test_ui_browser.py opens the pages in
Chromium."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import featurelake
from featurelake.errors import AuditFailed
from featurelake.lakehouse import wap
from tests.helpers import DEFAULT_FEATURES, START, day, make_project, transactions, write_source

VIEW = "user_features"
REFUSED = "nulls"
FIXED = "fixme"
LOCAL = ("127.0.0.1", 50123)  # a browser on the server's machine (TestClient's default host is "testclient")

FEATURES = (
    DEFAULT_FEATURES.replace(
        'checks.between("txn_count_1d", 0, 10_000)]',
        'checks.between("txn_count_1d", 0, 10_000), checks.drift("amount_sum_1d", severity="warn")]',
    )
    + """
user_daily = FeatureView(
    name="user_daily",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, date_trunc('day', ts) AS event_ts, max(amount) AS amount_max_1d FROM source GROUP BY ALL",
    timestamp_field="event_ts",
    fields={"amount_max_1d": "double"},
    partition="month",
    description="largest transaction of the day",
)
"""
)
CONFIG = (
    "project: uitest\nnamespace: features\n"
    "monitoring:\n  rules: alerts.yaml\n  channels: [{type: file, path: .featurelake/alerts.jsonl}]\n"
)
# Any refused or failed job fires (the shipped rule waits for more than 3 in an hour).
ALERTS = "rules:\n  - name: job_failure_spike\n    threshold: 0\n"


def build_project(root: Path) -> Path:
    """The project every UI test reads (see the module docstring)."""
    make_project(root, features=FEATURES, config=CONFIG)
    # Module-scoped: built before the suite's autouse fixture sets the user for each test.
    saved = os.environ.get("FEATURELAKE_PIPELINE_USER")
    os.environ["FEATURELAKE_PIPELINE_USER"] = "test-user"
    try:
        _fill(root)
    finally:
        if saved is None:
            del os.environ["FEATURELAKE_PIPELINE_USER"]
        else:
            os.environ["FEATURELAKE_PIPELINE_USER"] = saved
    return root


def _fill(root: Path) -> None:
    from datetime import timedelta

    from tests.predict_helpers import export_pickle, fit, training_set

    (root / "alerts.yaml").write_text(ALERTS)
    # Days 20..22: half of the users' amounts are null, so amount_avg_1d's null rate fails its audit.
    write_source(
        root,
        transactions(days=3, start=START + timedelta(days=20), seed=3, null_share=0.6),
        name="nulls.parquet",
    )
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        fl.backfill(VIEW, day(5), day(10), run_id="second")
        fl.backfill("user_daily", day(0), day(10), run_id="daily")
        fl.sync(VIEW)
        for run_id, end in ((FIXED, 22), (REFUSED, 23)):  # FIXED is published from the UI later
            with pytest.raises(AuditFailed):
                fl.backfill(VIEW, day(20), day(end), run_id=run_id)
        ts = training_set(fl)
        path = export_pickle(fit(ts), root / "model.pkl")
        for _ in range(2):  # churn 1.0.0 then 1.0.1, each through Staging to Production
            mv = fl.models.register("churn", path, "pickle", training_set=ts, metrics={"auc": 0.8})
            fl.models.promote("churn", mv.version, "Staging", reason="tests pass")
            fl.models.promote("churn", mv.version, "Production", reason="better")
        fl.models.set_alias("churn", "champion", "1.0.1")
        fraud = fl.models.register("fraud", path, "pickle", training_set=ts, description="fraud score")
        fl.models.promote("fraud", fraud.version, "Staging")
        fl.predict("churn", VIEW, run_id="score1")
        result = fl.monitor()
        # The refused run: a failed job, and its drift (recorded, though it never reached main).
        assert {r.name for r, _ in result.firing} == {"job_failure_spike", "feature_drift_detected"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("ui") / "proj")


@pytest.fixture(scope="module")
def fl(built: Path) -> Iterator[featurelake.Featurelake]:
    with featurelake.open(built) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(fl: featurelake.Featurelake) -> Iterator[TestClient]:
    from featurelake.ui import create_app

    app = create_app(fl)
    with TestClient(app, client=LOCAL) as c:
        yield c
    app.state.ui.close()


def text(html: str) -> str:
    """The page's text: tags removed, entities decoded, whitespace folded."""
    folded = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))
    return folded.replace(" )", ")").replace("( ", "(")


def ok(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, text(response.text)[:500])
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    return response.text


def test_pages_load_nothing_from_outside(client: TestClient) -> None:
    for path in ("/", f"/views/{VIEW}", "/models", "/models/churn/1.0.1", "/online"):
        page = ok(client, path)
        urls = set(re.findall(r"""(?:src|href|action)="([^"]*)\"""", page))
        assert urls and all(u.startswith(("/", "#")) or u == "data:," for u in urls), urls
        assert "https://" not in page and "http://" not in page
    for name in ("ui.css", "ui.js"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and len(asset.content) > 1000
        assert b"http" not in asset.content.replace(b"http://www.w3.org/2000/svg", b"")


def test_overview(client: TestClient, fl: featurelake.Featurelake) -> None:
    page = text(ok(client, "/"))
    # Both views with entity, fields, ttl, partitioning, freshness and audit verdict.
    assert (
        "user_features user (user_id) txn_count_1d:long, amount_sum_1d:double, amount_avg_1d:double 7.0 d day"
        in page
    )
    assert "user_daily user (user_id) amount_max_1d:double none month" in page
    assert f"data through {day(10)}" in page
    # The newest audit of user_features is the refused run; user_daily's passed.
    assert re.search(r"user_features .*? failed nulls", page)
    assert re.search(r"user_daily .*? passed daily", page)
    # user_features was synced (and main moved on only on a branch): in sync; user_daily never synced.
    assert "in sync" in page and "never synced" in page
    # The firing alert, and the jobs with their outcomes.
    assert re.search(r"Firing alerts .*job_failure_spike critical job=backfill, view=user_features", page)
    assert re.search(r"backfill user_features failure audit_failed \d", page)
    assert len(re.findall(r"backfill user_features success", page)) == 2
    assert re.search(r"sync \S+ success", page)


def test_view_page(client: TestClient, fl: featurelake.Featurelake) -> None:
    html = ok(client, f"/views/{VIEW}")
    page = text(html)
    tbl = fl.project.load_table(VIEW)
    head = wap.main_snapshot_id(tbl)
    history = fl.history(VIEW)
    # Schema with types; timeline of main with lineage (run id, user, window, rows); the kept branch.
    assert "amount_avg_1d double no" in page and "user_id long yes" in page
    assert f"main, newest first ({len(history)} of {len(history)} snapshots)" in page
    for s in history:
        if s.run_id in ("first", "second"):
            assert f"{s.snapshot_id} " in page
            assert f"{s.run_id} test-user {s.window_start} .. {s.window_end} {s.added_records:,}" in page
    tip = wap.ref_snapshot_id(tbl, "audit_nulls")
    assert f"audit_nulls {tip}" in page
    # Audits newest first, statistics of the two published runs, drift per run.
    assert re.search(r"Audits .*? nulls failed .*? second passed .*? first passed", page)
    assert "amount_avg_1d: null rate per run" in page and "amount_sum_1d: mean and quantiles per run" in page
    stats = fl.stats(VIEW)  # the published data's statistics, assembled from _stats
    assert stats.columns["txn_count_1d"].rows == fl.read(VIEW).num_rows
    assert re.search(r"drift score per run", page) and re.search(r"second amount_sum_1d (pass|warn)", page)
    # The time-travel preview: on demand, from main's head or any snapshot.
    assert f"Show the first rows at main (snapshot {head})" in page and "rows at snapshot" not in page
    assert f"first 20 rows at snapshot {head}" in text(ok(client, f"/views/{VIEW}?snapshot={head}"))
    first = next(s for s in history if s.run_id == "first")
    old = text(ok(client, f"/views/{VIEW}?snapshot={first.snapshot_id}"))
    assert f"at snapshot {first.snapshot_id}" in old
    rows = fl.read(VIEW, snapshot_id=first.snapshot_id).to_pylist()
    assert all(r["event_ts"] < START.replace(day=6) for r in rows)
    shown_days = set(re.findall(r"2024-01-(\d\d) 00:00:00", old.split("Time travel")[1]))
    assert shown_days and all(int(d) <= 5 for d in shown_days)
    # Charts carry their data for the script, and a text alternative.
    assert html.count('class="chart"') >= 7 and html.count("data as a table") >= 7


def test_timeline_limit_and_code_links(
    tmp_path: Path, client: TestClient, fl: featurelake.Featurelake
) -> None:
    from featurelake.ui.data import commit_base, commit_link

    page = text(ok(client, f"/views/{VIEW}?limit=1"))
    assert f"(1 of {len(fl.history(VIEW))} snapshots)" in page and "show more snapshots" in page
    assert commit_base(tmp_path) is None  # not a git checkout
    sha = "0123456789abcdef0123456789abcdef01234567"
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "remote", "add", "origin", "git@example.org:team/features.git"],
        check=True,
    )
    base = commit_base(tmp_path)
    assert base == "https://example.org/team/features"
    assert commit_link(base, f"{sha}-dirty") == f"https://example.org/team/features/commit/{sha}"
    assert commit_link(base, "unknown") is None and commit_link(None, sha) is None


def test_run_pages(client: TestClient, fl: featurelake.Featurelake) -> None:
    refused = text(ok(client, f"/views/{VIEW}/runs/{REFUSED}"))
    tip = wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_nulls")
    assert f"refused and kept refused by its audit; kept on branch audit_nulls (tip {tip})" in refused
    assert f"featurelake publish {VIEW} --run-id {REFUSED}" in refused
    assert f"featurelake discard {VIEW} --run-id {REFUSED}" in refused
    audit = fl.audits(VIEW, run_id=REFUSED)[0]
    failed = audit.failures[0]
    assert "null_rate amount_avg_1d error fail" in refused and failed["message"] in refused
    html = ok(client, f"/views/{VIEW}/runs/first")
    assert "published published to main as snapshot" in text(html)
    assert "featurelake publish" not in html  # nothing to do for a published run
    # The existing HTML report, framed and sandboxed, served with its own policy.
    assert f'src="/views/{VIEW}/runs/first/report"' in html and "sandbox" in html
    report = client.get(f"/views/{VIEW}/runs/first/report")
    assert report.status_code == 200 and "<svg" in report.text and "histogram of" in report.text
    assert report.headers["content-security-policy"].startswith(
        "default-src 'none'; style-src 'unsafe-inline'"
    )


def test_models_pages(client: TestClient, fl: featurelake.Featurelake) -> None:
    listing = text(ok(client, "/models"))
    assert "churn 2 1.0.1 1.0.1 - champion -> 1.0.1" in listing
    assert "fraud 1 1.0.0 - 1.0.0 -" in listing
    assert "fraud score" in text(ok(client, "/models/fraud/1.0.0"))  # the version's description
    churn = text(ok(client, "/models/churn"))
    assert "1.0.1 Production champion pickle" in churn and "1.0.0 Archived" in churn
    # Transition history, newest first, with reasons; and the batch prediction run.
    events = [e for e in fl.models.history("churn") if e.kind == "stage"]
    assert len(events) == 5  # 2 x (None->Staging, Staging->Production) + the archived 1.0.0
    assert re.search(r"1\.0\.1 Staging -> Production test-user applied better", churn)
    assert re.search(r"1\.0\.0 Production -> Archived", churn)
    snap = fl.history("predictions.churn")[0]
    assert re.search(rf"{snap.snapshot_id} \S+ \S+ score1", churn)
    # A version: signature, training set, and its lineage as data and as a list.
    mv = fl.models.get("churn", "1.0.1")
    html = ok(client, "/models/churn/1.0.1")
    page = text(html)
    for field in mv.signature:
        assert f"{field.name} {field.type} {field.feature}" in page
    sid = mv.snapshots[VIEW]
    assert mv.training_set is not None
    assert f"{mv.training_set['entities_rows']} entity rows" in page
    assert f"training set {mv.training_set['entities_rows']} entity rows → snapshot {VIEW}@{sid}" in page
    for run in ("first", "second"):
        assert f"snapshot {VIEW}@{sid} → run {run} audit passed" in page
        assert f'href="/views/{VIEW}/runs/{run}"' in html
    assert f'href="/views/{VIEW}?snapshot={sid}#preview"' in html
    assert 'id="lineage-data"' in html


def test_online_and_monitoring(client: TestClient, fl: featurelake.Featurelake) -> None:
    page = text(ok(client, "/online"))
    mark = fl.online.store.get_watermark(VIEW)
    assert mark is not None
    keys = fl.online.store.count(VIEW)
    assert re.search(rf"user_features {keys} {mark.snapshot_id} \S+ in sync", page)
    assert "user_daily - - - never synced" in page
    assert re.search(
        r"job_failure_spike critical increase\[1h\]\(featurelake_job_failure_total\) > 0, for 0s firing", page
    )
    assert re.search(r"high_feature_null_rate warning .*? ok", page)
    assert re.search(r"Alert history .*? job_failure_spike firing critical", page)


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/views/nope", "no feature view 'nope': features.py defines user_daily, user_features"),
        (f"/views/{VIEW}/runs/ghost", f"view {VIEW} has no run 'ghost'"),
        (f"/views/{VIEW}/runs/..%2Fetc", "no page at /views/user_features/runs/../etc"),
        (f"/views/{VIEW}/runs/a%20b", f"view {VIEW} has no run 'a b' (not a valid run id)"),
        (f"/views/{VIEW}/runs/ghost/report", "has no run 'ghost'"),
        (f"/views/{VIEW}?snapshot=42", f"snapshot 42 does not exist in features.{VIEW}"),
        ("/models/nope", "no model 'nope' in the registry sqlite:///<server path>/.featurelake/registry.db"),
        (
            "/models/churn/9.9.9",
            "model churn has no version 9.9.9; its versions: 1.0.1 (Production), 1.0.0 (Archived)",
        ),
        ("/models/churn/latest-ish", "version 'latest-ish' is not a semantic version"),
        ("/nowhere", "no page at /nowhere"),
        ("/static/other.js", "no static file 'other.js'"),
    ],
)
def test_unknown_things_are_404_pages_naming_them(client: TestClient, path: str, needle: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, (path, text(response.text)[:300])
    assert response.headers["content-type"].startswith("text/html")
    assert needle in text(response.text), text(response.text)[:400]
    assert "404 Not found" in response.text


def test_bad_query_is_400(client: TestClient) -> None:
    response = client.get(f"/views/{VIEW}?snapshot=abc")
    assert response.status_code == 400 and "snapshot must be an integer, got 'abc'" in text(response.text)
    assert client.post("/models").status_code == 405


def test_wheel_ships_the_static_files() -> None:
    from importlib import resources

    from featurelake.ui import app

    static = resources.files("featurelake.ui") / "static"
    assert {p.name for p in static.iterdir()} >= {"ui.css", "ui.js"}
    assert app._static()["ui.js"][0].startswith(b"// featurelake UI")
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "ui/static/*" in pyproject["tool"]["setuptools"]["package-data"]["featurelake"]


# --- the token, and the mount under `featurelake serve` -----------------------------------------------


def test_token_guards_every_page_and_the_login_sets_a_session(fl: featurelake.Featurelake) -> None:
    from featurelake.ui import create_app

    app = create_app(fl, token="s3cret")
    try:
        with TestClient(app) as c:
            for path in (
                "/",
                f"/views/{VIEW}",
                f"/views/{VIEW}/runs/first/report",
                "/models/churn",
                "/online",
                "/nowhere",
            ):
                refused = c.get(path)
                assert refused.status_code == 401, path
                assert "missing or wrong token" in refused.text and "user_features" not in refused.text
                assert refused.headers["www-authenticate"] == "Bearer"
            assert c.post(f"/online/{VIEW}/sync", data={"csrf": "x"}).status_code == 401
            assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.post("/login", data={"token": "nope"}).status_code == 401
            login = c.post("/login", data={"token": "s3cret"}, follow_redirects=False)
            assert login.status_code == 303
            cookie = login.headers["set-cookie"]
            assert "s3cret" not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
            assert c.get(f"/views/{VIEW}").status_code == 200  # the cookie now
    finally:
        app.state.ui.close()


def test_serve_mounts_the_ui_under_slash_ui_behind_the_server_token(built: Path) -> None:
    import os

    from featurelake.serving.server import create_app as server_app
    from featurelake.ui import mount

    os.environ["FEATURELAKE_SERVER__TOKEN"] = "tok"
    try:
        handle = featurelake.open(built)
    finally:
        del os.environ["FEATURELAKE_SERVER__TOKEN"]
    with handle:
        app = mount(server_app(handle.project), handle)
        with TestClient(app) as c:
            assert c.get("/ui/").status_code == 401
            assert c.get("/healthz").status_code == 200  # the server's own routes are untouched
            assert c.post("/get-online-features", json={}).status_code == 401
            bearer = {"Authorization": "Bearer tok"}
            page = c.get("/ui/", headers=bearer)
            assert page.status_code == 200 and 'href="/ui/views/user_features"' in page.text
            assert c.get("/ui/views/user_features", headers=bearer).status_code == 200
            assert 'href="/ui/static/ui.css' in page.text
            assert c.get("/ui/static/ui.js", headers=bearer).status_code == 200
            assert c.get("/ui/views/nope", headers=bearer).status_code == 404


# --- actions (last: they change the project) ---------------------------------------------------------------


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the page has no action form"
    return found.group(1)


def test_actions_need_the_form_key_and_loopback_without_a_token(
    fl: featurelake.Featurelake, client: TestClient
) -> None:
    key = csrf(ok(client, f"/views/{VIEW}/runs/{REFUSED}"))
    stale = client.post(f"/views/{VIEW}/runs/{REFUSED}/discard", data={"csrf": "0" * 64})
    assert stale.status_code == 403 and "stale or foreign" in stale.text
    assert wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_nulls") is not None
    from featurelake.ui import create_app

    app = create_app(fl)
    try:
        with TestClient(app, client=("203.0.113.9", 5000)) as remote:
            page = remote.get(f"/views/{VIEW}/runs/{REFUSED}")
            assert page.status_code == 200 and 'name="csrf"' not in page.text  # readable, no buttons
            refused = remote.post(f"/views/{VIEW}/runs/{REFUSED}/discard", data={"csrf": key})
            assert refused.status_code == 403 and "loopback" in refused.text
    finally:
        app.state.ui.close()
    assert wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_nulls") is not None


def test_publish_of_a_refused_run_is_refused_again(fl: featurelake.Featurelake, client: TestClient) -> None:
    key = csrf(ok(client, f"/views/{VIEW}/runs/{REFUSED}"))
    head = wap.main_snapshot_id(fl.project.load_table(VIEW))
    response = client.post(f"/views/{VIEW}/runs/{REFUSED}/publish", data={"csrf": key})
    assert response.status_code == 409 and "amount_avg_1d" in text(response.text)
    assert wap.main_snapshot_id(fl.project.load_table(VIEW)) == head
    assert len(fl.audits(VIEW, run_id=REFUSED)) == 2  # the re-audit is in the audit log


def test_publish_after_the_check_is_relaxed(built: Path, client: TestClient) -> None:
    """The refused run FIXED, published from its page once features.py allows its null rate."""
    from featurelake.ui import create_app

    features = built / "features.py"
    features.write_text(
        features.read_text().replace(
            'null_rate("amount_avg_1d", max=0.10)', 'null_rate("amount_avg_1d", max=0.90)'
        )
    )
    with featurelake.open(built) as fresh:  # the definitions as they are now
        app = create_app(fresh)
        try:
            with TestClient(app, client=LOCAL) as c:
                key = csrf(ok(c, f"/views/{VIEW}/runs/{FIXED}"))
                done = c.post(f"/views/{VIEW}/runs/{FIXED}/publish", data={"csrf": key})
                assert (
                    done.status_code == 200
                    and f"published run {FIXED}: main of features.{VIEW} ->" in text(done.text)
                )
                assert "published published to main as snapshot" in text(done.text)
        finally:
            app.state.ui.close()
        tbl = fresh.project.load_table(VIEW)
        assert wap.snapshot_run_id(tbl, wap.main_snapshot_id(tbl)) == FIXED  # in main's lineage
        assert wap.ref_snapshot_id(tbl, f"audit_{FIXED}") is None
        assert fresh.audits(VIEW, run_id=FIXED)[0].passed  # and in the audit log
        main_id = wap.main_snapshot_id(tbl)
        assert main_id is not None
        published = tbl.metadata.snapshot_by_id(main_id)
        assert published is not None
        assert fresh.read(VIEW).num_rows > fresh.read(VIEW, snapshot_id=published.parent_snapshot_id).num_rows
    assert any(j.job == "publish" and j.outcome == "success" for j in _jobs(fresh))


def test_discard_promote_and_sync_act_and_are_recorded(
    fl: featurelake.Featurelake, client: TestClient
) -> None:
    key = csrf(ok(client, f"/views/{VIEW}/runs/{REFUSED}"))
    done = client.post(f"/views/{VIEW}/runs/{REFUSED}/discard", data={"csrf": key})
    assert done.status_code == 200 and "removed branch audit_nulls" in done.text
    assert wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_nulls") is None
    assert "discarded not on main; its branch audit_nulls was discarded" in text(done.text)
    again = client.post(f"/views/{VIEW}/runs/{REFUSED}/discard", data={"csrf": key})
    assert again.status_code == 400 and "no branch audit_nulls" in again.text

    promoted = client.post(
        "/models/fraud/1.0.0/promote", data={"csrf": key, "stage": "Production", "reason": "from the UI"}
    )
    assert promoted.status_code == 200 and "fraud 1.0.0 is now Production" in text(promoted.text)
    assert fl.models.get("fraud", "1.0.0").stage.value == "Production"
    last = fl.models.history("fraud")[-1]
    assert (last.from_stage, last.to_stage, last.reason, last.outcome) == (
        "Staging",
        "Production",
        "from the UI",
        "applied",
    )
    assert "Staging -> Production" in text(client.get("/models/fraud").text)
    bad = client.post("/models/fraud/1.0.0/promote", data={"csrf": key, "stage": "Sideways"})
    assert bad.status_code == 400 and "Sideways" in text(bad.text)

    before = [j for j in _jobs(fl) if j.job == "sync"]
    synced = client.post("/online/user_daily/sync", data={"csrf": key})
    assert synced.status_code == 200
    assert fl.online.store.get_watermark("user_daily") is not None
    assert "user_daily" in text(synced.text) and "never synced" not in text(synced.text)
    after = [j for j in _jobs(fl) if j.job == "sync"]
    assert len(after) == len(before) + 1 and after[0].outcome == "success"  # recorded like the CLI's sync
    assert client.post("/online/nope/sync", data={"csrf": key}).status_code == 404


def _jobs(fl: featurelake.Featurelake) -> list[Any]:
    from featurelake.ui.data import recent_jobs

    return recent_jobs(fl)


# --- the command ------------------------------------------------------------------------------------------


def test_ui_command_runs_uvicorn_and_warns_when_exposed_without_a_token(
    built: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    from featurelake.cli.main import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    main(["-C", str(built), "ui", "--port", "9123"])
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 9123 and calls[-1]["ws"] == "none"
    assert "featurelake UI on http://127.0.0.1:9123/" in capsys.readouterr().err
    main(["-C", str(built), "ui", "--host", "0.0.0.0", "--port", "9124"])
    err = capsys.readouterr().err
    assert "the UI on 0.0.0.0 has no server.token" in err and "http://127.0.0.1:9124/" in err
    with TestClient(calls[-1]["app"]) as c:  # the app it would serve
        assert c.get("/").status_code == 200
    calls[-1]["app"].state.ui.close()


def test_ui_command_without_the_server_extra(
    built: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from featurelake.cli.main import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if `pip install featurelake` without [server]
    with pytest.raises(SystemExit) as exit_info:
        main(["-C", str(built), "ui"])
    assert exit_info.value.code == 2
    assert "featurelake ui needs uvicorn: pip install 'featurelake[server]'" in capsys.readouterr().err


def test_serve_command_and_its_workers_mount_the_ui(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featurelake.cli import serving_cmds
    from featurelake.cli.main import main
    from featurelake.serving import server

    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        server, "serve", lambda project, **kw: seen.update(kw, app=kw["wrap"](server.create_app(project)))
    )
    main(["-C", str(built), "serve", "--workers", "1"])
    monkeypatch.setenv(server.WORKER_PROJECT_ENV, str(built))
    for app in (seen["app"], serving_cmds.worker_app()):  # one process, and each of --workers N
        with TestClient(app) as c:
            assert c.get("/ui/").status_code == 200 and 'href="/ui/views/user_features"' in c.get("/ui/").text
            assert c.get("/healthz").status_code == 200
        app.ui.state.ui.close()


@pytest.mark.parametrize(
    ("error", "status", "shown"),
    [
        ("catalog", 503, "503 Unavailable"),
        ("store", 503, "503 Unavailable"),
        ("conflict", 409, "409 Conflict"),
        ("bug", 500, "RuntimeError: see the server log"),
    ],
)
def test_failures_are_pages_with_their_status(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch, error: str, status: int, shown: str
) -> None:
    from featurelake.errors import CatalogUnavailableError, ConflictError, OnlineStoreUnavailableError
    from featurelake.ui import create_app, data

    exc = {
        "catalog": CatalogUnavailableError(f"the catalog at {fl.project.root}/x.db is locked; retry later"),
        "store": OnlineStoreUnavailableError("redis at 127.0.0.1:1 refused the connection"),
        "conflict": ConflictError("main moved"),
        "bug": RuntimeError(f"secret detail {fl.project.root}"),
    }[error]

    def fail(*_: Any, **__: Any) -> Any:
        raise exc

    monkeypatch.setattr(data, "view_summaries", fail)
    app = create_app(fl)
    try:
        with TestClient(app) as c:
            response = c.get("/")
    finally:
        app.state.ui.close()
    assert response.status_code == status and shown in text(response.text)
    assert str(fl.project.root) not in response.text  # no server path, no internal detail
    if error == "catalog":
        assert "the catalog at <server path>/x.db is locked; retry later" in text(response.text)
    if error == "bug":
        assert "secret detail" not in response.text


def test_login_without_a_token_goes_to_the_overview(client: TestClient) -> None:
    response = client.get("/login", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
