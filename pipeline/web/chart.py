"""The timeline chart of one identity as inline SVG, drawn on the server (no JavaScript).

Pure: takes the sightings of :func:`pipeline.web.data.identity_detail` and returns markup.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

__all__ = ["timeline_svg"]

_ROW, _LEFT, _TOP, _WIDTH = 28, 110, 24, 900


def timeline_svg(sightings: list[dict]) -> str:
    """One row per camera (in order of first visit), one bar per sighting from its start to its end time,
    with the similarity it was matched with in the bar's tooltip; the time axis has 5 ticks (UTC).
    An empty list draws an empty chart with a note."""
    if not sightings:
        return (
            '<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="300" height="30">'
            '<text x="4" y="20">no sightings</text></svg>'
        )
    times = [
        (datetime.fromisoformat(s["start_time"]), datetime.fromisoformat(s["end_time"])) for s in sightings
    ]
    t0 = min(a for a, _ in times)
    t1 = max(b for _, b in times)
    span = max((t1 - t0).total_seconds(), 1.0)
    cameras: list[str] = []
    for s in sightings:
        if s["camera_id"] not in cameras:
            cameras.append(s["camera_id"])
    height = _TOP + _ROW * len(cameras) + 30
    width = _LEFT + _WIDTH + 50  # room for the last tick label

    def x(t: datetime) -> float:
        return _LEFT + _WIDTH * (t - t0).total_seconds() / span

    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline across cameras">'
    ]
    for i, cam in enumerate(cameras):
        y = _TOP + i * _ROW
        out.append(f'<text x="4" y="{y + 18}" class="cam">{escape(cam)}</text>')
        out.append(f'<line x1="{_LEFT}" y1="{y + 14}" x2="{_LEFT + _WIDTH}" y2="{y + 14}" class="lane"/>')
    for s, (a, b) in zip(sightings, times, strict=True):
        y = _TOP + cameras.index(s["camera_id"]) * _ROW + 4
        w = max(x(b) - x(a), 3.0)
        sim = "new identity" if s["similarity"] is None else f"similarity {s['similarity']:.3f}"
        tip = f"{s['camera_id']} {a:%H:%M:%S}-{b:%H:%M:%S} ({sim}), tracklet {s['tracklet_id']}"
        out.append(
            f'<a href="#t{s["tracklet_id"]}"><rect class="sighting" x="{x(a):.1f}" y="{y}" width="{w:.1f}" '
            f'height="20" rx="3"><title>{escape(tip)}</title></rect></a>'
        )
    axis_y = _TOP + _ROW * len(cameras) + 4
    out.append(f'<line x1="{_LEFT}" y1="{axis_y}" x2="{_LEFT + _WIDTH}" y2="{axis_y}" class="axis"/>')
    for k in range(5):
        tx = _LEFT + _WIDTH * k / 4
        label = datetime.fromtimestamp(t0.timestamp() + span * k / 4, t0.tzinfo)
        out.append(
            f'<text x="{tx:.1f}" y="{axis_y + 16}" text-anchor="middle" class="tick">{label:%H:%M:%S}</text>'
        )
    out.append("</svg>")
    return "".join(out)
