"""Pictures and per-frame boxes of every tracklet; retired identity ids; an index for retention.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

``tracklet_pictures`` holds a tracklet's best crops and its attention picture as JPEG, ``tracklet_boxes`` its
per-frame boxes as one compact little-endian blob (docs/schema.md, "tracklet_boxes"); both go with their
tracklet (``ON DELETE CASCADE``). ``retired_identities`` remembers the ids of forgotten or pruned identities
so that the matcher never hands them out again. ``ix_tracklets_end_posix`` serves retention, which deletes
by end time. Frozen like 0001: every type is spelt out here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# 64-bit ids on PostgreSQL; INTEGER on SQLite, where only that spelling makes the key the ROWID alias.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)
NOW = sa.text("CURRENT_TIMESTAMP")
BOX_RECORD_BYTES = 20  # int32 frame offset + 4 float32, little-endian


def upgrade() -> None:
    op.create_table(
        "tracklet_pictures",
        sa.Column("tracklet_id", BIG_ID, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("frame_index", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIME, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("tracklet_id", "kind", "rank", name="pk_tracklet_pictures"),
        sa.ForeignKeyConstraint(
            ["tracklet_id"],
            ["tracklets.id"],
            name="fk_tracklet_pictures_tracklet_id_tracklets",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("kind IN ('crop', 'attention')", name="ck_tracklet_pictures_kind"),
        sa.CheckConstraint(
            "rank >= 0 AND frame_index >= 0 AND width > 0 AND height > 0 AND length(jpeg) > 0",
            name="ck_tracklet_pictures_values",
        ),
    )
    op.create_table(
        "tracklet_boxes",
        sa.Column("tracklet_id", BIG_ID, nullable=False),
        sa.Column("num_boxes", sa.Integer(), nullable=False),
        sa.Column("boxes", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tracklet_id", name="pk_tracklet_boxes"),
        sa.ForeignKeyConstraint(
            ["tracklet_id"],
            ["tracklets.id"],
            name="fk_tracklet_boxes_tracklet_id_tracklets",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            f"num_boxes >= 0 AND length(boxes) = {BOX_RECORD_BYTES} * num_boxes",
            name="ck_tracklet_boxes_boxes",
        ),
    )
    op.create_table(
        "retired_identities",
        sa.Column("identity_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("retired_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("identity_id", name="pk_retired_identities"),
        sa.CheckConstraint("identity_id >= 0", name="ck_retired_identities_identity_id"),
        sa.CheckConstraint("reason IN ('forgotten', 'pruned')", name="ck_retired_identities_reason"),
    )
    op.create_index("ix_tracklets_end_posix", "tracklets", ["end_posix"])


def downgrade() -> None:
    op.drop_index("ix_tracklets_end_posix", table_name="tracklets")
    op.drop_table("retired_identities")
    op.drop_table("tracklet_boxes")
    op.drop_table("tracklet_pictures")
