"""A Redis restart in the middle of a full replay: nothing acknowledged is lost, nothing is left pending."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.transport.queues import dead_letter_stream
from tests.reliability.helpers import check_store, demo_config, pipeline_args, wait_for, written_tracklets

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PREFIX = "rel"
TRACKLETS, EMBEDDINGS = f"{PREFIX}:tracklets", f"{PREFIX}:embeddings"
FRAMES = 150  # 15 s per camera in real time: the restart falls well inside the replay



def published(client, stream: str) -> int:
    """Entries ever added to ``stream``: its length says nothing, the workers delete what they acknowledged."""
    return int(client.xinfo_stream(stream)["entries-added"])


def test_redis_restart_mid_replay(tmp_path, private_redis, start_proc):
    cfg = demo_config(tmp_path, prefix=PREFIX, realtime=True)
    db = f"sqlite:///{tmp_path / 'reid.db'}"
    out = tmp_path / "out"
    run = start_proc(
        pipeline_args(cfg, db, out, "--redis", private_redis.url, "--max-frames", str(FRAMES)), "run"
    )
    client = private_redis.client()
    wait_for(
        lambda: client.exists(TRACKLETS) and published(client, TRACKLETS) >= 1,
        120,
        "a published tracklet",
        alive=run,
    )
    # Stop it, if we can catch one, while an entry is delivered but not yet acknowledged (the re-ID worker
    # is embedding it, or the matcher committing it): that entry must survive in the group's pending list.
    in_flight = _wait_for_in_flight(client, within_s=8.0)
    published_before = published(client, TRACKLETS)
    client.close()

    private_redis.stop()  # SIGTERM: AOF flushed, every client's connection closed
    assert run.poll() is None, "the replay ended before Redis was stopped: the fault came too late"
    time.sleep(3.0)  # cameras, re-ID worker and matcher all retry against a dead server meanwhile
    private_redis.start()  # same port, same directory: the AOF brings back streams, groups, pending entries

    assert run.wait(240) == 0, run.stderr()[-3000:]
    assert "unreachable" in run.stderr(), "no worker noticed the restart: the fault was not injected"
    counts = check_store(db, written_tracklets(out))  # nothing acknowledged lost, nothing twice
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracklets_in_sql"] == counts["tracklets"]
    assert {c: summary["cameras"][c]["frames"] for c in ("room-a", "plaza")} == {
        "room-a": FRAMES,
        "plaza": FRAMES,
    }

    print(f"stopped Redis with {published_before} tracklets published, in flight: {in_flight}")
    client = private_redis.client()
    try:
        assert published(client, TRACKLETS) > published_before, "nothing was published after the restart"
        for stream, group in ((TRACKLETS, "reid"), (EMBEDDINGS, "matcher")):
            [info] = [g for g in client.xinfo_groups(stream) if g["name"] == group.encode()]
            assert info["pending"] == 0, f"{stream}/{group}: entries delivered but never acknowledged"
            assert info["lag"] == 0, f"{stream}/{group}: entries never delivered"
            assert client.xlen(dead_letter_stream(stream)) == 0
    finally:
        client.close()


def _wait_for_in_flight(client, within_s: float) -> dict[str, int]:
    """Poll both groups' pending counts for up to ``within_s``; return them once one is non-zero."""
    deadline = time.monotonic() + within_s
    while True:
        pending = {
            f"{stream}/{group}": client.xpending(stream, group)["pending"] if client.exists(stream) else 0
            for stream, group in ((TRACKLETS, "reid"), (EMBEDDINGS, "matcher"))
        }
        if any(pending.values()) or time.monotonic() > deadline:
            return pending
        time.sleep(0.01)
