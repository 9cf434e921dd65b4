"""Video re-ID dataset readers, the tracklet ``Dataset`` that feeds DRSTA, and a P x K batch sampler.

Readers turn a dataset's official folder layout into a ``VideoReIDSplit`` of ``TrackletRecord``s (paths only,
no pixels). They are listed in ``DATASETS``; ``get_reader(name)`` looks one up.

Conventions shared by every reader:

- ``pid`` is the dataset's own identity number (MARS 0 = distractor, only in the gallery). Training code that
  needs contiguous class labels maps pids with ``pid_to_label``.
- ``camid`` is 0-based: the dataset's 1-based camera number minus one (MARS, DukeMTMC-VideoReID, iLIDS-VID
  ``cam1``/``cam2``), ``cam_a`` = 0 and ``cam_b`` = 1 for PRID2011, and for the folder layout the rank of the
  camera token among all camera tokens of the tree.
- Frames of a tracklet are in temporal order.
- A missing root, sub-folder or info file raises ``FileNotFoundError`` naming the dataset and the path.
  Image files themselves are not opened; ``TrackletDataset`` raises ``ValueError`` for an unreadable one.

Evaluation note: where a split puts a tracklet in both query and gallery (the folder layout,
``read_mars(..., gallery_includes_query=True)``), the evaluator must discard gallery entries with the query's
pid and camid, as the standard cross-camera protocol does anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from models.backbones import INPUT_SIZE, preprocess_crops
from models.sampling import restricted_random_sample

__all__ = [
    "DATASETS",
    "PKSampler",
    "TrackletDataset",
    "TrackletRecord",
    "VideoReIDSplit",
    "get_reader",
    "pid_to_label",
    "read_dukev",
    "read_folder",
    "read_ilidsvid",
    "read_mars",
    "read_prid2011",
    "split_ids",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
NUM_RANDOM_SPLITS = 10  # PRID2011 / iLIDS-VID protocol of Wang et al. ECCV 2014
PRID_SHARED_IDS = 200  # persons 1..200 are the same people in cam_a and cam_b


# ---------------------------------------------------------------------------------------------------------
# Typed records


@dataclass(frozen=True)
class TrackletRecord:
    """One tracklet of one identity in one camera: frame image paths in temporal order.

    ``tracklet_id`` is unique within its dataset (e.g. MARS ``0001C1T0001``, PRID ``cam_a/person_0001``).
    Raises ``ValueError`` for an empty or non-tuple ``paths``, a non-int ``pid``, or a negative ``camid``.
    """

    paths: tuple[str, ...]
    pid: int
    camid: int
    tracklet_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.paths, tuple) or not all(isinstance(p, str) for p in self.paths):
            raise ValueError(
                f"TrackletRecord.paths: expected a tuple of str, got {type(self.paths).__name__}"
                f" ({self.tracklet_id!r})"
            )
        if not self.paths:
            raise ValueError(f"TrackletRecord.paths: expected >= 1 frame, got 0 ({self.tracklet_id!r})")
        for name in ("pid", "camid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"TrackletRecord.{name}: expected int, got {type(value).__name__}")
            object.__setattr__(self, name, int(value))  # np.int64 from .mat files -> plain int
        if self.camid < 0:
            raise ValueError(f"TrackletRecord.camid: expected >= 0, got {self.camid} ({self.tracklet_id!r})")


@dataclass(frozen=True)
class VideoReIDSplit:
    """Train / query / gallery tracklets of one dataset split (each list may be empty)."""

    train: list[TrackletRecord]
    query: list[TrackletRecord]
    gallery: list[TrackletRecord]


def pid_to_label(records: Sequence[TrackletRecord]) -> dict[int, int]:
    """Map the distinct pids of ``records``, sorted, to class labels ``0..P-1`` (for softmax / OIM heads)."""
    return {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}


# ---------------------------------------------------------------------------------------------------------
# Small filesystem helpers (the readers' only I/O besides .mat / .txt info files)


def _check_root(dataset: str, root: Path | str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset root not found: {root}")
    return root


def _require(dataset: str, path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{dataset}: missing {path}")
    return path


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


def _frame_number_key(path: Path) -> tuple[int, str]:
    """Sort key: the last run of digits in the file stem (the frame number), then the name."""
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _sorted_frames(folder: Path) -> tuple[str, ...]:
    return tuple(str(p) for p in sorted(_images(folder), key=_frame_number_key))


def _check_split_index(dataset: str, split: int, num_splits: int) -> None:
    if not 0 <= split < num_splits:
        raise ValueError(f"{dataset}: split must be in 0..{num_splits - 1}, got {split}")


def _random_half_split(ids: Sequence[int], split: int, seed: int) -> tuple[list[int], list[int]]:
    """(train_ids, test_ids): a seeded permutation of sorted ``ids``; first half test, the rest train.

    Split ``k`` of seed ``s`` uses the generator ``default_rng([s, k])``, so every split is reproducible
    on its own. "First 50% for testing" follows the layout of the official iLIDS-VID split file.
    """
    ordered = np.asarray(sorted(ids), dtype=np.int64)
    perm = np.random.default_rng([seed, split]).permutation(len(ordered))
    half = len(ordered) // 2
    return sorted(ordered[perm[half:]].tolist()), sorted(ordered[perm[:half]].tolist())


# ---------------------------------------------------------------------------------------------------------
# MARS


def _load_mat_variable(dataset: str, path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat  # heavy import, only for the .mat-based datasets

    content = loadmat(str(path))
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{dataset}: {path} has no variable {key!r} (found {found})")
    return np.asarray(content[key])


def _mars_records(
    info: np.ndarray, names: list[str], image_dir: Path, info_path: Path
) -> list[TrackletRecord | None]:
    """One record per info row ``[start, end, pid, camid]`` (1-based, inclusive); None for junk (pid -1)."""
    records: list[TrackletRecord | None] = []
    for row_index, (start, end, pid, cam) in enumerate(info.astype(np.int64).tolist()):
        if not 1 <= start <= end <= len(names):
            raise ValueError(
                f"MARS: {info_path} row {row_index}: frames {start}..{end} outside"
                f" 1..{len(names)} of the name list"
            )
        if pid == -1:
            records.append(None)
            continue
        frame_names = names[start - 1 : end]
        if frame_names[0][:4] != f"{pid:04d}":
            raise ValueError(
                f"MARS: {info_path} row {row_index} says pid {pid} but its first frame is {frame_names[0]!r}"
            )
        paths = tuple(str(image_dir / name[:4] / name) for name in frame_names)
        tracklet_id = frame_names[0].rpartition("F")[0]  # 0001C1T0001F001.jpg -> 0001C1T0001
        records.append(TrackletRecord(paths=paths, pid=pid, camid=cam - 1, tracklet_id=tracklet_id))
    return records


def read_mars(root: Path | str, *, gallery_includes_query: bool = False) -> VideoReIDSplit:
    """MARS (Zheng et al. ECCV 2016) in its official layout.

    ``root/bbox_train/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg``, ``root/bbox_test/...`` and
    ``root/info/{train_name.txt, test_name.txt, tracks_train_info.mat, tracks_test_info.mat, query_IDX.mat}``.
    The .mat variables are ``track_train_info`` / ``track_test_info`` (R, 4) rows of
    ``[start, end, pid, camid]`` (1-based, inclusive, into the name lists) and ``query_IDX`` (1-based rows
    of the test info).

    Protocol: pid -1 (junk) is dropped everywhere; pid 0 (distractors) is kept in the gallery only.
    Query = the ``query_IDX`` rows (1980). Gallery = the other test rows (``gallery_includes_query=False``,
    the default, as in the widely used Python readers; 9330 tracklets), or all test rows
    (``gallery_includes_query=True``, as in the official MATLAB evaluation, where the evaluator then
    discards same-pid same-camera gallery entries as junk). Image files are not checked one by one.
    """
    dataset = "MARS"
    root = _check_root(dataset, root)
    info = root / "info"
    train_dir = _require(dataset, root / "bbox_train")
    test_dir = _require(dataset, root / "bbox_test")
    train_names_path = _require(dataset, info / "train_name.txt")
    test_names_path = _require(dataset, info / "test_name.txt")
    train_info_path = _require(dataset, info / "tracks_train_info.mat")
    test_info_path = _require(dataset, info / "tracks_test_info.mat")
    query_path = _require(dataset, info / "query_IDX.mat")

    train_names = train_names_path.read_text().split()
    test_names = test_names_path.read_text().split()
    train_info = _load_mat_variable(dataset, train_info_path, "track_train_info")
    test_info = _load_mat_variable(dataset, test_info_path, "track_test_info")
    for path, arr in ((train_info_path, train_info), (test_info_path, test_info)):
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"{dataset}: {path}: expected shape (R, 4), got {arr.shape}")
    query_rows = _load_mat_variable(dataset, query_path, "query_IDX").astype(np.int64).ravel() - 1
    if query_rows.size and not (0 <= query_rows.min() and query_rows.max() < len(test_info)):
        raise ValueError(f"{dataset}: {query_path}: query rows outside 1..{len(test_info)}")

    train_all = _mars_records(train_info, train_names, train_dir, train_info_path)
    test_all = _mars_records(test_info, test_names, test_dir, test_info_path)
    query_set = set(query_rows.tolist())
    train = [r for r in train_all if r is not None and r.pid != 0]
    query = [r for i in query_rows.tolist() if (r := test_all[i]) is not None and r.pid != 0]
    gallery = [
        r for i, r in enumerate(test_all) if r is not None and (gallery_includes_query or i not in query_set)
    ]
    return VideoReIDSplit(train=train, query=query, gallery=gallery)


# ---------------------------------------------------------------------------------------------------------
# PRID2011


def read_prid2011(root: Path | str, *, split: int = 0, seed: int = 0, min_len: int = 21) -> VideoReIDSplit:
    """PRID2011 (Hirzer et al. 2011), multi-shot part, with the protocol of Wang et al. ECCV 2014.

    Layout ``root/multi_shot/cam_a/person_XXXX/XXXX.png`` and ``root/multi_shot/cam_b/...``. Only persons
    1..200 are the same people in both cameras; higher numbers are ignored.

    An identity is used when both its cam_a and cam_b sequences have at least ``min_len`` frames (default 21,
    the traditional "sequences of more than 21 frames" filter; note that the 178-identity split file shipped
    with iLIDS-VID corresponds to a 27-frame filter, pass ``min_len=27`` to match its identity count).
    Those identities, sorted, are split into halves by a seeded permutation: split ``split`` (0..9) of
    ``seed`` uses ``default_rng([seed, split])``; the first half (rounded down) is test, the rest train.
    Train holds both cameras' tracklets of the train ids; query = cam_a and gallery = cam_b tracklets of the
    test ids.
    """
    dataset = "PRID2011"
    _check_split_index(dataset, split, NUM_RANDOM_SPLITS)
    if min_len < 0:
        raise ValueError(f"{dataset}: min_len must be >= 0, got {min_len}")
    root = _check_root(dataset, root)
    cam_dirs = [_require(dataset, root / "multi_shot" / cam) for cam in ("cam_a", "cam_b")]

    tracklets: dict[int, list[TrackletRecord]] = {}
    for pid in range(1, PRID_SHARED_IDS + 1):
        person = f"person_{pid:04d}"
        pair = []
        for camid, cam_dir in enumerate(cam_dirs):
            folder = cam_dir / person
            frames = _sorted_frames(folder) if folder.is_dir() else ()
            if frames and len(frames) >= min_len:
                pair.append(TrackletRecord(frames, pid, camid, f"{cam_dir.name}/{person}"))
        if len(pair) == 2:
            tracklets[pid] = pair

    train_ids, test_ids = _random_half_split(list(tracklets), split, seed)
    return VideoReIDSplit(
        train=[r for pid in train_ids for r in tracklets[pid]],
        query=[tracklets[pid][0] for pid in test_ids],
        gallery=[tracklets[pid][1] for pid in test_ids],
    )


# ---------------------------------------------------------------------------------------------------------
# iLIDS-VID

ILIDS_SPLIT_FILES = (
    Path("train-test people splits") / "train_test_splits_ilidsvid.mat",
    Path("i-LIDS-VID") / "train-test people splits" / "train_test_splits_ilidsvid.mat",
)


def read_ilidsvid(root: Path | str, *, split: int = 0, seed: int = 0) -> VideoReIDSplit:
    """iLIDS-VID (Wang et al. ECCV 2014): 300 identities, one sequence per camera each.

    Layout ``root/i-LIDS-VID/sequences/cam1/personXXX/*.png`` and ``cam2/...`` (frames sorted by the
    number at the end of the file name). Identities are the ``person*`` folders of cam1, sorted by name;
    each must also exist in cam2.

    Splits: when the official split file ``train_test_splits_ilidsvid.mat`` is present (looked for at
    ``root/train-test people splits/`` then ``root/i-LIDS-VID/train-test people splits/``), row ``split`` of
    its ``ls_set`` (10, 300) is used: 1-based indices into the sorted identities, first half test, second
    half train; ``seed`` is then ignored. Otherwise the split is generated: a permutation of the sorted
    identities from ``default_rng([seed, split])``, first half (rounded down) test, rest train, ``split`` in
    0..9. Train holds both cameras of the train ids; query = cam1, gallery = cam2 of the test ids.
    """
    dataset = "iLIDS-VID"
    root = _check_root(dataset, root)
    sequences = root / "i-LIDS-VID" / "sequences"
    cam_dirs = [_require(dataset, sequences / cam) for cam in ("cam1", "cam2")]
    persons = [d.name for d in _subdirs(cam_dirs[0]) if re.fullmatch(r"person\d+", d.name)]

    tracklets: dict[int, list[TrackletRecord]] = {}
    for person in persons:
        pid = int(person.removeprefix("person"))
        pair = []
        for camid, cam_dir in enumerate(cam_dirs):
            folder = _require(dataset, cam_dir / person)
            frames = _sorted_frames(folder)
            if not frames:
                raise ValueError(f"{dataset}: no frames in {folder}")
            pair.append(TrackletRecord(frames, pid, camid, f"{cam_dir.name}/{person}"))
        tracklets[pid] = pair
    pids = list(tracklets)  # in sorted folder order, which the split file indexes

    split_file = next((root / rel for rel in ILIDS_SPLIT_FILES if (root / rel).is_file()), None)
    if split_file is None:
        _check_split_index(dataset, split, NUM_RANDOM_SPLITS)
        train_ids, test_ids = _random_half_split(pids, split, seed)
    else:
        ls_set = _load_mat_variable(dataset, split_file, "ls_set").astype(np.int64)
        if ls_set.ndim != 2 or ls_set.shape[1] != len(pids):
            raise ValueError(
                f"{dataset}: {split_file}: expected ls_set of shape (S, {len(pids)}) for {len(pids)}"
                f" identities, got {ls_set.shape}"
            )
        _check_split_index(dataset, split, ls_set.shape[0])
        row = ls_set[split]
        if sorted(row.tolist()) != list(range(1, len(pids) + 1)):
            raise ValueError(
                f"{dataset}: {split_file}: ls_set row {split} is not a permutation of 1..{len(pids)}"
            )
        half = len(pids) // 2
        test_ids = sorted(pids[i - 1] for i in row[:half].tolist())
        train_ids = sorted(pids[i - 1] for i in row[half:].tolist())

    return VideoReIDSplit(
        train=[r for pid in train_ids for r in tracklets[pid]],
        query=[tracklets[pid][0] for pid in test_ids],
        gallery=[tracklets[pid][1] for pid in test_ids],
    )


# ---------------------------------------------------------------------------------------------------------
# DukeMTMC-VideoReID

_DUKE_FRAME = re.compile(r"(?P<pid>-?\d+)_C(?P<cam>\d+)_F(?P<frame>\d+)_X\w*")


def _duke_records(dataset: str, folder: Path) -> list[TrackletRecord]:
    records = []
    for pid_dir in _subdirs(folder):
        if not pid_dir.name.lstrip("-").isdigit():
            raise ValueError(f"{dataset}: identity folder name is not a number: {pid_dir}")
        for trk_dir in _subdirs(pid_dir):
            frames: list[tuple[int, int, str]] = []  # (frame number, camera, path)
            for image in _images(trk_dir):
                match = _DUKE_FRAME.fullmatch(image.stem)
                if match is None:
                    raise ValueError(
                        f"{dataset}: frame name {image.name!r} does not match <pid>_C<cam>_F<frame>_X<...>"
                    )
                frames.append((int(match["frame"]), int(match["cam"]), str(image)))
            if not frames:  # a few official tracklet folders are empty; they carry no data
                continue
            cams = {cam for _, cam, _ in frames}
            if len(cams) != 1:
                raise ValueError(f"{dataset}: tracklet {trk_dir} mixes cameras {sorted(cams)}")
            frames.sort()
            records.append(
                TrackletRecord(
                    paths=tuple(path for _, _, path in frames),
                    pid=int(pid_dir.name),
                    camid=cams.pop() - 1,
                    tracklet_id=f"{folder.name}/{pid_dir.name}/{trk_dir.name}",
                )
            )
    return records


def read_dukev(root: Path | str) -> VideoReIDSplit:
    """DukeMTMC-VideoReID (Wu et al. CVPR 2018) in its official layout.

    ``root/{train,query,gallery}/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<...>.jpg``; frames sorted by
    the ``F`` number, camid = ``C`` - 1. Empty tracklet folders are skipped. Query and gallery are the
    official folders as they are (the gallery holds the distractor identities).
    """
    dataset = "DukeMTMC-VideoReID"
    root = _check_root(dataset, root)
    train, query, gallery = (
        _duke_records(dataset, _require(dataset, root / sub)) for sub in ("train", "query", "gallery")
    )
    return VideoReIDSplit(train=train, query=query, gallery=gallery)


# ---------------------------------------------------------------------------------------------------------
# Plain folder layout (e.g. shared/data/pku-reid)

_FOLDER_FRAME = re.compile(r"(?P<cam>.+)_(?P<k>\d+)")


def _camera_sort_key(token: str) -> tuple[int, int, str]:
    return (0, int(token), token) if token.isdigit() else (1, 0, token)


def read_folder(root: Path | str, *, ids: Sequence[str] | None = None) -> VideoReIDSplit:
    """A plain folder tree ``root/<pid>/<cam>_<k>.<ext>``: each (pid, cam) pair is ONE tracklet.

    ``<pid>`` folder names must be decimal numbers (pid = their value, ``001`` -> 1); frames of a tracklet
    are sorted by ``k`` numerically; camid = rank of ``<cam>`` among all camera tokens of the whole tree
    (numeric tokens in numeric order first), so camids do not depend on ``ids``. Files at the top level and
    non-image files are ignored; an image not named ``<cam>_<k>`` raises ``ValueError``.

    ``ids`` restricts the result to these identity folder names (see ``split_ids``); a name that is not a
    folder under ``root`` raises ``FileNotFoundError``. The layout has no protocol of its own: train, query
    and gallery each hold every selected tracklet (separate lists), and the evaluator excludes same-camera
    matches, which also removes each query's own tracklet.
    """
    dataset = "folder"
    root = _check_root(dataset, root)
    id_dirs = _subdirs(root)
    parsed: dict[str, dict[str, list[tuple[int, str]]]] = {}  # id name -> cam token -> [(k, path)]
    for id_dir in id_dirs:
        if not id_dir.name.isdigit():
            raise ValueError(f"{dataset}: identity folder name is not a number: {id_dir}")
        cams: dict[str, list[tuple[int, str]]] = {}
        for image in _images(id_dir):
            match = _FOLDER_FRAME.fullmatch(image.stem)
            if match is None:
                raise ValueError(f"{dataset}: image name {image.name!r} in {id_dir} does not match <cam>_<k>")
            cams.setdefault(match["cam"], []).append((int(match["k"]), str(image)))
        parsed[id_dir.name] = cams
    all_cams = sorted({cam for cams in parsed.values() for cam in cams}, key=_camera_sort_key)
    camid_of = {cam: i for i, cam in enumerate(all_cams)}

    if ids is None:
        selected = list(parsed)
    else:
        selected = sorted(set(ids))
        if len(selected) != len(ids):
            raise ValueError(f"{dataset}: ids contains duplicates")
        for name in selected:
            if name not in parsed:
                raise FileNotFoundError(f"{dataset}: missing identity folder {root / name}")

    records = [
        TrackletRecord(
            paths=tuple(path for _, path in sorted(parsed[name][cam])),
            pid=int(name),
            camid=camid_of[cam],
            tracklet_id=f"{name}/{cam}",
        )
        for name in selected
        for cam in sorted(parsed[name], key=_camera_sort_key)
    ]
    return VideoReIDSplit(train=list(records), query=list(records), gallery=list(records))


def split_ids(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out validation identities: ``(train_ids, val_ids)``, both sorted, disjoint, covering ``ids``.

    The ids are sorted, permuted with ``default_rng(seed)``, and the first ``round(val_fraction * len(ids))``
    become validation ids, so the result depends only on the set of ids, the fraction and the seed.
    Raises ``ValueError`` for duplicate ids or a fraction outside [0, 1].
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"split_ids: val_fraction must be in [0, 1], got {val_fraction}")
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise ValueError("split_ids: ids contains duplicates")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    num_val = int(round(val_fraction * len(ordered)))
    val = sorted(ordered[i] for i in perm[:num_val])
    train = sorted(ordered[i] for i in perm[num_val:])
    return train, val


# ---------------------------------------------------------------------------------------------------------
# Reader plug-ins

Reader = Callable[..., VideoReIDSplit]

DATASETS: dict[str, Reader] = {
    "mars": read_mars,
    "prid2011": read_prid2011,
    "ilidsvid": read_ilidsvid,
    "dukev": read_dukev,
    "folder": read_folder,
}


def get_reader(name: str) -> Reader:
    """The reader registered under ``name`` in ``DATASETS``; ``KeyError`` listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}") from None


# ---------------------------------------------------------------------------------------------------------
# Pixels: the Dataset and the P x K sampler


def read_image_bgr(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path!r} (missing, unreadable or not an image)")
    return image


class TrackletDataset(Dataset):
    """Tracklets as network inputs: item ``i`` is ``(frames, pid, camid)`` of ``records[i]``.

    ``frames`` is a float32 tensor (n, 3, H, W), ``size`` = (H, W) = (256, 128) by default: images read with
    cv2, then ``models.backbones.preprocess_crops`` (BGR -> RGB, ``cv2.INTER_LINEAR`` resize, /255, ImageNet
    mean / std), the same preprocessing as inference on tracker crops. The ``n`` frames are picked by
    ``restricted_random_sample``:
    - ``train=True``: a new random pick on every access, and, when ``flip``, a horizontal flip with
      probability 0.5 applied to all frames of the item alike. Randomness comes from a generator seeded
      with ``seed`` (in a DataLoader worker: with ``[seed, worker seed]``, so workers and epochs differ
      while a seeded DataLoader stays reproducible).
    - ``train=False``: the first frame of every chunk, no flip; the output is deterministic.
    ``transform``, when given, is applied to the (n, 3, H, W) tensor last (e.g. random erasing).
    Raises ``ValueError`` naming the file when an image cannot be read.
    """

    def __init__(
        self,
        records: Sequence[TrackletRecord],
        n: int,
        train: bool,
        seed: int = 0,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        flip: bool = True,
        size: tuple[int, int] = INPUT_SIZE,
    ) -> None:
        if n < 1:
            raise ValueError(f"TrackletDataset: n must be >= 1, got {n}")
        self.records = list(records)
        self.n = n
        self.train = train
        self.seed = seed
        self.transform = transform
        self.flip = flip
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._rng_worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def _generator(self) -> np.random.Generator:
        # Each DataLoader worker holds a copy of this object; reseed once per worker (and per epoch,
        # whose workers get new seeds) so that workers do not replay the same random stream.
        info = get_worker_info()
        worker_seed = None if info is None else info.seed
        if worker_seed != self._rng_worker_seed:
            self._rng = np.random.default_rng([self.seed, worker_seed])
            self._rng_worker_seed = worker_seed
        return self._rng

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        record = self.records[index]
        rng = self._generator() if self.train else None
        picks = restricted_random_sample(len(record.paths), self.n, train=self.train, rng=rng)
        unique, inverse = np.unique(picks, return_inverse=True)  # short tracklets repeat frames: read once
        images = [read_image_bgr(record.paths[i]) for i in unique.tolist()]
        frames = preprocess_crops([images[j] for j in inverse.tolist()], size=self.size)  # (n, 3, H, W)
        if self.train and self.flip and rng is not None and rng.random() < 0.5:
            frames = frames.flip(-1)  # mirror the W axis of every frame alike
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, record.pid, record.camid


class PKSampler(Sampler[list[int]]):
    """Batches of ``p`` identities x ``k`` tracklets, as index lists for ``DataLoader(batch_sampler=...)``.

    Indices refer to ``records`` (the same list the ``TrackletDataset`` holds). Each epoch permutes the
    identities and yields ``len(identities) // p`` batches; each identity appears in at most one batch per
    epoch (the leftover identities wait for another epoch's permutation). Per identity, ``k`` distinct
    tracklets are drawn when it has at least ``k``, otherwise all of them plus random repeats. A batch lists
    its ``p`` identities one after another, ``k`` indices each. Epochs are reproducible given ``seed``.
    Raises ``ValueError`` when ``p`` or ``k`` < 1 or there are fewer than ``p`` identities.
    """

    def __init__(self, records: Sequence[TrackletRecord], p: int, k: int, seed: int = 0) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: p and k must be >= 1, got p={p}, k={k}")
        by_pid: dict[int, list[int]] = {}
        for index, record in enumerate(records):
            by_pid.setdefault(record.pid, []).append(index)
        if len(by_pid) < p:
            raise ValueError(f"PKSampler: p={p} identities per batch but the records hold only {len(by_pid)}")
        self.p = p
        self.k = k
        self._groups = [np.asarray(by_pid[pid], dtype=np.int64) for pid in sorted(by_pid)]
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._groups) // self.p

    def _pick(self, group: np.ndarray) -> list[int]:
        if len(group) >= self.k:
            chosen = self._rng.choice(group, size=self.k, replace=False)
        else:
            extra = self._rng.choice(group, size=self.k - len(group), replace=True)
            chosen = np.concatenate([self._rng.permutation(group), extra])
        return chosen.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        # The whole epoch is drawn up front so that stopping early does not change later epochs.
        order = self._rng.permutation(len(self._groups))
        batches = [
            [i for g in order[b * self.p : (b + 1) * self.p].tolist() for i in self._pick(self._groups[g])]
            for b in range(len(self))
        ]
        return iter(batches)
