"""Screenshots of the web pages of a real run's store, for docs/web_*.png (docs/web.md).

    python run_pipeline.py --cameras configs/demo.yaml --db sqlite:////tmp/demo.db
    python tools/web_screenshots.py --db sqlite:////tmp/demo.db --out docs

Starts ``python -m pipeline.web`` on a free loopback port, opens each page in Debian's headless chromium
(selenium; every host but 127.0.0.1 unresolvable, as offline) with a window ``--width`` wide, waits until its
pictures are decoded, and writes ``web_identities.png``, ``web_identity.png``, ``web_cameras.png``,
``web_camera.png`` and ``web_search.png`` to ``--out``. The identity page shows ``--identity`` (default: the
identity seen in the most cameras, then with the most sightings); the camera page a camera it was seen in,
over the time it was there; the search page the result for the best stored crop of one of its sightings
(``--sighting``, default: its sighting in another camera than its first), uploaded as a file. Prints what
each page showed. Exit status 2 with one line on a bad argument, a missing browser or an empty store.

Not a test: it makes pictures to look at. ``ROOT`` is put first on ``sys.path`` so that it runs this
checkout's code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.web.launch import NoBrowser, offline_chromium, serve_in_background  # noqa: E402
from storage import repository as repo  # noqa: E402
from storage.db import StoreError, open_store  # noqa: E402


def _shoot(browser, out: Path, name: str, width: int, max_height: int) -> str:
    """Wait for the page's images, size the window to the page (at most ``max_height``), save the PNG;
    returns a line saying what the page showed."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return [...document.images].every(i => i.complete)")
    )
    sizes = browser.execute_script("return [...document.images].map(i => [i.className, i.naturalWidth])")
    broken = sum(1 for _, w in sizes if w == 0)
    height = min(max_height, int(browser.execute_script("return document.documentElement.scrollHeight")))
    browser.set_window_size(width, max(height, 600))
    path = out / f"web_{name}.png"
    browser.save_screenshot(str(path))
    _shrink(path)
    kinds: dict[str, int] = {}
    for cls, _ in sizes:
        kinds[cls or "img"] = kinds.get(cls or "img", 0) + 1
    svg = browser.execute_script("return document.querySelectorAll('svg.timeline rect.sighting').length")
    return f"{path}: {len(sizes)} images {kinds}, {broken} not decoded, {svg} timeline bars"


def _shrink(path: Path) -> None:
    """256 colours, no dithering: a third of the bytes, and still sharp text and pictures in a doc."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    small.save(path, optimize=True)


def _choose(db: str, identity: int | None, sighting: int | None) -> tuple[int, int, str, float, float]:
    """(identity, tracklet of the search query, camera for the camera page, window start, end POSIX s)."""
    store = open_store(db)
    try:
        with store.session(readonly=True) as s:
            identities = repo.list_identities(s)
            if not identities:
                raise ValueError(f"{db}: no identities in the store")
            if identity is None:
                best = max(identities, key=lambda i: (len(i.cameras), i.num_tracklets, -i.identity_id))
                identity = best.identity_id
            timeline = repo.timeline(s, identity)
            if not timeline:
                raise ValueError(f"--identity: identity {identity} has no sightings")
    finally:
        store.dispose()
    first_camera = timeline[0].camera_id
    if sighting is None:
        others = [t for t in timeline if t.camera_id != first_camera] or timeline
        query = max(others, key=lambda t: t.end_time - t.start_time)
        sighting = query.tracklet_id
    query = next((t for t in timeline if t.tracklet_id == sighting), None)
    if query is None:
        raise ValueError(f"--sighting: tracklet {sighting} is not a sighting of identity {identity}")
    start, end = (t.timestamp() for t in (query.start_time, query.end_time))
    return identity, sighting, query.camera_id, start - 30, end + 30


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/web_screenshots.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="SQLAlchemy URL of a run's store")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder for web_*.png (default: docs/)")
    ap.add_argument("--identity", type=int, default=None, help="identity for the identity page")
    ap.add_argument("--sighting", type=int, default=None, help="tracklet whose best crop is searched for")
    ap.add_argument("--width", type=int, default=1400, help="window width in pixels (default 1400)")
    ap.add_argument("--max-height", type=int, default=1600, help="tallest screenshot (default 1600)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        identity, sighting, camera, since, until = _choose(args.db, args.identity, args.sighting)
        proc, base = serve_in_background(args.db, refresh_s=0)
    except (ValueError, StoreError, RuntimeError) as err:
        print(f"web_screenshots: error: {err}", file=sys.stderr)
        return 2
    browser = None
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        browser = offline_chromium(args.width, 1000, hide_scrollbars=True)
        shoot = lambda name: print(_shoot(browser, out, name, args.width, args.max_height))  # noqa: E731
        browser.get(base + "/identities")
        shoot("identities")
        browser.get(f"{base}/identities/{identity}")
        shoot("identity")
        browser.set_window_size(args.width, 1000)
        browser.get(base + "/cameras")
        shoot("cameras")
        browser.set_window_size(args.width, 1000)
        browser.get(f"{base}/cameras/{camera}?since={since:.0f}&until={until:.0f}")
        shoot("camera")
        browser.set_window_size(args.width, 1000)
        with tempfile.TemporaryDirectory() as tmp:
            crop = Path(tmp) / f"tracklet_{sighting}.jpg"
            with urllib.request.urlopen(f"{base}/pictures/{sighting}/crop/0", timeout=10) as r:
                crop.write_bytes(r.read())
            browser.get(base + "/search")
            browser.find_element(By.ID, "crop").send_keys(str(crop))
            browser.find_element(By.ID, "find").click()
            rows = WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.result"))
            top = rows[0].get_attribute("data-identity")
            print(f"search: crop of tracklet {sighting} (identity {identity}) -> first result identity {top}")
            shoot("search")
        print(f"identity page: #{identity}; camera page: {camera} {since:.0f}..{until:.0f}")
    except NoBrowser as err:
        print(f"web_screenshots: error: {err}", file=sys.stderr)
        return 2
    finally:
        if browser is not None:
            browser.quit()
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
