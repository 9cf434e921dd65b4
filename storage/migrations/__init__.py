"""Alembic migrations of the store; run them with :func:`storage.db.open_store` (no ``alembic.ini`` needed)."""
