"""The web UI in a real browser: Debian's headless Chromium, driven by its chromedriver through Selenium,
against a real `featurelake ui` process on a free loopback port (the project of tests/test_ui.py).

Checks what only a browser shows: every page of the project loads, the script draws every chart and the
lineage graph, no console error, no request leaves loopback, links click through (view -> run -> report,
model -> lineage -> snapshot), each action (promote, publish, discard, sync) works from its form and shows in
the page and the catalog or registry, the page fits a phone's width, and without the token every page is
refused with the login form. Set
FEATURELAKE_SAVE_SCREENSHOTS=docs/img to keep a screenshot of each page (docs/ui.md shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import featurelake
from tests.test_ui import REFUSED, VIEW, build_project

pytestmark = pytest.mark.chromium

# Read at import: the suite's autouse fixture clears FEATURELAKE_* variables before each test.
SAVE_TO = os.environ.get("FEATURELAKE_SAVE_SCREENSHOTS")


def _program(*names: str) -> str:
    for name in names:
        if path := shutil.which(name):
            return path
    pytest.fail(
        f"{names[0]} is needed for the browser tests: `make test` installs chromium and chromium-driver (as "
        "root; scripts/setup-system.sh); to leave them out: pytest -m 'not chromium'"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ui(root: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`featurelake ui` on a free port; returns the process and its base URL once it answers."""
    import urllib.error
    import urllib.request

    port = _free_port()
    log = root.parent / f"ui-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "featurelake", "-C", str(root), "ui", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/static/ui.css", timeout=5).close()
            return proc, base
        except urllib.error.HTTPError:
            return proc, base  # it answers (401 with a token)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"featurelake ui did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("ui-browser") / "proj")


@pytest.fixture(scope="module")
def server(built: Path) -> Iterator[str]:
    proc, base = start_ui(built)
    yield base
    stop(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _program("chromium", "chromium-browser", "google-chrome")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--hide-scrollbars",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_program("chromedriver")))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def settle(driver: Any, base: str) -> None:
    """After a page: no console error, and every request went to the UI's own loopback address."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "no request was seen"
    # chrome:// are the browser's own pages (the first new tab), data: the empty favicon: no network.
    network = [u for u in urls if not u.startswith(("chrome://", "chrome-untrusted://", "data:", "about:"))]
    outside = [u for u in network if not u.startswith(base + "/")]
    assert any(u.startswith(base + "/static/ui.js") for u in network)
    assert not outside, outside


def click_to(driver: Any, element: Any, title: str, *, keyboard: bool = False) -> None:
    """Click ``element`` (or focus it and press Enter) and wait until the page it leads to, titled ``title``,
    has loaded."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element("tag name", "html")
    if keyboard:
        driver.execute_script("arguments[0].focus()", element)
        assert driver.switch_to.active_element == element, "not focusable"
        ActionChains(driver).send_keys(Keys.ENTER).perform()
    else:
        element.click()

    def arrived(d: Any) -> bool:
        try:
            old.tag_name  # still the page we clicked on?  # noqa: B018
            return False
        except Exception:  # stale: the new page replaced it
            return bool(
                d.title == f"{title} - featurelake"
                and d.execute_script("return document.readyState") == "complete"
            )

    WebDriverWait(driver, 30).until(arrived)


def shot(driver: Any, name: str) -> None:
    if SAVE_TO:
        Path(SAVE_TO).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.get_window_size()["width"]
        driver.set_window_size(width, min(max(800, int(height) + 140), 3000))
        driver.save_screenshot(str(Path(SAVE_TO) / f"ui-{name}.png"))
        driver.set_window_size(width, 800)


def test_overview_and_a_view_draw_their_charts(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    assert browser.title == "Overview - featurelake"
    rows = browser.find_elements(By.CSS_SELECTOR, "main table tbody tr")
    assert any("user_features" in r.text and "failed" in r.text for r in rows)
    assert "job_failure_spike" in browser.find_element(By.ID, "h-alerts").find_element(By.XPATH, "..").text
    # Keyboard: the first Tab reaches the skip link, Enter moves the focus to the content.
    from selenium.webdriver.common.keys import Keys

    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.text == "Skip to content"
    active.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    settle(browser, server)
    shot(browser, "overview")

    click_to(browser, browser.find_element(By.LINK_TEXT, VIEW), VIEW)
    assert browser.current_url == f"{server}/views/{VIEW}"
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart")
    drawn = browser.find_elements(By.CSS_SELECTOR, "figure.chart.drawn svg[role=img]")
    assert len(charts) >= 7 and len(drawn) == len(charts)
    # Each statistics chart has a line per series over the two published runs; the drift chart three points.
    lines = browser.find_elements(By.CSS_SELECTOR, "figure.chart.drawn svg g.series polyline")
    assert len(lines) >= 3 * 5
    drift = next(c for c in charts if "drift score per run" in c.get_attribute("aria-label"))
    # first has no reference (no score); second, and the two refused runs.
    assert len(drift.find_elements(By.CSS_SELECTOR, "svg circle")) == 3
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-draw-error]")
    settle(browser, server)
    shot(browser, "view")


def test_click_view_run_report(browser: Any, server: str, built: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/views/{VIEW}")
    click_to(
        browser,
        browser.find_element(By.CSS_SELECTOR, f'a[href="/views/{VIEW}/runs/{REFUSED}"]'),
        f"Run {REFUSED} of {VIEW}",
    )
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "refused and kept" in page and f"featurelake publish {VIEW} --run-id {REFUSED}" in page
    assert "null rate of amount_avg_1d is 0.6" in page
    frame = browser.find_element(By.CSS_SELECTOR, "iframe.report")
    browser.switch_to.frame(frame)
    try:
        histograms = browser.find_elements(By.CSS_SELECTOR, "svg[aria-label^='histogram of ']")
        assert len(histograms) == 3
        assert "Audit of user_features run nulls failed" in browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.switch_to.default_content()
    settle(browser, server)
    shot(browser, "run")


def test_click_model_lineage_snapshot(browser: Any, server: str, built: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/models")
    click_to(browser, browser.find_element(By.LINK_TEXT, "churn"), "Model churn")
    assert "Production" in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, "model")
    click_to(browser, browser.find_element(By.LINK_TEXT, "1.0.1"), "Model churn@1.0.1")
    graph = browser.find_element(By.CSS_SELECTOR, "figure.graph.drawn svg")
    kinds = [g.get_attribute("data-kind") for g in graph.find_elements(By.CSS_SELECTOR, "g.node")]
    assert kinds.count("model") == 1 and kinds.count("training set") == 1
    assert kinds.count("snapshot") == 1 and kinds.count("run") == 2
    assert len(graph.find_elements(By.CSS_SELECTOR, "path.edge")) == 4
    settle(browser, server)
    shot(browser, "version")
    with featurelake.open(built) as fl:
        sid = fl.models.get("churn", "1.0.1").snapshots[VIEW]
    # Follow the snapshot node of the graph (an SVG link), by keyboard, to the view's time travel there.
    link = graph.find_element(By.CSS_SELECTOR, "a.node-link")
    click_to(browser, link, VIEW, keyboard=True)
    assert browser.current_url == f"{server}/views/{VIEW}?snapshot={sid}#preview"
    assert f"rows at snapshot {sid}" in browser.find_element(By.ID, "preview").text
    settle(browser, server)


def test_online_page_action_and_phone_width(browser: Any, server: str, built: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/online")
    shot(browser, "online")
    row = next(
        r for r in browser.find_elements(By.CSS_SELECTOR, "table tbody tr") if r.text.startswith("user_daily")
    )
    assert "never synced" in row.text
    click_to(browser, row.find_element(By.TAG_NAME, "button"), "Online and monitoring")
    assert "user_daily: full sync (first sync)" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    row = next(
        r for r in browser.find_elements(By.CSS_SELECTOR, "table tbody tr") if r.text.startswith("user_daily")
    )
    assert "in sync" in row.text
    with featurelake.open(built) as fl:
        assert fl.online.store.get_watermark("user_daily") is not None
    settle(browser, server)
    # A phone: headless windows are at least 500 px wide, so the viewport is set through DevTools.
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
    try:
        for path in ("/", f"/views/{VIEW}", "/models/churn/1.0.1"):
            browser.get(server + path)
            # Wide tables scroll inside their box; the page itself is as wide as the phone.
            assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
            assert browser.execute_script("return window.innerWidth") == 390
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def section(driver: Any, heading: str) -> str:
    """The text of the page's section under the heading with id ``heading``."""
    return str(driver.find_element("css selector", f'section[aria-labelledby="{heading}"]').text)


def test_promote_a_version_from_its_page(browser: Any, server: str, built: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(f"{server}/models/fraud/1.0.0")
    assert "Staging" in section(browser, "h-facts")
    Select(browser.find_element(By.ID, "stage")).select_by_visible_text("Production")
    browser.find_element(By.ID, "reason").send_keys("from the browser")
    click_to(browser, browser.find_element(By.CSS_SELECTOR, "form button.primary"), "Model fraud@1.0.0")
    assert browser.current_url.startswith(f"{server}/models/fraud/1.0.0?done=")
    assert browser.find_element(By.CSS_SELECTOR, ".notice").text == "fraud 1.0.0 is now Production"
    facts = browser.find_element(By.CSS_SELECTOR, 'section[aria-labelledby="h-facts"] dl')
    assert facts.find_element(By.XPATH, "dt[.='stage']/following-sibling::dd[1]").text == "Production"
    # The form now offers the other stages only.
    options = [o.text for o in Select(browser.find_element(By.ID, "stage")).options]
    assert "Production" not in options and "Staging" in options
    settle(browser, server)
    with featurelake.open(built) as fl:
        assert fl.models.get("fraud", "1.0.0").stage.value == "Production"
        last = fl.models.history("fraud")[-1]
        assert (last.from_stage, last.to_stage, last.reason, last.outcome) == (
            "Staging",
            "Production",
            "from the browser",
            "applied",
        )
    # The model's page shows the transition in its history.
    click_to(browser, browser.find_element(By.LINK_TEXT, "fraud"), "Model fraud")
    assert "Staging -> Production" in section(browser, "h-history")
    assert "from the browser" in section(browser, "h-history")
    settle(browser, server)


def test_publish_and_discard_kept_branches_from_their_run_pages(browser: Any, built: Path) -> None:
    """FIXED, refused when it ran, is published once features.py relaxes the check (a `featurelake ui`
    started after the change: a running one keeps the definitions it loaded); REFUSED's branch is discarded."""
    from selenium.webdriver.common.by import By

    from featurelake.lakehouse import wap
    from tests.test_ui import FIXED

    features = built / "features.py"
    relaxed = features.read_text().replace(
        'null_rate("amount_avg_1d", max=0.10)', 'null_rate("amount_avg_1d", max=0.90)'
    )
    assert relaxed != features.read_text()
    features.write_text(relaxed)
    with featurelake.open(built) as fl:
        before = wap.main_snapshot_id(fl.project.load_table(VIEW))
    proc, base = start_ui(built)
    try:
        for kind in ("browser", "performance"):  # settle() below looks at this server's requests only
            browser.get_log(kind)
        browser.get(f"{base}/views/{VIEW}")
        kept = section(browser, "h-branches")
        assert f"audit_{FIXED}" in kept and f"audit_{REFUSED}" in kept
        click_to(
            browser,
            browser.find_element(By.CSS_SELECTOR, f'a[href="/views/{VIEW}/runs/{FIXED}"]'),
            f"Run {FIXED} of {VIEW}",
        )
        assert "refused and kept" in browser.find_element(By.TAG_NAME, "main").text
        publish = browser.find_element(By.XPATH, "//form[contains(@action, '/publish')]/button")
        click_to(browser, publish, f"Run {FIXED} of {VIEW}")
        with featurelake.open(built) as fl:
            tbl = fl.project.load_table(VIEW)
            head = wap.main_snapshot_id(tbl)
            assert head != before and wap.snapshot_run_id(tbl, head) == FIXED  # main's lineage names the run
            assert wap.ref_snapshot_id(tbl, f"audit_{FIXED}") is None
            assert fl.audits(VIEW, run_id=FIXED)[0].passed
        notice = browser.find_element(By.CSS_SELECTOR, ".notice").text
        assert notice == f"published run {FIXED}: main of features.{VIEW} -> {head}"
        page = browser.find_element(By.TAG_NAME, "main").text
        assert f"published to main as snapshot {head}" in page
        assert not browser.find_elements(By.XPATH, "//form[contains(@action, '/publish')]")
        settle(browser, base)

        browser.get(f"{base}/views/{VIEW}/runs/{REFUSED}")
        discard = browser.find_element(By.XPATH, "//form[contains(@action, '/discard')]/button")
        assert discard.text == "Discard branch"
        click_to(browser, discard, f"Run {REFUSED} of {VIEW}")
        with featurelake.open(built) as fl:
            tbl = fl.project.load_table(VIEW)
            assert wap.ref_snapshot_id(tbl, f"audit_{REFUSED}") is None
            assert wap.main_snapshot_id(tbl) == head  # main untouched
        assert browser.find_element(By.CSS_SELECTOR, ".notice").text.startswith(
            f"removed branch audit_{REFUSED} (tip "
        )
        page = browser.find_element(By.TAG_NAME, "main").text
        assert f"not on main; its branch audit_{REFUSED} was discarded" in page
        assert not browser.find_elements(By.XPATH, "//form[contains(@action, '/discard')]")
        settle(browser, base)

        # The view's page: the published run heads main's timeline, and no branch is kept any more.
        click_to(browser, browser.find_element(By.LINK_TEXT, VIEW), VIEW)
        timeline = browser.find_element(By.CSS_SELECTOR, 'section[aria-labelledby="h-timeline"] tbody tr')
        assert timeline.text.startswith(str(head)) and FIXED in timeline.text
        kept = section(browser, "h-branches")
        assert f"audit_{FIXED}" not in kept and f"audit_{REFUSED}" not in kept
        settle(browser, base)
    finally:
        stop(proc)


def test_every_page_opens_without_a_console_error(browser: Any, server: str, built: Path) -> None:
    """Every page of the project (each view, run, report, model and version, found through the public
    API): it loads, its charts and graphs are drawn, no console error, nothing leaves loopback, and each
    is linked from a page opened before it."""
    from selenium.webdriver.common.by import By

    with featurelake.open(built) as fl:
        views = sorted(fl.definitions.views)
        runs = sorted({(v, a.run_id) for v in views for a in fl.audits(v)})
        models = {m.name: [mv.version for mv in fl.models.versions(m.name)] for m in fl.models.list_models()}
    assert len(views) == 2 and len(runs) >= 5 and sorted(models) == ["churn", "fraud"]
    paths = ["/", *(f"/views/{v}" for v in views)]
    paths += [f"/views/{v}/runs/{r}" for v, r in runs]
    paths += ["/models", *(f"/models/{m}" for m in models)]
    paths += [f"/models/{m}/{v}" for m, versions in models.items() for v in versions]
    paths += ["/online"]
    linked: set[str] = set()
    for path in paths:
        if path != "/":
            assert path in linked, f"no page opened before links to {path}"
        browser.get(server + path)
        assert browser.execute_script("return document.readyState") == "complete"
        assert browser.title.endswith(" - featurelake") and not browser.title[:3].isdigit(), (
            path,
            browser.title,
        )
        figures = browser.find_elements(By.CSS_SELECTOR, "figure.chart, figure.graph")
        assert len(browser.find_elements(By.CSS_SELECTOR, "figure.drawn")) == len(figures), path
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-draw-error]"), path
        for frame in browser.find_elements(By.CSS_SELECTOR, "iframe.report"):
            browser.switch_to.frame(frame)
            try:
                assert browser.find_element(By.TAG_NAME, "body").text.startswith("Audit of "), path
            finally:
                browser.switch_to.default_content()
        settle(browser, server)
        for a in browser.find_elements(By.CSS_SELECTOR, "a[href^='/']"):
            linked.add(a.get_attribute("href").removeprefix(server).split("?")[0].split("#")[0])


def test_token_login_form(browser: Any, built: Path) -> None:
    from selenium.webdriver.common.by import By

    proc, base = start_ui(built, {"FEATURELAKE_SERVER__TOKEN": "browser-secret"})
    try:
        browser.get_log("performance")
        # Without the token every page is refused (401) and shows the sign-in form, none of the project.
        pages = (
            "/",
            f"/views/{VIEW}",
            f"/views/{VIEW}/runs/first",
            "/models/churn/1.0.1",
            "/online",
            "/models",
        )
        for path in pages:
            browser.get(base + path)
            assert browser.title == "Sign in - featurelake", path
            assert "churn" not in browser.page_source and VIEW not in browser.page_source, path
            assert not browser.find_elements(
                By.CSS_SELECTOR, "form[action$='/sync'], form[action$='/promote']"
            )
        statuses = {}
        for entry in browser.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.responseReceived" and message["params"]["type"] == "Document":
                response = message["params"]["response"]
                statuses[response["url"].removeprefix(base)] = response["status"]
        assert statuses == dict.fromkeys(pages, 401)
        browser.find_element(By.ID, "token").send_keys("wrong")
        click_to(browser, browser.find_element(By.CSS_SELECTOR, "form button"), "Sign in")
        assert "wrong token" in browser.find_element(By.TAG_NAME, "main").text
        browser.find_element(By.ID, "token").send_keys("browser-secret")
        click_to(browser, browser.find_element(By.CSS_SELECTOR, "form button"), "Overview")
        browser.get(base + "/models")
        assert "churn" in browser.find_element(By.TAG_NAME, "main").text
        browser.get(base + "/online")  # signed in: the actions are offered
        assert browser.find_elements(By.CSS_SELECTOR, "form[action$='/sync'] button")
    finally:
        stop(proc)
