"""OSNet: Omni-Scale Network for person re-ID (Zhou et al., ICCV 2019, arXiv:1905.00953).

Written from the paper, with the module names of the torchreid (KaiyangZhou/deep-person-reid) layout, so that
torchreid-lineage checkpoints such as ``osnet_x0_25_msmt17.pth`` load with ``load_state_dict(strict=True)``.

Layout for a 256x128 input (x0.25 widths; x1.0 is (64, 256, 384, 512)):

    conv1    7x7/2 conv + BN + ReLU       (B, 3, 256, 128) -> (B, 16, 128, 64)
    maxpool  3x3/2                        -> (B, 16, 64, 32)
    conv2    2 OSBlocks + 1x1 + avgpool/2 -> (B, 64, 32, 16)
    conv3    2 OSBlocks + 1x1 + avgpool/2 -> (B, 96, 16, 8)
    conv4    2 OSBlocks                   -> (B, 128, 16, 8)
    conv5    1x1 conv + BN + ReLU         -> (B, 128, 16, 8)    = features(x)
    global average pool                   -> (B, 128)
    fc       Linear + BN1d + ReLU         -> (B, 512)           = embed(x) = forward(x)
    classifier Linear                     -> (B, num_classes)   = logits(x), training only
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class OSNetConfig:
    """OSNet hyper-parameters. The defaults are OSNet x0.25 as in the torchreid model zoo.

    channels: widths of (conv1, conv2, conv3, conv4); conv5 keeps the last one.
    layers: number of OSBlocks in conv2, conv3, conv4.
    num_classes: size of the training classifier; 0 builds no classifier (inference only). Checkpoints carry
        one (MSMT17: 1041, Market-1501: 751), so build with their size to load them strictly.
    """

    channels: tuple[int, int, int, int] = (16, 64, 96, 128)
    layers: tuple[int, int, int] = (2, 2, 2)
    feature_dim: int = 512
    num_classes: int = 0
    bottleneck_reduction: int = 4
    gate_reduction: int = 16
    num_streams: int = 4  # T in the paper; stream t stacks t Lite 3x3 layers (receptive field 2t+1)

    def __post_init__(self) -> None:
        if len(self.channels) != 4 or len(self.layers) != 3:
            raise ValueError(
                f"OSNetConfig expects 4 channels and 3 layer counts, got channels={self.channels}, "
                f"layers={self.layers}"
            )
        if self.num_streams != 4:
            # the torchreid key names conv2a..conv2d fix T=4
            raise ValueError(f"OSNetConfig.num_streams must be 4 (conv2a..conv2d), got {self.num_streams}")


class ConvLayer(nn.Module):
    """k x k convolution + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Conv1x1(nn.Module):
    """Pointwise convolution + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Conv1x1Linear(nn.Module):
    """Pointwise convolution + BN, no activation: the block output before the residual sum."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Lite 3x3: pointwise then depthwise 3x3, then BN + ReLU (the paper finds this order works better)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate G: global average pool -> MLP (one ReLU hidden layer) -> sigmoid.

    One instance is shared by all streams of a block; it returns x scaled channel-wise by G(x).
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x):
        g = F.adaptive_avg_pool2d(x, 1)  # (B, C, H, W) -> (B, C, 1, 1)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(g))))
        return x * g


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: 1x1 reduce, T streams of 1..T Lite 3x3, gated sum, 1x1 expand."""

    def __init__(self, in_ch: int, out_ch: int, cfg: OSNetConfig):
        super().__init__()
        mid = out_ch // cfg.bottleneck_reduction
        self.conv1 = Conv1x1(in_ch, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(2)])
        self.conv2c = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(3)])
        self.conv2d = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(4)])
        self.gate = ChannelGate(mid, cfg.gate_reduction)
        self.conv3 = Conv1x1Linear(mid, out_ch)
        self.downsample = Conv1x1Linear(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x):
        h = self.conv1(x)
        # Eq. 3: x~ = sum_t G(x^t) * x^t with x^t = F^t(x), the same gate G for every stream
        h = (
            self.gate(self.conv2a(h))
            + self.gate(self.conv2b(h))
            + self.gate(self.conv2c(h))
            + self.gate(self.conv2d(h))
        )
        h = self.conv3(h)
        identity = x if self.downsample is None else self.downsample(x)
        # Eq. 1: y = x + x~
        return F.relu(h + identity)


class OSNet(nn.Module):
    """OSNet; see the module docstring for the layout and shapes.

    Inputs are (B, 3, H, W) float RGB, ImageNet-normalised; the reference resolution is 256x128.
    ``features`` and ``embed`` return the same kind of tensor in train and eval mode (BN statistics aside);
    ``logits`` is for training and needs ``cfg.num_classes > 0``.
    """

    def __init__(self, cfg: OSNetConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1, c2, c3 = cfg.channels
        n2, n3, n4 = cfg.layers
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = self._stage(c0, c1, n2, cfg, downsample=True)
        self.conv3 = self._stage(c1, c2, n3, cfg, downsample=True)
        self.conv4 = self._stage(c2, c3, n4, cfg, downsample=False)
        self.conv5 = Conv1x1(c3, c3)
        self.fc = nn.Sequential(nn.Linear(c3, cfg.feature_dim), nn.BatchNorm1d(cfg.feature_dim), nn.ReLU())
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        self._init_weights()

    @staticmethod
    def _stage(
        in_ch: int, out_ch: int, n_blocks: int, cfg: OSNetConfig, *, downsample: bool
    ) -> nn.Sequential:
        blocks: list[nn.Module] = [OSBlock(in_ch, out_ch, cfg)]
        blocks += [OSBlock(out_ch, out_ch, cfg) for _ in range(n_blocks - 1)]
        if downsample:
            # transition: 1x1 conv then 2x2 average pool halves H and W
            blocks.append(nn.Sequential(Conv1x1(out_ch, out_ch), nn.AvgPool2d(2, stride=2)))
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> int:
        return self.cfg.channels[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/16, W/16) conv5 map; (B, 128, 16, 8) for x0.25 at 256x128."""
        x = self.maxpool(self.conv1(x))
        x = self.conv4(self.conv3(self.conv2(x)))
        return self.conv5(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, feature_dim) embedding after fc (non-negative: it ends in ReLU)."""
        f = F.adaptive_avg_pool2d(self.features(x), 1)  # (B, C, h, w) -> (B, C, 1, 1)
        f = f.flatten(1)  # (B, C, 1, 1) -> (B, C)
        return self.fc(f)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) identity logits of the training classifier."""
        if self.classifier is None:
            raise RuntimeError("this OSNet was built with num_classes=0 and has no classifier")
        return self.classifier(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``embed``: (B, 3, H, W) -> (B, feature_dim), in train and eval mode alike."""
        return self.embed(x)
