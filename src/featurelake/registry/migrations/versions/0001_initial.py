"""Models, versions with lineage and stages, and the event history.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "registry_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("registry_models.name"), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("major", sa.Integer, nullable=False),
        sa.Column("minor", sa.Integer, nullable=False),
        sa.Column("patch", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False, server_default="None"),
        sa.Column("flavor", sa.String(32), nullable=False),
        sa.Column("artifact_key", sa.String(200), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_size", sa.BigInteger, nullable=False),
        sa.Column("artifact_name", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("code_version", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("training_set", sa.JSON, nullable=True),
        sa.Column("signature", sa.JSON, nullable=False),
        sa.Column("snapshot_tags", sa.JSON, nullable=False),
        sa.Column("tags_released", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("model_name", "version", name="uq_registry_versions_version"),
        sa.UniqueConstraint("model_name", "major", "minor", "patch", name="uq_registry_versions_semver"),
    )
    op.create_index(
        "uq_registry_one_production",
        "registry_versions",
        ["model_name"],
        unique=True,
        sqlite_where=sa.text("stage = 'Production'"),
        postgresql_where=sa.text("stage = 'Production'"),
    )
    op.create_table(
        "registry_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("from_stage", sa.String(16), nullable=True),
        sa.Column("to_stage", sa.String(16), nullable=True),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_registry_events_model_name", "registry_events", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_registry_events_model_name", table_name="registry_events")
    op.drop_table("registry_events")
    op.drop_index("uq_registry_one_production", table_name="registry_versions")
    op.drop_table("registry_versions")
    op.drop_table("registry_models")
