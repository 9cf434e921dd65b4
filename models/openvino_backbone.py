"""Intel Open Model Zoo person re-ID networks (OpenVINO IR or ONNX) as a frozen DRSTA backbone.

The OMZ re-ID models (person-reidentification-retail-0277/0286/0287/0288, 0267) are OSNet-like networks whose
last spatial feature map (e.g. (512, 16, 8) for 0277 at 256x128) goes through a *learned* depthwise global
pooling (a GroupConvolution whose kernel covers the whole map, plus a bias), then a fully connected layer,
a per-channel affine (folded batch-norm) and a PReLU: that is their 256-d ``reid_embedding``.

:class:`OpenVINOBackbone` reads the model with OpenVINO's Python API, exposes the map feeding the pooling as an
extra model output (``Model.add_outputs``), and compiles for the CPU with f32 inference precision. One
inference gives both the map (what DRSTA attends over) and the network's own embedding (the honest baseline).
:meth:`OpenVINOBackbone.own_head` returns the layers after the map as plain tensors (:class:`OwnHead`), read
from the constant-folded graph, so a torch head can start exactly at the network's own embedding.

Input contract: the same as every backbone here, ``(B, 3, H, W)`` float32 RGB scaled to [0, 1] and normalised
with ImageNet mean/std (``models.backbones.preprocess_crops``); the backbone undoes the normalisation and
feeds the network the BGR 0-255 pixels it was trained on. The network runs in OpenVINO (no gradients): the
backbone is always frozen. Outputs come back on the input's device, so the head may run on CUDA.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, OwnHead


@functools.cache
def openvino_core():
    """The process's one OpenVINO ``Core``. Every backbone and every graph read shares it: a process that creates
    a new Core per model load crashes (segmentation fault) after a few dozen loads, as the test suite did
    (docs/decisions.md, "One OpenVINO Core")."""
    import openvino as ov  # lazy: only users of this backbone pay for importing OpenVINO

    return ov.Core()


# Ops between the pooled vector and the embedding that carry no arithmetic.
_PASS_THROUGH = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Convert"})


class OpenVINOBackbone(Backbone):
    """An OMZ re-ID network up to its last spatial map, plus its own embedding, compiled for the CPU.

    model_path: ``.xml`` (IR, with its ``.bin`` beside it) or ``.onnx``.
    threads: CPU inference threads (None: OpenVINO's default, every core).

    Raises FileNotFoundError for a missing file and ValueError when the graph has no global depthwise
    pooling or average pooling after a spatial map (not an OMZ-style re-ID network).
    """

    def __init__(self, model_path: str | Path, *, threads: int | None = None):
        super().__init__()
        import openvino as ov  # lazy: only users of this backbone pay for importing OpenVINO

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"OpenVINO re-ID model not found: {path}")
        self.model_path = path
        self.weights_file = path
        core = openvino_core()
        model = core.read_model(path)
        pool = _global_pool(model, path)
        spatial = pool.input_value(0)  # the (1, D, h, w) map feeding the pooling
        _, d, h, w = (int(v.get_length()) for v in spatial.get_partial_shape())
        _, _, in_h, in_w = (int(v.get_length()) for v in model.inputs[0].get_partial_shape())
        self.out_channels = d
        self.grid_size = (h, w)
        self.input_size = (in_h, in_w)
        model.add_outputs([spatial])
        model.reshape({model.inputs[0]: ov.PartialShape([-1, 3, in_h, in_w])})  # any batch size
        config = {"INFERENCE_PRECISION_HINT": "f32"}  # no silent bf16 on CPUs that have it
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(model, "CPU", config)
        self._emb_port = self._compiled.outputs[0]  # the network's own output (reid_embedding)
        self._map_port = self._compiled.outputs[-1]  # the added output
        self._request = self._compiled.create_infer_request()
        # ImageNet-normalised RGB -> BGR 0-255: x_bgr = (x * std + mean) * 255, channels reversed
        self.register_buffer(
            "_scale", torch.tensor(IMAGENET_STD[::-1]).view(1, 3, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer(
            "_shift", torch.tensor(IMAGENET_MEAN[::-1]).view(1, 3, 1, 1) * 255.0, persistent=False
        )

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected (B, 3, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"x: {self.model_path.name} needs {self.input_size} (H, W) input, got {tuple(x.shape[2:])}"
            )
        bgr = x.detach().flip(1).float().cpu() * self._scale.cpu() + self._shift.cpu()  # RGB -> BGR, 0-255
        if bgr.shape[0] == 0:
            h, w = self.grid_size
            return x.new_zeros(0, self.out_channels, h, w), x.new_zeros(
                0, int(self._emb_port.get_partial_shape()[1].get_length())
            )
        res = self._request.infer({0: np.ascontiguousarray(bgr.numpy())})
        grid = torch.from_numpy(np.array(res[self._map_port])).to(x.device)
        emb = torch.from_numpy(np.array(res[self._emb_port])).to(x.device)
        return grid, emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised RGB -> (B, D, h, w) last spatial map (post-ReLU)."""
        return self._infer(x)[0]

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E) the network's own embedding (``reid_embedding``, not normalised)."""
        return self._infer(x)[1]

    def features_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._infer(x)

    def own_head(self) -> OwnHead:
        from openvino import passes

        model = openvino_core().read_model(self.model_path)  # a fresh copy: folding rewrites the graph
        manager = passes.Manager()
        manager.register_pass(passes.ConstantFolding())
        manager.run_passes(model)
        return _parse_tail(_global_pool(model, self.model_path), self.model_path)


def _global_pool(model, path: Path):
    """The last op that pools a spatial map to 1x1: a depthwise GroupConvolution covering it, or ReduceMean."""
    found = None
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("GroupConvolution", "ReduceMean"):
            continue
        src = op.input_value(0).get_partial_shape()
        out = op.output(0).get_partial_shape()
        if src.rank.get_length() != 4 or out.rank.get_length() != 4 or not src.is_static:
            continue
        if src[2].get_length() * src[3].get_length() > 1 and out[2].get_length() * out[3].get_length() == 1:
            found = op
    if found is None:
        raise ValueError(f"{path}: no global pooling of a spatial map found (not an OMZ-style re-ID network)")
    return found


def _constant(node_output) -> np.ndarray:
    node = node_output.get_node()
    if node.get_type_name() != "Constant":
        raise ValueError(f"expected a constant input, got {node.get_type_name()} {node.get_friendly_name()}")
    return np.array(node.get_data(), dtype=np.float64)


def _parse_tail(pool, path: Path) -> OwnHead:
    """Fold the ops from the global pooling to the model output into pool weights, one affine map and a PReLU.

    Supported after folding: the pooling (GroupConvolution kernel or ReduceMean), Add / Multiply by constants,
    MatMul by a constant, BatchNormInference, one final PRelu or Relu, and shape-only ops. Anything else (e.g.
    the FakeQuantize of INT8 models) raises ValueError: the tail cannot be reproduced exactly in torch.
    """
    src_shape = [int(v.get_length()) for v in pool.input_value(0).get_partial_shape()]
    _, d, h, w = src_shape
    if pool.get_type_name() == "GroupConvolution":
        kernel = _constant(pool.input_value(1))
        if kernel.size != d * h * w:
            raise ValueError(f"{path}: pooling kernel {kernel.shape} does not cover the ({d}, {h}, {w}) map")
        pool_w = kernel.reshape(d, h, w) * (h * w)  # OwnHead pools with a mean: weight 1 = average
    else:
        pool_w = np.ones((d, h, w))
    pool_b = np.zeros(d)
    a = np.eye(d)  # affine map pooled -> embedding: y = a @ pooled + c
    c = np.zeros(d)
    projected, activated, slope = False, False, 1.0
    prev, node = pool, pool
    while True:
        users = [
            t.get_node()
            for t in node.output(0).get_target_inputs()
            if t.get_node().get_type_name() != "ShapeOf"
        ]
        if len(users) != 1:
            raise ValueError(f"{path}: the tail after {node.get_friendly_name()} branches; cannot fold it")
        prev, node = node, users[0]
        kind = node.get_type_name()
        if kind == "Result":
            break
        if kind in _PASS_THROUGH:
            continue
        if activated:
            raise ValueError(f"{path}: {kind} after the final activation is not supported")
        names = [node.input_value(i).get_node().get_friendly_name() for i in range(node.get_input_size())]
        data_idx = names.index(prev.get_friendly_name())
        others = [node.input_value(i) for i in range(node.get_input_size()) if i != data_idx]
        if kind == "Add":
            v = _constant(others[0]).reshape(-1)
            if projected:
                c = c + v
            else:
                pool_b = pool_b + v
        elif kind == "Multiply":
            v = _constant(others[0]).reshape(-1)
            if projected:
                a, c = a * v[:, None], c * v
            else:
                pool_w, pool_b = pool_w * v[:, None, None], pool_b * v
        elif kind == "MatMul":
            attrs = node.get_attributes()
            m = _constant(others[0])
            if data_idx != 0 or attrs.get("transpose_a"):
                raise ValueError(f"{path}: MatMul with the data as its second input is not supported")
            m = m if attrs.get("transpose_b") else m.T  # -> (E, D_in)
            a, c, projected = m @ a, m @ c, True
        elif kind == "BatchNormInference":
            consts = [_constant(o).reshape(-1) for o in others]
            gamma, beta, mean, var = consts  # opset5 order (data first) and opset1 (data third) agree here
            s = gamma / np.sqrt(var + float(node.get_attributes()["epsilon"]))
            a, c = a * s[:, None], (c - mean) * s + beta
        elif kind == "PRelu":
            v = _constant(others[0]).reshape(-1)
            if v.size != 1:
                raise ValueError(f"{path}: per-channel PRelu slopes are not supported")
            slope, activated = float(v[0]), True
        elif kind == "Relu":
            slope, activated = 0.0, True
        else:
            raise ValueError(
                f"{path}: cannot reproduce op {kind} ({node.get_friendly_name()}) after the pooling"
            )
    if not projected:
        raise ValueError(f"{path}: no fully connected layer after the pooling")
    f32 = torch.float32
    return OwnHead(
        pool_weight=torch.tensor(pool_w, dtype=f32),
        pool_bias=torch.tensor(pool_b, dtype=f32),
        proj_weight=torch.tensor(a, dtype=f32),
        proj_bias=torch.tensor(c, dtype=f32),
        slope=slope,
    )
