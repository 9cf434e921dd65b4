"""Leaf helpers that every package may import and that import no project package (redaction)."""
