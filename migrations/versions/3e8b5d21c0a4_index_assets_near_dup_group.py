"""Index assets.near_dup_group: search counts each hit's near-duplicates by it

Revision ID: 3e8b5d21c0a4
Revises: 7c41e2a9d5f0
Create Date: 2026-11-25 16:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "3e8b5d21c0a4"
down_revision: str | Sequence[str] | None = "7c41e2a9d5f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_assets_near_dup_group"), "assets", ["near_dup_group"])


def downgrade() -> None:
    op.drop_index(op.f("ix_assets_near_dup_group"), table_name="assets")
