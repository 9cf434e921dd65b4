"""The sample resolver: demo footage and pretrained weights, from ``../shared`` or from their public sources.

The team keeps verified copies in a ``shared/`` folder next to the repository. A user without it gets the
same files downloaded once from their public sources, checked against the sha256 the shared READMEs record,
and cached under ``$REID_CACHE_DIR`` (default ``~/.cache/reid-pipeline/weights``)/samples. Offline, the error says
which file is missing and where it would come from.

Any configured path that runs through a ``shared/`` folder and names a known sample is resolved this way;
other paths are returned unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.weights import cache_dir_default, resolve_weights


@dataclass(frozen=True)
class Sample:
    url: str
    sha256: str


_GH = "https://raw.githubusercontent.com"
# key: path under shared/ ; value: one file, or the files of a folder sample
SAMPLES: dict[str, Sample | dict[str, Sample]] = {
    "data/intel-sample-videos/one-by-one-person-detection.mp4": Sample(
        f"{_GH}/intel-iot-devkit/sample-videos/57978890822836f2b4743852f04f62fc511757e4/one-by-one-person-detection.mp4",
        "a5964aa259099a482a8b360ffc2c57b5a30f84d5919236a4dad01f8e929ac07c",
    ),
    "data/intel-sample-videos/people-detection.264": Sample(
        f"{_GH}/yas-sim/object-tracking-line-crossing-area-intrusion/7d474dd0fb35ee03d1d5dde246522d01186d9358/people-detection.264",
        "00a29491311d3e814af60efb00b1ced1a85046e4e436a8ca29c22e0769fb07e8",
    ),
    # OpenCV's sample video (the shared copy came from Debian's opencv-doc package, same file)
    "data/vtest/vtest.avi": Sample(
        f"{_GH}/opencv/opencv/4.x/samples/data/vtest.avi",
        "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    ),
    "assets/detectors/yolo11n_int8_openvino_model": {
        name: Sample(
            f"{_GH}/yas-sim/ultralytics_yolo11_optimization/04a298d3be10a76bf2be83f812bd5195e17e4c6f/yolo11n_int8_openvino_model/{name}",
            sha,
        )
        for name, sha in (
            ("yolo11n.xml", "fedac70f9389c55a2a604e957f66ed8195cda1dd6eb4eb7d8b98919d8c43753d"),
            ("yolo11n.bin", "df1ce92b661e326a11e016ba380fde8cb7ddda528a920d0c4fcba98b69322a9b"),
            ("metadata.yaml", "229ff30357afb80d9ee8a7bef0fbe6ed2c9ec431e976b0c84ba4f931be85e682"),
        )
    },
    "assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth": Sample(
        f"{_GH}/HuyAIHub/PPE_Detection/2feee103d8501905a501f7411229b1cb511aaae4/strong_sort/deep/checkpoint/osnet_x0_25_msmt17.pth",
        "6f57607fed9f502b9efed546108132ee715df5a5b6e6932c6269bacb47f59f99",
    ),
}


def sample_key(path: str | os.PathLike[str]) -> str | None:
    """The SAMPLES key a path names (``.../shared/data/vtest/vtest.avi`` -> ``data/vtest/vtest.avi``), or None."""
    parts = Path(path).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "shared":
            key = "/".join(parts[i + 1 :]).rstrip("/")
            return key if key in SAMPLES else None
    return None


def resolve_sample(path: str | os.PathLike[str], *, cache_dir: Path | None = None) -> str:
    """``path`` itself when it exists or is not a known sample; else the cached (downloaded) copy.

    Raises FileNotFoundError (one line: the missing path, the URL, what to do) when it cannot be had.
    """
    p = Path(path)
    key = sample_key(p)
    if p.exists() or key is None:
        return str(path)
    return fetch_sample(key, cache_dir=cache_dir, missing=str(path))


def fetch_sample(key: str, *, cache_dir: Path | None = None, missing: str | None = None) -> str:
    """The cached copy of sample ``key`` (a SAMPLES key), downloaded and sha256-checked on first use."""
    path = missing or key
    root = (cache_dir or cache_dir_default() / "samples") / key
    entry = SAMPLES[key]
    try:
        if isinstance(entry, Sample):
            return str(
                resolve_weights(entry.url, sha256=entry.sha256, cache_dir=root.parent, name=f"sample {key}")
            )
        root.mkdir(parents=True, exist_ok=True)
        for name, s in entry.items():
            got = resolve_weights(s.url, sha256=s.sha256, cache_dir=root, name=f"sample {key}/{name}")
            if Path(got).name != name:
                Path(got).replace(root / name)
        return str(root)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path} is missing and could not be fetched: {exc}") from None
