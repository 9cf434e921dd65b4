"""Leaf helpers that every package may import and that import no project package: the one redactor and the
one config loader (used by cams.yaml and by the training configs)."""
