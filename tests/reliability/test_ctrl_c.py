"""Ctrl-C in the middle of a replay leaves a consistent store; replaying again completes it exactly once.

One scenario, run once for the module: (1) a replay interrupted with SIGINT once its first tracklets are in
SQL, (2) the same footage and settings again, to the end. The store is snapshotted after each run and every
test reads the snapshots. That a further identical replay writes the same tracklets and adds nothing is
asserted in ``tests/test_pipeline_e2e.py`` (``test_full_pipeline_embedded_queue_and_sqlite``).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import test_pipeline_e2e as e2e
from tests.reliability.helpers import (
    Proc,
    check_store,
    demo_config,
    pipeline_args,
    sql_tracklet_count,
    table_counts,
    wait_for,
    written_tracklets,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAMES = 120  # 12 s per camera in real time


@dataclass(frozen=True)
class Replays:
    tmp: Path
    runs: dict[str, Proc]  # run1 (interrupted), run2, both exited
    stores: dict[str, str]  # SQLite URL of the store's snapshot after each run

    def out(self, run: str) -> Path:
        return self.tmp / run


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ctrl-c")
    cfg = demo_config(tmp, realtime=True)
    db_path = tmp / "reid.db"
    db = f"sqlite:///{db_path}"
    runs: dict[str, Proc] = {}
    stores: dict[str, str] = {}

    def replay(name: str) -> Proc:
        runs[name] = Proc(pipeline_args(cfg, db, tmp / name, "--max-frames", str(FRAMES)), tmp / "logs", name)
        return runs[name]

    def snapshot(name: str) -> None:
        path = tmp / f"after-{name}.db"
        with sqlite3.connect(db_path) as src, sqlite3.connect(path) as dst:
            src.backup(dst)
        stores[name] = f"sqlite:///{path}"

    try:
        first = replay("run1")
        wait_for(lambda: sql_tracklet_count(db) >= 1, 120, "a tracklet in SQL", alive=first)
        assert first.poll() is None, "the replay ended before Ctrl-C: the fault came too late"
        first.signal(signal.SIGINT)
        first.wait(120)
        snapshot("run1")
        replay("run2").wait(180)
        snapshot("run2")
        yield Replays(tmp, runs, stores)
    finally:
        for proc in runs.values():
            proc.kill_group()


def test_ctrl_c_exits_cleanly_and_leaves_no_half_written_rows(replays):
    run = replays.runs["run1"]
    assert run.poll() == 0, run.stderr()[-3000:]
    assert "stopping" in run.stdout() and run.stdout().count("tracklets in SQL") == 1  # the summary, once
    summary = json.loads((replays.out("run1") / "summary.json").read_text())
    frames = {c: summary["cameras"][c]["frames"] for c in ("room-a", "plaza")}
    assert all(0 < n < FRAMES for n in frames.values()), f"not interrupted mid-replay: {frames}"
    # every tracklet the cameras flushed is in SQL once, with its embedding and one sighting; the
    # identities' statistics agree with their sightings
    counts = check_store(replays.stores["run1"], written_tracklets(replays.out("run1")))
    assert summary["tracklets_in_sql"] == counts["tracklets"]
    # and through the store's own read API: every identity counted, a timeline to show
    e2e.check_store(replays.stores["run1"], replays.out("run1"))


def test_replaying_again_adds_each_remaining_tracklet_exactly_once(replays):
    run = replays.runs["run2"]
    assert run.poll() == 0, run.stderr()[-3000:]
    interrupted = set(written_tracklets(replays.out("run1")))
    complete = set(written_tracklets(replays.out("run2")))
    remaining = complete - interrupted
    assert remaining, "the interrupted run had already stored everything: nothing left to add"
    before = table_counts(replays.stores["run1"])
    counts = check_store(replays.stores["run2"], interrupted | complete)
    assert counts["tracklets"] == before["tracklets"] + len(remaining)


class CutTracklets(AssertionError):
    """Tracklets in SQL whose span is the interrupted run's, not the complete replay's."""


def test_a_resumed_replay_stores_what_an_uninterrupted_replay_stores(replays):
    if replays.runs["run2"].poll() != 0:
        pytest.fail(
            "the second replay failed; see test_replaying_again_adds_each_remaining_tracklet_exactly_once"
        )
    complete = {}
    for cid in ("room-a", "plaza"):
        for line in (replays.out("run2") / f"{cid}_tracklets.jsonl").read_text().splitlines():
            t = json.loads(line)
            complete[(cid, t["track_id"], t["chunk"])] = (t["first_frame"], t["last_frame"])
    engine = sa.create_engine(replays.stores["run2"], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT camera_id, track_id, chunk, first_frame, last_frame FROM tracklets")
            )
            stored = {(r.camera_id, r.track_id, r.chunk): (r.first_frame, r.last_frame) for r in rows}
    finally:
        engine.dispose()
    cut = {k: (stored.get(k), span) for k, span in complete.items() if stored.get(k) != span}
    if cut:
        raise CutTracklets(
            f"tracklets stored with another span than the complete replay's (stored, complete): {cut}"
        )
