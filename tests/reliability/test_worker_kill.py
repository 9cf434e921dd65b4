"""A re-ID worker or the matcher SIGKILLed in the middle of a replay (real footage, the full pipeline).

``run_pipeline.py`` restarts the dead worker; the queues kept what it had not acknowledged. Every closed
tracklet must end in SQL exactly once, and with the same identity as in an undisturbed run of the same
input: the matcher decides in an order fixed by the footage (docs/matcher.md, "Order") and CPU embeddings
do not depend on batching, so a crash may delay decisions but must not change them.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.reliability.helpers import demo_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Both kills land mid-replay (measured: the second by about plaza frame 100-125 of 160), and the run closes 24
# tracklets, 11 of them later chunks of a track
MAX_FRAMES = 160
CAMERAS = ("room-a", "plaza")


def write_config(tmp_path: Path) -> Path:
    # chunks (max_length) so that chunk continuity across a restart is exercised too
    return demo_config(
        tmp_path, tracklets="{max_crops: 8, max_gap: 10, max_length: 50}", extra="reid: {batch_size: 4}\n"
    )


def start(cfg: Path, db: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run_pipeline.py", "--cameras", str(cfg), "--db", f"sqlite:///{db}",
         "--max-frames", str(MAX_FRAMES), "--quiet", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run did not finish in {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return out, err


def sql(db: Path, query: str) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(query).fetchall()
    except sqlite3.OperationalError:  # not migrated yet, or busy
        return []
    finally:
        con.close()


def decisions(db: Path) -> dict[tuple[str, int, int], int]:
    rows = sql(
        db,
        "SELECT t.camera_id, t.track_id, t.chunk, s.identity_id FROM tracklets t "
        "JOIN sightings s ON s.tracklet_id = t.id",
    )
    out = {(c, int(t), int(k)): int(i) for c, t, k, i in rows}
    assert len(out) == len(rows), "a tracklet stored twice"
    return out


def check_exactly_once(db: Path, out: Path) -> dict[tuple[str, int, int], int]:
    written = set()
    for cid in CAMERAS:
        for line in (out / f"{cid}_tracklets.jsonl").read_text().splitlines():
            t = json.loads(line)
            written.add((t["camera"], int(t["track_id"]), int(t["chunk"])))
    got = decisions(db)
    assert set(got) == written, f"missing {written - set(got)}, extra {set(got) - written}"
    (n_t,), (n_e,), (n_s,) = (
        sql(db, f"SELECT count(*) FROM {t}")[0] for t in ("tracklets", "embeddings", "sightings")
    )
    assert n_t == n_e == n_s == len(written)
    (bad,) = sql(db, "SELECT count(*) FROM identities i WHERE num_tracklets != "
                     "(SELECT count(*) FROM sightings s WHERE s.identity_id = i.id)")[0]  # fmt: skip
    assert bad == 0, "identity statistics disagree with the sightings"
    return got


def kill_worker(proc: subprocess.Popen, role: str) -> int:
    """SIGKILL the child of ``run_pipeline.py`` that runs ``role`` (its process name, see pipeline/runtime/compose.py)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.name() == role:
                    os.kill(child.pid, signal.SIGKILL)
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    pytest.fail(f"no {role} process under run_pipeline.py")


def wait_for_sightings(db: Path, proc: subprocess.Popen, n: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        got = sql(db, "SELECT count(*) FROM sightings")
        if got and got[0][0] >= n:
            return got[0][0]
        time.sleep(0.2)
    pytest.fail(f"fewer than {n} sightings in SQL before the run ended (exit {proc.poll()})")


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> dict[tuple[str, int, int], int]:
    tmp = tmp_path_factory.mktemp("undisturbed")
    cfg, db, out = write_config(tmp), tmp / "reid.db", tmp / "out"
    finish(start(cfg, db, out))
    got = check_exactly_once(db, out)
    assert len(got) >= 15 and 1 < len(set(got.values())) < len(got)  # enough to be a real comparison
    return got


@pytest.mark.parametrize("role", ["reid-embedder", "reid-matcher"])
def test_killed_worker_is_restarted_and_identities_equal_an_undisturbed_run(tmp_path, undisturbed, role):
    cfg, db, out = write_config(tmp_path), tmp_path / "reid.db", tmp_path / "out"
    proc = start(cfg, db, out)
    wait_for_sightings(db, proc, 3)  # mid-replay: the cameras are still going
    first = kill_worker(proc, role)
    time.sleep(3)  # let the restarted one pick up, then kill it again while it is working
    wait_for_sightings(db, proc, 8)
    second = kill_worker(proc, role)
    assert second != first
    stdout, _ = finish(proc)
    worker = "reid" if role == "reid-embedder" else "matcher"
    assert f"the {worker} worker was restarted 2 time(s)" in stdout
    got = check_exactly_once(db, out)
    assert got == undisturbed
