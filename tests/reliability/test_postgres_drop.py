"""PostgreSQL connections of a full replay terminated, several times, mid-run: writes retry, rows exactly once."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.config import QueueConfig
from tests.reliability.helpers import (
    backends,
    check_store,
    demo_config,
    pipeline_args,
    sql_tracklet_count,
    terminate_backends,
    terminate_writer,
    wait_for,
    written_tracklets,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAMES = 150  # 15 s per camera in real time: room for several rounds of terminations
# The matcher's transaction writes these tables; the camera health reports write only cameras and
# camera_health_events, and the parent's summary is read-only (no transaction id), so neither is hit.
MATCHER_WRITES = r"\m(tracklets|embeddings|identities|sightings)\M"
# the config schema's default, which the full pipeline uses
MAX_DELIVERIES = QueueConfig().max_deliveries


class DeadLettered(AssertionError):
    """Messages went to the dead-letter stream because the database failed, not because they were bad."""


# more failed commits in a row than max_deliveries: a retry must not count as a delivery (the matcher keeps
# the batch in memory and retries it; it never re-reads it through reclaim)
@pytest.mark.parametrize("blows", [2, MAX_DELIVERIES + 1])
def test_postgres_backends_terminated_mid_replay(tmp_path, pg_store, start_proc, blows):
    cfg = demo_config(tmp_path, realtime=True)
    out = tmp_path / "out"
    run = start_proc(pipeline_args(cfg, pg_store.url, out, "--max-frames", str(FRAMES)), "run")
    wait_for(lambda: sql_tracklet_count(pg_store.probe_url) >= 1, 120, "a tracklet in SQL", alive=run)

    # 1. every connection of the run at once, mostly idle in the pools: each is found dead on its next use
    assert run.poll() is None, "the replay ended before the database went away: the fault came too late"
    assert backends(pg_store.application_name) >= 2, "application_name did not reach PostgreSQL"
    idle_killed = terminate_backends(pg_store.application_name)
    assert idle_killed >= 2
    # 2. the matcher's own transaction, `blows` times in a row, each time while it is writing a batch
    in_transaction = []
    for _ in range(blows):
        in_transaction.append(
            terminate_writer(
                pg_store.application_name, MATCHER_WRITES, within_s=60, until=lambda: run.poll() is not None
            )
        )
        time.sleep(0.2)

    assert run.wait(240) == 0, run.stderr()[-3000:]
    print(f"terminated: {idle_killed} idle, {in_transaction} inside a matcher transaction")
    assert sum(in_transaction) >= min(blows, 2), (
        "seldom caught the matcher writing: the fault was not injected"
    )
    stderr = run.stderr()
    assert "matcher transaction failed" in stderr  # the retry path ran
    dead = [line for line in stderr.splitlines() if "dead-lettered" in line]
    if dead:
        raise DeadLettered(f"a database fault sent messages to the dead-letter stream: {dead}")
    counts = check_store(pg_store.probe_url, written_tracklets(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracklets_in_sql"] == counts["tracklets"]
    assert {c: summary["cameras"][c]["frames"] for c in ("room-a", "plaza")} == {
        "room-a": FRAMES,
        "plaza": FRAMES,
    }
