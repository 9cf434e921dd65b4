"""The web pages in a real browser: Debian's headless chromium driven by selenium, against the real server
(``python -m pipeline.web``) reading a store built like a run writes it (tests/test_web_api.py).

One browser session for the module. Screenshots of each page go to ``$REID_WEB_SCREENSHOTS`` when set, else
to a temporary folder (the docs/web_*.png of docs/web.md are made from a real run by tools/web_screenshots.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from pipeline.web.launch import NoBrowser, offline_chromium, serve_in_background
from storage import repository as repo
from storage.db import open_store
from tests.test_web_api import CAMERAS, REPO, T0, Built, add_person, build_store

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FIRST = ("007", "052", "011")  # stored before the browser opens
LATER = "023"  # written while the pages are open


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return build_store(tmp_path_factory.mktemp("webui") / "run.db", FIRST)


@pytest.fixture(scope="module")
def server(built):
    proc, base = serve_in_background(built.url, refresh_s=1)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    try:
        driver = offline_chromium(1280, 1000, page_load_timeout_s=30)
    except NoBrowser as e:
        pytest.skip(str(e))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("REID_WEB_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _screenshot(browser, shots: Path, name: str) -> None:
    path = shots / f"web_{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000 and cv2.imread(str(path)) is not None


def _loaded_images(browser, selector: str) -> list[tuple[int, int]]:
    """(naturalWidth, naturalHeight) of every image matching ``selector`` once it has finished loading."""
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script(
            f"return [...document.querySelectorAll('{selector}')].every(i => i.complete)"
        )
    )
    return [
        tuple(x)
        for x in browser.execute_script(
            f"return [...document.querySelectorAll('{selector}')].map(i => [i.naturalWidth, i.naturalHeight])"
        )
    ]


def test_identities_page_thumbnails_load(server, browser, shots):
    browser.get(server + "/identities")
    sizes = _loaded_images(browser, "img.thumb")
    assert len(sizes) == len(FIRST)
    assert all(w > 0 and h > 0 for w, h in sizes), sizes  # decoded by the browser
    _screenshot(browser, shots, "identities")


def test_identity_page_draws_the_timeline_and_pictures(server, browser, shots):
    browser.get(server + "/identities/2")
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.sighting")
    assert len(bars) == len(CAMERAS)
    assert all(b.size["width"] > 0 and b.size["height"] > 0 for b in bars)  # laid out and drawn
    assert bars[0].location["y"] != bars[1].location["y"]  # one lane per camera
    sizes = _loaded_images(browser, "img.pic")
    assert len(sizes) == 2 * 4 and all(w > 0 and h > 0 for w, h in sizes)
    assert "matched with similarity" in browser.find_element(By.TAG_NAME, "main").text
    _screenshot(browser, shots, "identity")


def test_cameras_pages_show_health_and_history(server, browser, shots):
    browser.get(server + "/cameras")
    text = browser.find_element(By.ID, "cameras").text
    assert "connected" in text and "disconnected" in text
    _screenshot(browser, shots, "cameras")
    browser.get(server + f"/cameras/cam02?since={T0 + 80:.0f}&until={T0 + 145:.0f}")
    seen = browser.find_elements(By.CSS_SELECTOR, "#seen a[href^='/identities/']")
    assert {a.text for a in seen} >= {"#2", "#3"}
    assert "disconnected" in browser.find_element(By.ID, "history").text
    _screenshot(browser, shots, "camera")


def test_search_finds_the_right_identity_for_a_crop_of_a_known_sighting(
    server, browser, built, shots, tmp_path
):
    crop = tmp_path / "query.png"
    cv2.imwrite(str(crop), built.crops[("011", "cam02")][4])
    browser.get(server + "/search")
    browser.find_element(By.ID, "crop").send_keys(str(crop))
    browser.find_element(By.ID, "find").click()
    first = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.result"))[0]
    assert first.get_attribute("data-identity") == str(built.identities["011"])
    _screenshot(browser, shots, "search")


def test_swagger_ui_shows_the_operations_offline(server, browser, shots):
    browser.get(server + "/docs")
    ops = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    paths = {o.get_attribute("data-path") or o.text for o in ops}
    assert {"/api/identities", "/api/identities/{identity_id}", "/api/search", "/metrics"} <= paths, paths
    assert "reid-pipeline" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(server + "/") for u in loaded), loaded
    _screenshot(browser, shots, "docs")


def test_a_page_open_during_a_run_shows_new_identities(server, browser, built):
    browser.get(server + "/identities")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.identity")) == len(FIRST)
    store = open_store(built.url)  # the run writes a new person while the page is open
    try:
        with store.session() as s:
            add_person(s, built.embedder, built, LATER, len(FIRST), t0=T0)
            s.commit()
    finally:
        store.dispose()
    WebDriverWait(browser, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.identity")) == 4)
    assert browser.find_element(By.CSS_SELECTOR, f"tr[data-identity='{built.identities[LATER]}']")


def _rows(browser) -> int:
    return len(browser.find_elements(By.CSS_SELECTOR, "tr.identity"))


@pytest.mark.slow
def test_pages_follow_a_real_run_as_it_writes(browser, tmp_path):
    """run_pipeline.py on the demo footage writes while the identities page is open: the page shows new
    identities without being navigated, then every identity of the run; the timeline of one is drawn."""
    from tests.test_pipeline_e2e import demo_config

    db = tmp_path / "live.db"
    run = subprocess.Popen(
        [
            sys.executable,
            "run_pipeline.py",
            "--cameras",
            demo_config(tmp_path),
            "--db",
            f"sqlite:///{db}",
            "--max-frames",
            "120",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = None
    try:
        deadline = time.monotonic() + 120
        while not db.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run did not create its store"
            time.sleep(0.5)
        server, base = serve_in_background(f"sqlite:///{db}", refresh_s=1)
        browser.get(base + "/identities")
        before = _rows(browser)
        WebDriverWait(browser, 300, poll_frequency=0.5).until(lambda d: _rows(d) > before)
        grew_during_run = run.poll() is None
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        store = open_store(f"sqlite:///{db}")
        with store.session(readonly=True) as s:
            final = len(repo.list_identities(s))
        store.dispose()
        WebDriverWait(browser, 15).until(lambda d: _rows(d) == final)
        assert grew_during_run, "the page only changed after the run ended"
        browser.get(base + "/identities/1")
        assert browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.sighting")
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(timeout=30)
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
