"""A live camera's stream dies for a few seconds mid-run: it reconnects, the other camera never stalls."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import shared_path
from tests.reliability.helpers import (
    camera_health,
    check_store,
    demo_config,
    health_events,
    pipeline_args,
    wait_for,
    written_tracklets,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

OUTAGE_S = 4.0  # measured from when SQL first shows the live camera disconnected
FPS = 10  # vtest.avi, both as the replayed file and as the served stream


def test_live_camera_outage_is_survived_and_recorded(tmp_path, stream_server, start_proc):
    vtest = shared_path("data/vtest/vtest.avi")
    cfg = demo_config(
        tmp_path,
        realtime=True,  # the file camera plays at 10 fps: 80 s of footage, interrupted long before its end
        cameras=(
            f'  - {{id: plaza, source: "{vtest}", start_time: "2024-05-14T09:03:00Z"}}\n'
            f'  - {{id: door, source: "{stream_server.url}"}}\n'
        ),
        extra="live: {read_timeout_s: 1.0, reconnect_initial_s: 0.2, reconnect_max_s: 1.0}\n",
    )
    db = f"sqlite:///{tmp_path / 'reid.db'}"
    out = tmp_path / "out"
    server = stream_server.start()
    run = start_proc(pipeline_args(cfg, db, out), "run")

    def health():
        return camera_health(db)

    wait_for(
        lambda: (
            (h := health()).get("door", {}).get("connected") and min(c["frames"] for c in h.values()) >= 20
        ),
        120,
        "both cameras delivering frames",
        alive=run,
    )
    before = health()

    server.kill()
    server.wait(timeout=10)
    killed_at = time.time()
    wait_for(
        lambda: health()["door"]["connected"] == 0, 20, "SQL to show the live camera disconnected", alive=run
    )
    during = health()
    time.sleep(OUTAGE_S)
    late = health()
    assert late["door"]["connected"] == 0, "the live camera looked connected while its server was down"
    # the file camera kept reading at its pace while the live one was down (reports come every 2 s)
    assert late["plaza"]["frames"] - during["plaza"]["frames"] >= FPS * (OUTAGE_S - 2.0) / 2, (during, late)

    stream_server.start()  # a new server on the same port
    wait_for(
        lambda: (h := health()["door"])["connected"] and h["frames"] > during["door"]["frames"],
        40,
        "the live camera to reconnect and deliver frames again",
        alive=run,
    )
    after = health()
    interrupted_at = time.time()
    run.signal(signal.SIGINT)
    assert run.wait(120) == 0, run.stderr()[-3000:]

    final = camera_health(db)
    assert final["door"]["reconnects"] >= before["door"]["reconnects"] + 1
    assert after["door"]["reconnects"] >= 1
    events = [e for t, e in health_events(db, "door") if killed_at <= t <= interrupted_at]
    assert events[:2] == ["disconnected", "reconnected"], events
    plaza_events = [e for t, e in health_events(db, "plaza") if t <= interrupted_at]
    assert plaza_events == [], "the file camera was reported disconnected during the live camera's outage"

    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["cameras"]["plaza"]["frames"] < 795  # interrupted, not finished
    assert summary["cameras"]["door"]["frames"] > 0
    counts = check_store(db, written_tracklets(out, ("plaza", "door")))
    assert summary["tracklets_in_sql"] == counts["tracklets"]
