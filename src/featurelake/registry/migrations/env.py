"""Alembic environment: runs on the connection featurelake hands over (``config.attributes["connection"]``).

On PostgreSQL an advisory lock serialises processes that open a fresh registry at the same moment; on SQLite
the connection's ``BEGIN IMMEDIATE`` does the same.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from featurelake.registry.schema import VERSION_TABLE, metadata

_LOCK_KEY = 7_305_118_242  # arbitrary, constant: "featurelake registry migrations"


def run() -> None:
    connection = context.config.attributes["connection"]
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
