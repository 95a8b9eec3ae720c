"""End to end in a real browser: Playwright drives Debian's Chromium against `streamlit run app.py`.

Walks the demo a user would: train the MNIST demo, compute Grad-Dot, pick a test prediction and see
its supporting examples, flag a training example, export the pruned lists, and read the export back.
Screenshots of each page go to `test-artifacts/e2e/` for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "e2e"
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: run `apt-get install chromium` (.ci/run does).")
    workspace = tmp_path_factory.mktemp("ws")
    port = free_port()
    env = {**os.environ, "TDA_WORKSPACE": str(workspace), "TDA_WORKERS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
    ]
    log = open(workspace / "streamlit.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start; log: {(workspace / 'streamlit.log').read_text()[-2000:]}")
    yield {"url": url, "workspace": workspace, "chromium": chromium}
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=server["chromium"],
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 1700}, accept_downloads=True)
        pg.set_default_timeout(120_000)
        yield pg
        browser.close()


def open_page(page, name: str) -> None:
    page.get_by_role("link", name=name).first.click()
    page.get_by_role("heading", name=name).first.wait_for()


def settle(page) -> None:
    """Wait until Streamlit has finished running the script (no 'Running...' status widget)."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")


def test_walk_the_demo(server, page):
    page.goto(server["url"])
    page.get_by_role("heading", name="Setup").wait_for()
    page.screenshot(path=str(SHOTS / "01-setup-empty.png"), full_page=True)

    # Train the MNIST demo (defaults: mnist5k, mlp, 1 seed).
    page.get_by_role("button", name="Train (or reuse the cached run)").click()
    page.get_by_text("Current run").wait_for()
    # Compute Grad-Dot.
    page.get_by_role("button", name="Compute (or reuse cached scores)").click()
    page.get_by_text("500 × 4000 scores").wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "02-setup-trained.png"), full_page=True)

    # Pick a test prediction: choose the 3rd row of the prediction table via the id selectbox.
    open_page(page, "Attribution")
    page.get_by_text("Supporting (help the prediction)").first.wait_for()
    settle(page)
    select = page.locator('[data-testid="stSelectbox"]').filter(has_text="Test prediction")
    select.click()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    settle(page)
    # The first test example (mnist5k-00004) is no longer the query; its caption is gone.
    page.get_by_text("mnist5k-00004 · label").first.wait_for(state="detached")
    page.screenshot(path=str(SHOTS / "03-attribution.png"), full_page=True)
    assert page.locator('[data-testid="stImage"]').count() >= 17  # query + 8 supporting + 8 opposing

    # Flag the most suspicious training example on the Mislabels page.
    open_page(page, "Mislabels")
    settle(page)
    page.get_by_text("Most suspicious training examples").wait_for()
    combo = page.get_by_role("combobox", name="Examples")
    combo.click()
    combo.press_sequentially("mnist5k-")  # typing opens the option list
    option = page.get_by_role("option", name=re.compile(r"^mnist5k-\d+$")).first
    flagged_id = option.inner_text().strip()
    option.click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Flag", exact=True).click()
    page.get_by_text("1 flagged in this run").wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "04-mislabels.png"), full_page=True)

    # Prune by Grad-Dot usefulness on the validation set, export, and read the export back.
    open_page(page, "Pruning & export")
    page.get_by_role("button", name="Compute grad_dot scores on the validation set").click()
    page.get_by_role("button", name="Write to workspace exports/").wait_for()
    settle(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    downloaded = pd.read_csv(download.value.path(), dtype={"id": str})
    page.get_by_role("button", name="Write to workspace exports/").click()
    page.get_by_text("Written at").wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "05-pruning.png"), full_page=True)

    exports = server["workspace"] / "exports"
    parquet = next(exports.glob("*removed.parquet"))
    table = pd.read_parquet(parquet)
    assert len(table) == 4000 and (table["status"] == "removed").sum() == 400  # default 10%
    assert table["id"].is_unique and table["id"].str.startswith("mnist5k-").all()
    # The browser download and the workspace export hold the same rows.
    assert downloaded["id"].tolist() == table["id"].tolist()
    assert downloaded["status"].tolist() == table["status"].tolist()
    flagged = table[table["flagged"]]
    assert len(flagged) == 1 and flagged["id"].iloc[0] == flagged_id
    kept = pd.read_csv(next(exports.glob("*-kept.csv")), dtype={"id": str})
    assert set(kept["id"]) == set(table.loc[table["status"] == "kept", "id"])

    # The map draws (UMAP of penultimate features).
    open_page(page, "Map")
    page.locator(".js-plotly-plot").first.wait_for(timeout=240_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "06-map.png"), full_page=True)
