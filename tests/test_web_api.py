"""The web app's JSON API, pages, token rule and credential hiding, through the real app over a real store.

The store is built with the storage API (like the matcher writes it) from real PKU-Reid person crops: one
identity per person, a tracklet in each of its two cameras, embeddings from the project's default
checkpoint (the model the run uses), JPEG crops and an attention picture per tracklet, and camera health.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.pictures import Picture
from pipeline.web.app import TokenRuleError, check_token_rule, create_app
from pipeline.web.search import CropEmbedder
from storage import repository as repo
from storage.db import open_store
from tests.conftest import shared_path
from tests.test_storage import target

FIXTURES = (target,)  # the store on SQLite and PostgreSQL, from tests/test_storage.py

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
PERSONS = ("007", "052", "011", "023")
CAMERAS = ("cam01", "cam02")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Built:
    url: str
    model: str
    tracklets: dict[tuple[str, str], int]  # (person, camera) -> tracklet id
    identities: dict[str, int]  # person -> identity id
    crops: dict[tuple[str, str], list[np.ndarray]]  # (person, camera) -> BGR crops


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def person_crops(person: str, camera: int) -> list[np.ndarray]:
    folder = shared_path("data/pku-reid") / person
    files = sorted(folder.glob(f"0{camera}_*.png"))
    assert files, f"no crops in {folder}"
    return [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files]


def add_person(session, embedder: CropEmbedder, built: Built, person: str, index: int, *, t0: float) -> None:
    """Two tracklets (one per camera) of ``person`` as identity ``index + 1``, embedded with the run's model."""
    import torch

    from models.backbones import preprocess_crops
    from models.sampling import restricted_random_sample

    embedder.embed(person_crops(person, 1)[0], built.model)  # loads the model once
    model = embedder._model
    first = None
    for c, camera in enumerate(CAMERAS):
        crops = person_crops(person, c + 1)
        start = t0 + index * 60 + c * 20
        tid = repo.add_tracklet(
            session,
            session_key="run1",
            camera_id=camera,
            track_id=index,
            chunk=0,
            first_frame=int(start - t0) * 10,
            last_frame=int(start - t0) * 10 + len(crops) - 1,
            start_time=start,
            end_time=start + 8,
            num_frames=len(crops),
            seq=index,
            published_at=start + 9,
        )
        idx = restricted_random_sample(len(crops), int(model.num_frames), train=False)
        with torch.no_grad():
            vector = model.embed(
                preprocess_crops(np.stack([cv2.resize(x, (64, 128)) for x in crops])[idx])[None]
            )
        vector = vector.embeddings[0].numpy()
        repo.add_embedding(
            session, tid, model=built.model, vector=vector, part_visibility=np.ones(4, np.float32)
        )
        overlay = crops[0].copy()
        overlay[:, :, 2] = np.clip(overlay[:, :, 2].astype(int) + 80, 0, 255).astype(np.uint8)
        h, w = crops[0].shape[:2]
        pictures = [Picture("crop", r, r, w, h, _jpeg(crops[r])) for r in range(3)]
        pictures.append(Picture("attention", 0, 0, w, h, _jpeg(overlay)))
        repo.add_pictures(session, tid, pictures)
        identity = index + 1
        repo.ensure_identity(session, identity, created_at=start)
        sim = (
            None if first is None else float(first @ vector / np.linalg.norm(first) / np.linalg.norm(vector))
        )
        repo.add_sighting(session, tid, identity, sim, start + 10)
        repo.update_identity_stats(session, identity)
        first = vector if first is None else first
        built.tracklets[(person, camera)] = tid
        built.crops[(person, camera)] = crops
    built.identities[person] = index + 1


def build_store(path: Path | str, persons=PERSONS, *, t0: float = T0, schema: str | None = None) -> Built:
    """A store at ``path`` (a SQLite file) or at URL ``path`` (in ``schema``) with ``persons`` in two cameras."""
    url = path if isinstance(path, str) else f"sqlite:///{path}"
    store = open_store(url, schema=schema)
    embedder = CropEmbedder()
    built = Built(url, embedder.default_name(), {}, {}, {})
    try:
        with store.session() as s:
            for k, camera in enumerate(CAMERAS):
                view = {"crop": (100, 0, 740, 576), "frame_size": (640, 576)} if k == 1 else {}
                repo.upsert_camera(s, camera, f"rtsp://viewer:s3cret-cam@10.0.0.{k + 1}/stream", t0, **view)
                repo.update_camera_health(
                    s,
                    camera,
                    connected=k == 0,
                    reconnects=k,
                    last_frame_time=t0 + 300,
                    frames=3000 + k,
                    fps=12.5 - k,
                    last_error=None if k == 0 else "timeout reading rtsp://viewer:s3cret-cam@10.0.0.2/stream",
                    now=t0 + 300,
                )
            repo.add_health_event(s, "cam02", event="disconnected", time=t0 + 100, detail="no frame for 5 s")
            repo.add_health_event(s, "cam02", event="reconnected", time=t0 + 130)
            for i, person in enumerate(persons):
                add_person(s, embedder, built, person, i, t0=t0)
            s.commit()
    finally:
        store.dispose()
    built.embedder = embedder
    return built


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return build_store(tmp_path_factory.mktemp("web") / "run.db")


@pytest.fixture(scope="module")
def client(built):
    store = open_store(built.url)
    with TestClient(create_app(store, db_url=built.url, embedder=built.embedder)) as c:
        yield c
    store.dispose()


# ----------------------------------------------------------------------------------------------------
# JSON API


def test_identities_list_everyone_with_cameras_times_and_thumbnail(client, built):
    rows = client.get("/api/identities").json()
    assert sorted(r["identity_id"] for r in rows) == sorted(built.identities.values())
    for r in rows:
        assert r["cameras"] == list(CAMERAS) and r["sightings"] == 2
        assert r["first_seen"] < r["last_seen"]
        pic = client.get(r["thumbnail"])
        assert pic.status_code == 200 and pic.headers["content-type"] == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(pic.content, np.uint8), cv2.IMREAD_COLOR).size > 0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [1, 2, 3, 4]),
        ({"camera": "cam02"}, [1, 2, 3, 4]),
        ({"camera": "nowhere"}, []),  # the empty case
        ({"since": T0 + 61, "until": T0 + 70}, [2]),  # inside person 2's cam01 tracklet
        ({"since": "2026-05-28T20:27:41Z", "until": "2026-05-28T20:28:50"}, [2, 3]),  # ISO, naive = UTC
        ({"since": T0 + 1e6}, []),
        ({"limit": 2}, [3, 4]),  # the newest last seen first
    ],
)
def test_identities_filter_by_camera_and_time_window(client, params, expected):
    got = client.get("/api/identities", params=params)
    assert got.status_code == 200, got.text
    assert sorted(r["identity_id"] for r in got.json()) == expected


@pytest.mark.parametrize("params", [{"since": "yesterday"}, {"since": T0 + 10, "until": T0}])
def test_identities_bad_window_is_422_naming_it(client, params):
    got = client.get("/api/identities", params=params)
    assert got.status_code == 422 and "since" in got.text


def test_identity_has_sightings_with_similarity_and_pictures(client, built):
    ident = client.get("/api/identities/2").json()
    assert ident["cameras"] == list(CAMERAS)
    first, second = ident["sightings"]
    assert first["tracklet_id"] == built.tracklets[("052", "cam01")] and first["similarity"] is None
    assert 0.0 < second["similarity"] <= 1.0
    for s in ident["sightings"]:
        assert len(s["crops"]) == 3 and len(s["attention"]) == 1
        for url in [*s["crops"], *s["attention"]]:
            got = client.get(url)
            assert got.status_code == 200 and got.content[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    "url",
    [
        "/api/identities/999",
        "/pictures/999/crop/0",
        "/pictures/1/crop/99",
        "/pictures/1/nonsense/0",
        "/api/cameras/nowhere",
        "/api/cameras/nowhere/seen",
        "/identities/999",
        "/cameras/nowhere",
    ],
)
def test_unknown_things_are_404(client, url):
    assert client.get(url).status_code == 404


def test_cameras_health_events_and_who_was_seen(client, built):
    cams = {c["camera_id"]: c for c in client.get("/api/cameras").json()}
    assert set(cams) == set(CAMERAS)
    assert cams["cam01"]["connected"] is True and cams["cam01"]["fps"] == 12.5
    assert cams["cam02"]["connected"] is False and cams["cam02"]["events"] == 2
    assert cams["cam01"]["crop"] is None and cams["cam02"]["crop"] == [100, 0, 740, 576]  # a zone of a view
    assert cams["cam02"]["frame_size"] == [640, 576]
    page = client.get("/cameras").text
    assert "whole frame" in page and "crop 100, 0, 740, 576 of the source (640x576)" in page
    history = client.get("/api/cameras/cam02").json()["history"]
    assert [e["event"] for e in history] == ["reconnected", "disconnected"]
    seen = client.get("/api/cameras/cam02/seen", params={"since": T0 + 80, "until": T0 + 145}).json()
    assert [r["identity_id"] for r in seen] == [2, 3]  # cam02 tracklets at T0+80..88 and T0+140..148
    assert client.get("/api/cameras/cam01/seen", params={"until": T0 - 1}).json() == []


def test_version_metrics_and_openapi(client):
    v = client.get("/api/version").json()
    assert v["identities"] == 4 and v["sightings"] == 8
    m = client.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert 'reid_camera_fps{camera="cam01"} 12.5' in text
    assert 'reid_camera_connected{camera="cam02"} 0' in text
    assert "reid_identities 4" in text and "reid_queue_backlog 0" in text
    assert re.search(r"^reid_tracklets_per_second \S+$", text, re.M)
    # every tracklet was published 9 s after it started and decided 10 s after: 1 s delay
    assert 'reid_publish_to_identity_delay_seconds{quantile="0.5"} 1' in text
    paths = client.get("/openapi.json").json()["paths"]
    for p in [
        "/api/identities",
        "/api/identities/{identity_id}",
        "/pictures/{tracklet_id}/{kind}/{rank}",
        "/api/cameras",
        "/api/cameras/{camera_id}",
        "/api/cameras/{camera_id}/seen",
        "/api/search",
        "/api/version",
        "/metrics",
    ]:
        assert p in paths


@pytest.mark.parametrize(
    ("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
def test_api_docs_pages_load_nothing_from_another_host(client, page, script):
    html = client.get(page).text
    assert "://" not in html, "the page names another host"  # no CDN, no fonts, no validator
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert any(u.endswith(script) for u in urls) and (page == "/redoc" or "/openapi.json" in urls)
    for u in urls:
        assert u.startswith("/") and not u.startswith("//"), u
        r = client.get(u)
        assert r.status_code == 200 and len(r.content) > 100, (u, r.status_code)
    assert 'spec-url="/openapi.json"' in html or "url: '/openapi.json'" in html


# ----------------------------------------------------------------------------------------------------
# Find this person


@pytest.mark.parametrize("person", PERSONS)
def test_a_stored_sightings_crop_finds_its_identity_first(client, built, person):
    crop = built.crops[(person, "cam02")][2]
    got = client.post("/api/search", files={"crop": ("crop.jpg", _jpeg(crop), "image/jpeg")})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["model"] == built.model
    assert body["results"][0]["identity_id"] == built.identities[person]


def test_the_search_page_shows_what_was_searched_for(client, built):
    crop = built.crops[(PERSONS[0], "cam02")][2]
    html = client.post("/search", files={"crop": ("crop.jpg", _jpeg(crop), "image/jpeg")}).text
    m = re.search(r'<img id="query" class="thumb" src="data:image/jpeg;base64,([^"]+)"', html)
    assert m, html[-2000:]
    shown = cv2.imdecode(np.frombuffer(base64.b64decode(m.group(1)), np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape[0] == 128 and abs(shown.shape[1] / 128 - crop.shape[1] / crop.shape[0]) < 0.05
    small = cv2.resize(crop, (shown.shape[1], 128), interpolation=cv2.INTER_AREA)
    assert np.abs(shown.astype(int) - small.astype(int)).mean() < 8  # the upload itself, not another picture
    tid = built.tracklets[("007", "cam01")]
    picked = client.get("/search", params={"tracklet_id": tid}).text
    assert f'<img id="query" class="thumb" src="/pictures/{tid}/crop/0"' in picked
    bad = client.post("/search", files={"crop": ("x.jpg", b"not an image", "image/jpeg")}).text
    assert 'id="query"' not in bad and 'id="error"' in bad


def test_picking_a_sighting_finds_its_identity_first(client, built):
    tid = built.tracklets[("023", "cam01")]
    results = client.get("/api/search", params={"tracklet_id": tid}).json()["results"]
    assert results[0]["identity_id"] == built.identities["023"] and results[0]["similarity"] == pytest.approx(
        1.0
    )
    assert client.get("/api/search", params={"tracklet_id": 999}).status_code == 404


def test_an_upload_that_is_not_an_image_is_422(client):
    got = client.post("/api/search", files={"crop": ("x.jpg", b"not an image", "image/jpeg")})
    assert got.status_code == 422


def test_another_runs_model_is_said_to_be_unavailable(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    with store.session() as s:
        tid = repo.add_tracklet(
            s,
            session_key="r",
            camera_id="c",
            track_id=1,
            chunk=0,
            first_frame=0,
            last_frame=1,
            start_time=T0,
            end_time=T0 + 1,
            num_frames=2,
        )
        repo.add_embedding(s, tid, model="some_other_net@0123456789ab", vector=np.ones(8, np.float32))
        repo.ensure_identity(s, 1, created_at=T0)
        repo.add_sighting(s, tid, 1, None, T0)
        s.commit()
    crop = np.full((128, 64, 3), 127, np.uint8)
    with TestClient(create_app(store)) as c:
        got = c.post("/api/search", files={"crop": ("c.jpg", _jpeg(crop), "image/jpeg")})
        assert got.status_code == 409 and "some_other_net@0123456789ab" in got.json()["detail"]
        assert "not available" in got.json()["detail"] or "cannot be embedded" in got.json()["detail"]
        # picking a sighting needs no model
        assert c.get("/api/search", params={"tracklet_id": tid}).json()["results"][0]["identity_id"] == 1
    store.dispose()


def test_an_empty_store_shows_empty_pages(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    with TestClient(create_app(store)) as c:
        assert c.get("/api/identities").json() == [] and c.get("/api/cameras").json() == []
        for url in ("/", "/identities", "/cameras", "/search"):
            assert c.get(url).status_code == 200
        got = c.post(
            "/api/search", files={"crop": ("c.jpg", _jpeg(np.zeros((64, 32, 3), np.uint8)), "image/jpeg")}
        )
        assert got.json()["results"] == []
        assert "reid_identities 0" in c.get("/metrics").text
    store.dispose()


# ----------------------------------------------------------------------------------------------------
# Pages


def test_pages_render_thumbnails_chart_and_health(client, built):
    html = client.get("/identities").text
    assert html.count('class="thumb"') == 4
    page = client.get("/identities/1").text
    assert "<svg" in page and page.count('class="sighting"') == 2 and "similarity" in page
    assert client.get("/cameras").text.count('class="camera"') == 2
    cam = client.get("/cameras/cam02", params={"since": T0 + 80, "until": T0 + 145}).text
    assert "disconnected" in cam and "/identities/2" in cam and '/identities/1"' not in cam
    found = client.get("/search", params={"tracklet_id": built.tracklets[("007", "cam01")]}).text
    assert 'class="result" data-identity="1"' in found


# ----------------------------------------------------------------------------------------------------
# Token rule and credentials


@pytest.mark.parametrize(
    ("host", "token", "ok"),
    [
        ("127.0.0.1", None, True),
        ("localhost", None, True),
        ("::1", None, True),
        ("0.0.0.0", None, False),
        ("192.168.1.5", "", False),
        ("0.0.0.0", "t0k", True),
    ],
)
def test_token_rule(host, token, ok):
    if ok:
        check_token_rule(host, token)
    else:
        with pytest.raises(TokenRuleError, match="token"):
            check_token_rule(host, token)


def test_with_a_token_every_request_needs_it(built):
    store = open_store(built.url)
    with TestClient(create_app(store, token="sekrit-tok", embedder=built.embedder)) as c:
        for url in ("/api/identities", "/metrics", "/openapi.json", "/identities", "/pictures/1/crop/0"):
            assert c.get(url).status_code == 401
        assert c.get("/api/identities", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/identities", headers={"Authorization": "Bearer sekrit-tok"}).status_code == 200
        assert c.get("/api/identities", headers={"X-Reid-Token": "sekrit-tok"}).status_code == 200
        # ?token= works once and leaves a cookie, so a browser's pictures and links follow
        assert c.get("/identities?token=sekrit-tok").status_code == 200
        assert c.get("/pictures/1/crop/0").status_code == 200
    store.dispose()


@pytest.mark.filterwarnings("ignore:Query string argument")
def test_credentials_never_reach_a_page_or_an_error(built, tmp_path):
    db = tmp_path / "cred.db"
    db.write_bytes(Path(built.url.removeprefix("sqlite:///")).read_bytes())
    url = f"sqlite:///{db}?password=hunter2-db"
    store = open_store(url)
    with TestClient(create_app(store, db_url=url, embedder=built.embedder)) as c:
        bodies = [
            c.get(u).text
            for u in (
                "/identities",
                "/cameras",
                "/cameras/cam02",
                "/api/cameras",
                "/api/cameras/cam02",
                "/identities/1",
                "/search",
            )
        ]
        assert any("password=***" in b for b in bodies)  # the footer shows the redacted URL
        assert any("viewer:***@10.0.0.2" in b for b in bodies)  # camera sources and errors are redacted
        store.engine.dispose()
        db.unlink()  # the next query fails inside the driver
        db.mkdir()
        got = c.get("/api/identities")
        assert got.status_code == 500
        bodies.append(got.text)
    for b in bodies:
        assert "hunter2-db" not in b and "s3cret-cam" not in b
    store.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.web", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_real_server_serves_metrics_and_logs_no_secret(built):
    port = _free_port()
    proc = _start(["--db", built.url, "--port", str(port), "--token", "tok-in-log"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics?token=tok-in-log", timeout=2
                ) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert "reid_identities 4" in body and "reid_camera_fps" in body
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "GET /metrics?token=***" in out and "tok-in-log" not in out


def test_listening_beyond_loopback_without_a_token_refuses_in_one_line(built):
    env = {k: v for k, v in os.environ.items() if k != "REID_WEB_TOKEN"}
    proc = _start(["--db", built.url, "--host", "0.0.0.0", "--port", str(_free_port())], env=env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out.strip().count("\n") == 0 and out.startswith(
        "error: refusing to listen on 0.0.0.0 without a token"
    )


def test_a_missing_database_is_one_line_without_the_password(tmp_path):
    proc = _start(["--db", f"sqlite:///{tmp_path / 'none.db'}?password=pw-xyz", "--port", str(_free_port())])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and out.startswith("error: no database at") and "pw-xyz" not in out


def test_the_api_on_each_database(target):
    """The queries behind the pages on SQLite and on PostgreSQL (the production store)."""
    built = build_store(target.url, PERSONS[:2], schema=target.schema)
    store = open_store(target.url, schema=target.schema)
    try:
        with TestClient(create_app(store, db_url=target.url, embedder=built.embedder)) as c:
            rows = c.get("/api/identities", params={"camera": "cam01", "since": T0 + 61}).json()
            assert [r["identity_id"] for r in rows] == [2]
            assert c.get(rows[0]["thumbnail"]).content[:3] == b"\xff\xd8\xff"
            sightings = c.get("/api/identities/2").json()["sightings"]
            assert [s["similarity"] is None for s in sightings] == [True, False]
            seen = c.get("/api/cameras/cam02/seen", params={"since": T0, "until": T0 + 30}).json()
            assert [r["identity_id"] for r in seen] == [1]
            assert c.get("/api/cameras/cam02").json()["history"][0]["event"] == "reconnected"
            metrics = c.get("/metrics").text
            assert "reid_identities 2" in metrics
            rate = re.search(r"^reid_tracklets_per_second (\S+)$", metrics, re.M)
            assert float(rate.group(1)) > 0  # the 4 tracklets were stored a moment ago
            crop = built.crops[("052", "cam01")][3]
            got = c.post("/api/search", files={"crop": ("c.jpg", _jpeg(crop), "image/jpeg")}).json()
            assert got["results"][0]["identity_id"] == 2
            for url in ("/identities", "/identities/1", "/cameras", "/cameras/cam01"):
                assert c.get(url).status_code == 200
    finally:
        store.dispose()
