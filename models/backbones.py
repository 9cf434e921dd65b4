"""CNN backbones behind one interface: ``build_backbone(name) -> Backbone``, image in, feature map out.

| name          | out_channels | map at 256x128  | pretrained weights (``weights=None``)                     |
|---------------|--------------|-----------------|-----------------------------------------------------------|
| `resnet50`    | 2048         | (B, 2048, 8, 4) | torchvision ImageNet IMAGENET1K_V1 (downloaded, cached)   |
| `resnet18`    | 512          | (B, 512, 8, 4)  | torchvision ImageNet IMAGENET1K_V1 (downloaded, cached)   |
| `osnet_x0_25` | 128          | (B, 128, 16, 8) | `<shared>/assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth` |
| `openvino_0277` (and `_0286`, `_0287`, `_0287_int8`, `_0288`, `_0267`) | 512 (384, 256, 256, 128, 256) | (B, D, 16, 8) | `<shared>/assets/reid/openvino_person_reid/...` (Intel OMZ, frozen, OpenVINO on the CPU) |

ResNets stop at layer4 (res5c), stride 32; OSNet stops at conv5, stride 16 (its conv4 stage keeps the size);
the OpenVINO models stop at the map feeding their learned depthwise global pooling (``models.openvino_backbone``).
Inputs are (B, 3, H, W) float32 RGB scaled to [0, 1] and normalised with ``IMAGENET_MEAN`` / ``IMAGENET_STD``
for every backbone (a backbone that wants other pixels converts them itself); ``Backbone.input_size`` is the
(H, W) it needs and ``preprocess_crops(crops, size=backbone.input_size)`` makes its input from BGR uint8 crops. ``<shared>`` is ``$REID_SHARED``, else ``../shared``
next to the repository root (the folder that contains ``models/``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from models.osnet import OSNet, OSNetConfig
from models.weights import load_state_dict_file, load_state_dict_strict, resolve_weights

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB
INPUT_SIZE: tuple[int, int] = (256, 128)  # (H, W), the usual person re-ID input

REPO_ROOT = Path(__file__).resolve().parents[1]
OSNET_X0_25_DEFAULT_WEIGHTS = "assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth"  # relative to shared_dir()
OSNET_X0_25_DEFAULT_SHA256 = "6f57607fed9f502b9efed546108132ee715df5a5b6e6932c6269bacb47f59f99"


def shared_dir() -> Path:
    """The team's shared assets folder: ``$REID_SHARED``, else ``<repo root>/../shared``."""
    return Path(os.environ.get("REID_SHARED", REPO_ROOT.parent / "shared"))


@dataclass(frozen=True)
class OwnHead:
    """A backbone's own layers after its last spatial map, as plain tensors (no module, no training state).

    The backbone's own per-image embedding is ``act(proj_weight @ pooled + proj_bias)`` with
    ``pooled = mean_{h,w}(pool_weight ⊙ map) + pool_bias``; ``act`` is a PReLU of slope ``slope`` (1.0:
    none, 0.0: ReLU). Shapes: pool_weight (D, h, w), or (D, 1, 1) for the same weight at every cell;
    pool_bias (D,), proj_weight (E, D), proj_bias (E,). Plain global average pooling is ``pool_weight = 1``.
    """

    pool_weight: torch.Tensor
    pool_bias: torch.Tensor
    proj_weight: torch.Tensor
    proj_bias: torch.Tensor
    slope: float

    @property
    def embed_dim(self) -> int:
        return int(self.proj_weight.shape[0])

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) map -> (B, E) the backbone's own embedding."""
        pooled = (grid * self.pool_weight.to(grid)).mean(dim=(2, 3)) + self.pool_bias.to(grid)  # (B, D)
        y = pooled @ self.proj_weight.to(grid).T + self.proj_bias.to(grid)
        return torch.where(y >= 0, y, self.slope * y)


class Backbone(nn.Module):
    """Contract: ``forward(x: (B, 3, H, W)) -> (B, out_channels, h, w)``, with ``out_channels: int``.

    ``x`` is ImageNet-normalised RGB of size ``input_size`` (see the module docstring).
    ``image_embedding(x) -> (B, E)`` is the backbone's own per-image descriptor (global average pooling of
    the grid unless the pretrained network has a head of its own), used by the honest baseline (the same
    backbone's own embedding mean-pooled over the tracklet); ``own_head()`` gives the layers that make it
    from the grid, so a DRSTA head can start from them; ``features_and_embedding`` gives both in one pass.
    """

    out_channels: int
    input_size: tuple[int, int] = INPUT_SIZE
    weights_file: Path | None = None  # the local file the weights came from (None: random initialisation)

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).mean(dim=(2, 3))

    def features_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> the grid (B, D, h, w) and the own embedding (B, E), the backbone run once."""
        grid = self(x)
        return grid, self.own_head()(grid)

    def own_head(self) -> OwnHead:
        """Default: global average pooling, no projection (the embedding is the pooled grid)."""
        d = int(self.out_channels)
        return OwnHead(torch.ones(d, 1, 1), torch.zeros(d), torch.eye(d), torch.zeros(d), 1.0)


class ResNetBackbone(Backbone):
    """torchvision ResNet conv1..layer4 (no average pool, no fc); module names match torchvision's."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.out_channels = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class OSNetBackbone(Backbone):
    """OSNet conv5 feature map. The whole network stays reachable as ``.osnet`` (``.osnet.embed`` gives the
    512-d embedding the checkpoint was trained to produce)."""

    def __init__(self, osnet: OSNet):
        super().__init__()
        self.osnet = osnet
        self.out_channels = osnet.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.osnet.features(x)

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.osnet.embed(x)  # conv5 -> pool -> fc 512 (what the checkpoint was trained to output)

    def own_head(self) -> OwnHead:
        """Average pooling, then fc = Linear + BatchNorm1d (eval statistics, folded) + ReLU."""
        linear, bn = self.osnet.fc[0], self.osnet.fc[1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (E,)
        d = int(self.out_channels)
        return OwnHead(
            pool_weight=torch.ones(d, 1, 1),
            pool_bias=torch.zeros(d),
            proj_weight=(linear.weight * scale[:, None]).detach().clone(),
            proj_bias=((linear.bias - bn.running_mean) * scale + bn.bias).detach().clone(),
            slope=0.0,
        )


def _build_resnet(
    arch: str, *, weights: str | Path | None, weights_sha256: str | None, pretrained: bool
) -> ResNetBackbone:
    import torchvision.models as tvm  # lazy: only resnet users pay for importing torchvision

    net = getattr(tvm, arch)(weights=None)
    sha256 = weights_sha256
    if weights is None and pretrained:
        url = tvm.get_model_weights(arch)["IMAGENET1K_V1"].url
        filename = url.rsplit("/", 1)[-1]
        if sha256 is None:
            # torchvision names its files <arch>-<first 8+ hex digits of the sha256>.pth
            m = re.search(r"-([a-f0-9]{8,})\.", filename)
            sha256 = m.group(1) if m else None
        # reuse a copy torchvision itself may already have downloaded
        hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / filename
        weights = hub_copy if hub_copy.is_file() else url
    path = resolve_weights(weights, sha256=sha256, name=f"{arch} ImageNet weights")
    if path is not None:
        load_state_dict_strict(net, load_state_dict_file(path), what=f"torchvision {arch}", source=path)
    backbone = ResNetBackbone(net)
    backbone.weights_file = path
    return backbone


def _build_osnet_x0_25(
    *, weights: str | Path | None, weights_sha256: str | None, pretrained: bool
) -> OSNetBackbone:
    sha256 = weights_sha256
    if weights is None and pretrained:
        from models.samples import fetch_sample

        weights = shared_dir() / OSNET_X0_25_DEFAULT_WEIGHTS
        if not weights.is_file():
            try:  # the same file from its public source (sha256-checked, cached)
                weights = Path(fetch_sample(OSNET_X0_25_DEFAULT_WEIGHTS))
            except FileNotFoundError:
                weights = shared_dir() / OSNET_X0_25_DEFAULT_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(
                f"osnet_x0_25 pretrained weights not found at {weights} (no downloadable default is known); "
                "pass weights=<path or URL of an osnet_x0_25 .pth>, set REID_SHARED, or use pretrained=False"
            )
        sha256 = sha256 or OSNET_X0_25_DEFAULT_SHA256
    path = resolve_weights(weights, sha256=sha256, name="osnet_x0_25 weights")
    if path is None:
        return OSNetBackbone(OSNet(OSNetConfig()))
    sd = load_state_dict_file(path)
    # checkpoints carry their training classifier (MSMT17: 1041 ids, Market-1501: 751): check the file
    # strictly against the full network with a classifier of that size ...
    classifier = sd.get("classifier.weight")
    full = OSNet(OSNetConfig(num_classes=classifier.shape[0] if classifier is not None else 0))
    load_state_dict_strict(full, sd, what="osnet_x0_25", source=path)
    # ... but keep none in the backbone, so its state_dict has the same keys however it was built
    # (a saved backbone loads into build_backbone(..., pretrained=False))
    net = OSNet(OSNetConfig())
    net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("classifier.")}, strict=True)
    backbone = OSNetBackbone(net)
    backbone.weights_file = Path(path)
    return backbone


_OMZ = "assets/reid/openvino_person_reid"
# Intel OMZ re-ID models in the shared folder (relative to shared_dir()); see the README there.
OPENVINO_MODELS: dict[str, str] = {
    "openvino_0277": f"{_OMZ}/person-reidentification-retail-0277/FP16/person-reidentification-retail-0277.xml",
    "openvino_0286": f"{_OMZ}/person-reidentification-retail-0286/FP16/person-reidentification-retail-0286.xml",
    "openvino_0287": f"{_OMZ}/person-reidentification-retail-0287/FP32/person-reidentification-retail-0287.xml",
    "openvino_0287_int8": f"{_OMZ}/person-reidentification-retail-0287/FP16-INT8/person-reidentification-retail-0287.xml",
    "openvino_0288": f"{_OMZ}/person-reidentification-retail-0288/FP32/person-reidentification-retail-0288.xml",
    "openvino_0267": f"{_OMZ}/person-reidentification-retail-0267.onnx",
}


def _build_openvino(
    rel: str, *, weights: str | Path | None, weights_sha256: str | None, pretrained: bool
) -> Backbone:
    """An OMZ model through OpenVINO. It is always the pretrained network (``pretrained`` is ignored: a frozen
    third-party net has no random initialisation worth building); ``weights`` overrides the model file
    (a local ``.xml`` or ``.onnx``; with ``weights_sha256`` its hash is checked)."""
    from models.openvino_backbone import OpenVINOBackbone  # lazy: imports openvino

    local = Path(weights) if weights is not None else shared_dir() / rel  # a Path: never a download
    return OpenVINOBackbone(
        resolve_weights(local, sha256=weights_sha256, name=f"OpenVINO model {local.name}")
    )


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet50": partial(_build_resnet, "resnet50"),
    "resnet18": partial(_build_resnet, "resnet18"),
    "osnet_x0_25": _build_osnet_x0_25,
    **{name: partial(_build_openvino, rel) for name, rel in OPENVINO_MODELS.items()},
}


def build_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    weights_sha256: str | None = None,
    pretrained: bool = True,
) -> Backbone:
    """Build the backbone ``name`` (a key of ``BACKBONES``), in eval mode.

    weights: local path or http(s) URL of a state_dict; when given it is always loaded (strictly).
    weights_sha256: expected sha256 (or a >= 8-digit prefix) of ``weights``.
    pretrained: with ``weights=None``, True loads the default weights listed in the module docstring and
        False leaves the random initialisation.

    Raises KeyError listing the valid names for an unknown ``name``; FileNotFoundError (one line) when the
    weights cannot be found or downloaded (this is raised within seconds when offline, never a hang);
    ValueError when the file's hash is wrong, it is not a plain weights file, or it does not fit the
    architecture.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    backbone = BACKBONES[name](weights=weights, weights_sha256=weights_sha256, pretrained=pretrained)
    return backbone.eval()


def preprocess_crops(
    crops_bgr_uint8: np.ndarray | Sequence[np.ndarray], *, size: tuple[int, int] = INPUT_SIZE
) -> torch.Tensor:
    """BGR uint8 person crops -> (T, 3, H, W) float32 network input (RGB, /255, ImageNet-normalised).

    crops_bgr_uint8: a (T, h, w, 3) uint8 array, or a sequence of T (h_i, w_i, 3) uint8 arrays of any sizes
        (e.g. detector boxes cut from a frame). T may be 0.
    size: output (H, W); every crop is resized to it with cv2 bilinear interpolation, ignoring aspect ratio.
    """
    if isinstance(crops_bgr_uint8, np.ndarray):
        if crops_bgr_uint8.ndim != 4 or crops_bgr_uint8.shape[-1] != 3:
            raise ValueError(f"crops must have shape (T, H, W, 3), got {crops_bgr_uint8.shape}")
        crops: Sequence[np.ndarray] = list(crops_bgr_uint8)
        dtype = crops_bgr_uint8.dtype
    else:
        crops = crops_bgr_uint8
        dtype = np.dtype(np.uint8)
    if dtype != np.uint8:
        raise ValueError(f"crops must be uint8, got {dtype}")
    h, w = size
    out = np.empty((len(crops), h, w, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[-1] != 3 or 0 in crop.shape:
            raise ValueError(
                f"crop {i} must be a non-empty (h, w, 3) uint8 array, got {crop.shape} {crop.dtype}"
            )
        out[i] = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(out[..., ::-1].copy()).float().div_(255.0)  # BGR -> RGB, (T, H, W, 3)
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
