"""run_pipeline.py end to end on real footage: embedded queue + SQLite, and real Redis + real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from storage import repository as repo
from storage.db import open_store
from tests.conftest import REPO, pg_unreachable, redis_unreachable, shared_path
from tests.reliability.helpers import written_tracklets

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def demo_config(tmp_path, prefix: str = "reid") -> str:
    room_a = shared_path("data/intel-sample-videos/one-by-one-person-detection.mp4")
    plaza = shared_path("data/vtest/vtest.avi")
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    p = tmp_path / "cams.yaml"
    p.write_text(
        f"""
cameras:
  - {{id: room-a, source: "{room_a}", start_time: "2024-05-14T09:00:00Z"}}
  - {{id: plaza, source: "{plaza}", start_time: "2024-05-14T09:03:00Z"}}
detector: {{weights: "{det}", conf: 0.35}}
tracklets: {{max_crops: 8, max_gap: 10}}
topology:
  links: [{{cameras: [room-a, plaza], min_transit_s: 10, max_transit_s: 600}}]
queue: {{stream_prefix: "{prefix}"}}
"""
    )
    return str(p)


def run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "run_pipeline.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def check_store(url: str, out_dir) -> dict:
    """Every closed tracklet the cameras wrote is in SQL exactly once, with exactly one identity."""
    written = sum(
        len((out_dir / f"{cid}_tracklets.jsonl").read_text().splitlines()) for cid in ("room-a", "plaza")
    )
    store = open_store(url)
    try:
        with store.session(readonly=True) as s:
            counts = repo.counts(s)
            identities = repo.list_identities(s)
            timeline = repo.timeline(s, identities[0].identity_id) if identities else []
    finally:
        store.dispose()
    assert written > 0
    assert counts["tracklets"] == written
    assert counts["sightings"] == written
    assert counts["embeddings"] == written
    assert 1 <= counts["identities"] <= written
    assert sum(i.num_tracklets for i in identities) == written
    assert timeline and all(t.start_time <= t.end_time for t in timeline)
    return counts


@pytest.mark.slow
def test_full_pipeline_embedded_queue_and_sqlite(tmp_path):
    cfg = demo_config(tmp_path)
    db = f"sqlite:///{tmp_path / 'reid.db'}"
    out = tmp_path / "out"
    r = run("--cameras", cfg, "--db", db, "--max-frames", "80", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "identities:" in r.stdout and "seen in 2+ cameras" in r.stdout
    assert r.stdout.count("tracklets in SQL:") == 1 and r.stdout.count("camera  ") == 1  # the summary, once
    counts = check_store(db, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracklets_in_sql"] == counts["tracklets"]
    assert summary["cameras"]["plaza"]["frames"] == 80
    # the threshold the run used and its camera centering (on by default: the checkpoint records a prior)
    assert summary["matcher_threshold"]["camera_centering"].startswith("on (camera means")
    assert "camera centering on" in r.stdout
    # the operator's commands on the same store
    q = run("query", "identities", "--db", db)
    assert q.returncode == 0 and f"({counts['identities']} identities)" in q.stdout
    plot = tmp_path / "tl.png"
    q = run("query", "timeline", "--db", db, "--identity", "1", "--plot", str(plot))
    assert q.returncode == 0 and "sightings)" in q.stdout and plot.stat().st_size > 5000
    # replaying the same footage with the same settings again is idempotent: the replay itself is
    # deterministic (the same tracklets, in the same order), and its keys are the same, so nothing is added
    r2 = run("--cameras", cfg, "--db", db, "--max-frames", "80", "--quiet", "--out", str(tmp_path / "out2"))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert written_tracklets(tmp_path / "out2") == written_tracklets(out)
    store = open_store(db)
    with store.session(readonly=True) as s:
        again = repo.counts(s)
    store.dispose()
    for table in ("tracklets", "embeddings", "identities", "sightings", "cameras"):
        assert again[table] == counts[table], table
    # other settings (here: fewer frames) are another replay: its tracklets are added, the old ones untouched
    r3 = run("--cameras", cfg, "--db", db, "--max-frames", "40", "--quiet", "--out", str(tmp_path / "out3"))
    assert r3.returncode == 0, r3.stderr[-3000:]
    store = open_store(db)
    with store.session(readonly=True) as s:
        assert repo.counts(s)["tracklets"] > counts["tracklets"]
    store.dispose()


@pytest.mark.slow
def test_full_pipeline_redis_and_postgresql(tmp_path):
    if reason := redis_unreachable() or pg_unreachable():
        pytest.skip(reason)
    import psycopg

    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    # passwords in both URLs (trust auth and a password-less Redis accept them): they must never be printed
    url = f"postgresql://postgres:s3cretpg@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    try:
        cfg = demo_config(tmp_path, prefix=prefix)
        out = tmp_path / "out"
        r = run(
            "--cameras", cfg, "--db", url, "--redis", "redis://:s3cretredis@127.0.0.1:6379/0",
            "--max-frames", "60", "--out", str(out),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        check_store(url, out)
        everything = (
            r.stdout
            + r.stderr
            + "".join(p.read_text() for p in out.iterdir() if p.suffix in (".json", ".jsonl"))
        )
        assert "s3cret" not in everything
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_worker_roles_need_redis(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras:\n  - {id: a, source: x.mp4}\n")
    r = run("worker", "reid", "--cameras", str(cfg), timeout=120)
    assert r.returncode == 2 and "Redis" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, expect",
    [
        (
            ["query", "timeline", "--db", "sqlite:///{tmp}/x.db", "--identity", "1", "--since", "noon"],
            "--since",
        ),
        (["query", "identities", "--db", "postgresql://bob:hunter2@127.0.0.1:1/none"], "***"),
    ],
)
def test_query_errors_are_one_line_and_hide_secrets(tmp_path, args, expect):
    r = run(*[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=120)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and expect in last
    assert "hunter2" not in r.stderr + r.stdout


@pytest.mark.slow
def test_worker_roles_against_one_redis_and_one_database(tmp_path):
    """The multi-machine deployment on one machine: matcher, re-ID and camera roles as separate commands."""
    import signal
    import time

    if reason := redis_unreachable():
        pytest.skip(reason)
    prefix = f"roles-{uuid.uuid4().hex[:8]}"
    cfg = demo_config(tmp_path, prefix=prefix)
    db = f"sqlite:///{tmp_path / 'roles.db'}"
    common = ["--cameras", cfg, "--db", db, "--redis", "redis://127.0.0.1:6379/0", "--quiet"]

    def start(role):
        return subprocess.Popen(
            [sys.executable, "run_pipeline.py", "worker", role, *common],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    servers = [start("matcher"), start("reid")]
    try:
        cam = subprocess.run(
            [sys.executable, "run_pipeline.py", "worker", "camera", *common, "--max-frames", "50"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert cam.returncode == 0, cam.stderr[-3000:]
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        # entries ever added: the re-ID worker deletes each entry once it has acknowledged it
        published = int(client.xinfo_stream(f"{prefix}:tracklets")["entries-added"])
        assert published > 0
        store = open_store(db)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with store.session(readonly=True) as s:
                if repo.counts(s)["sightings"] >= published:
                    break
            time.sleep(1)
        with store.session(readonly=True) as s:
            counts = repo.counts(s)
        store.dispose()
        assert counts["tracklets"] == counts["sightings"] == published
        for p in servers:
            assert p.poll() is None  # servers keep serving until told to stop
            p.send_signal(signal.SIGTERM)
        for p in servers:
            p.wait(timeout=120)
            assert p.returncode == 0, p.stderr.read()[-3000:]
    finally:
        for p in servers:
            if p.poll() is None:
                p.kill()
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
