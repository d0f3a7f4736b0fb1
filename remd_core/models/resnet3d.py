"""A small 3-D ResNet for OCT volumes ``[B, 1, S, H, W]`` (the 3-D baselines of the Re-M3Dr paper's
Table 1, EGVFI and SF3D, use 3-D CNNs). ResNet-10 layout as in MedicalNet (Chen et al. 2019): a
stem and four stages of one basic block each, widths (64, 128, 256, 512) times ``width``.

The B-scan axis is usually short (8 here, 32 at the paper's scale, 200 in Harvard data), so the
stem and the first stage keep it (stride 1 along S) and later stages halve it.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock3d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != (1, 1, 1) or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm3d(out_ch))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet3d(nn.Module):
    """Feature extractor ``[B, C, S, H, W] -> [B, out_features]``."""

    def __init__(self, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        widths = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv3d(in_channels, widths[0], (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                                  nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True),
                                  nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        strides = [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        blocks, in_ch = [], widths[0]
        for out_ch, stride in zip(widths, strides):
            blocks.append(BasicBlock3d(in_ch, out_ch, stride))
            in_ch = out_ch
        self.stages = nn.Sequential(*blocks)
        self.out_features = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))
