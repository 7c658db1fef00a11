"""Add assets.colour: a coarse colour signature, so near-duplicate groups hold only copies of the same colours

Revision ID: b7d2e4f19a60
Revises: 3e8b5d21c0a4
Create Date: 2026-12-02 19:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7d2e4f19a60"
down_revision: str | Sequence[str] | None = "3e8b5d21c0a4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("colour", sa.String(length=24), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("colour")
