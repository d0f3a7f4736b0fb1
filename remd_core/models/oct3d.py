"""3-D CNN encoders built for MD prediction from OCT volumes: the EGVFI and SF3D rows of Table 1 of
the Re-M3Dr paper (seed 001: "3D-based models designed for MD value prediction"). Each maps a
B-scan stack ``[B, S, H, W]`` (S B-scans of H x W pixels, seen as a one-channel volume) to
``[B, out_features]``; ``width`` scales every channel count as in the workbench's other encoders
(``width=1`` is the architecture as published, or as chosen here where nothing is published).

EGVFI: Yu H-H, Maetschke SR, Antony BJ, Ishikawa H, Wollstein G, Schuman JS, Garnavi R,
"Estimating global visual field indices in glaucoma by combining macula and optic disc OCT scans
using 3-dimensional convolutional neural networks", Ophthalmology Glaucoma 4(1):102-112, 2021.
Read from the authors' public code (IBM/oct-glaucoma-global-visual-field: ``network.py``
``create_subnetwork`` and ``configs/config_solo_onh.yaml`` / ``config_maconh_3heads.yaml``):
five 3-D convolutions of 32 filters each, kernels 7, 5, 5, 3, 3 (cubic), strides 2, 1, 1, 1, 1,
"same" padding, each followed by batch norm, ReLU and spatial dropout 0.2, then global average
pooling; a dense unit with a sigmoid on targets scaled to [0.1, 0.9], MSE loss, Nadam at 1e-4,
batch 8, 100 epochs. Input cubes of 64 x 128 x 64 voxels (the config's ``C: 64, H: 128, W: 64``):
Cirrus cubes downsampled to 64 B-scans, 128 pixels axially, 64 A-scans per B-scan, so
``published_input_size("egvfi") == (64, 128, 64)`` as ``(S, H, W)``. (The two en-face axes are
both 64, so which of them the authors count as B-scans does not change the size.) The paper's best
model has two such branches (macula and optic disc scans), their pooled features concatenated;
the workbench has one OCT volume per eye, so this is the single-branch ("solo") network the paper
also reports for one scan region.

Where ours differs from the official code, and why:
- The head is the workbench's (the regressor's linear heads on the pooled features, MD in dB):
  every encoder here ends at its features, and the trainer owns loss, optimiser and target scaling.
- Padding is symmetric (3 for the stride-2 kernel 7): the same output size as Keras' "same", but
  TensorFlow pads one pixel less before than after on even sizes, so the sampling grid is shifted
  by one voxel.
- Batch norm keeps PyTorch's defaults (momentum 0.1, eps 1e-5) like every other encoder here;
  Keras' are momentum 0.99 (0.01 in PyTorch's convention) and eps 1e-3. With Keras' slow running
  averages a short run on a small set would evaluate on barely-updated statistics.
- Kernels get Keras' initialisation (Glorot uniform, zero bias), so the model starts where the
  official one does; the code's L2 penalty is 0 in every config and is left out.

SF3D: Koyama M, Ueno Y, Ito Y, Oshika T, Tanito M, "Automated learning of glaucomatous visual
fields from OCT images using a comprehensive, segmentation-free 3D convolutional neural network
model", Scientific Reports 15:13395, 2025. The paper's text and any code were not reachable from
here (none of the searched stores holds the article or a repository for it), so its layers,
widths and input size are NOT known to this module. Our choice, stated as such: a standard 3-D
ResNet on the whole, unsegmented volume (the "segmentation-free 3D CNN" of the title), ResNet-18
layout (basic blocks, stages of 2, 2, 2, 2 blocks, widths 64, 128, 256, 512, a 7^3 stride-2 stem
and a max-pool, global average pooling). ``depth`` (10, 18, 34, 50), ``stem_kernel``,
``stem_stride`` and ``max_pool`` are parameters so that the published layout can be set once it is
known; ``published_input_size("sf3d")`` is ``None`` until then. Shortcut convolutions have no bias
(they feed a batch norm), as in torchvision and MedicalNet's type-B shortcut.

What is MONAI and what is ours. MONAI (``monai.networks``) supplies the pieces that exist there:
each EGVFI layer is one ``monai.networks.blocks.Convolution`` (convolution, then norm, activation
and dropout in the order "NAD", spatial dropout via ``dropout_dim=3``), and SF3D is
``monai.networks.nets.ResNet`` itself (with ``feed_forward=False``: pooled features, no classifier).
Ours: the width scaling, the ``[B, S, H, W]`` -> ``[B, 1, S, H, W]`` adapter, the EGVFI layer list
and its initialisation, and the published-size table. The existing hand-written ``ResNet2d`` and
``ResNet3d`` are not moved onto MONAI: their committed outputs depend on their exact construction.

Small depth. Both encoders accept any S >= 1 (the smoke profile has 2 B-scans of 32 x 32) without
padding the input: a stride-2 convolution with padding k // 2, and MONAI's max-pool (kernel 3,
stride 2, padding 1), map a length n >= 1 to ceil(n / 2) >= 1, the stride-1 layers keep it, and
the features are a global (adaptive) average over whatever is left. On 2 B-scans the 3-D kernels
see mostly zero padding along S, so they act as 2-D kernels with a thin depth context there.
"""

from __future__ import annotations

import torch
from torch import nn

EGVFI_FILTERS = (32, 32, 32, 32, 32)
EGVFI_KERNELS = (7, 5, 5, 3, 3)
EGVFI_STRIDES = (2, 1, 1, 1, 1)
SF3D_WIDTHS = (64, 128, 256, 512)
SF3D_LAYERS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
               50: ("bottleneck", (3, 4, 6, 3))}

# (S, H, W): B-scans, pixels along the A-scan (axial), A-scans per B-scan. None: not published (or
# not reachable from here; see the module docstring).
PUBLISHED_INPUT_SIZES: dict[str, tuple[int, int, int] | None] = {"egvfi": (64, 128, 64), "sf3d": None}


def published_input_size(name: str) -> tuple[int, int, int] | None:
    """The ``(S, H, W)`` input volume the model's paper (or official code) uses, or ``None`` where
    the paper gives none that could be read here."""
    if name not in PUBLISHED_INPUT_SIZES:
        raise ValueError(f"unknown 3-D OCT model {name!r}; known: {sorted(PUBLISHED_INPUT_SIZES)}")
    return PUBLISHED_INPUT_SIZES[name]


def scaled_channels(channels: int, width: float, minimum: int = 8) -> int:
    """``channels * width`` rounded, never below ``minimum`` (the rule of ``ResNet2d``/``ResNet3d``)."""
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    return max(minimum, int(round(channels * width)))


def _as_volume(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"expected B-scan stacks [B, S, H, W], got shape {tuple(x.shape)}")
    return x.unsqueeze(1)


class EGVFIEncoder(nn.Module):
    """Yu et al. 2021's single-branch 3-D CNN: ``[B, S, H, W] -> [B, 32 * width]`` (see the module
    docstring for the source and the differences)."""

    def __init__(self, width: float = 1.0, filters: tuple[int, ...] = EGVFI_FILTERS,
                 kernels: tuple[int, ...] = EGVFI_KERNELS, strides: tuple[int, ...] = EGVFI_STRIDES,
                 dropout: float = 0.2, batch_norm: bool = True, min_channels: int = 8):
        super().__init__()
        from monai.networks.blocks import Convolution

        if not len(filters) == len(kernels) == len(strides) > 0:
            raise ValueError(f"filters, kernels and strides must have one entry per layer, got "
                             f"{len(filters)}, {len(kernels)} and {len(strides)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers, in_ch = [], 1
        for n, k, s in zip(filters, kernels, strides):
            out_ch = scaled_channels(n, width, min_channels)
            layers.append(Convolution(3, in_ch, out_ch, strides=s, kernel_size=k, adn_ordering="NAD", act="RELU",
                                      norm="BATCH" if batch_norm else None, dropout=dropout or None,
                                      dropout_dim=3, bias=True))
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.out_features = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv3d):  # Keras' defaults: Glorot-uniform kernels, zero bias
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(_as_volume(x)).mean(dim=(2, 3, 4))


class SF3DEncoder(nn.Module):
    """A MONAI 3-D ResNet on the whole volume, our stand-in for Koyama et al. 2025's model:
    ``[B, S, H, W] -> [B, 512 * width]`` (times 4 for ``depth=50``). The layout is our choice;
    see the module docstring."""

    def __init__(self, width: float = 1.0, depth: int = 18, stem_kernel: int | tuple[int, int, int] = 7,
                 stem_stride: int | tuple[int, int, int] = 2, max_pool: bool = True, min_channels: int = 8):
        super().__init__()
        from monai.networks.nets import ResNet

        if depth not in SF3D_LAYERS:
            raise ValueError(f"unknown SF3D depth {depth}; known: {sorted(SF3D_LAYERS)}")
        block, layers = SF3D_LAYERS[depth]
        widths = [scaled_channels(c, width, min_channels) for c in SF3D_WIDTHS]
        self.backbone = ResNet(block, list(layers), widths, spatial_dims=3, n_input_channels=1,
                               conv1_t_size=stem_kernel, conv1_t_stride=stem_stride, no_max_pool=not max_pool,
                               shortcut_type="B", feed_forward=False, bias_downsample=False)
        self.out_features = widths[-1] * (4 if block == "bottleneck" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(_as_volume(x))
