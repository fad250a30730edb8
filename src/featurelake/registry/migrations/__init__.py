"""Alembic environment and revisions of the model registry's schema."""
