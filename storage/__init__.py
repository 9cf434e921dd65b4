"""The SQL store: ``models`` (the documented schema, see docs/schema.md), ``migrations`` (Alembic),
``db`` (``open_store``: engine, migration, sessions), ``repository`` (data-access functions that take a
``Session`` and never commit) and ``queries`` (the document's example SQL)."""
