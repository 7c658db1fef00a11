"""Initial schema: collections, assets and their texts, ingestion jobs, models and their vectors, generated images

Revision ID: 495aa70a93b2
Revises:
Create Date: 2026-11-25 14:09:57.560528
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "495aa70a93b2"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), nullable=False)


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "collections",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("root", sa.String(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("name", name=op.f("uq_collections_name")),
    )
    op.create_table(
        "models",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("space", sa.String(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("space", name=op.f("uq_models_space")),
    )
    op.create_table(
        "jobs",
        _id(),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        *(sa.Column(n, sa.Integer(), server_default="0", nullable=False)
          for n in ("seen", "indexed", "skipped", "duplicates", "failed")),
        _timestamp("created_at"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        _timestamp("updated_at"),
        sa.CheckConstraint("status IN ('queued', 'scanning', 'running', 'finalizing', 'done', 'failed')",
                           name=op.f("ck_jobs_status")),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], name=op.f("fk_jobs_collection_id_collections"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_collection_id"), "jobs", ["collection_id"])

    op.create_table(
        "assets",
        _id(),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(), nullable=False),
        sa.Column("media", sa.String(length=8), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("phash", sa.String(length=16), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(), nullable=True),
        sa.Column("mtime", sa.Double(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duplicate_of", sa.Integer(), nullable=True),
        sa.Column("near_dup_group", sa.Integer(), nullable=True),
        sa.Column("synthetic", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint("media IN ('image', 'text')", name=op.f("ck_assets_media")),
        sa.CheckConstraint("status IN ('pending', 'indexed', 'duplicate', 'failed')", name=op.f("ck_assets_status")),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], name=op.f("fk_assets_collection_id_collections"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["duplicate_of"], ["assets.id"], name=op.f("fk_assets_duplicate_of_assets"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_assets_job_id_jobs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("collection_id", "uri", name=op.f("uq_assets_collection_id_uri")),
    )
    op.create_index("ix_assets_collection_id_status", "assets", ["collection_id", "status"])
    op.create_index(op.f("ix_assets_duplicate_of"), "assets", ["duplicate_of"])
    op.create_index(op.f("ix_assets_job_id"), "assets", ["job_id"])
    op.create_index(op.f("ix_assets_sha256"), "assets", ["sha256"])

    op.create_table(
        "generated_assets",
        _id(),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("source_asset_id", sa.Integer(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(["asset_id"], ["assets.id"], name=op.f("fk_generated_assets_asset_id_assets"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["source_asset_id"], ["assets.id"],
                                name=op.f("fk_generated_assets_source_asset_id_assets"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generated_assets")),
        sa.UniqueConstraint("asset_id", name=op.f("uq_generated_assets_asset_id")),
    )
    op.create_index(op.f("ix_generated_assets_source_asset_id"), "generated_assets", ["source_asset_id"])

    op.create_table(
        "texts",
        _id(),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("kind IN ('caption', 'alt', 'tags', 'ocr', 'filename', 'document')",
                           name=op.f("ck_texts_kind")),
        sa.ForeignKeyConstraint(["asset_id"], ["assets.id"], name=op.f("fk_texts_asset_id_assets"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_texts")),
    )
    op.create_index("ix_texts_asset_id_kind", "texts", ["asset_id", "kind"])

    op.create_table(
        "vectors",
        _id(),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("text_id", sa.Integer(), nullable=True),
        sa.Column("point_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("kind IN ('image', 'text')", name=op.f("ck_vectors_kind")),
        sa.ForeignKeyConstraint(["asset_id"], ["assets.id"], name=op.f("fk_vectors_asset_id_assets"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_vectors_model_id_models"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["text_id"], ["texts.id"], name=op.f("fk_vectors_text_id_texts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vectors")),
        sa.UniqueConstraint("model_id", "point_id", name=op.f("uq_vectors_model_id_point_id")),
    )
    op.create_index(op.f("ix_vectors_asset_id"), "vectors", ["asset_id"])
    op.create_index(op.f("ix_vectors_text_id"), "vectors", ["text_id"])


def downgrade() -> None:
    # children before parents; dropping a table drops its indexes
    for table in ("vectors", "texts", "generated_assets", "assets", "jobs", "models", "collections"):
        op.drop_table(table)
