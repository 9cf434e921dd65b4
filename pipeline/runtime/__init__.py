"""Composition, supervision, health reporting and the run summary."""
