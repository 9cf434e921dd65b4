"""The end-of-run summary: per-camera figures, what reached SQL, the identities seen in several cameras.

One table printer for every command that runs cameras (the full run and ``--until tracklets``); each run
prints its summary exactly once, after every worker has stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.camera.loop import CameraReport

if TYPE_CHECKING:
    from pipeline.runtime.compose import MatchingThreshold

MAX_LISTED_IDENTITIES = 20


def camera_summary(reports: Mapping[str, CameraReport]) -> dict[str, dict[str, Any]]:
    """``{camera_id: {"frames", "tracklets", "fps" (2 decimals), "error"}}``, JSON-ready, in camera order."""
    return {
        cid: {"frames": r.frames, "tracklets": r.tracklets, "fps": round(r.fps, 2), "error": r.error}
        for cid, r in reports.items()
    }


def pipeline_summary(
    store, reports: Mapping[str, CameraReport], *, wall_s: float, threshold: MatchingThreshold
) -> dict[str, Any]:
    """The full run's summary (JSON-ready): ``cameras`` (see :func:`camera_summary`), ``tracklets_in_sql``,
    ``identities``, ``identities_in_2plus_cameras``, the first ``MAX_LISTED_IDENTITIES`` of those as
    ``multi_camera_identities``, the ``matcher_threshold`` used (value, where it came from, and the camera centering) and
    ``wall_s``. Reads the store in one read-only session."""
    from storage import repository as repo

    with store.session(readonly=True) as s:
        identities = repo.list_identities(s)
        counts = repo.counts(s)
    multi = [i for i in identities if len(i.cameras) >= 2]
    return {
        "cameras": camera_summary(reports),
        "tracklets_in_sql": counts["tracklets"],
        "identities": len(identities),
        "identities_in_2plus_cameras": len(multi),
        "multi_camera_identities": [
            {"identity": i.identity_id, "cameras": list(i.cameras), "tracklets": i.num_tracklets}
            for i in multi[:MAX_LISTED_IDENTITIES]
        ],
        "matcher_threshold": {
            "value": round(threshold.value, 4),
            "source": threshold.source,
            "camera_centering": threshold.centering,
        },
        "wall_s": round(wall_s, 1),
    }


def print_camera_table(cameras: Mapping[str, Mapping[str, Any]]) -> None:
    """One row per camera of a :func:`camera_summary`; a camera that ended on an error says why."""
    print(f"{'camera':<16}{'frames':>8}{'tracklets':>11}{'fps':>8}")
    for cid, c in cameras.items():
        print(
            f"{cid:<16}{c['frames']:>8}{c['tracklets']:>11}{c['fps']:>8.1f}"
            + (f"  ! {c['error']}" if c["error"] else "")
        )


def print_summary(summary: Mapping[str, Any]) -> None:
    """Print a :func:`pipeline_summary`: the camera table, the totals, the multi-camera identities."""
    print()
    print_camera_table(summary["cameras"])
    print(
        f"tracklets in SQL: {summary['tracklets_in_sql']}   identities: {summary['identities']}   "
        f"seen in 2+ cameras: {summary['identities_in_2plus_cameras']}   wall time: {summary['wall_s']} s"
    )
    t = summary["matcher_threshold"]
    print(f"matcher threshold: {t['value']:g} ({t['source']}); camera centering {t['camera_centering']}")
    for i in summary["multi_camera_identities"]:
        print(f"  identity {i['identity']}: {', '.join(i['cameras'])} ({i['tracklets']} tracklets)")
