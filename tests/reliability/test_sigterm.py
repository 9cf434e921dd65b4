"""SIGTERM in the middle of a replay, to the parent alone or to its whole process group, is a Ctrl-C.

As in ``test_ctrl_c.py``: a real-time replay is stopped once its first tracklets are in SQL. It must exit 0
after the same ordered shutdown (cameras stop, queues drain into SQL), restart no worker, print its summary
once, and leave every tracklet the cameras flushed in SQL exactly once.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.reliability.helpers import (
    CAMERAS,
    check_store,
    demo_config,
    pipeline_args,
    sql_tracklet_count,
    wait_for,
    written_tracklets,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAMES = 120  # 12 s per camera in real time


@pytest.mark.parametrize("target", ["parent", "group"])
def test_sigterm_shuts_down_like_ctrl_c(tmp_path, start_proc, target):
    cfg = demo_config(tmp_path, realtime=True)
    db = f"sqlite:///{tmp_path / 'reid.db'}"
    out = tmp_path / "out"
    run = start_proc(pipeline_args(cfg, db, out, "--max-frames", str(FRAMES)), "run")
    wait_for(lambda: sql_tracklet_count(db) >= 1, 120, "a tracklet in SQL", alive=run)
    assert run.poll() is None, "the replay ended before SIGTERM: the fault came too late"
    if target == "parent":
        run.signal(signal.SIGTERM)
    else:  # what systemd, docker stop or a terminal hang-up do: every process of the group gets it
        os.killpg(run.pgid, signal.SIGTERM)
    code = run.wait(120)

    stdout, stderr = run.stdout(), run.stderr()
    assert code == 0, stderr[-3000:]
    assert "stopping (SIGTERM)" in stdout
    assert "restarting" not in stderr + stdout and "restarted" not in stdout
    assert stdout.count("tracklets in SQL:") == 1, "the summary must be printed exactly once"
    summary = json.loads((out / "summary.json").read_text())
    frames = {c: summary["cameras"][c]["frames"] for c in CAMERAS}
    assert all(0 < n < FRAMES for n in frames.values()), f"not interrupted mid-replay: {frames}"
    counts = check_store(db, written_tracklets(out))
    assert summary["tracklets_in_sql"] == counts["tracklets"] > 0
