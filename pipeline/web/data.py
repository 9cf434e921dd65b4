"""What the pages and the JSON API show, read from the store: plain dicts, JSON-ready, no HTML.

Every function takes a read-only ``Session`` (the caller opens it with ``store.session(readonly=True)``) and
never writes. Times go out as ISO 8601 UTC strings. Picture URLs point at ``/pictures/{tracklet}/{kind}/{rank}``.
Free text that a camera or a driver wrote (sources, errors) passes through :mod:`common.redact` again, so a
password that slipped into a row never reaches a page.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from common.redact import redact_text, redact_url
from storage import repository as repo
from storage.models import (
    CameraRow,
    HealthEventRow,
    SightingRow,
    TrackletPictureRow,
    TrackletRow,
    identity_timeline,
)

__all__ = [
    "camera_detail",
    "cameras",
    "data_version",
    "identity_detail",
    "identities",
    "metrics_text",
    "parse_time",
    "picture",
    "seen_at_camera",
]


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time (naive = UTC) or POSIX seconds -> aware UTC datetime; None/'' -> None.
    Raises ``ValueError`` naming the parameter."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: expected an ISO 8601 time or POSIX seconds, got {value!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def picture_url(tracklet_id: int, kind: str, rank: int) -> str:
    return f"/pictures/{int(tracklet_id)}/{kind}/{int(rank)}"


def _thumbnails(session: Session, identity_ids: list[int]) -> dict[int, str]:
    """identity -> URL of the best crop of its earliest tracklet that has one (ids only, no JPEG bytes)."""
    if not identity_ids:
        return {}
    p, t, s = TrackletPictureRow.__table__, TrackletRow.__table__, SightingRow.__table__
    rows = session.execute(
        sa.select(s.c.identity_id, p.c.tracklet_id)
        .select_from(p.join(t, t.c.id == p.c.tracklet_id).join(s, s.c.tracklet_id == p.c.tracklet_id))
        .where(p.c.kind == "crop", p.c.rank == 0, s.c.identity_id.in_(identity_ids))
        .order_by(s.c.identity_id, t.c.start_posix.desc(), t.c.id.desc())
    )
    return {int(r.identity_id): picture_url(r.tracklet_id, "crop", 0) for r in rows}  # last = earliest


def identities(
    session: Session,
    *,
    camera: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Identities (``repository.list_identities``) seen at ``camera`` (None: any) with a sighting overlapping
    ``[since, until]`` (None: unbounded), newest last seen first, the first ``limit`` of them (None: all)."""
    if since is not None and until is not None and since > until:
        raise ValueError(f"since {since.isoformat()} is after until {until.isoformat()}")
    rows = repo.list_identities(session)
    if camera is not None or since is not None or until is not None:
        v = identity_timeline
        q = sa.select(v.c.identity_id).distinct()
        if camera is not None:
            q = q.where(v.c.camera_id == camera)
        if since is not None:
            q = q.where(v.c.end_time >= since)
        if until is not None:
            q = q.where(v.c.start_time <= until)
        keep = {int(i) for i in session.execute(q).scalars()}
        rows = [r for r in rows if r.identity_id in keep]
    rows.sort(key=lambda r: (r.last_seen, r.identity_id), reverse=True)
    rows = rows if limit is None else rows[:limit]
    thumbs = _thumbnails(session, [r.identity_id for r in rows])
    return [
        {
            "identity_id": r.identity_id,
            "cameras": list(r.cameras),
            "first_seen": _iso(r.first_seen),
            "last_seen": _iso(r.last_seen),
            "sightings": r.num_tracklets,
            "thumbnail": thumbs.get(r.identity_id),
            "url": f"/identities/{r.identity_id}",
        }
        for r in rows
    ]


def identity_detail(session: Session, identity_id: int) -> dict | None:
    """One identity: its sightings in time order, each with camera, times, the similarity it was matched
    with (None: it started the identity) and its picture URLs. None for an unknown or sightless identity."""
    entries = repo.timeline(session, identity_id)
    if not entries:
        return None
    p = TrackletPictureRow.__table__
    pics: dict[int, list[tuple[str, int]]] = {}
    for r in session.execute(
        sa.select(p.c.tracklet_id, p.c.kind, p.c.rank)
        .where(p.c.tracklet_id.in_([e.tracklet_id for e in entries]))
        .order_by(p.c.tracklet_id, p.c.kind.desc(), p.c.rank)
    ):
        pics.setdefault(int(r.tracklet_id), []).append((r.kind, int(r.rank)))
    sightings = []
    for e in entries:
        own = pics.get(e.tracklet_id, [])
        sightings.append(
            {
                "tracklet_id": e.tracklet_id,
                "camera_id": e.camera_id,
                "start_time": _iso(e.start_time),
                "end_time": _iso(e.end_time),
                "similarity": e.similarity,
                "crops": [picture_url(e.tracklet_id, k, r) for k, r in own if k == "crop"],
                "attention": [picture_url(e.tracklet_id, k, r) for k, r in own if k == "attention"],
            }
        )
    return {
        "identity_id": identity_id,
        "cameras": sorted({e.camera_id for e in entries}),
        "first_seen": _iso(min(e.start_time for e in entries)),
        "last_seen": _iso(max(e.end_time for e in entries)),
        "sightings": sightings,
    }


def picture(session: Session, tracklet_id: int, kind: str, rank: int) -> bytes | None:
    """The JPEG bytes of one stored picture, None when there is none."""
    for pic in repo.pictures_of_tracklet(session, tracklet_id, kind=kind):
        if pic.rank == rank:
            return pic.jpeg
    return None


def _camera(row: CameraRow) -> dict:
    return {
        "camera_id": row.id,
        "source": None if row.source is None else redact_url(row.source),
        "crop": None if row.crop is None else [int(v) for v in row.crop],  # [x1, y1, x2, y2] of the source
        "frame_size": None if row.frame_width is None else [row.frame_width, row.frame_height],
        "connected": row.connected,
        "fps": row.fps,
        "frames": row.frames,
        "reconnects": row.reconnects,
        "last_frame_time": _iso(row.last_frame_time),
        "last_error": None if row.last_error is None else redact_text(row.last_error),
        "updated_at": _iso(row.updated_at),
    }


def cameras(session: Session) -> list[dict]:
    """Every camera with its latest health and its number of health events."""
    n = dict(
        session.execute(
            sa.select(HealthEventRow.camera_id, sa.func.count()).group_by(HealthEventRow.camera_id)
        ).all()
    )
    out = []
    for row in session.execute(sa.select(CameraRow).order_by(CameraRow.id)).scalars():
        out.append({**_camera(row), "events": int(n.get(row.id, 0)), "url": f"/cameras/{row.id}"})
    return out


def camera_detail(session: Session, camera_id: str, *, events: int = 200) -> dict | None:
    """One camera's health and its latest ``events`` health events (outage history), newest first."""
    row = session.get(CameraRow, camera_id)
    if row is None:
        return None
    history = session.execute(
        sa.select(HealthEventRow)
        .where(HealthEventRow.camera_id == camera_id)
        .order_by(HealthEventRow.time.desc(), HealthEventRow.id.desc())
        .limit(events)
    ).scalars()
    return {
        **_camera(row),
        "history": [
            {
                "time": _iso(e.time),
                "event": e.event,
                "detail": None if e.detail is None else redact_text(e.detail),
            }
            for e in history
        ],
    }


def seen_at_camera(
    session: Session, camera_id: str, since: datetime | None, until: datetime | None
) -> list[dict]:
    """Who was seen at ``camera_id`` between ``since`` and ``until`` (sightings overlapping the window), by
    start time."""
    if since is not None and until is not None and since > until:
        raise ValueError(f"since {since.isoformat()} is after until {until.isoformat()}")
    v = identity_timeline
    q = sa.select(v.c.identity_id, v.c.tracklet_id, v.c.start_time, v.c.end_time, v.c.similarity).where(
        v.c.camera_id == camera_id
    )
    if since is not None:
        q = q.where(v.c.end_time >= since)
    if until is not None:
        q = q.where(v.c.start_time <= until)
    return [
        {
            "identity_id": int(r.identity_id),
            "tracklet_id": int(r.tracklet_id),
            "start_time": _iso(r.start_time),
            "end_time": _iso(r.end_time),
            "similarity": r.similarity,
            "url": f"/identities/{int(r.identity_id)}",
        }
        for r in session.execute(q.order_by(v.c.start_time, v.c.tracklet_id))
    ]


def data_version(session: Session) -> dict:
    """What changes when a run writes: row counts and the newest decision; pages poll it to refresh."""
    c = repo.counts(session)
    latest = session.execute(sa.select(sa.func.max(SightingRow.decided_at))).scalar_one()
    return {
        "identities": c["identities"],
        "sightings": c["sightings"],
        "cameras": c["cameras"],
        "camera_health_events": c["camera_health_events"],
        "latest_decision": _iso(latest),
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(session: Session, *, now: datetime | None = None, window_s: float = 60.0) -> str:
    """The Prometheus text exposition (format 0.0.4) of the store's view of a run.

    Per camera: fps, connection state, frames read, reconnects. The run: identities, sightings, tracklets
    stored, tracklets per second (stored in the last ``window_s`` seconds of wall clock), the backlog of
    stored tracklets without an identity yet, and the publish-to-identity delay (``decided_at -
    published_at``) of the last 200 decisions as quantiles.
    """
    now = datetime.now(UTC) if now is None else now
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {float(value):.6g}")

    cams = list(session.execute(sa.select(CameraRow).order_by(CameraRow.id)).scalars())

    def per_camera(attr: str, default: float | None) -> list[tuple[str, float]]:
        out = []
        for c in cams:
            value = getattr(c, attr)
            value = default if value is None else value
            if value is not None:
                out.append((f'{{camera="{_label(c.id)}"}}', float(value)))
        return out

    metric(
        "reid_camera_fps",
        "gauge",
        "Frames per second the camera worker last reported.",
        per_camera("fps", None),
    )
    metric(
        "reid_camera_connected",
        "gauge",
        "1 when the camera's source is connected, else 0.",
        per_camera("connected", 0),
    )
    metric(
        "reid_camera_frames",
        "gauge",
        "Frames read from the camera in its current run.",
        per_camera("frames", 0),
    )
    metric(
        "reid_camera_reconnects",
        "gauge",
        "Reconnections of the camera's source.",
        per_camera("reconnects", 0),
    )
    c = repo.counts(session)
    metric("reid_identities", "gauge", "Global identities in the store.", [("", c["identities"])])
    metric("reid_sightings", "gauge", "Tracklets assigned to an identity.", [("", c["sightings"])])
    metric("reid_tracklets", "gauge", "Tracklets stored.", [("", c["tracklets"])])
    t, s = TrackletRow.__table__, SightingRow.__table__
    recent = session.execute(
        sa.select(sa.func.count()).select_from(t).where(t.c.created_at >= now - timedelta(seconds=window_s))
    ).scalar_one()
    metric(
        "reid_tracklets_per_second",
        "gauge",
        f"Tracklets stored per second over the last {window_s:g} s.",
        [("", recent / window_s)],
    )
    backlog = session.execute(
        sa.select(sa.func.count())
        .select_from(t.outerjoin(s, s.c.tracklet_id == t.c.id))
        .where(s.c.tracklet_id.is_(None))
    ).scalar_one()
    metric(
        "reid_queue_backlog",
        "gauge",
        "Stored tracklets still without an identity (the store's view of the matcher's backlog).",
        [("", backlog)],
    )
    delays = sorted(
        (r.decided_at - r.published_at).total_seconds()
        for r in session.execute(
            sa.select(s.c.decided_at, t.c.published_at)
            .select_from(s.join(t, t.c.id == s.c.tracklet_id))
            .where(t.c.published_at.is_not(None))
            .order_by(s.c.decided_at.desc())
            .limit(200)
        )
    )
    samples = []
    for q in (0.5, 0.9, 0.99):
        if delays:
            samples.append((f'{{quantile="{q}"}}', delays[min(len(delays) - 1, int(q * len(delays)))]))
    samples.append(("_count", len(delays)))
    lines.append(
        "# HELP reid_publish_to_identity_delay_seconds Seconds from a tracklet's publication to its "
        "identity, last 200 decisions."
    )
    lines.append("# TYPE reid_publish_to_identity_delay_seconds summary")
    for labels, value in samples:
        name = "reid_publish_to_identity_delay_seconds" + ("_count" if labels == "_count" else "")
        lines.append(f"{name}{'' if labels == '_count' else labels} {float(value):.6g}")
    return "\n".join(lines) + "\n"
