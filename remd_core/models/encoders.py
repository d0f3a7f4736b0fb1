"""One encoder per modality kind, each mapping a batch to ``[B, out_features]``.

OCT volumes ``[B, S, H, W]`` have five encoders (``EncoderConfig.oct_encoder``):
``shared2d`` (default) applies one 2-D ResNet to every B-scan and pools over B-scans;
``channels`` stacks the S B-scans as input channels of one 2-D ResNet, as the STAGE challenge's
second-place code did (256 channels there); ``3d`` is a small 3-D ResNet over the volume;
``egvfi`` and ``sf3d`` are the 3-D CNNs built for MD prediction from OCT that Table 1 compares
with (``remd_core.models.oct3d``: Yu et al. 2021 and our stand-in for Koyama et al. 2025, built on
MONAI, which is imported only when one of them is chosen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from torch import nn

from ..data.format import ModalitySpec
from .resnet import ResNet2d
from .oct3d import EGVFIEncoder, SF3DEncoder
from .resnet3d import ResNet3d

OCT_ENCODERS = ("shared2d", "channels", "3d", "egvfi", "sf3d")


@dataclass
class EncoderConfig:
    """Backbone settings shared by the image encoders; ``mlp_hidden`` for vector modalities.
    ``weights``: pretrained weights from a local file (``models.pretrained``; never downloaded): one
    path (a torchvision ImageNet ResNet-18/34 for the 2-D ResNets, a MedicalNet ResNet for the
    ``3d`` and ``sf3d`` OCT encoders) loaded into every image and volume encoder, or
    ``{modality: path}``; needs ``width=1.0``. ``None``: random initial weights."""

    arch: str = "resnet18"
    width: float = 0.25
    stem: str = "imagenet"
    oct_encoder: str = "shared2d"
    bscan_pool: str = "mean"
    mlp_hidden: int = 64
    weights: str | dict | None = None

    def __post_init__(self):
        if self.oct_encoder not in OCT_ENCODERS:
            raise ValueError(f"oct_encoder must be one of {OCT_ENCODERS}, got {self.oct_encoder!r}")
        if isinstance(self.weights, PurePath):
            self.weights = str(self.weights)
        if isinstance(self.weights, dict):
            self.weights = {str(k): str(v) for k, v in self.weights.items()}
        elif self.weights is not None and not isinstance(self.weights, str):
            raise ValueError(f"weights must be a path or {{modality: path}}, got {self.weights!r}")
        if self.weights and self.width != 1.0:
            raise ValueError(f"pretrained weights (weights={self.weights!r}) need width=1.0, the published channel "
                             f"counts; got width={self.width}")


class ImageEncoder(nn.Module):
    """A 2-D ResNet over ``[B, C, H, W]`` (the fundus photograph)."""

    def __init__(self, in_channels: int, config: EncoderConfig):
        super().__init__()
        self.backbone = ResNet2d(config.arch, in_channels, config.width, config.stem)
        self.out_features = self.backbone.out_features

    def forward(self, x):
        return self.backbone(x)


class SharedBscanEncoder(nn.Module):
    """One 2-D ResNet shared across B-scans, applied to each B-scan of ``[B, S, H, W]``, then
    pooled over the S B-scans (mean or max). Sharing weights across B-scans keeps the parameter
    count of a single-image model and makes the encoder indifferent to the number of B-scans."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if config.bscan_pool not in ("mean", "max"):
            raise ValueError(f"unknown B-scan pooling {config.bscan_pool!r}; use 'mean' or 'max'")
        self.backbone = ResNet2d(config.arch, 1, config.width, config.stem)
        self.pool = config.bscan_pool
        self.out_features = self.backbone.out_features

    def forward(self, x):
        b, s, h, w = x.shape
        per_scan = self.backbone(x.reshape(b * s, 1, h, w)).reshape(b, s, -1)
        return per_scan.mean(1) if self.pool == "mean" else per_scan.amax(1)


class StackedBscanEncoder(nn.Module):
    """B-scans as the input channels of one 2-D ResNet: ``[B, S, H, W]`` is an S-channel image."""

    def __init__(self, n_bscans: int, config: EncoderConfig):
        super().__init__()
        self.backbone = ResNet2d(config.arch, n_bscans, config.width, config.stem)
        self.out_features = self.backbone.out_features

    def forward(self, x):
        return self.backbone(x)


class VolumeEncoder(nn.Module):
    """A 3-D ResNet over the B-scan stack ``[B, S, H, W]`` seen as a one-channel volume."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.backbone = ResNet3d(1, config.width)
        self.out_features = self.backbone.out_features

    def forward(self, x):
        return self.backbone(x.unsqueeze(1))


class VectorEncoder(nn.Module):
    """A two-layer MLP for tabular modalities (such as the ``randhie`` feature groups)."""

    def __init__(self, in_features: int, config: EncoderConfig):
        super().__init__()
        h = config.mlp_hidden
        self.net = nn.Sequential(nn.Linear(in_features, h), nn.ReLU(inplace=True), nn.Linear(h, h), nn.ReLU(inplace=True))
        self.out_features = h

    def forward(self, x):
        return self.net(x)


def build_encoder(spec: ModalitySpec, config: EncoderConfig) -> nn.Module:
    if spec.kind == "image":
        return ImageEncoder(spec.shape[0], config)
    if spec.kind == "volume":
        if config.oct_encoder == "channels":
            return StackedBscanEncoder(spec.shape[0], config)
        if config.oct_encoder == "3d":
            return VolumeEncoder(config)
        if config.oct_encoder == "egvfi":
            return EGVFIEncoder(config.width)
        if config.oct_encoder == "sf3d":
            return SF3DEncoder(config.width)
        return SharedBscanEncoder(config)
    if spec.kind == "vector":
        return VectorEncoder(spec.shape[0], config)
    raise ValueError(f"no encoder for modality kind {spec.kind!r}")
