"""Start the web server (``python -m pipeline.web``) as a child process on a free loopback port.

For tools and tests that drive the real server (screenshots, browser tests): ``serve_in_background`` returns
the process and its base URL once ``/api/version`` answers, and raises ``RuntimeError`` when it exits or does
not answer in time. The caller stops the process.
"""

from __future__ import annotations

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
