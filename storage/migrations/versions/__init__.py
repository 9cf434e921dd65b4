"""Migration scripts, applied in ``down_revision`` order. Never edit a released one: add a new revision."""
