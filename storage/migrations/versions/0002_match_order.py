"""Ordered matching: tracklets remember their publication number and time; the matcher's per-camera progress.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

``tracklets.seq`` is the camera worker's number for the tracklet in its run (``Order.seq``) and
``tracklets.published_at`` the wall-clock time it was published (NULL for messages without an order).
``match_progress`` holds, per camera worker run, how far the matcher has read in order (docs/matcher.md,
"Order"): it is written in the same transaction as the identities, so a restarted matcher resumes exactly.
Frozen like 0001: every type is spelt out here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("tracklets", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("tracklets", sa.Column("published_at", TIME, nullable=True))
    op.create_table(
        "match_progress",
        sa.Column("session_key", sa.Text(), nullable=False),
        sa.Column("camera_id", sa.Text(), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.Column("watermark", sa.Double(), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("session_key", "camera_id", name="pk_match_progress"),
        sa.CheckConstraint("next_seq >= 0", name="ck_match_progress_next_seq"),
    )


def downgrade() -> None:
    op.drop_table("match_progress")
    # plain DROP COLUMN (SQLite >= 3.35): a batch copy of the table would break the identity_timeline view
    op.drop_column("tracklets", "published_at")
    op.drop_column("tracklets", "seq")
