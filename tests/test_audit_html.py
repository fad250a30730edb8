"""The HTML audit report is self-contained and renders its histograms in a real headless Chromium.

Set FEATURELAKE_SAVE_SCREENSHOT=docs/img/audit-report.png to also keep the screenshot (the README's image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featurelake
from featurelake.validation.report_html import NEW, REF
from tests.helpers import day, transactions
from tests.test_audit_wap import VIEW, add_shifted_days, project

# Read at import: the suite's autouse fixture clears FEATURELAKE_* variables before each test.
SAVE_TO = os.environ.get("FEATURELAKE_SAVE_SCREENSHOT")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "headless Chromium is needed for the report test: `make test` installs it (as root; "
        "scripts/setup-system.sh), or run apt-get install chromium; to leave it out: pytest -m 'not chromium'"
    )


def screenshot(page: Path, png: Path, tmp: Path, size: str = "1280,1500") -> None:
    profile = tmp / "chromium-profile"
    profile.mkdir()
    proc = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={size}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def drifted_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html") / "p"
    checks_src = (
        'checks.drift("amount_avg_1d", severity="warn"), checks.drift("amount_sum_1d", metric="ks", severity="warn"), '
        'checks.null_rate("amount_avg_1d", max=0.1)'
    )
    project(root, checks_src, data=transactions(days=6, users=300, rows_per_day=1500))
    add_shifted_days(root, 20, factor=2.5, users=300, rows_per_day=1500)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(6), run_id="baseline")
        result = fl.backfill(VIEW, day(20), day(23), run_id="drifted")
    assert {(w.check, w.column) for w in result.report.warnings} == {
        ("drift", "amount_avg_1d"),
        ("drift", "amount_sum_1d"),
    }
    assert result.report.html_path is not None
    return root / result.report.html_path


def test_report_is_self_contained(drifted_report: Path) -> None:
    page = drifted_report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    for needle in ("<script", "<link", "<img", "src=", "url(", "@import"):
        assert needle not in page, needle
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert len(re.findall(r'aria-label="histogram of ', page)) == 3  # one per numeric feature
    assert "passed with warnings" in page and "PSI of amount_avg_1d vs main" in page


@pytest.mark.chromium
def test_report_renders_histograms_in_chromium(drifted_report: Path, tmp_path: Path) -> None:
    png = tmp_path / "audit-report.png"
    screenshot(drifted_report, png, tmp_path)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape == (1500, 1280, 3)
    bar = 0.75 * np.array(_rgb(NEW)) + 0.25 * np.array(
        _rgb("#f9fafb")
    )  # bars are 75% opaque on the plot area
    under_ref = 0.88 * bar + 0.12 * np.array(_rgb(REF))  # where the reference's 12% fill covers a bar
    bars = int(sum((np.abs(img - c).max(axis=2) <= 24).sum() for c in (bar, under_ref)))
    outline = int((np.abs(img - np.array(_rgb(REF))).max(axis=2) <= 40).sum())
    # Three histograms of ~480x160 px plot area each: the new rows' bars and the reference outline show.
    assert bars > 12_000, bars
    assert outline > 1_500, outline
    if SAVE_TO:
        out = Path(SAVE_TO)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out)
