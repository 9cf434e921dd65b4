"""The example SQL of ``docs/schema.md``, one constant per question.

The document shows each of these verbatim (after an ``<!-- example: name -->`` marker) and
``tests/test_storage.py`` checks that the two agree and runs every query on SQLite and PostgreSQL, so what an
operator copies from the document works. ``storage.repository.passed_a_then_b`` runs :data:`PASSED_A_THEN_B`
itself.

Parameters are written ``:name``. Times compare as timestamps: bind timezone-aware datetimes (SQLAlchemy
``text()`` with ``storage.models.UTCDateTime``), or in a console write literals, ``'2024-05-01 14:00:00+02'``
on PostgreSQL, UTC ``'2024-05-01 12:00:00.000000'`` on SQLite (which compares the stored UTC text).
Durations use the ``*_posix`` columns (seconds), the same arithmetic on both databases.
"""

from __future__ import annotations

__all__ = [
    "CAMERAS_DOWN",
    "CAMERA_BETWEEN",
    "CAMERA_OUTAGES",
    "EXAMPLES",
    "IDENTITY_BETWEEN",
    "MULTI_CAMERA_IDENTITIES",
    "IDENTITY_PICTURES",
    "PASSED_A_THEN_B",
]

IDENTITY_BETWEEN = """\
SELECT camera_id, start_time, end_time, tracklet_id
FROM identity_timeline
WHERE identity_id = :identity_id
  AND end_time >= :since
  AND start_time <= :until
ORDER BY start_time, tracklet_id"""

CAMERA_BETWEEN = """\
SELECT identity_id, start_time, end_time, tracklet_id
FROM identity_timeline
WHERE camera_id = :camera_id
  AND end_time >= :since
  AND start_time <= :until
ORDER BY start_time, tracklet_id"""

# One row per passage: the last sighting in A before the first sighting in B that follows it. Without the
# two NOT EXISTS, every chunk of a long track would pair with every later chunk.
PASSED_A_THEN_B = """\
SELECT a.identity_id AS identity_id,
       a.tracklet_id AS tracklet_a,
       b.tracklet_id AS tracklet_b,
       a.end_time AS left_a,
       b.start_time AS entered_b,
       b.start_posix - a.end_posix AS gap_s
FROM identity_timeline a
JOIN identity_timeline b ON b.identity_id = a.identity_id
WHERE a.camera_id = :camera_a
  AND b.camera_id = :camera_b
  AND b.start_posix >= a.start_posix
  AND b.start_posix - a.end_posix <= :within_s
  AND NOT EXISTS (
        SELECT 1 FROM identity_timeline a2
        WHERE a2.identity_id = a.identity_id AND a2.camera_id = a.camera_id
          AND a2.start_posix > a.start_posix AND a2.start_posix <= b.start_posix)
  AND NOT EXISTS (
        SELECT 1 FROM identity_timeline b2
        WHERE b2.identity_id = b.identity_id AND b2.camera_id = b.camera_id
          AND b2.start_posix >= a.start_posix AND b2.start_posix < b.start_posix)
ORDER BY b.start_posix, a.identity_id"""

MULTI_CAMERA_IDENTITIES = """\
SELECT identity_id,
       COUNT(DISTINCT camera_id) AS num_cameras,
       COUNT(*) AS num_tracklets,
       MIN(start_time) AS first_seen,
       MAX(end_time) AS last_seen
FROM identity_timeline
GROUP BY identity_id
HAVING COUNT(DISTINCT camera_id) >= :min_cameras
ORDER BY identity_id"""

CAMERA_OUTAGES = """\
SELECT d.camera_id AS camera_id,
       d.time AS disconnected_at,
       (SELECT MIN(r.time) FROM camera_health_events r
        WHERE r.camera_id = d.camera_id AND r.event = 'reconnected'
          AND r.time >= d.time) AS reconnected_at,
       d.detail AS detail
FROM camera_health_events d
WHERE d.event = 'disconnected'
ORDER BY d.camera_id, d.time"""

CAMERAS_DOWN = """\
SELECT id, last_frame_time, reconnects, last_error, updated_at
FROM cameras
WHERE NOT connected
ORDER BY id"""

# The best crop (rank 0) of every sighting of an identity.
IDENTITY_PICTURES = """\
SELECT p.tracklet_id, t.camera_id, t.start_time, p.frame_index, p.width, p.height, p.jpeg
FROM tracklet_pictures p
JOIN sightings s ON s.tracklet_id = p.tracklet_id
JOIN tracklets t ON t.id = p.tracklet_id
WHERE s.identity_id = :identity_id
  AND p.kind = 'crop'
  AND p.rank = 0
ORDER BY t.start_posix, p.tracklet_id"""

# name -> SQL, in the order the document shows them.
EXAMPLES: dict[str, str] = {
    "identity_between": IDENTITY_BETWEEN,
    "camera_between": CAMERA_BETWEEN,
    "passed_a_then_b": PASSED_A_THEN_B,
    "multi_camera_identities": MULTI_CAMERA_IDENTITIES,
    "camera_outages": CAMERA_OUTAGES,
    "cameras_down": CAMERAS_DOWN,
    "identity_pictures": IDENTITY_PICTURES,
}
