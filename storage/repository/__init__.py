"""Data access of the store: functions that take a ``Session`` and never commit.

The caller's worker loop owns the transaction: it calls several of these, commits, and only then
acknowledges the queue message. Because delivery is at-least-once, every write that a redelivered message
can repeat is idempotent on a natural key (``INSERT ... ON CONFLICT DO NOTHING``): a repeat returns what the
first call stored and changes nothing.

Times: parameters accept POSIX seconds (``float``, UTC, as the pipeline's messages carry them) or
timezone-aware ``datetime``; a naive ``datetime`` raises ``ValueError``. Results carry timezone-aware UTC
``datetime``, except :class:`GalleryEntry`, whose times are POSIX seconds for the matcher's arithmetic.
Only SQLite and PostgreSQL are supported.

Callers use this package as one module (``from storage import repository as repo``; ``repo.add_tracklet``);
the functions live in modules by concern:

- ``cameras``: a camera's latest run and health, health events;
- ``tracklets``: tracklets and their embeddings;
- ``identities``: identities, sightings, retired ids;
- ``gallery``: what a restarting matcher reads back (gallery, ``match_progress``);
- ``reads``: the CLI's questions (counts, identities, timeline, A then B);
- ``pictures``: pictures and per-frame boxes of tracklets, MOTChallenge rows;
- ``retention``: forgetting a person and pruning old tracklets;
- ``_common``: the private helpers they share.
"""

from common.pictures import Picture
from storage.repository._common import Instant
from storage.repository._common import _utc as _utc  # the tests build expected times with it
from storage.repository.cameras import add_health_event, update_camera_health, upsert_camera
from storage.repository.gallery import (
    GalleryEntry,
    StreamProgress,
    load_gallery,
    load_progress,
    save_progress,
)
from storage.repository.identities import (
    IdentityRetiredError,
    add_sighting,
    ensure_identity,
    is_retired,
    max_identity_id,
    sighting_of,
    update_identity_stats,
)
from storage.repository.pictures import MOT_COLUMNS as MOT_COLUMNS
from storage.repository.pictures import (
    CameraBoxes,
    StoredPicture,
    add_boxes,
    add_pictures,
    boxes_of_camera,
    boxes_of_tracklet,
    camera_runs,
    mot_rows,
    pictures_of_identity,
    pictures_of_tracklet,
)
from storage.repository.reads import (
    IdentitySummary,
    Passage,
    TimelineEntry,
    counts,
    list_identities,
    passed_a_then_b,
    timeline,
)
from storage.repository.retention import ForgetReport, PruneReport, forget_identity, prune_before
from storage.repository.tracklets import TrackletLike, add_embedding, add_tracklet, add_tracklet_from

__all__ = [
    "CameraBoxes",
    "ForgetReport",
    "GalleryEntry",
    "IdentityRetiredError",
    "Picture",
    "PruneReport",
    "StoredPicture",
    "IdentitySummary",
    "StreamProgress",
    "Instant",
    "Passage",
    "TimelineEntry",
    "TrackletLike",
    "add_boxes",
    "add_embedding",
    "add_health_event",
    "add_pictures",
    "add_sighting",
    "add_tracklet",
    "add_tracklet_from",
    "boxes_of_camera",
    "boxes_of_tracklet",
    "camera_runs",
    "counts",
    "ensure_identity",
    "forget_identity",
    "is_retired",
    "list_identities",
    "load_gallery",
    "load_progress",
    "max_identity_id",
    "mot_rows",
    "passed_a_then_b",
    "pictures_of_identity",
    "pictures_of_tracklet",
    "prune_before",
    "save_progress",
    "sighting_of",
    "timeline",
    "update_camera_health",
    "update_identity_stats",
    "upsert_camera",
]
