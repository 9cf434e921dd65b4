"""Multi-camera identity evaluation of a finished run: did each person get one identity in every camera?

Usage::

    python -m pipeline.tools.evaluate_mtmc --db URL --pred-root DIR --gt CAMERA=FILE [--gt CAMERA=FILE ...]
        [--session KEY] [--frames FIRST-LAST] [--schema NAME] [--json]

Inputs
    * ``--pred-root DIR``: the per-camera MOT files of ``run_pipeline.py --out DIR`` (``DIR/<camera>.txt``:
      ``frame,track_id,x,y,w,h,...``, 1-based frames, xywh pixels). They carry every box the tracker output;
      the store keeps only the first and last box of a tracklet, so boxes always come from these files.
    * ``--db URL``: the store of the same run; it maps each ``(camera, track id, frame)`` to the global
      identity the matcher gave (``tracklets`` + ``sightings``, docs/schema.md). ``tracklets.first_frame`` /
      ``last_frame`` count from 0, MOT frames from 1: a row of frame ``f`` belongs to the tracklet of its
      track whose span holds ``f - 1``. A store holding several runs of a camera needs ``--session KEY``.
    * ``--gt CAMERA=FILE``, one per camera: ground truth in one of these layouts, told apart by the column
      count: 6 ``frame,id,x,y,w,h`` (all counted); 7 the split view's ``frame,person,x,y,w,h,mot15_id``
      (all counted, the last column ignored); 9 MOT16/17 ``gt.txt`` (consider flag, class, visibility:
      filtered as :mod:`pipeline.tools.evaluate_mot` does); 10 MOT15 ``gt.txt`` (column 7 is the consider
      flag). **Ground-truth ids must name the same person in every camera** (the split view's ``person``);
      per-camera figures hold without that, the joint ones do not.
    * Evaluated frames: ``--frames FIRST-LAST`` in every camera, default 1 to the last frame with ground
      truth in any camera. Unlike the single-camera tool, a frame in that range without ground truth in one
      camera is still evaluated there (its boxes are false positives); boxes outside the range are ignored.

Global id of a predicted box (the "matcher" line)
    1. the identity of the stored tracklet of its ``(camera, track)`` whose frame span contains the box;
    2. else (a piece of the track that was not stored, e.g. a trailing piece shorter than
       ``tracklets.min_length``) the identity of the stored tracklet of the same track nearest in frames;
    3. else (the track never became a stored tracklet with a sighting) an identity of its own: the track is
       counted as its own person, exactly as in the *no linking* line. These are reported as
       ``unlinked_tracks`` / ``unlinked_boxes``.
    If two boxes of one camera frame end up with the same id, the box of the lowest track id keeps it and
    the others fall back to their track's own id (``conflict_boxes``): an id names one box per frame.

Lines (each scored once over all cameras, ``joint``)
    * **matcher**: the global ids above. Joint IDF1 / IDP / IDR as in Ristani et al. (2016): one
      motmetrics accumulator over every camera's frames, frame keys made unique per camera, so a person
      whose boxes carry id 7 in one camera and id 9 in another loses the smaller share of them even when
      each camera on its own is perfect. HOTA: trackeval on the same concatenated frames.
    * **no linking**: every ``(camera, track)`` is its own identity (the tracker alone, no re-ID).
    * **oracle linking**: every ``(camera, track)`` is given the ground-truth person its boxes were matched
      to most often (per-frame IoU >= 0.5 matching by motmetrics with tracker ids; ties to the lowest person
      id); tracks never matched keep an id of their own. The best any matcher can do with these tracks.
    ``gain_taken = (matcher - no linking) / (oracle - no linking)`` of joint IDF1: the share of the possible
    gain the matcher realises (None when oracle linking gains nothing).

Counts (track level: each ``(camera, track)`` stands for the person it was matched to most often)
    * ``people_multi_camera``: ground-truth people counted in 2+ cameras.
    * ``people_linked``: of those, people whose tracks lie in 2+ cameras and whose boxes all carry one id.
    * ``merges``: ids whose boxes belong to tracks of 2+ different people (identities given to 2+ people).
    * Per camera: IDF1 with tracker ids and with global ids (global ids can score higher: a person who
      leaves and comes back gets the same id again).

Metrics are motmetrics' and trackeval's (through :mod:`pipeline.tools.evaluate_mot`); no metric code here.
Output: a table; ``--json`` prints one JSON object instead (:meth:`MtmcResult.to_json`), metrics as fractions
in [0, 1], ``null`` where undefined. A missing or malformed input: one line on stderr naming it, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import motmetrics as mm
import numpy as np
import sqlalchemy as sa
import trackeval
from sqlalchemy.orm import Session

from pipeline.camera.mot_io import read_mot
from pipeline.tools.evaluate_mot import (
    EvaluationInputError,
    ScoredFrame,
    accumulate_sequence,
    prepare_sequence,
    trackeval_sequence_data,
)
from storage.db import StoreError, open_store
from storage.models import SightingRow, TrackletRow

__all__ = [
    "TrackSpan",
    "LineScores",
    "CameraScores",
    "MtmcResult",
    "read_gt",
    "load_track_spans",
    "evaluate_mtmc",
    "evaluate_run",
    "format_table",
    "main",
]

_ID_METRICS = ["idf1", "idp", "idr"]
_MATCHED = ("MATCH", "SWITCH")


@dataclass(frozen=True)
class TrackSpan:
    """A stored tracklet: ``camera_id``'s track ``track_id`` over MOT frames ``first_frame..last_frame``
    (1-based, inclusive) and the identity the matcher gave it (None: no sighting yet)."""

    camera_id: str
    track_id: int
    first_frame: int
    last_frame: int
    identity_id: int | None


@dataclass(frozen=True)
class LineScores:
    """One way of naming the predicted boxes, scored over all cameras at once (fractions; None = undefined).

    ``identities``: distinct ids among the evaluated boxes; ``people_linked`` and ``merges`` as in the
    module docstring."""

    idf1: float | None
    idp: float | None
    idr: float | None
    hota: float | None
    identities: int
    people_linked: int
    merges: int


@dataclass(frozen=True)
class CameraScores:
    """One camera: frames of the evaluated range holding a counted ground-truth or predicted box, counted
    ground-truth boxes, evaluated predicted boxes, IDF1 with the tracker's ids and with the global ids."""

    camera: str
    frames: int
    gt_boxes: int
    pred_boxes: int
    idf1_tracker: float | None
    idf1_global: float | None


@dataclass(frozen=True)
class MtmcResult:
    """What :func:`evaluate_mtmc` measured; see the module docstring for every field."""

    frames: tuple[int, int]
    cameras: tuple[CameraScores, ...]
    joint: LineScores
    no_linking: LineScores
    oracle: LineScores
    gain_taken: float | None
    people_multi_camera: int
    unlinked_tracks: int
    unlinked_boxes: int
    conflict_boxes: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields nested as they are, plus the headline figures flat at the top
        (``joint_idf1``, ``no_linking_idf1``, ``oracle_idf1``, ``merges``, ``people_linked``)."""
        out: dict[str, Any] = {
            "joint_idf1": self.joint.idf1,
            "no_linking_idf1": self.no_linking.idf1,
            "oracle_idf1": self.oracle.idf1,
            "merges": self.joint.merges,
            "people_linked": self.joint.people_linked,
        }
        out.update(asdict(self))
        return out


# ----------------------------------------------------------------------------------------------- inputs


def read_gt(path: str | Path) -> np.ndarray:
    """Ground truth of one camera as the array :func:`~pipeline.tools.evaluate_mot.prepare_sequence` takes:
    (N, 6) ``frame,id,x,y,w,h`` (everything counted), (N, 7) with a consider flag, or (N, 9) MOT16/17.

    Layouts by column count (module docstring): 6 and 9 as they are, 7 (split view) without its last
    column, 10 (MOT15) as its first 7. Raises :class:`EvaluationInputError` naming ``path`` when the file is
    missing, unreadable or has another column count.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"gt file not found: {path}")
    try:
        rows = read_mot(path)
    except ValueError as e:
        raise EvaluationInputError(f"gt file unreadable: {e}") from None
    keep = {6: 6, 7: 6, 9: 9, 10: 7}.get(rows.shape[1])
    if keep is None:
        raise EvaluationInputError(
            f"gt file {path}: expected 6, 7 (split view), 9 (MOT16/17) or 10 (MOT15) columns, "
            f"got {rows.shape[1]}"
        )
    return rows[:, :keep] if len(rows) else np.zeros((0, 6))


def _read_pred(path: Path) -> np.ndarray:
    if not path.is_file():
        raise EvaluationInputError(f"prediction file not found: {path}")
    try:
        return read_mot(path)
    except ValueError as e:
        raise EvaluationInputError(f"prediction file unreadable: {e}") from None


def load_track_spans(
    session: Session, cameras: Sequence[str], *, session_key: str | None = None
) -> list[TrackSpan]:
    """The stored tracklets of ``cameras`` with their identities, as :class:`TrackSpan` (MOT frames).

    ``session``: a SQLAlchemy ``Session`` on the store. Only tracklets of one camera worker run per camera
    are taken: ``session_key`` when given, else the camera's only run. Raises :class:`EvaluationInputError`
    when a camera has tracklets of several runs and no ``session_key`` says which, or when ``session_key``
    matches no tracklet of these cameras.
    """
    t = TrackletRow.__table__.c
    stmt = (
        sa.select(
            t.camera_id, t.session_key, t.track_id, t.first_frame, t.last_frame, SightingRow.identity_id
        )
        .outerjoin(SightingRow, SightingRow.tracklet_id == t.id)
        .where(t.camera_id.in_(list(cameras)))
        .order_by(t.camera_id, t.track_id, t.first_frame)
    )
    rows = session.execute(stmt).all()
    runs: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        runs[r.camera_id].add(r.session_key)
    if session_key is not None:
        if rows and not any(session_key in keys for keys in runs.values()):
            raise EvaluationInputError(f"--session {session_key!r}: no tracklets of cameras {list(cameras)}")
    else:
        for camera, keys in runs.items():
            if len(keys) > 1:
                raise EvaluationInputError(
                    f"camera {camera!r} has tracklets of {len(keys)} runs in the store "
                    f"({', '.join(sorted(keys))}): pass --session KEY"
                )
    return [
        TrackSpan(r.camera_id, int(r.track_id), int(r.first_frame) + 1, int(r.last_frame) + 1, r.identity_id)
        for r in rows
        if session_key is None or r.session_key == session_key
    ]


# ----------------------------------------------------------------------------------------- id schemes


class _Interner:
    """Dense integer ids for hashable keys, so motmetrics and trackeval see plain ints."""

    def __init__(self) -> None:
        self.ids: dict[Hashable, int] = {}

    def __call__(self, key: Hashable) -> int:
        return self.ids.setdefault(key, len(self.ids))


@dataclass
class _Camera:
    """One camera's evaluated boxes: ScoredFrames whose pred ids are indices into ``rows``."""

    name: str
    rows: np.ndarray  # (P, >= 6) prediction rows inside the frame range
    frames: list[ScoredFrame]

    @property
    def track_ids(self) -> np.ndarray:
        return self.rows[:, 1].astype(np.int64)

    @property
    def evaluated_rows(self) -> list[int]:
        """Indices of the rows left after evaluate_mot's filtering (distractors removed), ascending."""
        return sorted(int(i) for f in self.frames for i in f.pred_ids)

    def relabel(self, ids: np.ndarray) -> list[ScoredFrame]:
        """The frames with every pred box named by ``ids[row index]``."""
        return [ScoredFrame(f.frame, f.gt_ids, f.gt_xywh, ids[f.pred_ids], f.pred_xywh) for f in self.frames]


def _prepare_camera(name: str, gt: np.ndarray, pred: np.ndarray, first: int, last: int, path: str) -> _Camera:
    """Filter one camera as evaluate_mot does, over every frame of ``first..last``."""
    gt = gt[(gt[:, 0] >= first) & (gt[:, 0] <= last)]
    rows = pred[(pred[:, 0] >= first) & (pred[:, 0] <= last)]
    keys = rows[:, :2].astype(np.int64)
    if len(np.unique(keys, axis=0)) != len(keys):
        raise EvaluationInputError(f"prediction file invalid: {path}: a track id occurs twice in one frame")
    indexed = rows[:, :6].copy()
    indexed[:, 1] = np.arange(len(rows))  # pred ids = row indices, relabelled per line later
    frames, _ = prepare_sequence(gt, indexed)
    with_gt = {f.frame for f in frames}
    empty_gt = (np.zeros(0, np.int64), np.zeros((0, 4)))
    for f in sorted({int(v) for v in rows[:, 0]} - with_gt):
        sel = np.flatnonzero(rows[:, 0] == f)
        frames.append(ScoredFrame(f, *empty_gt, sel, rows[sel, 2:6]))
    frames.sort(key=lambda fr: fr.frame)
    return _Camera(name, rows, frames)


def _one_box_per_id(cam: _Camera, keys: list[Hashable], own: list[Hashable]) -> tuple[list[Hashable], int]:
    """``keys`` with every repeat of a key inside one frame replaced by the row's ``own`` key (the row of
    the lowest track id keeps it); returns the keys and the number of rows replaced."""
    out = list(keys)
    replaced = 0
    order = np.lexsort((cam.track_ids, cam.rows[:, 0]))  # by frame, then track id
    seen: set[tuple[int, Hashable]] = set()
    for i in order:
        k = (int(cam.rows[i, 0]), out[i])
        if k in seen:
            out[i] = own[i]
            replaced += 1
        seen.add(k)
    return out, replaced


def _global_keys(cam: _Camera, spans: Sequence[TrackSpan]) -> tuple[list[Hashable], set[int]]:
    """Per row: ``("identity", id)`` by the rules of the module docstring, else ``None``; plus the track
    ids that got no identity at all."""
    by_track: dict[int, list[TrackSpan]] = defaultdict(list)
    for s in spans:
        if s.camera_id == cam.name and s.identity_id is not None:
            by_track[s.track_id].append(s)
    keys: list[Hashable] = []
    unlinked: set[int] = set()
    for frame, track in zip(cam.rows[:, 0].astype(np.int64), cam.track_ids, strict=True):
        pieces = by_track.get(int(track))
        if not pieces:
            keys.append(None)
            unlinked.add(int(track))
            continue
        # distance 0 inside a span; ties go to the earlier span (pieces are sorted by first frame)
        near = min(pieces, key=lambda s: max(s.first_frame - frame, frame - s.last_frame, 0))
        keys.append(("identity", near.identity_id))
    return keys, unlinked


def _majority_person(cams: Sequence[_Camera]) -> dict[tuple[str, int], int]:
    """``(camera, track) -> ground-truth person`` its boxes were matched to most often (motmetrics'
    per-frame matching with tracker ids; ties to the lowest person id). Tracks never matched are absent."""
    out: dict[tuple[str, int], int] = {}
    for cam in cams:
        events = accumulate_sequence(cam.relabel(cam.track_ids)).mot_events
        matched = events[events["Type"].isin(_MATCHED)]
        votes: dict[int, Counter] = defaultdict(Counter)
        for oid, hid in zip(matched["OId"], matched["HId"], strict=True):
            votes[int(hid)][int(oid)] += 1
        for track, c in votes.items():
            out[(cam.name, track)] = min(c, key=lambda p: (-c[p], p))
    return out


# ------------------------------------------------------------------------------------------ scoring


def _num(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _id_scores(frames: Sequence[ScoredFrame]) -> dict[str, float | None]:
    if not frames:
        return dict.fromkeys(_ID_METRICS)
    row = mm.metrics.create().compute(accumulate_sequence(frames), metrics=_ID_METRICS, name="x")
    return {m: _num(row.loc["x", m]) for m in _ID_METRICS}


def _hota(frames: Sequence[ScoredFrame]) -> float | None:
    data = trackeval_sequence_data(frames)
    if not frames or data["num_gt_dets"] + data["num_tracker_dets"] == 0:
        return None
    return _num(np.mean(trackeval.metrics.HOTA().eval_sequence(data)["HOTA"]))


def _joint(cams: Sequence[_Camera], ids: Mapping[str, np.ndarray]) -> list[ScoredFrame]:
    """Every camera's frames one after the other, renumbered so that frame keys are unique per camera."""
    out: list[ScoredFrame] = []
    for cam in cams:
        for f in cam.relabel(ids[cam.name]):
            out.append(ScoredFrame(len(out), f.gt_ids, f.gt_xywh, f.pred_ids, f.pred_xywh))
    return out


def _line(
    cams: Sequence[_Camera],
    keys: Mapping[str, list[Hashable]],
    intern: _Interner,
    person_of: Mapping[tuple[str, int], int],
    multi: set[int],
) -> tuple[LineScores, dict[str, np.ndarray]]:
    ids = {c.name: np.array([intern(k) for k in keys[c.name]], np.int64) for c in cams}
    frames = _joint(cams, ids)
    people_of_id: dict[Hashable, set[int]] = defaultdict(set)
    ids_of_person: dict[int, set[Hashable]] = defaultdict(set)
    cameras_of_person: dict[int, set[str]] = defaultdict(set)
    all_keys: set[Hashable] = set()
    for cam in cams:
        for i in cam.evaluated_rows:
            key = keys[cam.name][i]
            all_keys.add(key)
            person = person_of.get((cam.name, int(cam.track_ids[i])))
            if person is not None:
                people_of_id[key].add(person)
                ids_of_person[person].add(key)
                cameras_of_person[person].add(cam.name)
    linked = sum(1 for p in multi if len(cameras_of_person[p]) >= 2 and len(ids_of_person[p]) == 1)
    scores = LineScores(
        **_id_scores(frames),
        hota=_hota(frames),
        identities=len(all_keys),
        people_linked=linked,
        merges=sum(1 for people in people_of_id.values() if len(people) >= 2),
    )
    return scores, ids


def evaluate_mtmc(
    gt: Mapping[str, np.ndarray],
    pred: Mapping[str, np.ndarray],
    spans: Sequence[TrackSpan],
    *,
    frames: tuple[int, int] | None = None,
    sources: Mapping[str, str] | None = None,
) -> MtmcResult:
    """Score one multi-camera run (module docstring: the lines, the id rules, the counts).

    ``gt``: camera -> ground truth as :func:`read_gt` returns it; ``pred``: camera -> MOT rows (P, >= 6)
    with the tracker's ids in column 2, for exactly the cameras of ``gt``; ``spans``: the stored tracklets
    (:func:`load_track_spans`); ``frames``: the evaluated ``(first, last)`` MOT frames, default 1 to the
    last ground-truth frame; ``sources``: camera -> file name for error messages. Raises
    :class:`EvaluationInputError` when the cameras differ or a track id occurs twice in one frame.
    """
    if set(gt) != set(pred):
        raise EvaluationInputError(
            f"cameras differ: ground truth for {sorted(gt)}, predictions for {sorted(pred)}"
        )
    if frames is None:
        last = max((int(g[:, 0].max()) for g in gt.values() if len(g)), default=0)
        frames = (1, last)
    names = sorted(gt)
    src = sources or {}
    cams = [_prepare_camera(n, gt[n], pred[n], *frames, src.get(n, n)) for n in names]
    intern = _Interner()
    track_keys = {c.name: [("track", c.name, int(t)) for t in c.track_ids] for c in cams}
    person_of = _majority_person(cams)
    gt_cameras: dict[int, set[str]] = defaultdict(set)
    for c in cams:
        for f in c.frames:
            for p in f.gt_ids:
                gt_cameras[int(p)].add(c.name)
    multi = {p for p, cs in gt_cameras.items() if len(cs) >= 2}

    global_keys: dict[str, list[Hashable]] = {}
    oracle_keys: dict[str, list[Hashable]] = {}
    unlinked_tracks = unlinked_boxes = conflicts = 0
    for c in cams:
        keys, unlinked = _global_keys(c, spans)
        unlinked_tracks += len(unlinked)
        unlinked_boxes += sum(keys[i] is None for i in c.evaluated_rows)
        keys = [own if k is None else k for k, own in zip(keys, track_keys[c.name], strict=True)]
        global_keys[c.name], replaced = _one_box_per_id(c, keys, track_keys[c.name])
        conflicts += replaced
        oracle = [
            ("person", person_of[(c.name, k[2])]) if (c.name, k[2]) in person_of else k
            for k in track_keys[c.name]
        ]
        oracle_keys[c.name], _ = _one_box_per_id(c, oracle, track_keys[c.name])

    joint, global_ids = _line(cams, global_keys, intern, person_of, multi)
    no_linking, track_ids = _line(cams, track_keys, intern, person_of, multi)
    oracle, _ = _line(cams, oracle_keys, intern, person_of, multi)
    per_camera = tuple(
        CameraScores(
            camera=c.name,
            frames=len(c.frames),
            gt_boxes=sum(len(f.gt_ids) for f in c.frames),
            pred_boxes=sum(len(f.pred_ids) for f in c.frames),
            idf1_tracker=_id_scores(c.relabel(track_ids[c.name]))["idf1"],
            idf1_global=_id_scores(c.relabel(global_ids[c.name]))["idf1"],
        )
        for c in cams
    )
    gain = None
    if None not in (joint.idf1, no_linking.idf1, oracle.idf1) and oracle.idf1 - no_linking.idf1 > 1e-12:
        gain = (joint.idf1 - no_linking.idf1) / (oracle.idf1 - no_linking.idf1)
    return MtmcResult(
        frames=tuple(frames),
        cameras=per_camera,
        joint=joint,
        no_linking=no_linking,
        oracle=oracle,
        gain_taken=gain,
        people_multi_camera=len(multi),
        unlinked_tracks=unlinked_tracks,
        unlinked_boxes=unlinked_boxes,
        conflict_boxes=conflicts,
    )


# ---------------------------------------------------------------------------------------------- edge


def _parse_gt_args(values: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values:
        camera, sep, file = v.partition("=")
        if not sep or not camera or not file:
            raise EvaluationInputError(f"--gt {v!r}: expected CAMERA=FILE")
        if camera in out:
            raise EvaluationInputError(f"--gt: camera {camera!r} given twice")
        out[camera] = Path(file)
    return out


def _parse_frames(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    first, sep, last = value.partition("-")
    try:
        span = (int(first), int(last))
    except ValueError:
        span = None
    if not sep or span is None or not 1 <= span[0] <= span[1]:
        raise EvaluationInputError(f"--frames {value!r}: expected FIRST-LAST with 1 <= FIRST <= LAST")
    return span


def evaluate_run(
    db_url: str,
    pred_root: str | Path,
    gt_files: Mapping[str, str | Path],
    *,
    session_key: str | None = None,
    frames: tuple[int, int] | None = None,
    schema: str | None = None,
) -> MtmcResult:
    """Read a finished run (store at ``db_url``, MOT files ``pred_root/<camera>.txt``) and the ground truth
    ``gt_files`` (camera -> file), and score it with :func:`evaluate_mtmc`.

    Raises :class:`EvaluationInputError` for a missing or malformed file or a SQLite database that does not
    exist, and ``storage.db.StoreError`` (one line, password redacted) when the store cannot be opened.
    """
    try:
        url = sa.engine.make_url(db_url)
    except (sa.exc.ArgumentError, TypeError, ValueError):
        url = None  # open_store says so, with the password redacted
    if url is not None and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).is_file():  # open_store would create an empty database
            raise EvaluationInputError(f"database not found: {url.database}")
    pred_root = Path(pred_root)
    if not pred_root.is_dir():
        raise EvaluationInputError(f"pred root not found: {pred_root}")
    gt = {c: read_gt(p) for c, p in gt_files.items()}
    pred_paths = {c: pred_root / f"{c}.txt" for c in gt}
    pred = {c: _read_pred(p) for c, p in pred_paths.items()}
    store = open_store(db_url, schema=schema)
    try:
        with store.session(readonly=True) as s:
            spans = load_track_spans(s, sorted(gt), session_key=session_key)
    finally:
        store.dispose()
    return evaluate_mtmc(gt, pred, spans, frames=frames, sources={c: str(p) for c, p in pred_paths.items()})


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.1f}"


def format_table(result: MtmcResult) -> str:
    """The result as a readable table: per camera, the three joint lines, then the counts. Percent."""
    lines = [f"frames {result.frames[0]}-{result.frames[1]} of every camera"]
    width = max(8, *(len(c.camera) for c in result.cameras)) + 2
    lines.append(
        "camera".ljust(width) + f"{'frames':>7}{'GT boxes':>10}{'pred boxes':>12}{'IDF1 tracker ids':>18}"
        f"{'IDF1 global ids':>17}"
    )
    for c in result.cameras:
        lines.append(
            c.camera.ljust(width) + f"{c.frames:>7}{c.gt_boxes:>10}{c.pred_boxes:>12}"
            f"{_pct(c.idf1_tracker):>18}{_pct(c.idf1_global):>17}"
        )
    lines.append("")
    lines.append(
        f"{'all cameras at once':<22}{'IDF1':>7}{'IDP':>7}{'IDR':>7}{'HOTA':>7}{'ids':>6}{'linked':>8}{'merges':>8}"
    )
    for name, s in (
        ("no linking", result.no_linking),
        ("matcher", result.joint),
        ("oracle linking", result.oracle),
    ):
        lines.append(
            f"{name:<22}{_pct(s.idf1):>7}{_pct(s.idp):>7}{_pct(s.idr):>7}{_pct(s.hota):>7}"
            f"{s.identities:>6}{s.people_linked:>8}{s.merges:>8}"
        )
    lines.append("")
    lines.append(
        f"people seen in 2+ cameras: {result.people_multi_camera}; one identity everywhere: "
        f"{result.joint.people_linked} (oracle linking of these tracks: {result.oracle.people_linked}); "
        f"identities given to 2+ people: {result.joint.merges}"
    )
    if result.gain_taken is not None:
        lines.append(
            f"the matcher takes {_pct(result.gain_taken)} % of the joint IDF1 gain oracle linking offers"
        )
    lines.append(
        f"tracks without a stored identity (each its own): {result.unlinked_tracks} "
        f"({result.unlinked_boxes} boxes); boxes that gave up an id shared in their frame: {result.conflict_boxes}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.evaluate_mtmc", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--db", required=True, metavar="URL", help="SQLAlchemy URL of the run's store")
    parser.add_argument("--schema", metavar="NAME", help="PostgreSQL schema of the store (default: none)")
    parser.add_argument("--pred-root", required=True, type=Path, help="the run's --out folder (<camera>.txt)")
    parser.add_argument(
        "--gt", action="append", required=True, metavar="CAMERA=FILE", help="ground truth of one camera"
    )
    parser.add_argument(
        "--session", metavar="KEY", help="the run's session_key, when the store holds several"
    )
    parser.add_argument("--frames", metavar="FIRST-LAST", help="evaluated frames (default: 1..last gt frame)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    try:
        result = evaluate_run(
            args.db,
            args.pred_root,
            _parse_gt_args(args.gt),
            session_key=args.session,
            frames=_parse_frames(args.frames),
            schema=args.schema,
        )
    except (EvaluationInputError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
