"""Find this person: rank identities by cosine similarity to a query embedding.

The query is a stored tracklet's own embedding (pick a sighting) or an uploaded crop embedded, as a tracklet
of one frame, by the model the run used. Embeddings are comparable only from the same model, so the model
name stored with the embeddings (``models.checkpoint.model_name``) must be the default checkpoint's name;
otherwise :class:`ModelUnavailable` says so.
"""

from __future__ import annotations

import base64
import threading
from collections import Counter

import cv2
import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import repository as repo
from storage.models import EmbeddingRow

__all__ = [
    "CropEmbedder",
    "ModelUnavailable",
    "query_thumbnail",
    "rank_identities",
    "run_model",
    "stored_embedding",
]


class ModelUnavailable(LookupError):
    """The run's model cannot be loaded here (the message says which model and why)."""


def run_model(session: Session) -> str | None:
    """The model name of most stored embeddings (the run's model), None when there are none."""
    rows = session.execute(sa.select(EmbeddingRow.model, sa.func.count()).group_by(EmbeddingRow.model)).all()
    return Counter(dict(rows)).most_common(1)[0][0] if rows else None


def stored_embedding(session: Session, tracklet_id: int) -> tuple[str, np.ndarray] | None:
    """(model, vector) of a stored tracklet's embedding from the run's model, None when it has none."""
    model = run_model(session)
    row = session.get(EmbeddingRow, (tracklet_id, model)) if model else None
    return None if row is None else (model, np.frombuffer(row.vector, "<f4").astype(np.float32))


def rank_identities(session: Session, model: str, query: np.ndarray, *, top: int = 10) -> list[dict]:
    """Identities by their best cosine similarity between ``query`` (D,) and their stored embeddings from
    ``model``, highest first, at most ``top``; each with the tracklet that matched best. Empty gallery -> []."""
    gallery = repo.load_gallery(session, model)
    if not gallery:
        return []
    vectors = np.stack([g.vector for g in gallery])  # (M, D)
    q = np.asarray(query, np.float32).reshape(-1)
    if vectors.shape[1] != q.shape[0]:
        raise ValueError(f"query embedding has {q.shape[0]} values, the stored ones {vectors.shape[1]}")
    sims = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q) + 1e-12)  # (M,)
    best: dict[int, tuple[float, int]] = {}
    for g, sim in zip(gallery, sims.tolist(), strict=True):
        if g.identity_id not in best or sim > best[g.identity_id][0]:
            best[g.identity_id] = (sim, g.tracklet_id)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    return [
        {"identity_id": i, "similarity": s, "tracklet_id": t, "url": f"/identities/{i}"}
        for i, (s, t) in ranked
    ]


class CropEmbedder:
    """Embeds one crop with the default checkpoint, loaded on first use (then kept), when its name is the
    run's model name. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model = None
        self._name: str | None = None

    def default_name(self) -> str:
        if self._name is None:
            from models.checkpoint import DEFAULT_CHECKPOINT, model_name

            self._name = model_name(DEFAULT_CHECKPOINT)
        return self._name

    def embed(self, crop_bgr: np.ndarray, model: str) -> np.ndarray:
        """(h, w, 3) uint8 BGR crop -> (D,) embedding from ``model``, embedded like the re-ID worker embeds a
        tracklet of one frame. Raises :class:`ModelUnavailable` when ``model`` is not the default checkpoint."""
        name = self.default_name()
        if model != name:
            raise ModelUnavailable(
                f"the run's embeddings come from model {model!r}; this server only has {name!r}, "
                "so an uploaded crop cannot be embedded comparably (pick a sighting instead)"
            )
        import torch

        from models.backbones import preprocess_crops
        from models.checkpoint import DEFAULT_CHECKPOINT, load_drsta
        from models.sampling import restricted_random_sample

        with self._lock:
            if self._model is None:
                self._model = load_drsta(DEFAULT_CHECKPOINT, backbone_weights=None).eval()
            idx = restricted_random_sample(1, int(self._model.num_frames), train=False)  # N copies of frame 0
            x = preprocess_crops(np.stack([crop_bgr])[idx])[None]  # (N, 3, H, W) -> (1, N, 3, H, W)
            with torch.no_grad():
                out = self._model.embed(x)
        return out.embeddings[0].float().cpu().numpy()


def query_thumbnail(upload: bytes, height: int = 128) -> str | None:
    """The uploaded crop as a small JPEG data URI, shown beside its results (never stored); None if it does not
    decode."""
    image = cv2.imdecode(np.frombuffer(upload, np.uint8), cv2.IMREAD_COLOR) if upload else None
    if image is None:
        return None
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    small = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_LINEAR
    )
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None
