"""ResNet-18/34 style 2-D backbones written here (torchvision does not run with the CPU torch of
our machines). He et al., "Deep Residual Learning for Image Recognition", CVPR 2016: basic blocks,
stages of (2, 2, 2, 2) or (3, 4, 6, 3) blocks with widths (64, 128, 256, 512).

Differences from torchvision, on purpose: any number of input channels (1 for a B-scan, 3 for a
fundus photo, 256 for B-scans stacked as channels), a ``width`` multiplier (0.25 gives 16 to 128
channels, a CPU-sized model), and a ``small`` stem (3x3 convolution, no max-pool) for inputs of
64 px or less, where the ImageNet stem would shrink the image to 2 x 2 by the last stage.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet2d(nn.Module):
    """Feature extractor: ``[B, C, H, W] -> [B, out_features]`` (global average pooled)."""

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, width: float = 1.0, stem: str = "imagenet"):
        super().__init__()
        if arch not in DEPTHS:
            raise ValueError(f"unknown backbone {arch!r}; known: {sorted(DEPTHS)}")
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        widths = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        elif stem == "small":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"unknown stem {stem!r}; use 'imagenet' or 'small'")
        stages, in_ch = [], widths[0]
        for i, (depth, out_ch) in enumerate(zip(DEPTHS[arch], widths)):
            blocks = [BasicBlock(in_ch, out_ch, 1 if i == 0 else 2)]
            blocks += [BasicBlock(out_ch, out_ch, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.out_features = in_ch
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: each block starts as identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))
