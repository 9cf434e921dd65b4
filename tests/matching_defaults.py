"""The matching components built with the config schema's defaults, for tests.

The matcher, gallery, intake and worker take their settings as required keyword arguments (the schema holds
every default once); tests that do not care about a setting take it from ``MatcherConfig()`` through these
helpers instead of repeating the numbers. Any keyword given overrides the default.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import MatcherConfig
from pipeline.matching.gallery import Gallery, SavedTracklet
from pipeline.matching.matcher import Matcher
from pipeline.matching.ordering import OrderedIntake
from pipeline.matching.topology import Topology

DEFAULTS = MatcherConfig()
# matcher.threshold defaults to auto (the checkpoint's calibrated value); the synthetic embeddings of these tests
# are built around this number, the fixed default the matcher had before thresholds came with the model.
THRESHOLD = 0.6


def gallery(**kw: Any) -> Gallery:
    return Gallery(**{"max_prototypes": DEFAULTS.max_prototypes, **kw})


def restored(rows: list[SavedTracklet], **kw: Any) -> Gallery:
    return Gallery.restore(rows, **{"max_prototypes": DEFAULTS.max_prototypes, **kw})


def matcher(g: Gallery | None = None, topology: Topology | None = None, **kw: Any) -> Matcher:
    """A matcher over ``g`` (default: an empty :func:`gallery`) and ``topology`` (default: none configured)."""
    return Matcher(
        gallery() if g is None else g,
        Topology() if topology is None else topology,
        **{"threshold": THRESHOLD, **kw},
    )


def intake(**kw: Any) -> OrderedIntake:
    return OrderedIntake(**{"window_s": DEFAULTS.window_s, "max_wait_s": DEFAULTS.max_wait_s, **kw})
