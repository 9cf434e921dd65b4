"""Initial schema: the six tables and the identity_timeline view.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Frozen: this file spells every type and constraint out instead of importing storage.models, so that later
model changes cannot alter what this revision built. Every statement runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# 64-bit ids on PostgreSQL; INTEGER on SQLite, where only that spelling makes the key the ROWID alias.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)
NOW = sa.text("CURRENT_TIMESTAMP")

IDENTITY_TIMELINE = """
CREATE VIEW identity_timeline AS
SELECT s.identity_id AS identity_id,
       t.camera_id AS camera_id,
       t.start_time AS start_time,
       t.end_time AS end_time,
       t.id AS tracklet_id,
       t.start_posix AS start_posix,
       t.end_posix AS end_posix,
       s.similarity AS similarity
FROM sightings s
JOIN tracklets t ON t.id = s.tracklet_id
"""


def upgrade() -> None:
    op.create_table(
        "cameras",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("start_time", TIME, nullable=True),
        sa.Column("connected", sa.Boolean(), nullable=True),
        sa.Column("reconnects", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_frame_time", TIME, nullable=True),
        sa.Column("frames", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("fps", sa.Double(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", TIME, nullable=True),
        sa.Column("created_at", TIME, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cameras"),
    )
    op.create_table(
        "camera_health_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("camera_id", sa.Text(), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_camera_health_events"),
        sa.ForeignKeyConstraint(
            ["camera_id"],
            ["cameras.id"],
            name="fk_camera_health_events_camera_id_cameras",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "camera_id", "time", "event", name="uq_camera_health_events_camera_id_time_event"
        ),
        sa.CheckConstraint(
            "event IN ('disconnected', 'reconnected', 'error')", name="ck_camera_health_events_event"
        ),
    )
    op.create_table(
        "tracklets",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("camera_id", sa.Text(), nullable=False),
        sa.Column("session_key", sa.Text(), nullable=False),
        sa.Column("track_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("first_frame", sa.BigInteger(), nullable=False),
        sa.Column("last_frame", sa.BigInteger(), nullable=False),
        sa.Column("start_time", TIME, nullable=False),
        sa.Column("end_time", TIME, nullable=False),
        sa.Column("start_posix", sa.Double(), nullable=False),
        sa.Column("end_posix", sa.Double(), nullable=False),
        sa.Column("num_frames", sa.Integer(), nullable=False),
        sa.Column("num_crops", sa.Integer(), nullable=False),
        sa.Column("mean_box_w", sa.Double(), nullable=True),
        sa.Column("mean_box_h", sa.Double(), nullable=True),
        sa.Column("first_box", sa.JSON(), nullable=True),
        sa.Column("last_box", sa.JSON(), nullable=True),
        sa.Column("created_at", TIME, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracklets"),
        sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"], name="fk_tracklets_camera_id_cameras"),
        sa.UniqueConstraint(
            "camera_id",
            "session_key",
            "track_id",
            "chunk",
            name="uq_tracklets_camera_id_session_key_track_id_chunk",
        ),
        sa.CheckConstraint("chunk >= 0", name="ck_tracklets_chunk"),
        sa.CheckConstraint("last_frame >= first_frame", name="ck_tracklets_frames"),
        sa.CheckConstraint("end_posix >= start_posix", name="ck_tracklets_span"),
        sa.CheckConstraint("num_frames >= 0 AND num_crops >= 0", name="ck_tracklets_counts"),
    )
    op.create_index("ix_tracklets_start_time", "tracklets", ["start_time"])
    op.create_index("ix_tracklets_camera_id_start_posix", "tracklets", ["camera_id", "start_posix"])
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("first_seen", TIME, nullable=True),
        sa.Column("last_seen", TIME, nullable=True),
        sa.Column("num_tracklets", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("num_cameras", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identities"),
        sa.CheckConstraint("id >= 0", name="ck_identities_id"),
    )
    op.create_table(
        "sightings",
        sa.Column("tracklet_id", BIG_ID, nullable=False),
        sa.Column("identity_id", sa.Integer(), nullable=False),
        sa.Column("similarity", sa.Double(), nullable=True),
        sa.Column("decided_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("tracklet_id", name="pk_sightings"),
        sa.ForeignKeyConstraint(
            ["tracklet_id"], ["tracklets.id"], name="fk_sightings_tracklet_id_tracklets", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["identity_id"], ["identities.id"], name="fk_sightings_identity_id_identities"
        ),
    )
    # The timeline question filters by identity and joins to tracklets by id: this index answers both.
    op.create_index("ix_sightings_identity_id_tracklet_id", "sightings", ["identity_id", "tracklet_id"])
    op.create_table(
        "embeddings",
        sa.Column("tracklet_id", BIG_ID, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("part_visibility", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIME, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("tracklet_id", "model", name="pk_embeddings"),
        sa.ForeignKeyConstraint(
            ["tracklet_id"], ["tracklets.id"], name="fk_embeddings_tracklet_id_tracklets", ondelete="CASCADE"
        ),
        sa.CheckConstraint("dim > 0 AND length(vector) = 4 * dim", name="ck_embeddings_vector"),
    )
    op.create_index("ix_embeddings_model", "embeddings", ["model"])
    op.execute(IDENTITY_TIMELINE)


def downgrade() -> None:
    op.execute("DROP VIEW identity_timeline")
    op.drop_table("embeddings")
    op.drop_table("sightings")
    op.drop_table("identities")
    op.drop_table("tracklets")
    op.drop_table("camera_health_events")
    op.drop_table("cameras")
