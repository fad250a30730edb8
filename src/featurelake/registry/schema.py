"""The registry's tables (SQLAlchemy Core). Alembic revisions in ``migrations/versions`` create them; a test
checks that upgrading an empty database to head yields exactly this metadata.

Table names carry a ``registry_`` prefix so the registry can share a PostgreSQL database with other tools.
"""

from __future__ import annotations

import sqlalchemy as sa

VERSION_TABLE = "registry_alembic_version"

metadata = sa.MetaData()

models = sa.Table(
    "registry_models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

versions = sa.Table(
    "registry_versions",
    metadata,
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

# At most one Production version per model, enforced by the database itself: two promotions that both
# believed there was none cannot both commit.
sa.Index(
    "uq_registry_one_production",
    versions.c.model_name,
    unique=True,
    sqlite_where=versions.c.stage == "Production",
    postgresql_where=versions.c.stage == "Production",
)

events = sa.Table(
    "registry_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(128), nullable=False, index=True),
    sa.Column("version", sa.String(32), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("from_stage", sa.String(16), nullable=True),
    sa.Column("to_stage", sa.String(16), nullable=True),
    sa.Column("alias", sa.String(64), nullable=True),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
)

aliases = sa.Table(
    "registry_aliases",
    metadata,
    sa.Column("model_name", sa.String(128), sa.ForeignKey("registry_models.name"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False),
)

# What rebuilding a version's training set needs beyond its provenance (``reproduce.py``): the training set's
# own SHA-256 with each column's, and the entity frame and per-cell hashes as content-addressed artifacts.
training_sets = sa.Table(
    "registry_training_sets",
    metadata,
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
