"""Camera worker speed: our camera stage vs ultralytics ``YOLO.track(persist=True)`` on the same frames.

    python bench/camera_fps.py [--video ../shared/data/vtest/vtest.avi] [--weights DIR] [--frames 795]

Both run in this process on the same decoded video with the same detector weights, confidence and ByteTrack.
Ours also crops, filters and builds tracklets. ``fps_ratio_vs_ultralytics`` = our fps / ultralytics' fps;
``peak_rss_mb`` is this process's peak resident memory sampled during our run. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

import cv2  # noqa: E402
import psutil  # noqa: E402

from pipeline.camera.detector import PersonDetector  # noqa: E402
from pipeline.camera.loop import Camera, CameraGroup  # noqa: E402
from pipeline.camera.sources import open_source  # noqa: E402
from pipeline.camera.tracklets import TrackletBuilder  # noqa: E402
from pipeline.config import DetectorConfig, TrackletConfig  # noqa: E402
from trackers import build_tracker  # noqa: E402

SHARED = Path(os.environ.get("REID_SHARED", ROOT.parent / "shared"))


class PeakRSS(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self._halt = threading.Event()
        self._proc = psutil.Process()

    def run(self):
        while not self._halt.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return self.peak / 2**20


def run_ours(video: Path, weights: Path, frames: int, conf: float) -> tuple[float, int, float]:
    detector = PersonDetector.from_config(DetectorConfig(weights=str(weights), conf=conf, batch=1))
    source = open_source("bench", str(video), max_frames=frames)
    cam = Camera(
        "bench",
        source,
        build_tracker("bytetrack", frame_rate=int(source.fps or 10)),
        TrackletBuilder.from_config("bench", TrackletConfig(), roi=None),
    )
    n_tracklets = 0

    def count(_t):
        nonlocal n_tracklets
        n_tracklets += 1

    rss = PeakRSS()
    rss.start()
    t0 = time.perf_counter()
    stats = CameraGroup([cam], detector.detect, batch=1, on_tracklet=count).run()
    wall = time.perf_counter() - t0
    peak = rss.stop()
    return stats["bench"].frames / wall, n_tracklets, peak


def run_ultralytics(video: Path, weights: Path, frames: int, conf: float) -> float:
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    model.track(
        frame, persist=True, classes=[0], conf=conf, imgsz=640, tracker="bytetrack.yaml", verbose=False
    )
    cap.release()
    cap = cv2.VideoCapture(str(video))  # warm-up done: time a fresh pass over the same frames
    n = 0
    t0 = time.perf_counter()
    while n < frames:
        ok, frame = cap.read()
        if not ok:
            break
        model.track(
            frame, persist=True, classes=[0], conf=conf, imgsz=640, tracker="bytetrack.yaml", verbose=False
        )
        n += 1
    wall = time.perf_counter() - t0
    cap.release()
    return n / wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=SHARED / "data/vtest/vtest.avi")
    ap.add_argument("--weights", type=Path, default=SHARED / "assets/detectors/yolo11n_int8_openvino_model")
    ap.add_argument("--frames", type=int, default=795)
    ap.add_argument("--conf", type=float, default=0.25)
    args = ap.parse_args(argv)
    for p in (args.video, args.weights):
        if not p.exists():
            print(f"error: {p} not found (needs ../shared)", file=sys.stderr)
            return 2
    ours_fps, tracklets, peak = run_ours(args.video, args.weights, args.frames, args.conf)
    print(f"ours:        {ours_fps:6.1f} fps ({tracklets} tracklets, peak RSS {peak:.0f} MB)", flush=True)
    ul_fps = run_ultralytics(args.video, args.weights, args.frames, args.conf)
    print(f"ultralytics: {ul_fps:6.1f} fps (YOLO.track persist=True, bytetrack)", flush=True)
    result = {
        "frames": args.frames,
        "ours_fps": round(ours_fps, 2),
        "ultralytics_track_fps": round(ul_fps, 2),
        "fps_ratio_vs_ultralytics": round(ours_fps / ul_fps, 3),
        "tracklets": tracklets,
        "peak_rss_mb": round(peak, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
