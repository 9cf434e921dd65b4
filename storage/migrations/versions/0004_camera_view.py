"""Each camera's view: its crop of the source's frames and the size of the frames it worked on.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-20

``cameras.crop`` is the camera's ``crop`` of cams.yaml (``[x1, y1, x2, y2]`` pixels of the source's upright
frame, JSON; NULL = the whole frame), ``cameras.frame_width`` and ``frame_height`` the size of the frames the
camera worked on (the crop's size when cropped; NULL = unknown). Stored boxes are in those pixels, so with
``cameras.source`` these make a camera's video redrawable from SQL alone. Existing rows keep NULL: a store
written before 0004 does not know its cameras' crops. Frozen like 0001: every type is spelt out here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cameras", sa.Column("crop", sa.JSON(), nullable=True))
    op.add_column("cameras", sa.Column("frame_width", sa.Integer(), nullable=True))
    op.add_column("cameras", sa.Column("frame_height", sa.Integer(), nullable=True))


def downgrade() -> None:
    # plain DROP COLUMN (SQLite >= 3.35): a batch copy of the table would cascade to its health events
    op.drop_column("cameras", "frame_height")
    op.drop_column("cameras", "frame_width")
    op.drop_column("cameras", "crop")
