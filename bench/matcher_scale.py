"""Matcher scaling: milliseconds per tracklet to assign batches against galleries of 1k, 10k and 100k identities.

    python bench/matcher_scale.py [--sizes 1000 10000 100000] [--batch 8] [--repeats 30] [--dim 128]
                                  [--blas-threads 1|auto]

Each gallery holds random unit vectors, 1-3 prototypes per identity, each with a sighting in one of 8 cameras
at a random time of one day; the cameras form a ring of links (0-900 s transit) with one overlapping pair, so
the topology is closed. Each batch has ``--batch`` tracklets after that day: half are noisy copies of a random
identity's prototype (cosine about 0.85, so the gates run), half random directions (new identities). The time
of a batch is the whole ``Matcher.assign`` call (similarities, gates, Hungarian, gallery update), median over
``--repeats`` batches after two warm-up batches, divided by the batch size. Each size runs two matchers on the
same gallery and the same batches, timed back to back: as the embeddings come, and with camera centering (docs/matcher.md, 3a; a
random prior of norm 0.5, weight 10), so ``matcher_ms_<n>_centred`` / ``centering_ratio_<n>`` say what it adds.
Last line: one JSON object.

The similarity product (P x 128 by 128 x batch) is memory-bound; on a shared CPU, OpenBLAS threads mostly wait
for each other, so the bench runs BLAS single-threaded by default (``--blas-threads 1``, as the matcher process
should run); ``auto`` leaves OpenBLAS to its own choice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _blas_threads(argv: list[str]) -> str:
    """The --blas-threads value: it must reach the environment before numpy loads OpenBLAS."""
    value = "1"
    for i, arg in enumerate(argv):
        if arg == "--blas-threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--blas-threads="):
            value = arg.split("=", 1)[1]
    return value


if __name__ == "__main__" and _blas_threads(sys.argv[1:]) != "auto":
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _blas_threads(sys.argv[1:])

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import MatcherConfig  # noqa: E402
from pipeline.matching.centering import CameraCentering  # noqa: E402
from pipeline.matching.gallery import Gallery  # noqa: E402
from pipeline.matching.matcher import Matcher  # noqa: E402
from pipeline.matching.topology import Topology  # noqa: E402
from pipeline.transport.messages import TrackletEmbedding  # noqa: E402

CAMERAS = [f"cam{i}" for i in range(8)]
DAY = 86_400.0
MODEL = "bench"
DEFAULTS = MatcherConfig()  # the config schema's matcher defaults, what a deployment runs with


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_gallery(rng: np.random.Generator, n: int, dim: int, max_prototypes: int) -> Gallery:
    gallery = Gallery(max_prototypes=max_prototypes, model=MODEL)
    counts = rng.integers(1, 4, size=n)
    vectors = unit_rows(rng, int(counts.sum()), dim)
    cams = rng.integers(len(CAMERAS), size=len(vectors))
    starts = np.sort(rng.uniform(0.0, DAY, size=len(vectors)))
    rng.shuffle(starts)
    k = 0
    for c in counts:
        identity = gallery.create(vectors[k], CAMERAS[cams[k]], starts[k], starts[k] + 20.0)
        for j in range(k + 1, k + c):
            gallery.add(identity, vectors[j], CAMERAS[cams[j]], starts[j], starts[j] + 20.0)
        k += c
    return gallery


def make_batch(
    rng: np.random.Generator, gallery: Gallery, size: int, dim: int, now: float, first_track: int
) -> list[TrackletEmbedding]:
    out = []
    ids = gallery.ids
    for i in range(size):
        if i % 2 == 0:  # a look-alike of an existing identity: cosine about 0.85
            proto = gallery.prototypes(int(ids[rng.integers(len(ids))]))[0]
            noise = unit_rows(rng, 1, dim)[0]
            v = proto + 0.6 * noise
            v = (v / np.linalg.norm(v)).astype(np.float32)
        else:
            v = unit_rows(rng, 1, dim)[0]
        start = now + float(rng.uniform(0.0, 60.0))
        out.append(
            TrackletEmbedding(
                camera_id=CAMERAS[int(rng.integers(len(CAMERAS)))],
                track_id=first_track + i,
                chunk=0,
                first_frame=0,
                last_frame=50,
                start_time=start,
                end_time=start + 5.0,
                num_frames=51,
                embedding=v,
                part_visibility=np.ones(6, np.float32),
                model=MODEL,
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--batch", type=int, default=8, help="tracklets per assign call")
    ap.add_argument("--repeats", type=int, default=30, help="timed batches per gallery size")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument(
        "--threshold", type=float, default=0.6, help="cosine threshold (a deployment uses its checkpoint's)"
    )
    ap.add_argument("--max-prototypes", type=int, default=DEFAULTS.max_prototypes)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas-threads", default="1", help="BLAS threads (set before numpy loads), or 'auto'")
    args = ap.parse_args(argv)

    links = {(CAMERAS[i], CAMERAS[(i + 1) % len(CAMERAS)]): (0.0, 900.0) for i in range(len(CAMERAS))}
    topology = Topology(links, [(CAMERAS[0], CAMERAS[4])])
    results: dict[str, object] = {
        "batch": args.batch,
        "dim": args.dim,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "auto"),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
    }
    print(
        f"{'identities':>10} {'prototypes':>10} {'build s':>8} {'ms/tracklet':>12} {'p90':>8} {'matched':>8}"
    )
    for n in args.sizes:
        label = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        modes = ("as they come", "centred")
        matchers, build_s = [], 0.0
        for mode in modes:
            rng = np.random.default_rng(args.seed)  # the same gallery for both
            t0 = time.perf_counter()
            gallery = build_gallery(rng, n, args.dim, args.max_prototypes)
            build_s = time.perf_counter() - t0
            centering = None
            if mode == "centred":
                centering = CameraCentering(0.5 * unit_rows(np.random.default_rng(99), 1, args.dim)[0])
            matchers.append(
                Matcher(gallery, topology, threshold=args.threshold, model=MODEL, centering=centering)
            )
        n_protos = sum(len(gallery.prototypes(int(i))) for i in gallery.ids)
        per_tracklet = {m: [] for m in modes}
        matched = {m: 0 for m in modes}
        total = 0
        for r in range(args.repeats + 2):
            # the same batch for both, timed back to back, so a load change on the machine hits both alike
            batch = make_batch(
                rng, matchers[0].gallery, args.batch, args.dim, DAY + 120.0 * r, 1 + r * args.batch
            )
            for mode, matcher in zip(modes, matchers, strict=True):
                t0 = time.perf_counter()
                out = matcher.assign(batch)
                elapsed = time.perf_counter() - t0
                if r >= 2:  # the first two batches warm up caches and BLAS threads
                    per_tracklet[mode].append(1000.0 * elapsed / args.batch)
                    matched[mode] += sum(not a.is_new for a in out)
            total += len(batch) if r >= 2 else 0
        for mode in modes:
            med = float(np.median(per_tracklet[mode]))
            p90 = float(np.percentile(per_tracklet[mode], 90))
            print(
                f"{n:>10} {n_protos:>10} {build_s:>8.1f} {med:>12.3f} {p90:>8.3f} "
                f"{matched[mode] / total:>8.2f}  {mode}"
            )
            key = f"matcher_ms_{label}" + ("_centred" if mode == "centred" else "")
            results[key] = round(med, 3)
            results[f"{key}_p90"] = round(p90, 3)
        results[f"centering_ratio_{label}"] = round(
            results[f"matcher_ms_{label}_centred"] / results[f"matcher_ms_{label}"], 3
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
