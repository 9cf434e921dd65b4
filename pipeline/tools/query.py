"""``run_pipeline.py query ...``: tables (and a timeline picture) from the store, for operators."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path


def parse_time(value: str | None, flag: str) -> datetime | None:
    """ISO 8601; no offset means UTC. Raises ValueError naming the flag."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{flag}: expected an ISO 8601 time such as 2024-05-14T14:00:00Z, got {value!r}"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _fmt(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if t else "-"


def run_query(args) -> int:
    from storage import repository as repo
    from storage.db import open_store

    store = open_store(args.db)
    try:
        with store.session(readonly=True) as s:
            if args.what == "identities":
                rows = repo.list_identities(s, min_cameras=args.min_cameras)
                print(f"{'identity':>8}  {'first seen':<24}  {'last seen':<24}  {'tracklets':>9}  cameras")
                for r in rows:
                    print(
                        f"{r.identity_id:>8}  {_fmt(r.first_seen):<24}  {_fmt(r.last_seen):<24}  "
                        f"{r.num_tracklets:>9}  {', '.join(r.cameras)}"
                    )
                print(f"({len(rows)} identities)")
                return 0
            since, until = parse_time(args.since, "--since"), parse_time(args.until, "--until")
            rows = repo.timeline(s, args.identity, since=since, until=until)
    finally:
        store.dispose()
    print(f"identity {args.identity}")
    print(f"{'camera':<16}  {'from':<24}  {'to':<24}  {'tracklet':>8}")
    for r in rows:
        print(f"{r.camera_id:<16}  {_fmt(r.start_time):<24}  {_fmt(r.end_time):<24}  {r.tracklet_id:>8}")
    print(f"({len(rows)} sightings)")
    if args.plot:
        plot_timeline(args.identity, rows, Path(args.plot))
        print(f"timeline drawn to {args.plot}")
    return 0


def plot_timeline(identity_id: int, rows, out: Path) -> Path:
    """Cameras on the y axis, time on the x axis, one bar per sighting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter, date2num
    from matplotlib.figure import Figure

    cams = sorted({r.camera_id for r in rows})
    fig = Figure(figsize=(10, 1.2 + 0.6 * max(1, len(cams))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        y = cams.index(r.camera_id)
        start, end = date2num(r.start_time), date2num(r.end_time)
        ax.barh(y, max(end - start, 1e-6), left=start, height=0.5, color=f"C{y % 10}")
    ax.set_yticks(range(len(cams)), cams)
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    ax.set_xlabel("time (UTC)")
    ax.set_title(
        f"identity {identity_id}: {len(rows)} sightings" if rows else f"identity {identity_id}: no sightings"
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
