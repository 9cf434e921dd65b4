"""Shared test fixtures: where ../shared lives, and skips with a reason when it or a service is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REID_SHARED", REPO.parent / "shared"))


def shared_path(rel: str) -> Path:
    """Path under ../shared, or skip the calling test with the reason that it is absent."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"needs {p} (the team's shared assets/data folder), which is absent here")
    return p


@pytest.fixture
def pku_root() -> Path:
    return shared_path("data/pku-reid")


@pytest.fixture
def osnet_msmt17() -> Path:
    return shared_path("assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth")
