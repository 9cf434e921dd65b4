"""SQLAlchemy models of the store: the documented, stable schema operators query directly.

``docs/schema.md`` describes every table and column; ``storage/migrations`` creates them (the models are the
Python view of what the migrations build, and a test checks the two agree). Times are timezone-aware UTC
``datetime`` in Python, ``TIMESTAMPTZ`` on PostgreSQL and UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` on SQLite.
Tracklet times are also kept as POSIX seconds (``start_posix``/``end_posix``, the pipeline's own float) so that
time arithmetic is the same SQL on both databases.

Identity ids are chosen by the matcher (deterministic), never by a database sequence.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "HEALTH_EVENTS",
    "Base",
    "UTCDateTime",
    "CameraRow",
    "HealthEventRow",
    "TrackletRow",
    "IdentityRow",
    "SightingRow",
    "EmbeddingRow",
    "TrackletPictureRow",
    "TrackletBoxesRow",
    "RetiredIdentityRow",
    "RETIRE_REASONS",
    "BOX_RECORD_BYTES",
    "identity_timeline",
]

# The values of camera_health_events.event.
HEALTH_EVENTS = ("disconnected", "reconnected", "error")
# The values of tracklet_pictures.kind and of retired_identities.reason.
RETIRE_REASONS = ("forgotten", "pruned")
# One record of tracklet_boxes.boxes: int32 frame offset + x1, y1, x2, y2 float32, little-endian.
BOX_RECORD_BYTES = 20

# Deterministic constraint names, so a later migration can drop or alter them by name on every database.
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` on every backend.

    Binding: an aware ``datetime`` is converted to UTC (SQLite stores it without offset, as UTC); a naive one
    raises ``ValueError`` because its zone is unknown. Results are always aware, in UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# 64-bit ids on PostgreSQL; INTEGER on SQLite, where only that spelling makes the key the ROWID alias.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _created_at() -> Mapped[datetime]:
    """``created_at``: when the row was stored, by the database clock."""
    return mapped_column(server_default=sa.text("CURRENT_TIMESTAMP"))


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        str: sa.Text(),
        float: sa.Double(),
        bytes: sa.LargeBinary(),
    }


class CameraRow(Base):
    """One camera: where it reads from and its latest health (one row per camera id, updated in place)."""

    __tablename__ = "cameras"

    id: Mapped[str] = mapped_column(primary_key=True)
    source: Mapped[str | None]  # file path / URL / webcam index, password redacted
    start_time: Mapped[datetime | None]
    crop: Mapped[list[int] | None] = mapped_column(sa.JSON)  # [x1, y1, x2, y2] of the source; NULL: all of it
    frame_width: Mapped[int | None]  # of the frames the camera worked on (the crop's size when cropped)
    frame_height: Mapped[int | None]
    connected: Mapped[bool | None]  # NULL until the camera worker first reports its health
    reconnects: Mapped[int] = mapped_column(server_default=sa.text("0"))
    last_frame_time: Mapped[datetime | None]
    frames: Mapped[int] = mapped_column(sa.BigInteger, server_default=sa.text("0"))
    fps: Mapped[float | None]
    last_error: Mapped[str | None]
    updated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created_at()


class HealthEventRow(Base):
    """Outage history: one row per disconnect, reconnect or error of a camera."""

    __tablename__ = "camera_health_events"
    __table_args__ = (
        sa.UniqueConstraint("camera_id", "time", "event"),
        sa.CheckConstraint("event IN ('disconnected', 'reconnected', 'error')", name="event"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(sa.ForeignKey("cameras.id", ondelete="CASCADE"))
    time: Mapped[datetime]
    event: Mapped[str]
    detail: Mapped[str | None]


class TrackletRow(Base):
    """One closed tracklet. Natural key ``(camera_id, session_key, track_id, chunk)``: track ids restart when
    a camera worker restarts, so ``session_key`` names the worker run."""

    __tablename__ = "tracklets"
    __table_args__ = (
        sa.UniqueConstraint("camera_id", "session_key", "track_id", "chunk"),
        sa.CheckConstraint("chunk >= 0", name="chunk"),
        sa.CheckConstraint("last_frame >= first_frame", name="frames"),
        sa.CheckConstraint("end_posix >= start_posix", name="span"),
        sa.CheckConstraint("num_frames >= 0 AND num_crops >= 0", name="counts"),
        sa.Index(None, "start_time"),
        sa.Index(None, "camera_id", "start_posix"),
        sa.Index(None, "end_posix"),  # retention deletes by end time
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(sa.ForeignKey("cameras.id"))
    session_key: Mapped[str]
    track_id: Mapped[int] = mapped_column(sa.BigInteger)
    chunk: Mapped[int]
    first_frame: Mapped[int] = mapped_column(sa.BigInteger)
    last_frame: Mapped[int] = mapped_column(sa.BigInteger)
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]
    start_posix: Mapped[float]
    end_posix: Mapped[float]
    num_frames: Mapped[int]
    num_crops: Mapped[int]
    mean_box_w: Mapped[float | None]
    mean_box_h: Mapped[float | None]
    first_box: Mapped[list[float] | None] = mapped_column(sa.JSON)
    last_box: Mapped[list[float] | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = _created_at()
    seq: Mapped[int | None] = mapped_column(sa.BigInteger)  # the camera worker's number for it in its run
    published_at: Mapped[datetime | None]  # wall clock when the camera worker published it


class IdentityRow(Base):
    """A global identity; ``id`` is allocated by the matcher. The statistics summarise its sightings."""

    __tablename__ = "identities"
    __table_args__ = (sa.CheckConstraint("id >= 0", name="id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    created_at: Mapped[datetime]
    first_seen: Mapped[datetime | None]
    last_seen: Mapped[datetime | None]
    num_tracklets: Mapped[int] = mapped_column(server_default=sa.text("0"))
    num_cameras: Mapped[int] = mapped_column(server_default=sa.text("0"))


class SightingRow(Base):
    """The matcher's decision for one tracklet: which identity, how similar (NULL = a new identity)."""

    __tablename__ = "sightings"
    __table_args__ = (sa.Index(None, "identity_id", "tracklet_id"),)

    tracklet_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("tracklets.id", ondelete="CASCADE"), primary_key=True
    )
    identity_id: Mapped[int] = mapped_column(sa.ForeignKey("identities.id"))
    similarity: Mapped[float | None]
    decided_at: Mapped[datetime]


class EmbeddingRow(Base):
    """A tracklet's re-ID embedding from one model: little-endian float32 bytes, ``dim`` values."""

    __tablename__ = "embeddings"
    __table_args__ = (
        sa.CheckConstraint("dim > 0 AND length(vector) = 4 * dim", name="vector"),
        sa.Index(None, "model"),
    )

    tracklet_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("tracklets.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(primary_key=True)
    dim: Mapped[int]
    vector: Mapped[bytes]
    part_visibility: Mapped[bytes]
    created_at: Mapped[datetime] = _created_at()


class TrackletPictureRow(Base):
    """One JPEG picture of a tracklet: a best crop (``kind='crop'``, ``rank`` 0 = best) or the attention
    picture (``kind='attention'``), taken from frame ``frame_index``, ``width`` x ``height`` pixels."""

    __tablename__ = "tracklet_pictures"
    __table_args__ = (
        sa.CheckConstraint("kind IN ('crop', 'attention')", name="kind"),
        sa.CheckConstraint(
            "rank >= 0 AND frame_index >= 0 AND width > 0 AND height > 0 AND length(jpeg) > 0", name="values"
        ),
    )

    tracklet_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("tracklets.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    frame_index: Mapped[int] = mapped_column(sa.BigInteger)
    width: Mapped[int]
    height: Mapped[int]
    jpeg: Mapped[bytes]
    created_at: Mapped[datetime] = _created_at()


class TrackletBoxesRow(Base):
    """The per-frame boxes of a tracklet: ``num_boxes`` records of :data:`BOX_RECORD_BYTES` in ``boxes``
    (int32 frame offset from ``tracklets.first_frame``, then x1, y1, x2, y2 float32; little-endian)."""

    __tablename__ = "tracklet_boxes"
    __table_args__ = (
        sa.CheckConstraint(
            f"num_boxes >= 0 AND length(boxes) = {BOX_RECORD_BYTES} * num_boxes", name="boxes"
        ),
    )

    tracklet_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("tracklets.id", ondelete="CASCADE"), primary_key=True
    )
    num_boxes: Mapped[int]
    boxes: Mapped[bytes]


class RetiredIdentityRow(Base):
    """An identity id that was forgotten or pruned: never handed out again. It holds no data of the person."""

    __tablename__ = "retired_identities"
    __table_args__ = (
        sa.CheckConstraint("identity_id >= 0", name="identity_id"),
        sa.CheckConstraint("reason IN ('forgotten', 'pruned')", name="reason"),
    )

    identity_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    reason: Mapped[str]
    retired_at: Mapped[datetime]


class MatchProgressRow(Base):
    """How far the matcher has read one camera worker run in order (docs/matcher.md, "Order").

    Every tracklet numbered below ``next_seq`` has reached the matcher; every later one ends at or after
    ``watermark`` (NULL: no bound yet); ``final``: the run has ended. Written with the identities it led to.
    """

    __tablename__ = "match_progress"
    __table_args__ = (sa.CheckConstraint("next_seq >= 0", name="next_seq"),)

    session_key: Mapped[str] = mapped_column(primary_key=True)
    camera_id: Mapped[str] = mapped_column(primary_key=True)
    next_seq: Mapped[int] = mapped_column(sa.BigInteger)
    watermark: Mapped[float | None]
    final: Mapped[bool]
    updated_at: Mapped[datetime]


# The VIEW created by the migration, as a typed selectable (not part of Base.metadata: it is no table).
identity_timeline = sa.table(
    "identity_timeline",
    sa.column("identity_id", sa.Integer()),
    sa.column("camera_id", sa.Text()),
    sa.column("start_time", UTCDateTime()),
    sa.column("end_time", UTCDateTime()),
    sa.column("tracklet_id", sa.BigInteger()),
    sa.column("start_posix", sa.Double()),
    sa.column("end_posix", sa.Double()),
    sa.column("similarity", sa.Double()),
)
