"""What a rebuild of a version's training set needs: its SHA-256, the entity frame and per-cell hashes.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_training_sets",
        sa.Column("model_name", sa.String(128), sa.ForeignKey("registry_models.name"), primary_key=True),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("digest_format", sa.Integer, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("columns", sa.JSON, nullable=False),
        sa.Column("entity_columns", sa.JSON, nullable=False),
        sa.Column("extra_columns", sa.JSON, nullable=False),
        sa.Column("entities_key", sa.String(200), nullable=True),
        sa.Column("entities_sha256", sa.String(64), nullable=True),
        sa.Column("entities_size", sa.BigInteger, nullable=True),
        sa.Column("cells_key", sa.String(200), nullable=True),
        sa.Column("cells_sha256", sa.String(64), nullable=True),
        sa.Column("cells_size", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registry_training_sets")
