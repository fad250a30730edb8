"""Aliases beside stages (champion, challenger, ...), and alias changes in the event history.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_aliases",
        sa.Column("model_name", sa.String(128), sa.ForeignKey("registry_models.name"), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
    )
    with op.batch_alter_table("registry_events") as batch:
        batch.add_column(sa.Column("alias", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_events") as batch:
        batch.drop_column("alias")
    op.drop_table("registry_aliases")
