"""Start the web server (``python -m pipeline.web``) as a child process on a free loopback port.

For tools and tests that drive the real server (screenshots, browser tests): ``serve_in_background`` returns
the process and its base URL once ``/api/version`` answers, and raises ``RuntimeError`` when it exits or does
not answer in time. The caller stops the process.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_background(
    db_url: str, *, refresh_s: float, timeout_s: float = 60.0
) -> tuple[subprocess.Popen, str]:
    """``python -m pipeline.web --db DB_URL`` on a free loopback port; (process, ``http://127.0.0.1:PORT``)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "pipeline.web",
        "--db",
        db_url,
        "--port",
        str(port),
        "--refresh",
        f"{refresh_s:g}",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(base + "/api/version", timeout=2).close()
            return proc, base
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=10)
                raise RuntimeError(f"the web server did not start on {base} within {timeout_s:g} s") from None
            time.sleep(0.2)


class NoBrowser(RuntimeError):
    """Debian's chromium or chromium-driver is not installed."""


def offline_chromium(
    width: int, height: int, *, page_load_timeout_s: float = 60.0, hide_scrollbars: bool = False
):
    """Headless Debian chromium driven by selenium, ``width`` x ``height``, offline: no host but 127.0.0.1
    resolves, so a page that needs the Internet shows it. Raises ``NoBrowser`` when chromium or its driver is
    missing. The caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise NoBrowser("needs Debian's chromium and chromium-driver (make setup installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"]
    args += ["--hide-scrollbars"] if hide_scrollbars else []
    for arg in [*args, "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]:
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(page_load_timeout_s)
    return browser
