"""The sample resolver: shared copies first, else a sha256-checked download into the cache, else a clear error."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial

import pytest

from models import samples
from models.samples import Sample, resolve_sample, sample_key


@pytest.mark.parametrize(
    "path, key",
    [
        ("../../shared/data/vtest/vtest.avi", "data/vtest/vtest.avi"),
        (
            "/x/shared/assets/detectors/yolo11n_int8_openvino_model/",
            "assets/detectors/yolo11n_int8_openvino_model",
        ),
        ("/x/shared/data/vtest/other.avi", None),
        ("/videos/cam1.mp4", None),
        ("", None),
    ],
)
def test_sample_key(path, key):
    assert sample_key(path) == key


def test_existing_and_unknown_paths_are_unchanged(tmp_path):
    f = tmp_path / "shared" / "data" / "vtest" / "vtest.avi"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    assert resolve_sample(str(f)) == str(f)
    assert resolve_sample("/nowhere/cam.mp4") == "/nowhere/cam.mp4"


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_missing_sample_is_downloaded_checked_and_cached(tmp_path, http_root, monkeypatch):
    root, base = http_root
    payload = b"some video bytes" * 100
    (root / "clip.avi").write_bytes(payload)
    monkeypatch.setitem(
        samples.SAMPLES, "data/demo/clip.avi", Sample(f"{base}/clip.avi", hashlib.sha256(payload).hexdigest())
    )
    cache = tmp_path / "cache"
    got = resolve_sample(tmp_path / "shared" / "data" / "demo" / "clip.avi", cache_dir=cache)
    assert open(got, "rb").read() == payload and got.startswith(str(cache))
    (root / "clip.avi").unlink()  # second call: served from the cache, no network
    assert resolve_sample(tmp_path / "shared" / "data" / "demo" / "clip.avi", cache_dir=cache) == got


def test_a_folder_sample_downloads_every_file(tmp_path, http_root, monkeypatch):
    root, base = http_root
    files = {"m.xml": b"<xml/>", "m.bin": b"\x00\x01" * 50}
    for name, data in files.items():
        (root / name).write_bytes(data)
    entry = {n: Sample(f"{base}/{n}", hashlib.sha256(d).hexdigest()) for n, d in files.items()}
    monkeypatch.setitem(samples.SAMPLES, "assets/demo_openvino_model", entry)
    got = resolve_sample(tmp_path / "shared" / "assets" / "demo_openvino_model", cache_dir=tmp_path / "c")
    assert sorted(p.name for p in __import__("pathlib").Path(got).iterdir()) == ["m.bin", "m.xml"]


def test_wrong_hash_and_offline_are_clear_errors(tmp_path, http_root, monkeypatch):
    root, base = http_root
    (root / "clip.avi").write_bytes(b"tampered")
    monkeypatch.setitem(samples.SAMPLES, "data/demo/clip.avi", Sample(f"{base}/clip.avi", "0" * 64))
    with pytest.raises(ValueError, match="sha256"):
        resolve_sample(tmp_path / "shared" / "data" / "demo" / "clip.avi", cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").rglob("clip.avi"))  # nothing half-written kept
    monkeypatch.setitem(
        samples.SAMPLES, "data/demo/gone.avi", Sample("http://127.0.0.1:9/gone.avi", "0" * 64)
    )
    with pytest.raises(
        FileNotFoundError, match=r"gone\.avi is missing and could not be fetched.*127\.0\.0\.1:9"
    ):
        resolve_sample(tmp_path / "shared" / "data" / "demo" / "gone.avi", cache_dir=tmp_path / "c")
