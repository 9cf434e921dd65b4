"""Dataset readers on tiny trees in each official layout, the real PKU folder, TrackletDataset, PKSampler."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from torch.utils.data import DataLoader

from models.backbones import IMAGENET_MEAN, IMAGENET_STD
from models.datasets import (
    DATASETS,
    PKSampler,
    TrackletDataset,
    TrackletRecord,
    VideoReIDSplit,
    get_reader,
    pid_to_label,
    read_dukev,
    read_folder,
    read_ilidsvid,
    read_mars,
    read_prid2011,
    split_ids,
)


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (8, 4)) -> None:
    """A tiny (H, W) = ``size`` BGR image; the left column is darker so that a horizontal flip shows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3), value, dtype=np.uint8)
    image[:, 0] = (0, 64, 255)
    assert cv2.imwrite(str(path), image), path


def names(paths: tuple[str, ...]) -> list[str]:
    return [Path(p).name for p in paths]


def pids(records: list[TrackletRecord]) -> list[int]:
    return [r.pid for r in records]


# ---------------------------------------------------------------------------------------------------------
# MARS

# (subset, pid, cam, tracklet, frames); the order is the order of the name lists and info rows.
MARS_TRACKLETS = [
    ("train", 1, 1, 1, 3),
    ("train", 1, 2, 1, 2),
    ("train", 3, 6, 2, 1),  # a tracklet of one frame
    ("test", 2, 1, 1, 3),  # query
    ("test", 2, 2, 1, 2),  # query (pid 2 seen from camera 2)
    ("test", 2, 2, 2, 2),
    ("test", 0, 3, 1, 1),  # distractor: gallery only
    ("test", -1, 1, 1, 2),  # junk: dropped
    ("test", 4, 1, 1, 2),  # query
    ("test", 4, 5, 1, 3),
]
MARS_QUERY_ROWS = [1, 2, 6]  # 1-based rows of the test info: pid 2 cam 1, pid 2 cam 2, pid 4 cam 1


def make_mars(root: Path) -> None:
    lists: dict[str, list[str]] = {"train": [], "test": []}
    rows: dict[str, list[list[int]]] = {"train": [], "test": []}
    for subset, pid, cam, trk, count in MARS_TRACKLETS:
        folder = "00-1" if pid == -1 else f"{pid:04d}"
        start = len(lists[subset]) + 1
        for frame in range(1, count + 1):
            name = f"{folder}C{cam}T{trk:04d}F{frame:03d}.jpg"
            write_image(root / f"bbox_{subset}" / folder / name)
            lists[subset].append(name)
        rows[subset].append([start, len(lists[subset]), pid, cam])
    info = root / "info"
    info.mkdir(parents=True)
    for subset in ("train", "test"):
        (info / f"{subset}_name.txt").write_text("\n".join(lists[subset]) + "\n")
        scipy.io.savemat(
            info / f"tracks_{subset}_info.mat",
            {f"track_{subset}_info": np.asarray(rows[subset], dtype=np.float64)},
        )
    scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.asarray([MARS_QUERY_ROWS], dtype=np.float64)})


@pytest.mark.parametrize(
    ("gallery_includes_query", "gallery_keys"),
    [
        (False, [(2, 1, "0002C2T0002"), (0, 2, "0000C3T0001"), (4, 4, "0004C5T0001")]),
        (
            True,
            [
                (2, 0, "0002C1T0001"),
                (2, 1, "0002C2T0001"),
                (2, 1, "0002C2T0002"),
                (0, 2, "0000C3T0001"),
                (4, 0, "0004C1T0001"),
                (4, 4, "0004C5T0001"),
            ],
        ),
    ],
)
def test_mars_official_layout(tmp_path: Path, gallery_includes_query: bool, gallery_keys: list) -> None:
    make_mars(tmp_path)
    split = read_mars(tmp_path, gallery_includes_query=gallery_includes_query)
    assert [(r.pid, r.camid, r.tracklet_id) for r in split.train] == [
        (1, 0, "0001C1T0001"),
        (1, 1, "0001C2T0001"),
        (3, 5, "0003C6T0002"),
    ]
    assert names(split.train[0].paths) == [f"0001C1T0001F00{i}.jpg" for i in (1, 2, 3)]
    assert Path(split.train[0].paths[0]) == tmp_path / "bbox_train" / "0001" / "0001C1T0001F001.jpg"
    assert [(r.pid, r.camid, r.tracklet_id) for r in split.query] == [
        (2, 0, "0002C1T0001"),
        (2, 1, "0002C2T0001"),
        (4, 0, "0004C1T0001"),
    ]
    assert [(r.pid, r.camid, r.tracklet_id) for r in split.gallery] == gallery_keys
    assert all(Path(p).is_file() for r in split.gallery for p in r.paths)
    assert -1 not in pids(split.train + split.query + split.gallery)


def test_mars_rejects_info_rows_outside_the_name_list(tmp_path: Path) -> None:
    make_mars(tmp_path)
    scipy.io.savemat(
        tmp_path / "info" / "tracks_train_info.mat", {"track_train_info": np.array([[1.0, 99, 1, 1]])}
    )
    with pytest.raises(ValueError, match="outside"):
        read_mars(tmp_path)


def test_mars_names_the_missing_info_file(tmp_path: Path) -> None:
    make_mars(tmp_path)
    (tmp_path / "info" / "query_IDX.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"MARS: missing .*query_IDX\.mat"):
        read_mars(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# PRID2011

# person number -> (cam_a frames, cam_b frames); 0 = folder absent.
PRID_PERSONS = {1: (21, 25), 2: (30, 21), 3: (22, 22), 4: (40, 23), 5: (21, 21), 6: (24, 26)}
PRID_FILTERED = {7: (30, 20), 8: (25, 0), 201: (25, 25)}  # too short in cam_b, cam_a only, not shared


def make_prid(root: Path) -> None:
    for person, counts in {**PRID_PERSONS, **PRID_FILTERED}.items():
        for cam, count in zip(("cam_a", "cam_b"), counts, strict=True):
            for frame in range(count, 0, -1):  # written in reverse: order must come from the names
                write_image(root / "multi_shot" / cam / f"person_{person:04d}" / f"{frame:04d}.png")


@pytest.mark.parametrize("split_index", [0, 3, 9])
def test_prid2011_half_split_of_shared_long_enough_identities(tmp_path: Path, split_index: int) -> None:
    make_prid(tmp_path)
    split = read_prid2011(tmp_path, split=split_index, seed=5)
    train_ids, test_ids = set(pids(split.train)), set(pids(split.query))
    assert len(test_ids) == 3 and len(train_ids) == 3
    assert train_ids | test_ids == set(PRID_PERSONS) and not train_ids & test_ids
    assert pids(split.query) == pids(split.gallery) == sorted(test_ids)
    assert {r.camid for r in split.query} == {0} and {r.camid for r in split.gallery} == {1}
    assert sorted((r.pid, r.camid) for r in split.train) == [
        (p, c) for p in sorted(train_ids) for c in (0, 1)
    ]
    for record in split.train + split.query + split.gallery:
        cam = ("cam_a", "cam_b")[record.camid]
        assert record.tracklet_id == f"{cam}/person_{record.pid:04d}"
        assert names(record.paths) == [
            f"{i:04d}.png" for i in range(1, PRID_PERSONS[record.pid][record.camid] + 1)
        ]


def test_prid2011_split_determinism(tmp_path: Path) -> None:
    make_prid(tmp_path)

    def test_ids(split_index: int, seed: int) -> list[int]:
        return pids(read_prid2011(tmp_path, split=split_index, seed=seed).query)

    assert test_ids(2, 0) == test_ids(2, 0)
    assert len({tuple(test_ids(k, 0)) for k in range(10)}) > 1
    assert len({tuple(test_ids(0, s)) for s in range(10)}) > 1


@pytest.mark.parametrize(("min_len", "num_ids"), [(0, 7), (20, 7), (21, 6), (22, 3), (41, 0)])
def test_prid2011_min_len_filters_identities(tmp_path: Path, min_len: int, num_ids: int) -> None:
    make_prid(tmp_path)
    split = read_prid2011(tmp_path, min_len=min_len)
    all_ids = set(pids(split.train)) | set(pids(split.query))
    assert len(all_ids) == num_ids
    assert not all_ids & {8, 201}
    assert len(split.query) == len(split.gallery) == num_ids // 2


@pytest.mark.parametrize("bad_split", [-1, 10])
def test_prid2011_rejects_split_outside_0_to_9(tmp_path: Path, bad_split: int) -> None:
    make_prid(tmp_path)
    with pytest.raises(ValueError, match="split"):
        read_prid2011(tmp_path, split=bad_split)


# ---------------------------------------------------------------------------------------------------------
# iLIDS-VID

ILIDS_PERSONS = {1: (5, 4), 2: (3, 6), 4: (7, 2), 7: (2, 3)}  # person number -> frames in (cam1, cam2)


def make_ilids(root: Path, split_rows: list[list[int]] | None = None) -> None:
    for person, counts in ILIDS_PERSONS.items():
        for cam, count in zip(("cam1", "cam2"), counts, strict=True):
            folder = root / "i-LIDS-VID" / "sequences" / cam / f"person{person:03d}"
            for frame in range(count):
                write_image(folder / f"{cam}_person{person:03d}_{317 + 10 * frame:05d}.png")
    if split_rows is not None:
        split_dir = root / "train-test people splits"
        split_dir.mkdir(parents=True)
        scipy.io.savemat(
            split_dir / "train_test_splits_ilidsvid.mat", {"ls_set": np.asarray(split_rows, float)}
        )


@pytest.mark.parametrize(
    ("rows", "split_index", "test_ids", "train_ids"),
    [
        # ls_set holds 1-based indices into the sorted identities [1, 2, 4, 7]; first half = test.
        ([[3, 1, 4, 2], [2, 4, 1, 3]], 0, [1, 4], [2, 7]),
        ([[3, 1, 4, 2], [2, 4, 1, 3]], 1, [2, 7], [1, 4]),
    ],
)
def test_ilidsvid_uses_the_official_split_file(
    tmp_path: Path, rows: list[list[int]], split_index: int, test_ids: list[int], train_ids: list[int]
) -> None:
    make_ilids(tmp_path, rows)
    for seed in (0, 1):  # the seed is ignored when the split file is present
        split = read_ilidsvid(tmp_path, split=split_index, seed=seed)
        assert pids(split.query) == pids(split.gallery) == test_ids
        assert [(r.pid, r.camid) for r in split.train] == [(p, c) for p in train_ids for c in (0, 1)]
        assert {r.camid for r in split.query} == {0} and {r.camid for r in split.gallery} == {1}
    record = split.gallery[0]
    assert record.tracklet_id == f"cam2/person{record.pid:03d}"
    count = ILIDS_PERSONS[record.pid][1]
    assert names(record.paths) == [
        f"cam2_person{record.pid:03d}_{317 + 10 * f:05d}.png" for f in range(count)
    ]


def test_ilidsvid_rejects_a_split_file_for_other_identities(tmp_path: Path) -> None:
    make_ilids(tmp_path, [[1, 2, 3, 4, 5, 6]])
    with pytest.raises(ValueError, match=r"shape \(S, 4\)"):
        read_ilidsvid(tmp_path)


def test_ilidsvid_generates_seeded_splits_without_the_file(tmp_path: Path) -> None:
    make_ilids(tmp_path)
    first = read_ilidsvid(tmp_path, split=4, seed=3)
    again = read_ilidsvid(tmp_path, split=4, seed=3)
    assert pids(first.query) == pids(again.query) and len(first.query) == 2
    assert set(pids(first.train)) | set(pids(first.query)) == set(ILIDS_PERSONS)
    assert not set(pids(first.train)) & set(pids(first.query))
    assert len({tuple(pids(read_ilidsvid(tmp_path, split=k).query)) for k in range(10)}) > 1
    with pytest.raises(ValueError, match="split"):
        read_ilidsvid(tmp_path, split=10)


def test_ilidsvid_names_a_person_missing_from_cam2(tmp_path: Path) -> None:
    make_ilids(tmp_path)
    folder = tmp_path / "i-LIDS-VID" / "sequences" / "cam2" / "person004"
    for image in folder.iterdir():
        image.unlink()
    folder.rmdir()
    with pytest.raises(FileNotFoundError, match="person004"):
        read_ilidsvid(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# DukeMTMC-VideoReID

# (subset, pid, tracklet, cam, frames)
DUKE_TRACKLETS = [
    ("train", 1, 1, 1, 3),
    ("train", 1, 2, 6, 1),
    ("train", 5, 1, 2, 2),
    ("query", 2, 1, 2, 2),
    ("gallery", 2, 2, 5, 12),
    ("gallery", 9, 1, 8, 1),  # a distractor identity
]


def make_duke(root: Path) -> None:
    for subset, pid, trk, cam, count in DUKE_TRACKLETS:
        for frame in range(count, 0, -1):
            name = f"{pid:04d}_C{cam}_F{frame:04d}_X{30000 + frame:05d}.jpg"
            write_image(root / subset / f"{pid:04d}" / f"{trk:04d}" / name)
    (root / "gallery" / "0002" / "0003").mkdir()  # an empty tracklet folder, as in the official release


def test_dukev_official_layout(tmp_path: Path) -> None:
    make_duke(tmp_path)
    split = read_dukev(tmp_path)
    by_subset = {"train": split.train, "query": split.query, "gallery": split.gallery}
    for subset, records in by_subset.items():
        expected = [
            (p, c - 1, f"{subset}/{p:04d}/{t:04d}", n) for s, p, t, c, n in DUKE_TRACKLETS if s == subset
        ]
        assert [(r.pid, r.camid, r.tracklet_id, len(r.paths)) for r in records] == expected
    assert names(split.gallery[0].paths)[8:11] == [
        f"0002_C5_F{f:04d}_X{30000 + f:05d}.jpg" for f in (9, 10, 11)
    ]


def test_dukev_rejects_a_foreign_frame_name(tmp_path: Path) -> None:
    make_duke(tmp_path)
    write_image(tmp_path / "train" / "0001" / "0001" / "frame1.jpg")
    with pytest.raises(ValueError, match="frame1.jpg"):
        read_dukev(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Folder layout

FOLDER_TREE = {"001": {"01": 12, "02": 3}, "005": {"01": 1}, "010": {"02": 2, "10": 1}}


def make_folder(root: Path) -> None:
    for pid, cams in FOLDER_TREE.items():
        for cam, count in cams.items():
            for k in range(count, 0, -1):
                write_image(root / pid / f"{cam}_{k}.png")
    (root / "README.md").write_text("not an identity\n")


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (
            None,
            [
                (1, 0, "001/01", 12),
                (1, 1, "001/02", 3),
                (5, 0, "005/01", 1),
                (10, 1, "010/02", 2),
                (10, 2, "010/10", 1),
            ],
        ),
        (["010", "005"], [(5, 0, "005/01", 1), (10, 1, "010/02", 2), (10, 2, "010/10", 1)]),
        ([], []),
    ],
)
def test_folder_layout(tmp_path: Path, ids: list[str] | None, expected: list) -> None:
    make_folder(tmp_path)
    split = read_folder(tmp_path, ids=ids)
    got = [(r.pid, r.camid, r.tracklet_id, len(r.paths)) for r in split.query]
    assert got == expected
    assert split.train == split.query == split.gallery
    assert split.train is not split.query
    if ids is None:
        assert names(split.query[0].paths) == [f"01_{k}.png" for k in range(1, 13)]  # 01_2 before 01_10


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"ids": ["001", "999"]}, FileNotFoundError, "999"),
        ({"ids": ["001", "001"]}, ValueError, "duplicates"),
    ],
)
def test_folder_rejects_bad_ids(tmp_path: Path, bad: dict, error: type[Exception], match: str) -> None:
    make_folder(tmp_path)
    with pytest.raises(error, match=match):
        read_folder(tmp_path, **bad)


@pytest.mark.parametrize(("relpath", "match"), [("001/front.png", "front.png"), ("alice/01_1.png", "alice")])
def test_folder_rejects_names_outside_the_layout(tmp_path: Path, relpath: str, match: str) -> None:
    make_folder(tmp_path)
    write_image(tmp_path / relpath)
    with pytest.raises(ValueError, match=match):
        read_folder(tmp_path)


def test_pku_reid_through_the_folder_reader(pku_root: Path) -> None:
    split = read_folder(pku_root)
    assert len(split.query) == len(split.gallery) == 100
    assert len({r.pid for r in split.query}) == 50
    assert all(len(r.paths) == 8 for r in split.query)
    assert {r.camid for r in split.query} == {0, 1}
    assert sorted(r.pid for r in split.query if r.camid == 0) == sorted(
        r.pid for r in split.query if r.camid == 1
    )
    first = split.query[0]
    assert (first.pid, first.camid, first.tracklet_id) == (1, 0, "001/01")
    assert names(first.paths) == [f"01_{k}.png" for k in range(1, 9)]
    assert sorted(pid_to_label(split.train).values()) == list(range(50))


# ---------------------------------------------------------------------------------------------------------
# Contract over every reader

MAKERS = {
    "mars": make_mars,
    "prid2011": make_prid,
    "ilidsvid": make_ilids,
    "dukev": make_duke,
    "folder": make_folder,
}
MISSING_PART = {
    "mars": "bbox_test",
    "prid2011": "multi_shot/cam_b",
    "ilidsvid": "i-LIDS-VID/sequences/cam2",
    "dukev": "gallery",
}


def test_every_reader_has_a_tiny_tree() -> None:
    assert set(MAKERS) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_reader_contract_returns_typed_split(tmp_path: Path, name: str) -> None:
    MAKERS[name](tmp_path)
    split = get_reader(name)(tmp_path)
    assert isinstance(split, VideoReIDSplit)
    records = split.train + split.query + split.gallery
    assert split.train and split.query and split.gallery
    assert all(isinstance(r, TrackletRecord) and r.camid >= 0 for r in records)
    assert all(Path(p).is_file() for r in records for p in r.paths)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_reader_missing_root_raises_file_not_found(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        get_reader(name)(missing)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(MISSING_PART))
def test_reader_missing_part_names_dataset_and_path(tmp_path: Path, name: str) -> None:
    MAKERS[name](tmp_path)
    part = tmp_path / MISSING_PART[name]
    part.rename(part.with_name(part.name + "_moved"))
    with pytest.raises(FileNotFoundError) as info:
        get_reader(name)(tmp_path)
    message = str(info.value)
    assert str(part) in message and "\n" not in message
    assert message.split(":")[0] in {"MARS", "PRID2011", "iLIDS-VID", "DukeMTMC-VideoReID"}


def test_folder_reader_on_an_empty_root_gives_an_empty_split(tmp_path: Path) -> None:
    split = read_folder(tmp_path)
    assert split == VideoReIDSplit(train=[], query=[], gallery=[])


def test_get_reader_lists_valid_names() -> None:
    assert get_reader("mars") is read_mars
    with pytest.raises(KeyError, match="dukev.*folder"):
        get_reader("market1501")


# ---------------------------------------------------------------------------------------------------------
# Records and identity splits


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"paths": ()}, ">= 1 frame"),
        ({"paths": ["a.png"]}, "tuple of str"),
        ({"pid": "7"}, "pid: expected int"),
        ({"camid": -1}, "camid: expected >= 0"),
    ],
)
def test_tracklet_record_validates(kwargs: dict, match: str) -> None:
    fields = {"paths": ("a.png",), "pid": 7, "camid": 0, "tracklet_id": "t", **kwargs}
    with pytest.raises(ValueError, match=match):
        TrackletRecord(**fields)


PKU_LIKE_IDS = [f"{i:03d}" for i in range(1, 51)]


@pytest.mark.parametrize(
    ("ids", "fraction", "num_val"),
    [(PKU_LIKE_IDS, 0.2, 10), (PKU_LIKE_IDS, 0.0, 0), (PKU_LIKE_IDS, 1.0, 50), ([], 0.5, 0), (["a"], 0.5, 0)],
)
def test_split_ids_is_deterministic_and_disjoint(ids: list[str], fraction: float, num_val: int) -> None:
    train, val = split_ids(ids, fraction, seed=11)
    assert len(val) == num_val
    assert sorted(train + val) == sorted(ids) and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert split_ids(list(reversed(ids)), fraction, seed=11) == (
        train,
        val,
    )  # depends on the set, not the order


def test_split_ids_depends_on_the_seed() -> None:
    assert split_ids(PKU_LIKE_IDS, 0.2, seed=0) != split_ids(PKU_LIKE_IDS, 0.2, seed=1)


@pytest.mark.parametrize(
    ("ids", "fraction", "match"), [(["1", "1"], 0.5, "duplicates"), (["1"], 1.5, "val_fraction")]
)
def test_split_ids_rejects_bad_input(ids: list[str], fraction: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_ids(ids, fraction, seed=0)


# ---------------------------------------------------------------------------------------------------------
# TrackletDataset


def reference_frame(path: str, size: tuple[int, int] = (256, 128)) -> torch.Tensor:
    """The documented preprocessing written out step by step: (3, H, W)."""
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    normalised = (rgb - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(normalised).permute(2, 0, 1)


def test_tracklet_dataset_on_pku_reid(pku_root: Path) -> None:
    records = read_folder(pku_root, ids=["001", "003"]).query
    dataset = TrackletDataset(records, n=6, train=False)
    assert len(dataset) == 4
    frames, pid, camid = dataset[1]
    assert frames.shape == (6, 3, 256, 128) and frames.dtype == torch.float32
    assert (pid, camid) == (records[1].pid, records[1].camid) == (1, 1)
    for slot, frame_index in enumerate([0, 1, 2, 4, 5, 6]):  # first frame of each of 6 chunks of 8 frames
        torch.testing.assert_close(frames[slot], reference_frame(records[1].paths[frame_index]))
    again, _, _ = dataset[1]
    assert torch.equal(frames, again)  # test mode is deterministic
    assert -2.2 < frames.min() and frames.max() < 2.7  # ImageNet-normalised range


def tiny_records(root: Path, lengths: dict[tuple[int, int], int]) -> list[TrackletRecord]:
    records = []
    for (pid, camid), count in lengths.items():
        paths = []
        for k in range(count):
            path = root / f"{pid}_{camid}_{k}.png"
            write_image(path, value=10 * k)
            paths.append(str(path))
        records.append(TrackletRecord(tuple(paths), pid, camid, f"{pid}/{camid}"))
    return records


def test_tracklet_dataset_train_mode_is_random_seeded_and_flips_whole_samples(tmp_path: Path) -> None:
    (record,) = tiny_records(tmp_path, {(3, 1): 12})
    plain = torch.stack([reference_frame(p, (32, 16)) for p in record.paths])  # (12, 3, 32, 16)

    def draws(seed: int, flip: bool) -> list[torch.Tensor]:
        dataset = TrackletDataset([record], n=4, train=True, seed=seed, flip=flip, size=(32, 16))
        return [dataset[0][0] for _ in range(12)]

    first, second, other, unflipped = draws(0, True), draws(0, True), draws(1, True), draws(0, False)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    flips = []
    for frames in first + unflipped:
        # Every slot is one frame of its chunk, mirrored or not; all slots of a sample share the flip.
        slot_flips = set()
        for slot in range(4):
            candidates = range(3 * slot, 3 * slot + 3)
            if any(torch.allclose(frames[slot], plain[c]) for c in candidates):
                slot_flips.add(False)
            elif any(torch.allclose(frames[slot], plain[c].flip(-1)) for c in candidates):
                slot_flips.add(True)
            else:
                pytest.fail(f"slot {slot} is no frame of its chunk")
        assert len(slot_flips) == 1
        flips.append(slot_flips.pop())
    assert True in flips[:12] and False in flips[:12]
    assert not any(flips[12:])  # flip=False never mirrors


def test_tracklet_dataset_repeats_frames_of_short_tracklets(tmp_path: Path) -> None:
    (record,) = tiny_records(tmp_path, {(1, 0): 2})
    frames, _, _ = TrackletDataset([record], n=6, train=False)[0]
    assert frames.shape == (6, 3, 256, 128)
    for slot, frame_index in enumerate([0, 0, 0, 1, 1, 1]):
        torch.testing.assert_close(frames[slot], reference_frame(record.paths[frame_index]))


@pytest.mark.parametrize("kind", ["missing", "not_an_image"])
def test_tracklet_dataset_names_an_unreadable_image(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.png"
    if kind == "not_an_image":
        bad.write_text("hello")
    record = TrackletRecord((str(bad),), 1, 0, "bad")
    with pytest.raises(ValueError, match="bad.png"):
        TrackletDataset([record], n=2, train=False)[0]


def test_tracklet_dataset_transform_and_size(tmp_path: Path) -> None:
    records = tiny_records(tmp_path, {(1, 0): 3})
    dataset = TrackletDataset(records, n=2, train=False, transform=lambda x: x * 0, size=(16, 8))
    frames, _, _ = dataset[0]
    assert frames.shape == (2, 3, 16, 8) and not frames.any()


# ---------------------------------------------------------------------------------------------------------
# PKSampler

# pid -> number of tracklets
PK_TRACKLETS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 2}


def pk_records() -> list[TrackletRecord]:
    return [
        TrackletRecord((f"{pid}_{t}.png",), pid, t % 2, f"{pid}/{t}")
        for pid, count in PK_TRACKLETS.items()
        for t in range(count)
    ]


@pytest.mark.parametrize(("p", "k", "num_batches"), [(2, 3, 2), (5, 1, 1), (1, 2, 5), (4, 4, 1)])
def test_pk_sampler_batches_p_identities_of_k_tracklets(p: int, k: int, num_batches: int) -> None:
    records = pk_records()
    sampler = PKSampler(records, p=p, k=k, seed=0)
    assert len(sampler) == num_batches
    for _ in range(3):  # epochs
        batches = list(sampler)
        assert len(batches) == num_batches
        seen: list[int] = []
        for batch in batches:
            assert len(batch) == p * k
            groups = [batch[i * k : (i + 1) * k] for i in range(p)]
            group_pids = [{records[i].pid for i in g} for g in groups]
            assert all(len(s) == 1 for s in group_pids)
            batch_pids = [s.pop() for s in group_pids]
            assert len(set(batch_pids)) == p
            seen += batch_pids
            for pid, group in zip(batch_pids, groups, strict=True):
                if PK_TRACKLETS[pid] >= k:
                    assert len(set(group)) == k  # distinct tracklets when there are enough
                else:
                    assert {records[i].tracklet_id for i in group} == {
                        f"{pid}/{t}" for t in range(PK_TRACKLETS[pid])
                    }
        assert len(seen) == len(set(seen))  # an identity at most once per epoch


def test_pk_sampler_is_seeded() -> None:
    def epochs(seed: int) -> list[list[list[int]]]:
        sampler = PKSampler(pk_records(), p=2, k=2, seed=seed)
        return [list(sampler) for _ in range(4)]

    assert epochs(3) == epochs(3)
    assert epochs(3) != epochs(4)
    assert len({str(e) for e in epochs(3)}) > 1  # epochs differ from one another


@pytest.mark.parametrize(("p", "k", "match"), [(6, 1, "only 5"), (0, 2, "p and k"), (2, 0, "p and k")])
def test_pk_sampler_rejects_impossible_batches(p: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PKSampler(pk_records(), p=p, k=k)


def test_pk_sampler_drives_a_dataloader_with_a_worker(tmp_path: Path) -> None:
    records = tiny_records(tmp_path, {(1, 0): 3, (1, 1): 2, (2, 0): 4, (2, 1): 1, (3, 0): 2})
    dataset = TrackletDataset(records, n=2, train=True, seed=0, size=(16, 8))

    def one_epoch() -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            dataset,
            batch_sampler=PKSampler(records, p=2, k=2, seed=0),
            num_workers=1,
            generator=torch.Generator().manual_seed(0),
        )
        return [(frames, pid) for frames, pid, _ in loader]

    first, second = one_epoch(), one_epoch()
    assert len(first) == 1
    frames, pid = first[0]
    assert frames.shape == (4, 2, 3, 16, 8) and pid.shape == (4,)
    assert pid[0] == pid[1] and pid[2] == pid[3] and pid[0] != pid[2]
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True)
    )
